//! The aging and reclaim report: one line-oriented, machine-parseable
//! format on the serial console, with its formatter (the kernel, through
//! `core::fmt`) and its parser (the host: `cargo xtask report|heatmap`).
//! The format is documented for people in `docs/report-format.md`; this
//! module is its definition.
//!
//! Every record is one line: the marker `TCR`, a kind, then `key=value`
//! fields separated by single spaces; values never contain spaces. The
//! marker may follow a prefix (a log level, a timestamp) if a space, a tab
//! or `]` precedes it. Kinds ([`Record`]):
//!
//! ```text
//! TCR pass    vm=pattern n=12 t_ms=1200 scanned=16384 young=1024 skipped=30 dur_us=85
//! TCR hist    vm=pattern n=12 t_ms=1200 gens=3:1100:15000,11:100:360,12:0:1024
//! TCR map     vm=pattern n=12 t_ms=1200 base=0x0 cell_kb=64 ages=0x16,9,-x4,0
//! TCR ranges  vm=pattern n=12 t_ms=1200 hot=0x0-0x400000 cold=0x400000-0x4000000
//! TCR reclaim vm=pattern n=12 t_ms=1200 resident=1384 reclaimed=15000 zero=9000 compressed=5000 raw=1000 cbytes=2100000 ratio=2.921 refaults=3 threshold_gens=4 threshold_ms=400 freed=15000
//! TCR event   vm=pattern t_ms=1300 what=paused detail=no_free_frame_for_fault_at_0x1234000
//! TCR event   vm=pattern t_ms=1400 what=target_unmet detail=resident_2048_KiB_stays_above_limit_1024_KiB
//! ```
//!
//! Parsers ignore fields they do not know (the format may grow) but reject
//! a record missing a field it defines. Key types: [`Record`],
//! [`parse_line`], [`ParseError`]; helpers that build map cells and ranges
//! from [`crate::generations::Generations`]. Neighbours: the kernel's
//! aging thread prints these, `xtask/src/report.rs` reads them.

extern crate alloc;

use crate::generations::Generations;
use crate::pte::EntryFormat;
use crate::table::{TableMemory, Tables};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// The marker that starts every record.
pub const MARKER: &str = "TCR";

/// Per aging pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassLine {
    /// VM name.
    pub vm: String,
    /// Pass number (the generation it stamped).
    pub n: u64,
    /// Time of the pass start, ms since boot.
    pub t_ms: u64,
    /// Resident 4 KiB pages covered by the pass.
    pub scanned: u64,
    /// Pages found young.
    pub young: u64,
    /// Subtrees skipped because their parent's A bit was clear.
    pub skipped: u64,
    /// Pass duration, microseconds.
    pub dur_us: u64,
}

/// One generation of the age histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistBucket {
    /// Generation (sequence number).
    pub seq: u64,
    /// Age in ms.
    pub age_ms: u64,
    /// Pages.
    pub pages: u64,
}

/// The age histogram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistLine {
    /// VM name.
    pub vm: String,
    /// Pass number.
    pub n: u64,
    /// Time, ms since boot.
    pub t_ms: u64,
    /// Non-empty generations, oldest first.
    pub buckets: Vec<HistBucket>,
}

/// Guest-physical memory in cells: each cell's age in generations (that of
/// its youngest resident page), or `None` when nothing in it is resident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    /// VM name.
    pub vm: String,
    /// Pass number.
    pub n: u64,
    /// Time, ms since boot.
    pub t_ms: u64,
    /// Guest-physical address of the first cell.
    pub base: u64,
    /// Cell size in KiB (a multiple of 4).
    pub cell_kb: u64,
    /// Per cell: age in passes, or `None`.
    pub cells: Vec<Option<u64>>,
}

/// Hot and cold guest-physical ranges, `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangesLine {
    /// VM name.
    pub vm: String,
    /// Pass number.
    pub n: u64,
    /// Time, ms since boot.
    pub t_ms: u64,
    /// Young within the last few passes.
    pub hot: Vec<(u64, u64)>,
    /// Colder than the reclaim threshold.
    pub cold: Vec<(u64, u64)>,
}

/// Reclaim state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimLine {
    /// VM name.
    pub vm: String,
    /// Pass number.
    pub n: u64,
    /// Time, ms since boot.
    pub t_ms: u64,
    /// Resident 4 KiB pages.
    pub resident: u64,
    /// Pages reclaimed now.
    pub reclaimed: u64,
    /// Of the store, zero pages.
    pub zero: u64,
    /// Of the store, compressed pages.
    pub compressed: u64,
    /// Of the store, pages kept raw.
    pub raw: u64,
    /// Bytes of compressed data.
    pub cbytes: u64,
    /// Compression ratio of the non-zero pages, thousandths.
    pub ratio_milli: u64,
    /// Refaults so far.
    pub refaults: u64,
    /// Current cold threshold in passes.
    pub threshold_gens: u64,
    /// The same in ms (passes times the interval).
    pub threshold_ms: u64,
    /// Frames given back to the host so far.
    pub freed: u64,
}

/// Something that happened to a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Paused: a fault could not be served (overcommit).
    Paused,
    /// Resumed after a pause.
    Resumed,
    /// Stopped.
    Stopped,
    /// The VM's resident limit cannot be met (`crate::run_config::TargetNote`;
    /// said once per VM).
    TargetUnmet,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Stopped => "stopped",
            EventKind::TargetUnmet => "target_unmet",
        }
    }
}

/// An event line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    /// VM name.
    pub vm: String,
    /// Time, ms since boot.
    pub t_ms: u64,
    /// What happened.
    pub what: EventKind,
    /// Why, with `_` for spaces.
    pub detail: String,
}

/// One report record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `TCR pass`.
    Pass(PassLine),
    /// `TCR hist`.
    Hist(HistLine),
    /// `TCR map`.
    Map(MapLine),
    /// `TCR ranges`.
    Ranges(RangesLine),
    /// `TCR reclaim`.
    Reclaim(ReclaimLine),
    /// `TCR event`.
    Event(EventLine),
}

/// Why a `TCR` line did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The kind after the marker is unknown.
    UnknownKind(String),
    /// A field the kind defines is missing.
    Missing(&'static str),
    /// A field's value is malformed.
    Bad(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownKind(k) => write!(f, "unknown record kind `{k}`"),
            ParseError::Missing(k) => write!(f, "missing field `{k}`"),
            ParseError::Bad(k) => write!(f, "malformed field `{k}`"),
        }
    }
}

/// A name or detail made safe for a value: whitespace and `=` become `_`;
/// an empty one becomes `-`.
pub fn sanitize(s: &str) -> String {
    if s.is_empty() {
        return String::from("-");
    }
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for c in self.0.chars() {
            let c = if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

fn write_ranges(f: &mut fmt::Formatter<'_>, ranges: &[(u64, u64)]) -> fmt::Result {
    if ranges.is_empty() {
        return f.write_str("-");
    }
    for (i, (a, b)) in ranges.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{a:#x}-{b:#x}")?;
    }
    Ok(())
}

fn write_cells(f: &mut fmt::Formatter<'_>, cells: &[Option<u64>]) -> fmt::Result {
    if cells.is_empty() {
        return f.write_str("~");
    }
    let mut i = 0;
    let mut first = true;
    while i < cells.len() {
        let run = cells[i..].iter().take_while(|&&c| c == cells[i]).count();
        if !first {
            f.write_str(",")?;
        }
        first = false;
        match cells[i] {
            Some(a) => write!(f, "{a}")?,
            None => f.write_str("-")?,
        }
        if run > 1 {
            write!(f, "x{run}")?;
        }
        i += run;
    }
    Ok(())
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Pass(p) => write!(
                f,
                "{MARKER} pass vm={} n={} t_ms={} scanned={} young={} skipped={} dur_us={}",
                Name(&p.vm),
                p.n,
                p.t_ms,
                p.scanned,
                p.young,
                p.skipped,
                p.dur_us
            ),
            Record::Hist(h) => {
                write!(
                    f,
                    "{MARKER} hist vm={} n={} t_ms={} gens=",
                    Name(&h.vm),
                    h.n,
                    h.t_ms
                )?;
                if h.buckets.is_empty() {
                    f.write_str("-")?;
                }
                for (i, b) in h.buckets.iter().enumerate() {
                    let sep = if i > 0 { "," } else { "" };
                    write!(f, "{sep}{}:{}:{}", b.seq, b.age_ms, b.pages)?;
                }
                Ok(())
            }
            Record::Map(m) => {
                write!(
                    f,
                    "{MARKER} map vm={} n={} t_ms={} base={:#x} cell_kb={} ages=",
                    Name(&m.vm),
                    m.n,
                    m.t_ms,
                    m.base,
                    m.cell_kb
                )?;
                write_cells(f, &m.cells)
            }
            Record::Ranges(r) => {
                write!(
                    f,
                    "{MARKER} ranges vm={} n={} t_ms={} hot=",
                    Name(&r.vm),
                    r.n,
                    r.t_ms
                )?;
                write_ranges(f, &r.hot)?;
                f.write_str(" cold=")?;
                write_ranges(f, &r.cold)
            }
            Record::Reclaim(r) => write!(
                f,
                "{MARKER} reclaim vm={} n={} t_ms={} resident={} reclaimed={} zero={} \
                 compressed={} raw={} cbytes={} ratio={}.{:03} refaults={} threshold_gens={} \
                 threshold_ms={} freed={}",
                Name(&r.vm),
                r.n,
                r.t_ms,
                r.resident,
                r.reclaimed,
                r.zero,
                r.compressed,
                r.raw,
                r.cbytes,
                r.ratio_milli / 1000,
                r.ratio_milli % 1000,
                r.refaults,
                r.threshold_gens,
                r.threshold_ms,
                r.freed
            ),
            Record::Event(e) => write!(
                f,
                "{MARKER} event vm={} t_ms={} what={} detail={}",
                Name(&e.vm),
                e.t_ms,
                e.what.name(),
                Name(&e.detail)
            ),
        }
    }
}

/// The fields of one line, looked up by key.
struct Fields<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &'static str) -> Result<&'a str, ParseError> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or(ParseError::Missing(key))
    }
    fn num(&self, key: &'static str) -> Result<u64, ParseError> {
        parse_u64(self.get(key)?).ok_or(ParseError::Bad(key))
    }
    fn string(&self, key: &'static str) -> Result<String, ParseError> {
        Ok(String::from(self.get(key)?))
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_ranges(s: &str, key: &'static str) -> Result<Vec<(u64, u64)>, ParseError> {
    if s == "-" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|r| {
            let (a, b) = r.split_once('-').ok_or(ParseError::Bad(key))?;
            match (parse_u64(a), parse_u64(b)) {
                (Some(a), Some(b)) if a <= b => Ok((a, b)),
                _ => Err(ParseError::Bad(key)),
            }
        })
        .collect()
}

/// Cells beyond this many in one line are refused (a corrupt count must not
/// make the parser allocate without bound).
pub const MAX_CELLS: usize = 1 << 22;

fn parse_cells(s: &str) -> Result<Vec<Option<u64>>, ParseError> {
    const KEY: &str = "ages";
    let mut cells = Vec::new();
    if s == "~" {
        return Ok(cells);
    }
    for item in s.split(',') {
        let (v, run) = match item.split_once('x') {
            Some((v, n)) => (v, n.parse::<usize>().map_err(|_| ParseError::Bad(KEY))?),
            None => (item, 1),
        };
        let cell = if v == "-" {
            None
        } else {
            Some(v.parse::<u64>().map_err(|_| ParseError::Bad(KEY))?)
        };
        // `run` may be anything a corrupt line says: compare without adding.
        if run == 0 || run > MAX_CELLS - cells.len() {
            return Err(ParseError::Bad(KEY));
        }
        cells.extend(core::iter::repeat_n(cell, run));
    }
    Ok(cells)
}

fn parse_ratio(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.')?;
    if frac.len() != 3 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    int.parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(frac.parse::<u64>().ok()?)
}

/// Finds a record in `line`: `None` if there is no `TCR` marker, else the
/// parsed record or why it is malformed.
pub fn parse_line(line: &str) -> Option<Result<Record, ParseError>> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut start = None;
    let mut from = 0;
    while let Some(i) = line[from..].find("TCR ") {
        let at = from + i;
        let ok = at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b'\t' | b']');
        if ok {
            start = Some(at + 4);
            break;
        }
        from = at + 4;
    }
    let rest = &line[start?..];
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let kind = words.next().unwrap_or("");
    let fields = Fields {
        pairs: words.filter_map(|w| w.split_once('=')).collect(),
    };
    Some(parse_fields(kind, &fields))
}

fn parse_fields(kind: &str, f: &Fields<'_>) -> Result<Record, ParseError> {
    Ok(match kind {
        "pass" => Record::Pass(PassLine {
            vm: f.string("vm")?,
            n: f.num("n")?,
            t_ms: f.num("t_ms")?,
            scanned: f.num("scanned")?,
            young: f.num("young")?,
            skipped: f.num("skipped")?,
            dur_us: f.num("dur_us")?,
        }),
        "hist" => {
            let g = f.get("gens")?;
            let buckets = if g == "-" {
                Vec::new()
            } else {
                g.split(',')
                    .map(|b| {
                        let mut it = b.split(':').map(parse_u64);
                        match (it.next(), it.next(), it.next(), it.next()) {
                            (Some(Some(seq)), Some(Some(age_ms)), Some(Some(pages)), None) => {
                                Ok(HistBucket { seq, age_ms, pages })
                            }
                            _ => Err(ParseError::Bad("gens")),
                        }
                    })
                    .collect::<Result<_, _>>()?
            };
            Record::Hist(HistLine {
                vm: f.string("vm")?,
                n: f.num("n")?,
                t_ms: f.num("t_ms")?,
                buckets,
            })
        }
        "map" => Record::Map(MapLine {
            vm: f.string("vm")?,
            n: f.num("n")?,
            t_ms: f.num("t_ms")?,
            base: f.num("base")?,
            cell_kb: f.num("cell_kb")?,
            cells: parse_cells(f.get("ages")?)?,
        }),
        "ranges" => Record::Ranges(RangesLine {
            vm: f.string("vm")?,
            n: f.num("n")?,
            t_ms: f.num("t_ms")?,
            hot: parse_ranges(f.get("hot")?, "hot")?,
            cold: parse_ranges(f.get("cold")?, "cold")?,
        }),
        "reclaim" => Record::Reclaim(ReclaimLine {
            vm: f.string("vm")?,
            n: f.num("n")?,
            t_ms: f.num("t_ms")?,
            resident: f.num("resident")?,
            reclaimed: f.num("reclaimed")?,
            zero: f.num("zero")?,
            compressed: f.num("compressed")?,
            raw: f.num("raw")?,
            cbytes: f.num("cbytes")?,
            ratio_milli: parse_ratio(f.get("ratio")?).ok_or(ParseError::Bad("ratio"))?,
            refaults: f.num("refaults")?,
            threshold_gens: f.num("threshold_gens")?,
            threshold_ms: f.num("threshold_ms")?,
            freed: f.num("freed")?,
        }),
        "event" => Record::Event(EventLine {
            vm: f.string("vm")?,
            t_ms: f.num("t_ms")?,
            what: match f.get("what")? {
                "paused" => EventKind::Paused,
                "resumed" => EventKind::Resumed,
                "stopped" => EventKind::Stopped,
                "target_unmet" => EventKind::TargetUnmet,
                _ => return Err(ParseError::Bad("what")),
            },
            detail: f.string("detail")?,
        }),
        other => return Err(ParseError::UnknownKind(String::from(other))),
    })
}

/// Map cells of `cell_pages` pages over guest-physical `[0, ram_bytes)`:
/// each cell's age is that of its youngest resident page (`max_seq - seq`).
/// One walk of the tables.
pub fn map_cells<F: EntryFormat, M: TableMemory>(
    gens: &Generations,
    tables: &Tables<F, M>,
    ram_bytes: u64,
    cell_pages: u64,
) -> Vec<Option<u64>> {
    let cell_pages = cell_pages.max(1);
    let pages = ram_bytes / 4096;
    let max = gens.max_seq();
    let mut cells: Vec<Option<u64>> = vec![None; pages.div_ceil(cell_pages) as usize];
    gens.for_each_page_seq(tables, 0, pages * 4096, |gpa, n, seq| {
        let first = gpa / 4096;
        for p in first..(first + n).min(pages) {
            if let Some(c) = cells.get_mut((p / cell_pages) as usize) {
                *c = Some(c.map_or(max - seq, |a| a.min(max - seq)));
            }
        }
    });
    cells
}

/// Maximal `[start, end)` runs of pages for which `pred(age_gens)` holds
/// (resident pages only), as guest-physical byte ranges. One walk of the
/// tables.
pub fn ranges_where<F: EntryFormat, M: TableMemory>(
    gens: &Generations,
    tables: &Tables<F, M>,
    pred: impl Fn(u64) -> bool,
) -> Vec<(u64, u64)> {
    let max = gens.max_seq();
    let mut out: Vec<(u64, u64)> = Vec::new();
    gens.for_each_page_seq(tables, 0, F::space_size(), |a, n, seq| {
        if !pred(max - seq) {
            return;
        }
        let b = a + n * 4096;
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    });
    out
}
