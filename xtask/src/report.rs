//! `cargo xtask report LOG` and `cargo xtask heatmap LOG -o FILE.png`: read
//! the `TCR` records of a console log (format: `docs/report-format.md`,
//! parser: `hvcore::report`) and print a per-VM summary table, or draw
//! guest-physical memory (vertical, address 0 at the top) against time
//! (horizontal) coloured by age.
//!
//! The PNG is drawn pixel by pixel and encoded with the `png` crate
//! (image-rs), so nothing needs system fonts: tick labels use a built-in
//! 3x5 pixel font.

use hvcore::report::{EventKind, Record, parse_line};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything the log says about one VM.
#[derive(Debug, Default)]
struct VmSummary {
    passes: u64,
    first_t_ms: Option<u64>,
    last_t_ms: u64,
    dur_us_sum: u64,
    dur_us_max: u64,
    young_sum: u64,
    scanned_last: u64,
    skipped_sum: u64,
    last_reclaim: Option<hvcore::report::ReclaimLine>,
    last_hist: Option<hvcore::report::HistLine>,
    pauses: u64,
    resumes: u64,
    stopped: Option<String>,
    target_unmet: Option<String>,
    maps: u64,
}

/// One boot's records: a log may hold several (`tee -a`, `cat a b`).
#[derive(Debug, Default)]
struct Run {
    /// First and last log line (1-based) of the run.
    lines: (usize, usize),
    /// Summaries by VM, and the VMs in order of appearance.
    vms: BTreeMap<String, VmSummary>,
    order: Vec<String>,
    /// Records with their log line numbers.
    records: Vec<(usize, Record)>,
}

/// Parsed log: its runs, malformed lines, and warnings.
struct Log {
    runs: Vec<Run>,
    malformed: Vec<(usize, String)>,
    warnings: Vec<String>,
}

/// The first banner line of every boot (`kernel/src/banner.rs`) contains
/// this: a new run starts there.
const BOOT_MARK: &str = ": x86_64 micro-hypervisor";

fn record_vm(rec: &Record) -> &str {
    match rec {
        Record::Pass(p) => &p.vm,
        Record::Hist(h) => &h.vm,
        Record::Map(m) => &m.vm,
        Record::Ranges(r) => &r.vm,
        Record::Reclaim(r) => &r.vm,
        Record::Event(e) => &e.vm,
    }
}

fn record_t_ms(rec: &Record) -> u64 {
    match rec {
        Record::Pass(p) => p.t_ms,
        Record::Hist(h) => h.t_ms,
        Record::Map(m) => m.t_ms,
        Record::Ranges(r) => r.t_ms,
        Record::Reclaim(r) => r.t_ms,
        Record::Event(e) => e.t_ms,
    }
}

fn read_log(text: &str) -> Log {
    let mut log = Log {
        runs: vec![Run::default()],
        malformed: Vec::new(),
        warnings: Vec::new(),
    };
    // A console log ends each line; one that stops mid-line was cut
    // (a full disk, a killed `tee`): its last record may be short (a map
    // cut at `ages=0` parses as one cell), so leave it out and say so.
    let cut_line = match text.ends_with('\n') {
        true => None,
        false => Some(text.lines().count()),
    };
    let mut last_t: BTreeMap<String, u64> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let no = i + 1;
        if line.contains(BOOT_MARK) {
            if log.runs.last().is_some_and(|r| !r.records.is_empty()) {
                log.runs.push(Run::default());
            }
            last_t.clear();
            continue;
        }
        let rec = match parse_line(line) {
            None => continue,
            Some(Err(e)) => {
                log.malformed.push((no, e.to_string()));
                continue;
            }
            Some(Ok(r)) => r,
        };
        if cut_line == Some(no) {
            log.warnings.push(format!(
                "line {no}: the log ends in the middle of this line (no newline): its record is left out"
            ));
            continue;
        }
        let vm = record_vm(&rec).to_string();
        let t = record_t_ms(&rec);
        if last_t.get(&vm).is_some_and(|&prev| t < prev) {
            log.warnings.push(format!(
                "line {no}: t_ms of VM {vm} went back ({} -> {t}) with no banner between: \
                 a new run starts here",
                last_t[&vm]
            ));
            log.runs.push(Run::default());
            last_t.clear();
        }
        last_t.insert(vm.clone(), t);
        let run = log.runs.last_mut().expect("one run at least");
        if run.records.is_empty() {
            run.lines.0 = no;
        }
        run.lines.1 = no;
        if !run.vms.contains_key(&vm) {
            run.order.push(vm.clone());
        }
        let s = run.vms.entry(vm).or_default();
        // Saturating: a corrupt line's huge numbers must not panic the sums.
        match &rec {
            Record::Pass(p) => {
                s.passes += 1;
                s.first_t_ms.get_or_insert(p.t_ms);
                s.last_t_ms = s.last_t_ms.max(p.t_ms);
                s.dur_us_sum = s.dur_us_sum.saturating_add(p.dur_us);
                s.dur_us_max = s.dur_us_max.max(p.dur_us);
                s.young_sum = s.young_sum.saturating_add(p.young);
                s.scanned_last = p.scanned;
                s.skipped_sum = s.skipped_sum.saturating_add(p.skipped);
            }
            Record::Hist(h) => s.last_hist = Some(h.clone()),
            Record::Map(_) => s.maps += 1,
            Record::Ranges(_) => {}
            Record::Reclaim(r) => s.last_reclaim = Some(r.clone()),
            Record::Event(e) => match e.what {
                EventKind::Paused => s.pauses += 1,
                EventKind::Resumed => s.resumes += 1,
                EventKind::Stopped => s.stopped = Some(e.detail.clone()),
                EventKind::TargetUnmet => s.target_unmet = Some(e.detail.clone()),
            },
        }
        run.records.push((no, rec));
    }
    if log.runs.len() > 1 && log.runs.last().is_some_and(|r| r.records.is_empty()) {
        log.runs.pop();
    }
    log
}

fn mib(pages: u64) -> String {
    format!("{:.1}", pages as f64 * 4096.0 / (1024.0 * 1024.0))
}

/// The summary table, as printed by `cargo xtask report`.
fn run_table(run: &Run) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<12} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>8} {:>8} {:>6} {:>8} {:>9} {:>7}\n",
        "vm",
        "passes",
        "span_s",
        "pass_us",
        "max_us",
        "young/pass",
        "skip/pass",
        "resid_MiB",
        "recl_MiB",
        "zero",
        "compr",
        "raw",
        "ratio",
        "refaults",
        "thresh"
    ));
    for name in &run.order {
        let s = &run.vms[name];
        let per = |x: u64| x.checked_div(s.passes).unwrap_or(0);
        let span_ms = s
            .last_t_ms
            .saturating_sub(s.first_t_ms.unwrap_or(s.last_t_ms));
        let (resid, recl, zero, compr, raw, ratio, refaults, thresh) = match &s.last_reclaim {
            Some(r) => (
                mib(r.resident),
                mib(r.reclaimed),
                r.zero.to_string(),
                r.compressed.to_string(),
                r.raw.to_string(),
                format!("{}.{:03}", r.ratio_milli / 1000, r.ratio_milli % 1000),
                r.refaults.to_string(),
                format!("{}g", r.threshold_gens),
            ),
            None => (
                mib(s.scanned_last),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        out.push_str(&format!(
            "{:<12} {:>6} {:>9.1} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>8} {:>8} {:>6} {:>8} {:>9} {:>7}\n",
            name,
            s.passes,
            span_ms as f64 / 1000.0,
            per(s.dur_us_sum),
            s.dur_us_max,
            per(s.young_sum),
            per(s.skipped_sum),
            resid,
            recl,
            zero,
            compr,
            raw,
            ratio,
            refaults,
            thresh
        ));
    }
    for name in &run.order {
        let s = &run.vms[name];
        if let Some(h) = &s.last_hist {
            let total = h
                .buckets
                .iter()
                .fold(0u64, |t, b| t.saturating_add(b.pages));
            out.push_str(&format!(
                "{name}: last histogram (pass {}): {} pages in {} generations",
                h.n,
                total,
                h.buckets.len()
            ));
            for b in h.buckets.iter().rev().take(4) {
                out.push_str(&format!(", age {} ms: {}", b.age_ms, b.pages));
            }
            out.push('\n');
        }
        if s.pauses > 0 || s.stopped.is_some() {
            out.push_str(&format!(
                "{name}: paused {} times, resumed {} times{}\n",
                s.pauses,
                s.resumes,
                s.stopped
                    .as_ref()
                    .map(|d| format!(", stopped: {d}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(d) = &s.target_unmet {
            out.push_str(&format!("{name}: reclaim target not met: {d}\n"));
        }
    }
    out
}

/// The summary, as printed by `cargo xtask report`: one table per run.
fn summary(log: &Log) -> String {
    let mut out = String::new();
    let runs: Vec<&Run> = log.runs.iter().filter(|r| !r.records.is_empty()).collect();
    if runs.len() > 1 {
        out.push_str(&format!(
            "the log holds {} runs (each starts at a banner, or where time goes back): one table each\n",
            runs.len()
        ));
    }
    for (i, run) in runs.iter().enumerate() {
        if runs.len() > 1 {
            out.push_str(&format!(
                "\nrun {} (log lines {}-{}):\n",
                i + 1,
                run.lines.0,
                run.lines.1
            ));
        }
        out.push_str(&run_table(run));
    }
    for w in &log.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if !log.malformed.is_empty() {
        out.push_str(&format!("{} malformed TCR lines:\n", log.malformed.len()));
        for (line, e) in log.malformed.iter().take(10) {
            out.push_str(&format!("  line {line}: {e}\n"));
        }
    }
    if runs.is_empty() {
        out.push_str("no TCR records in the log\n");
    }
    out
}

/// `cargo xtask report LOG`.
pub fn cmd_report(args: &[String]) -> Result<(), String> {
    let [path] = args else {
        return Err("usage: cargo xtask report LOG".into());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    print!("{}", summary(&read_log(&text)));
    Ok(())
}

/// `cargo xtask heatmap LOG -o FILE.png [--vm NAME] [--run N]`.
pub fn cmd_heatmap(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask heatmap LOG -o FILE.png [--vm NAME] [--run N]";
    let mut log_path = None;
    let mut out = None;
    let mut vm = None;
    let mut run_no = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => out = it.next().cloned(),
            "--vm" => vm = it.next().cloned(),
            "--run" => {
                let n = it
                    .next()
                    .ok_or("--run needs a run number (1 is the first)")?;
                run_no = Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| format!("--run {n}: expected a run number from 1"))?,
                );
            }
            _ if log_path.is_none() => log_path = Some(a.clone()),
            other => return Err(format!("unexpected argument `{other}`; {USAGE}")),
        }
    }
    let (Some(log_path), Some(out)) = (log_path, out) else {
        return Err(USAGE.into());
    };
    let text = std::fs::read_to_string(&log_path).map_err(|e| format!("{log_path}: {e}"))?;
    let log = read_log(&text);
    for w in &log.warnings {
        eprintln!("xtask: warning: {w}");
    }
    let runs = log.runs.len();
    let has_maps = |r: &Run, vm: &Option<String>| {
        r.vms
            .iter()
            .any(|(name, s)| s.maps > 0 && vm.as_ref().is_none_or(|v| v == name))
    };
    let index = match run_no {
        Some(n) if n > runs => {
            return Err(format!("--run {n}: the log holds {runs} run(s)"));
        }
        Some(n) => n - 1,
        None => (0..runs)
            .rev()
            .find(|&i| has_maps(&log.runs[i], &vm))
            .ok_or("no `TCR map` records in the log")?,
    };
    let run = &log.runs[index];
    if runs > 1 {
        eprintln!(
            "xtask: the log holds {runs} runs; drawing run {} (log lines {}-{}); choose with --run N",
            index + 1,
            run.lines.0,
            run.lines.1
        );
    }
    let vm = match vm {
        Some(v) => v,
        None => run
            .order
            .iter()
            .find(|v| run.vms[*v].maps > 0)
            .cloned()
            .ok_or_else(|| format!("no `TCR map` records in run {}", index + 1))?,
    };
    let label = format!("run {} of {runs}", index + 1);
    let (w, h) = heatmap(run, &label, &vm, Path::new(&out))?;
    println!("{out}: {w}x{h} heatmap of VM {vm}, {label}");
    Ok(())
}

/// Colour for an age in passes, `max` the oldest shown (the legend on
/// the right runs from age 0 at the top to `max` passes): hot (age 0) is
/// bright yellow, then orange, red, purple, to dark blue for the oldest.
fn colour(age: Option<u64>, max: u64) -> [u8; 3] {
    let Some(age) = age else {
        return [24, 24, 24];
    };
    // Log scale: the difference between 0 and 3 passes matters more than
    // between 100 and 103.
    let t = ((age as f64 + 1.0).ln() / (max as f64 + 1.0).ln().max(1e-9)).clamp(0.0, 1.0);
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [252.0, 255.0, 164.0]),
        (0.25, [250.0, 160.0, 30.0]),
        (0.5, [200.0, 50.0, 70.0]),
        (0.75, [100.0, 20.0, 110.0]),
        (1.0, [10.0, 10.0, 60.0]),
    ];
    let i = STOPS.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(3);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    core::array::from_fn(|k| (a.1[k] + (b.1[k] - a.1[k]) * f).round() as u8)
}

/// 3x5 glyphs (rows top to bottom, 3 bits each); letters in capitals
/// only, so lower case is drawn as upper case.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '+' => [0, 2, 7, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        '=' => [0, 7, 0, 7, 0],
        '_' => [0, 0, 0, 0, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        c if c.is_ascii_lowercase() => glyph(c.to_ascii_uppercase()),
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }
    /// Text at scale 2 (6x10 pixels per glyph, 8 px advance).
    fn text(&mut self, x: usize, y: usize, s: &str) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.rect(x + i * 8 + col * 2, y + row * 2, 2, 2, [0, 0, 0]);
                    }
                }
            }
        }
    }
    /// Text at scale 2 turned a quarter left (read from bottom to top),
    /// its first glyph's bottom-left corner at `(x, y)`.
    fn text_up(&mut self, x: usize, y: usize, s: &str) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        let yy = y.saturating_sub(i * 8 + col * 2 + 2);
                        self.rect(x + row * 2, yy, 2, 2, [0, 0, 0]);
                    }
                }
            }
        }
    }
    fn text_width(s: &str) -> usize {
        s.chars().count() * 8
    }
}

fn size_label(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    if bytes >= G && bytes.is_multiple_of(G) {
        format!("{}G", bytes / G)
    } else if bytes >= M {
        format!("{}M", bytes / M)
    } else {
        format!("{}K", bytes / 1024)
    }
}

/// Margins around the plot: title and axis titles, tick labels, and the
/// colour bar with its key on the right.
const LEFT: usize = 88;
const TOP: usize = 40;
const RIGHT: usize = 200;
const BOTTOM: usize = 60;

/// Draws the heatmap of `vm` in `run` (`run_label`: which run, for the
/// title) into `out`; returns the image size. Maps whose cell layout
/// differs from the run's first (a line cut short, a different VM with the
/// same name) are an error naming the line; sizes that overflow too.
fn heatmap(run: &Run, run_label: &str, vm: &str, out: &Path) -> Result<(usize, usize), String> {
    let maps: Vec<(usize, &hvcore::report::MapLine)> = run
        .records
        .iter()
        .filter_map(|(no, r)| match r {
            Record::Map(m) if m.vm == vm => Some((*no, m)),
            _ => None,
        })
        .collect();
    let Some(&(first_no, first)) = maps.first() else {
        return Err(format!("no `TCR map` records for VM {vm}"));
    };
    let cells = first.cells.len().max(1);
    let cell_kb = first.cell_kb.max(4);
    let base = first.base;
    for &(no, m) in &maps {
        if m.cells.len() != first.cells.len() || m.cell_kb != first.cell_kb || m.base != first.base
        {
            return Err(format!(
                "line {no}: field ages/cell_kb/base: {} cells of {} KiB from {:#x}, where line \
                 {first_no} has {} cells of {} KiB from {:#x}: the run's maps disagree (a cut line?)",
                m.cells.len(),
                m.cell_kb,
                m.base,
                first.cells.len(),
                first.cell_kb,
                first.base
            ));
        }
    }
    // Guest-physical span of the map, checked: a corrupt line may say
    // anything.
    let span = (cells as u64)
        .checked_mul(cell_kb)
        .and_then(|kb| kb.checked_mul(1024))
        .filter(|span| base.checked_add(*span).is_some())
        .ok_or_else(|| {
            format!(
                "line {first_no}: field cell_kb: {cells} cells of {cell_kb} KiB from base {base:#x} \
                 pass the end of the 64-bit address space"
            )
        })?;
    let max_age = maps
        .iter()
        .flat_map(|(_, m)| m.cells.iter().flatten())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    // Plot area: at least 2 px per column and per cell, within bounds.
    let plot_w = (maps.len() * 2).clamp(400, 1600);
    let plot_h = (cells * 2).clamp(300, 900);
    let (left, top) = (LEFT, TOP);
    let mut c = Canvas::new(LEFT + plot_w + RIGHT, TOP + plot_h + BOTTOM);
    for x in 0..plot_w {
        let m = maps[x * maps.len() / plot_w].1;
        for y in 0..plot_h {
            let cell = y * cells / plot_h;
            let age = m.cells.get(cell).copied().flatten();
            c.set(left + x, top + y, colour(age, max_age));
        }
    }
    // Title: the VM, the run, the passes shown.
    let (n0, n1) = (first.n, maps[maps.len() - 1].1.n);
    c.text(
        left,
        8,
        &format!("VM {vm}, {run_label}: age of guest memory, passes {n0}-{n1}"),
    );
    // Frame.
    let black = [0, 0, 0];
    c.rect(left - 1, top - 1, plot_w + 2, 1, black);
    c.rect(left - 1, top + plot_h, plot_w + 2, 1, black);
    c.rect(left - 1, top - 1, 1, plot_h + 2, black);
    c.rect(left + plot_w, top - 1, 1, plot_h + 2, black);
    // Y ticks: guest-physical addresses, and the axis title.
    for k in 0..=4u64 {
        let y = top + (plot_h as u64 * k / 4) as usize;
        c.rect(left - 6, y.min(top + plot_h), 5, 1, black);
        let label = size_label(base + span / 4 * k);
        let lx = left.saturating_sub(8 + Canvas::text_width(&label));
        c.text(lx, y.saturating_sub(5).max(top), &label);
    }
    c.text_up(
        8,
        top + plot_h / 2 + Canvas::text_width("guest-physical address") / 2,
        "guest-physical address",
    );
    // X ticks: time in seconds since boot, and the axis title.
    let (t0, t1) = (first.t_ms, maps[maps.len() - 1].1.t_ms);
    let dt = t1.saturating_sub(t0);
    for k in 0..=4u64 {
        let x = left + (plot_w as u64 * k / 4) as usize;
        c.rect(x.min(left + plot_w), top + plot_h + 1, 1, 5, black);
        let t = t0.saturating_add(dt / 4 * k);
        let label = format!("{}.{}s", t / 1000, (t % 1000) / 100);
        let lx = x.saturating_sub(Canvas::text_width(&label) / 2);
        c.text(lx, top + plot_h + 10, &label);
    }
    let x_title = "time since boot";
    c.text(
        left + plot_w / 2 - Canvas::text_width(x_title) / 2,
        top + plot_h + 32,
        x_title,
    );
    // Colour bar: age 0 at the top to the oldest at the bottom, with its
    // unit; ages stop being told apart at `EXACT_GENS` passes, so that end
    // reads "255+".
    let lx = left + plot_w + 24;
    for y in 0..plot_h {
        let age = ((max_age as f64 + 1.0).powf(y as f64 / plot_h as f64) - 1.0).round() as u64;
        c.rect(lx, top + y, 16, 1, colour(Some(age), max_age));
    }
    c.text(lx, top - 14, "age, passes");
    c.text(lx + 20, top, "0");
    let oldest = if max_age >= hvcore::generations::EXACT_GENS {
        format!("{}+", hvcore::generations::EXACT_GENS)
    } else {
        max_age.to_string()
    };
    c.text(lx + 20, top + plot_h - 10, &oldest);
    // Key for what has no age: not resident (never touched, or reclaimed).
    let ky = top + plot_h + 10;
    c.rect(lx, ky, 16, 10, colour(None, max_age));
    c.text(lx + 20, ky, "not resident");
    write_png(out, &c)?;
    Ok((c.w, c.h))
}

fn write_png(path: &Path, c: &Canvas) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), c.w as u32, c.h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&c.px).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
    use hvcore::age::age_pass;
    use hvcore::arena::HostArena;
    use hvcore::flush::{CountingFlush, FlushPolicy};
    use hvcore::generations::Generations;
    use hvcore::npt::Npt;
    use hvcore::pte::{EntryFormat, Perms};
    use hvcore::report::{HistBucket, HistLine, MapLine, PassLine, ReclaimLine, map_cells};
    use hvcore::table::{Mapper, PageSize, Tables};

    /// A log written with the hvcore formatter: a 64 MiB guest whose first
    /// 8 MiB are hot, whose next 8 MiB are touched every 10 passes, and a
    /// block that moves (a phase change) half-way through. The generations
    /// are real: pages are touched in real tables and aged by real passes.
    fn sample_log() -> String {
        let pages = 64 * 256;
        let ram = pages as u64 * 4096;
        let arena = HostArena::new(64);
        let mut alloc = &arena;
        let tables = Tables::<Npt, _>::new(&arena, &mut alloc).unwrap();
        Mapper::new(&tables, &arena)
            .map(
                &tables,
                GuestPhysAddr::new(0),
                HostPhysAddr::new(1 << 32),
                ram,
                Perms::RW,
                PageSize::Size4K,
            )
            .unwrap();
        let mut g = Generations::new(0);
        g.adopt(&tables);
        let touch = |start: u64, bytes: u64| {
            for gpa in (start..start + bytes).step_by(4096) {
                tables.mark_accessed(GuestPhysAddr::new(gpa), Npt::ACCESSED);
            }
        };
        let mut flush = CountingFlush::default();
        let mut log = String::from("Thermocline booting\n");
        for pass in 1..=120u64 {
            let t = pass * 100;
            touch(0, 8 << 20);
            if pass % 10 == 0 {
                touch(8 << 20, 8 << 20);
            }
            let moving = if pass < 60 { 32 << 20 } else { 48 << 20 };
            touch(moving, 4 << 20);
            let n = age_pass(&tables, &mut g, t, &mut flush, FlushPolicy::OncePerPass).seq;
            let young = (8 << 20) / 4096 + (4 << 20) / 4096;
            let rec = Record::Pass(PassLine {
                vm: "pattern".into(),
                n,
                t_ms: t,
                scanned: pages as u64,
                young,
                skipped: 20,
                dur_us: 50 + pass % 7,
            });
            log.push_str(&format!("[ INFO] {rec}\n"));
            let map = Record::Map(MapLine {
                vm: "pattern".into(),
                n,
                t_ms: t,
                base: 0,
                cell_kb: 256,
                cells: map_cells(&g, &tables, ram, 64),
            });
            log.push_str(&format!("{map}\n"));
            if pass % 20 == 0 {
                let hist = Record::Hist(HistLine {
                    vm: "pattern".into(),
                    n,
                    t_ms: t,
                    buckets: g
                        .histogram(&tables, t)
                        .map(|b| HistBucket {
                            seq: b.seq,
                            age_ms: b.age_ms,
                            pages: b.pages,
                        })
                        .collect(),
                });
                log.push_str(&format!("{hist}\n"));
                let rec = Record::Reclaim(ReclaimLine {
                    vm: "pattern".into(),
                    n,
                    t_ms: t,
                    resident: 5000,
                    reclaimed: 11384,
                    zero: 9000,
                    compressed: 2000,
                    raw: 384,
                    cbytes: 3_000_000,
                    ratio_milli: 3_253,
                    refaults: pass / 20,
                    threshold_gens: 4,
                    threshold_ms: 400,
                    freed: 11384,
                });
                log.push_str(&format!("{rec}\n"));
            }
        }
        log.push_str("TCR pass vm=broken n=x\n");
        log
    }

    #[test]
    fn report_summarises_the_sample() {
        let log = read_log(&sample_log());
        assert_eq!(log.runs.len(), 1);
        let run = &log.runs[0];
        assert_eq!(run.order, vec!["pattern".to_string()]);
        let s = &run.vms["pattern"];
        assert_eq!(s.passes, 120);
        assert_eq!(s.maps, 120);
        assert_eq!(log.malformed.len(), 1);
        assert!(log.warnings.is_empty(), "{:?}", log.warnings);
        let table = summary(&log);
        println!("{table}");
        assert!(table.contains("pattern"));
        assert!(table.contains("3.253"));
        assert!(table.contains("1 malformed TCR lines"));
        assert!(!table.contains("runs"), "{table}");
    }

    #[test]
    fn heatmap_draws_the_sample() {
        let log = read_log(&sample_log());
        let out = std::env::temp_dir().join("thermocline-heatmap-test.png");
        let (w, h) = heatmap(&log.runs[0], "run 1 of 1", "pattern", &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (w, h));
        // The hot first 8 MiB are yellow at the right edge; the never
        // touched 16..32 MiB are dark.
        let px = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            [buf[i], buf[i + 1], buf[i + 2]]
        };
        let (left, top) = (LEFT, TOP);
        let plot_w = w - LEFT - RIGHT;
        let plot_h = h - TOP - BOTTOM;
        let hot = px(left + plot_w - 2, top + plot_h / 20);
        let cold = px(left + plot_w - 2, top + plot_h * 3 / 8);
        assert_eq!(hot, colour(Some(0), 1), "hot region colour");
        assert!(cold[0] < 120 && cold[1] < 60, "cold region colour {cold:?}");
        // The title, the axis titles and the key are drawn: ink in the
        // margins above, left of and below the plot, and the key's swatch
        // is the not-resident colour.
        let ink = |x0: usize, y0: usize, x1: usize, y1: usize| {
            (y0..y1).any(|y| (x0..x1).any(|x| px(x, y) == [0, 0, 0]))
        };
        assert!(ink(left, 0, left + plot_w, TOP - 2), "title");
        assert!(ink(0, top, 24, top + plot_h), "y axis title");
        assert!(
            ink(left, top + plot_h + 28, left + plot_w, h),
            "x axis title"
        );
        let key = px(left + plot_w + 24 + 8, top + plot_h + 15);
        assert_eq!(key, colour(None, 1), "key swatch");
    }

    /// A log holding several runs (`tee -a`, `cat run.log run.log`) is told
    /// apart into runs: by the banner, or where time goes back. Before,
    /// `report` summed them and `heatmap` panicked subtracting times.
    #[test]
    fn several_runs_in_one_log_are_told_apart() {
        let one = sample_log();
        let banner = "Thermocline 0.1.0: x86_64 micro-hypervisor with second-level memory aging\n";
        for (text, warned) in [
            (format!("{one}{one}"), true),
            (format!("{banner}{one}{banner}{one}"), false),
        ] {
            let log = read_log(&text);
            assert_eq!(log.runs.len(), 2, "{:?}", log.warnings);
            assert_eq!(!log.warnings.is_empty(), warned, "{:?}", log.warnings);
            for run in &log.runs {
                assert_eq!(run.vms["pattern"].passes, 120);
            }
            let table = summary(&log);
            assert!(table.contains("the log holds 2 runs"), "{table}");
            assert_eq!(table.matches("\npattern ").count(), 2, "{table}");
            let out = std::env::temp_dir().join("thermocline-heatmap-runs.png");
            heatmap(&log.runs[1], "run 2 of 2", "pattern", &out).unwrap();
        }
    }

    /// A log cut in the middle of its last line (here a map line cut at
    /// `ages=0`, which parses as a one-cell map) leaves that record out,
    /// with a warning naming the line.
    #[test]
    fn a_log_cut_mid_line_is_flagged() {
        let full = sample_log();
        let map_at = full.rfind("TCR map").unwrap();
        let ages_at = map_at + full[map_at..].find("ages=").unwrap() + "ages=0".len();
        let cut = &full[..ages_at];
        let log = read_log(cut);
        let last_line = cut.lines().count();
        assert_eq!(
            log.warnings,
            [format!(
                "line {last_line}: the log ends in the middle of this line (no newline): its record is left out"
            )]
        );
        assert_eq!(log.runs[0].vms["pattern"].maps, 119);
        assert!(summary(&log).contains("warning: line"), "{}", summary(&log));
        let out = std::env::temp_dir().join("thermocline-heatmap-cut.png");
        heatmap(&log.runs[0], "run 1 of 1", "pattern", &out).unwrap();
    }

    /// Huge numbers in TCR lines (issue 19: overflow panics at the sums,
    /// the map's span and the time ticks) give figures or an error naming
    /// the line and field.
    #[test]
    fn huge_numbers_give_errors_not_panics() {
        let max = u64::MAX;
        let text = format!(
            "TCR pass vm=a n=1 t_ms=5 scanned=1 young={max} skipped={max} dur_us={max}\n\
             TCR pass vm=a n=2 t_ms={max} scanned={max} young={max} skipped={max} dur_us={max}\n\
             TCR map vm=a n=2 t_ms={max} base=0x10 cell_kb={max} ages=0x3\n"
        );
        let log = read_log(&text);
        let table = summary(&log);
        assert!(table.contains(&max.to_string()), "{table}");
        let out = std::env::temp_dir().join("thermocline-heatmap-huge.png");
        let e = heatmap(&log.runs[0], "run 1 of 1", "a", &out).unwrap_err();
        assert!(e.starts_with("line 3: field cell_kb"), "{e}");
        let text = "TCR map vm=a n=1 t_ms=1 base=0 cell_kb=4 ages=0x4\n\
                    TCR map vm=a n=2 t_ms=2 base=0 cell_kb=4 ages=0x5\n";
        let e = heatmap(&read_log(text).runs[0], "run 1 of 1", "a", &out).unwrap_err();
        assert!(e.starts_with("line 2: field ages"), "{e}");
    }

    /// Any log at all (lines from every record kind with any numbers, cut
    /// anywhere, runs mixed): `report` gives a table and `heatmap` an image
    /// or an error, never a panic.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..300).prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                Just(u64::MAX.to_string()),
                Just("0x0".to_string()),
                Just("-1".to_string()),
                "[0-9a-fx.:,~-]{0,6}",
            ]
        }

        fn line() -> impl Strategy<Value = String> {
            let n = number;
            prop_oneof![
                (n(), n(), n(), n()).prop_map(|(a, b, c, d)| format!(
                    "TCR pass vm=v n={a} t_ms={b} scanned={c} young={d} skipped={a} dur_us={b}"
                )),
                (n(), n(), n(), n()).prop_map(|(a, b, c, d)| format!(
                    "TCR map vm=v n={a} t_ms={b} base={c} cell_kb={d} ages={a},-x{c},{d}x3"
                )),
                (n(), n(), n()).prop_map(|(a, b, c)| format!(
                    "TCR hist vm=v n={a} t_ms={b} gens={c}:{a}:{b},{b}:{c}:{a}"
                )),
                (n(), n(), n()).prop_map(|(a, b, c)| format!(
                    "TCR reclaim vm=v n={a} t_ms={b} resident={c} reclaimed={a} zero={b} \
                     compressed={c} raw={a} cbytes={b} ratio={c}.{a} refaults={b} \
                     threshold_gens={c} threshold_ms={a} freed={b}"
                )),
                (n(), n())
                    .prop_map(|(a, b)| format!("TCR event vm=v t_ms={a} what=paused detail={b}")),
                Just("Thermocline 0.1.0: x86_64 micro-hypervisor".to_string()),
                "\\PC{0,40}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn any_log_gives_a_table_or_an_error(lines in prop::collection::vec(line(), 0..12), cut in any::<bool>()) {
                let mut text = lines.join("\n");
                if !cut {
                    text.push('\n');
                }
                let log = read_log(&text);
                let _ = summary(&log);
                let out = std::env::temp_dir().join(format!("thermocline-fuzz-{}.png", std::process::id()));
                for (i, run) in log.runs.iter().enumerate() {
                    let _ = heatmap(run, &format!("run {}", i + 1), "v", &out);
                }
            }
        }
    }

    #[test]
    fn commands_read_a_log_file() {
        let dir = std::env::temp_dir();
        let log = dir.join("thermocline-report-test.log");
        let png = dir.join("thermocline-report-test.png");
        std::fs::write(&log, sample_log()).unwrap();
        let log = log.to_string_lossy().into_owned();
        let png_s = png.to_string_lossy().into_owned();
        cmd_report(std::slice::from_ref(&log)).unwrap();
        cmd_heatmap(&[log.clone(), "-o".into(), png_s.clone()]).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 100);
        assert!(
            cmd_heatmap(&[
                log.clone(),
                "-o".into(),
                png_s,
                "--vm".into(),
                "nope".into()
            ])
            .is_err()
        );
        assert!(cmd_heatmap(std::slice::from_ref(&log)).is_err());
        assert!(cmd_report(&[]).is_err());
    }
}
