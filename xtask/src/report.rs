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
    maps: u64,
}

/// Parsed log: summaries by VM (in order of appearance) and bad lines.
struct Log {
    vms: BTreeMap<String, VmSummary>,
    order: Vec<String>,
    records: Vec<Record>,
    malformed: Vec<(usize, String)>,
}

fn read_log(text: &str) -> Log {
    let mut log = Log {
        vms: BTreeMap::new(),
        order: Vec::new(),
        records: Vec::new(),
        malformed: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let rec = match parse_line(line) {
            None => continue,
            Some(Err(e)) => {
                log.malformed.push((i + 1, e.to_string()));
                continue;
            }
            Some(Ok(r)) => r,
        };
        let vm = match &rec {
            Record::Pass(p) => &p.vm,
            Record::Hist(h) => &h.vm,
            Record::Map(m) => &m.vm,
            Record::Ranges(r) => &r.vm,
            Record::Reclaim(r) => &r.vm,
            Record::Event(e) => &e.vm,
        }
        .clone();
        if !log.vms.contains_key(&vm) {
            log.order.push(vm.clone());
        }
        let s = log.vms.entry(vm).or_default();
        match &rec {
            Record::Pass(p) => {
                s.passes += 1;
                s.first_t_ms.get_or_insert(p.t_ms);
                s.last_t_ms = s.last_t_ms.max(p.t_ms);
                s.dur_us_sum += p.dur_us;
                s.dur_us_max = s.dur_us_max.max(p.dur_us);
                s.young_sum += p.young;
                s.scanned_last = p.scanned;
                s.skipped_sum += p.skipped;
            }
            Record::Hist(h) => s.last_hist = Some(h.clone()),
            Record::Map(_) => s.maps += 1,
            Record::Ranges(_) => {}
            Record::Reclaim(r) => s.last_reclaim = Some(r.clone()),
            Record::Event(e) => match e.what {
                EventKind::Paused => s.pauses += 1,
                EventKind::Resumed => s.resumes += 1,
                EventKind::Stopped => s.stopped = Some(e.detail.clone()),
            },
        }
        log.records.push(rec);
    }
    log
}

fn mib(pages: u64) -> String {
    format!("{:.1}", pages as f64 * 4096.0 / (1024.0 * 1024.0))
}

/// The summary table, as printed by `cargo xtask report`.
fn summary(log: &Log) -> String {
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
    for name in &log.order {
        let s = &log.vms[name];
        let per = |x: u64| x.checked_div(s.passes).unwrap_or(0);
        let span_ms = s.last_t_ms - s.first_t_ms.unwrap_or(s.last_t_ms);
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
    for name in &log.order {
        let s = &log.vms[name];
        if let Some(h) = &s.last_hist {
            let total: u64 = h.buckets.iter().map(|b| b.pages).sum();
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
    }
    if !log.malformed.is_empty() {
        out.push_str(&format!("{} malformed TCR lines:\n", log.malformed.len()));
        for (line, e) in log.malformed.iter().take(10) {
            out.push_str(&format!("  line {line}: {e}\n"));
        }
    }
    if log.order.is_empty() {
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

/// `cargo xtask heatmap LOG -o FILE.png [--vm NAME]`.
pub fn cmd_heatmap(args: &[String]) -> Result<(), String> {
    let mut log_path = None;
    let mut out = None;
    let mut vm = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => out = it.next().cloned(),
            "--vm" => vm = it.next().cloned(),
            _ if log_path.is_none() => log_path = Some(a.clone()),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let (Some(log_path), Some(out)) = (log_path, out) else {
        return Err("usage: cargo xtask heatmap LOG -o FILE.png [--vm NAME]".into());
    };
    let text = std::fs::read_to_string(&log_path).map_err(|e| format!("{log_path}: {e}"))?;
    let log = read_log(&text);
    let vm = match vm {
        Some(v) => v,
        None => log
            .order
            .iter()
            .find(|v| log.vms[*v].maps > 0)
            .cloned()
            .ok_or("no `TCR map` records in the log")?,
    };
    let (w, h) = heatmap(&log, &vm, Path::new(&out))?;
    println!("{out}: {w}x{h} heatmap of VM {vm}");
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

/// 3x5 glyphs for tick labels (rows top to bottom, 3 bits each).
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
        'M' => [5, 7, 7, 5, 5],
        'K' => [5, 5, 6, 5, 5],
        'G' => [7, 4, 5, 5, 7],
        's' => [0, 3, 4, 1, 6],
        '+' => [0, 2, 7, 2, 0],
        '.' => [0, 0, 0, 0, 2],
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

/// Draws the heatmap of `vm` into `out`; returns the image size.
fn heatmap(log: &Log, vm: &str, out: &Path) -> Result<(usize, usize), String> {
    let maps: Vec<&hvcore::report::MapLine> = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Map(m) if m.vm == vm => Some(m),
            _ => None,
        })
        .collect();
    if maps.is_empty() {
        return Err(format!("no `TCR map` records for VM {vm}"));
    }
    let cells = maps.iter().map(|m| m.cells.len()).max().unwrap_or(0).max(1);
    let cell_kb = maps[0].cell_kb.max(4);
    let base = maps[0].base;
    let max_age = maps
        .iter()
        .flat_map(|m| m.cells.iter().flatten())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    // Plot area: at least 2 px per column and per cell, within bounds.
    let plot_w = (maps.len() * 2).clamp(400, 1600);
    let plot_h = (cells * 2).clamp(300, 900);
    let (left, top, right, bottom) = (64usize, 16usize, 96usize, 40usize);
    let mut c = Canvas::new(left + plot_w + right, top + plot_h + bottom);
    for x in 0..plot_w {
        let m = maps[x * maps.len() / plot_w];
        for y in 0..plot_h {
            let cell = y * cells / plot_h;
            let age = m.cells.get(cell).copied().flatten();
            c.set(left + x, top + y, colour(age, max_age));
        }
    }
    // Frame.
    let black = [0, 0, 0];
    c.rect(left - 1, top - 1, plot_w + 2, 1, black);
    c.rect(left - 1, top + plot_h, plot_w + 2, 1, black);
    c.rect(left - 1, top - 1, 1, plot_h + 2, black);
    c.rect(left + plot_w, top - 1, 1, plot_h + 2, black);
    // Y ticks: guest-physical addresses.
    let span = cells as u64 * cell_kb * 1024;
    for k in 0..=4u64 {
        let y = top + (plot_h as u64 * k / 4) as usize;
        c.rect(left - 6, y.min(top + plot_h), 5, 1, black);
        let label = size_label(base + span * k / 4);
        let lx = left.saturating_sub(8 + Canvas::text_width(&label));
        c.text(lx, y.saturating_sub(5).max(top), &label);
    }
    // X ticks: time in seconds.
    let (t0, t1) = (maps[0].t_ms, maps[maps.len() - 1].t_ms);
    for k in 0..=4u64 {
        let x = left + (plot_w as u64 * k / 4) as usize;
        c.rect(x.min(left + plot_w), top + plot_h + 1, 1, 5, black);
        let t = t0 + (t1 - t0) * k / 4;
        let label = format!("{}.{}s", t / 1000, (t % 1000) / 100);
        let lx = x.saturating_sub(Canvas::text_width(&label) / 2);
        c.text(lx, top + plot_h + 10, &label);
    }
    // Legend: age 0 at the top to the oldest at the bottom.
    let lx = left + plot_w + 24;
    for y in 0..plot_h {
        let age = ((max_age as f64 + 1.0).powf(y as f64 / plot_h as f64) - 1.0).round() as u64;
        c.rect(lx, top + y, 16, 1, colour(Some(age), max_age));
    }
    // Ages in passes.
    c.text(lx + 20, top, "0");
    c.text(lx + 20, top + plot_h - 10, &max_age.to_string());
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
        assert_eq!(log.order, vec!["pattern".to_string()]);
        let s = &log.vms["pattern"];
        assert_eq!(s.passes, 120);
        assert_eq!(s.maps, 120);
        assert_eq!(log.malformed.len(), 1);
        let table = summary(&log);
        println!("{table}");
        assert!(table.contains("pattern"));
        assert!(table.contains("3.253"));
        assert!(table.contains("1 malformed TCR lines"));
    }

    #[test]
    fn heatmap_draws_the_sample() {
        let log = read_log(&sample_log());
        let out = std::env::temp_dir().join("thermocline-heatmap-test.png");
        let (w, h) = heatmap(&log, "pattern", &out).unwrap();
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
        let (left, top) = (64, 16);
        let plot_w = w - 64 - 96;
        let plot_h = h - 16 - 40;
        let hot = px(left + plot_w - 2, top + plot_h / 20);
        let cold = px(left + plot_w - 2, top + plot_h * 3 / 8);
        assert_eq!(hot, colour(Some(0), 1), "hot region colour");
        assert!(cold[0] < 120 && cold[1] < 60, "cold region colour {cold:?}");
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
