//! `cargo xtask test --step layers`: the kernel's modules import only
//! from their own layer or the layers below it, so dependencies point one
//! way (docs/ARCHITECTURE.md, "Layers").
//!
//! [`KERNEL_LAYERS`] lists the layers bottom first, each with the module
//! paths it holds; a module belongs to the layer of the longest listed
//! prefix of its path (`smp::apic` before `smp`). Every module file under
//! `kernel/src` (binaries aside) must have a layer, so a new module is
//! placed on purpose. An import is any `crate::`, `super::` or `self::`
//! path in the code (comments and string literals are skipped), in a `use`
//! tree or inline; it names the longest module path it starts with, and
//! a path that names no module (a crate-root item such as `println!` or
//! `boot_info`) is not a layer edge. Not seen: a parent module reaching
//! its child by a bare relative path (`child::item`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

/// The kernel's layers, bottom first: (name, module paths in it).
pub const KERNEL_LAYERS: &[(&str, &[&str])] = &[
    (
        "platform: hardware glue, console, test protocol",
        &[
            "hw",
            "lock",
            "gdt",
            "interrupts",
            "console",
            "logger",
            "panic",
            "cpu",
            "testing",
        ],
    ),
    ("platform: frames, heap, physical memory", &["mem"]),
    ("platform: local APIC", &["smp::apic"]),
    ("platform: clock and tick", &["time"]),
    ("platform: CPUs and per-CPU data", &["smp"]),
    ("platform: threads", &["sched"]),
    (
        "virt: the vendor trait and its backends",
        &["virt", "svm", "vmx"],
    ),
    ("vm: VMs, vCPU loop, exits, devices", &["vm"]),
    ("mm: reclaim", &["reclaim"]),
    ("mm: aging", &["aging"]),
    (
        "launch: banner, the selected guest, scenario support",
        &[
            "launch",
            "banner",
            "testing::aging",
            "testing::evil",
            "testing::guests",
            "testing::linux",
            "testing::overcommit",
            "testing::smp",
            "testing::vcpus",
        ],
    ),
];

/// An import from a layer above the importer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The importing file, as given.
    pub file: String,
    /// Its line (1-based).
    pub line: usize,
    /// The importing module and its layer.
    pub from: (String, &'static str),
    /// The imported module and its layer.
    pub to: (String, &'static str),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}` ({}) imports `{}` ({}), a layer above it",
            self.file, self.line, self.from.0, self.from.1, self.to.0, self.to.1
        )
    }
}

/// Checks every module file under `src` (the kernel's `src/`): `Ok` with
/// the number of module files checked, or every problem, one per line.
pub fn check_dir(src: &Path) -> Result<usize, Vec<String>> {
    let mut files = Vec::new();
    collect(src, src, &mut files).map_err(|e| vec![e])?;
    let n = files.len();
    check(KERNEL_LAYERS, &files).map(|()| n)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .replace('\\', "/");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((rel, text));
        }
    }
    Ok(())
}

/// The module path of a file relative to `src/`, or `None` for the crate
/// root and the binaries (`lib.rs`, `main.rs`, `bin/`), which wire layers
/// together and belong to none.
pub fn module_of(rel: &str) -> Option<String> {
    if rel == "lib.rs" || rel == "main.rs" || rel.starts_with("bin/") {
        return None;
    }
    let rel = rel.strip_suffix(".rs")?;
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    Some(rel.replace('/', "::"))
}

/// The layer index and name of `module`: its longest listed prefix.
fn layer_of(layers: &[(&'static str, &[&str])], module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (i, (name, mods)) in layers.iter().enumerate() {
        for m in mods.iter() {
            let matches =
                module == *m || (module.starts_with(m) && module[m.len()..].starts_with("::"));
            if matches && best.is_none_or(|(len, _, _)| m.len() > len) {
                best = Some((m.len(), i, name));
            }
        }
    }
    best.map(|(_, i, name)| (i, name))
}

/// Checks `files` ((path relative to `src/`, source)) against `layers`.
pub fn check(
    layers: &[(&'static str, &[&str])],
    files: &[(String, String)],
) -> Result<(), Vec<String>> {
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| module_of(p)).collect();
    let mut problems = Vec::new();
    for (path, text) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some((from_layer, from_name)) = layer_of(layers, &module) else {
            problems.push(format!(
                "{path}: module `{module}` has no layer: add it to xtask/src/layers.rs's KERNEL_LAYERS"
            ));
            continue;
        };
        for (line, import) in imports(&strip(text)) {
            let Some(target) = resolve(&module, &import, &modules) else {
                continue;
            };
            let Some((to_layer, to_name)) = layer_of(layers, &target) else {
                continue; // reported for its own file
            };
            if to_layer > from_layer {
                problems.push(
                    Violation {
                        file: path.clone(),
                        line,
                        from: (module.clone(), from_name),
                        to: (target, to_name),
                    }
                    .to_string(),
                );
            }
        }
    }
    // A grouped `use` names one module several times: one line each.
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The module an import path names: the longest known module it starts
/// with, after `crate`, `super` and `self` are resolved against the
/// importer; `None` for a crate-root item or an unknown path.
fn resolve(importer: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    // The module `self` means: the file's own module.
    let mut base: Vec<&str> = importer.split("::").collect();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let mut found = None;
    for seg in rest {
        full.push(seg.clone());
        let joined = full.join("::");
        if modules.contains(&joined) {
            found = Some(joined);
        } else {
            break;
        }
    }
    found.or_else(|| (!base.is_empty()).then(|| base.join("::")))
}

/// Every path that starts with `crate`, `self` or `super` in `code` (as
/// [`strip`] left it), with its line: `use` trees expanded, inline paths
/// as written.
fn imports(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &code[start..i];
            let after_dollar = start > 0 && bytes[start - 1] == b'$';
            if word == "use" {
                let end = code[i..].find(';').map_or(code.len(), |e| i + e);
                let line = line_of(code, start);
                let mut paths = Vec::new();
                expand(&code[i..end], &[], &mut paths);
                for p in paths {
                    if matches!(
                        p.first().map(String::as_str),
                        Some("crate" | "self" | "super")
                    ) {
                        out.push((line, p));
                    }
                }
                i = end;
            } else if matches!(word, "crate" | "self" | "super") && !after_dollar {
                // An inline path: `crate::a::b`, `super::x`.
                let mut segs = vec![word.to_string()];
                let mut j = i;
                while code[j..].starts_with("::") {
                    let s = j + 2;
                    let mut e = s;
                    while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'_')
                    {
                        e += 1;
                    }
                    if e == s {
                        break;
                    }
                    segs.push(code[s..e].to_string());
                    j = e;
                }
                if segs.len() > 1 {
                    out.push((line_of(code, start), segs));
                }
                i = j;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::b::{c, d::{e, self}}`) under `prefix`.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let close = tree.rfind('}').unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let mut base = prefix.to_vec();
        base.extend(head);
        for part in split_top(inner) {
            expand(part, &base, out);
        }
        return;
    }
    let path_part = tree.split(" as ").next().unwrap_or(tree);
    let mut full = prefix.to_vec();
    for seg in path_part
        .split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if seg == "self" && !full.is_empty() {
            continue; // `a::{self}` is `a`
        }
        if seg == "*" {
            break;
        }
        full.push(seg.to_string());
    }
    if !full.is_empty() {
        out.push(full);
    }
}

/// Splits at the commas not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn line_of(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

/// `code` with comments and the contents of string and character literals
/// blanked out (newlines kept, so lines stay where they were).
fn strip(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &c[i..j.min(c.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no
            // closing quote right after its first character.
            let close = if c.get(i + 1) == Some(&'\\') {
                (i + 2..c.len().min(i + 12)).find(|&k| c[k] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    for _ in i..=k {
                        out.push(' ');
                    }
                    i = k + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: &[(&str, &[&str])] = &[
        ("low", &["hw", "mem"]),
        ("mid", &["vm"]),
        ("high", &["aging", "vm::probe"]),
    ];

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    fn check_of(list: &[(&str, &str)]) -> Result<(), Vec<String>> {
        check(LAYERS, &files(list))
    }

    const BASE: &[(&str, &str)] = &[
        ("hw.rs", "pub fn out() {}"),
        ("mem/mod.rs", "pub mod phys;"),
        ("mem/phys.rs", "pub fn zero() {}"),
        ("vm/mod.rs", "pub mod memory; pub mod probe;"),
        ("vm/memory.rs", ""),
        ("vm/probe.rs", ""),
        (
            "aging/mod.rs",
            "use crate::vm::memory::X; fn f() { crate::mem::phys::zero(); }",
        ),
        ("lib.rs", "use crate::aging; pub fn init() {}"),
        ("bin/test_x.rs", "use kernel::aging;"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = BASE.to_vec();
        for e in extra {
            v.retain(|(p, _)| p != &e.0);
            v.push(*e);
        }
        v
    }

    #[test]
    fn downward_imports_pass() {
        assert_eq!(check_of(BASE), Ok(()));
    }

    #[test]
    fn an_upward_use_is_caught() {
        let files = with(&[(
            "mem/phys.rs",
            "use crate::vm::memory::GuestMemory;\npub fn zero() {}",
        )]);
        let err = check_of(&files).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with("mem/phys.rs:1: `mem::phys` (low) imports `vm::memory` (mid)"),
            "{}",
            err[0]
        );
    }

    #[test]
    fn an_upward_inline_path_and_a_grouped_use_are_caught() {
        let files = with(&[
            ("hw.rs", "fn f() {\n    crate::aging::run();\n}"),
            (
                "vm/memory.rs",
                "use crate::{mem::phys, aging::{self, Managed}};",
            ),
        ]);
        let err = check_of(&files).unwrap_err();
        // `aging` and `aging::Managed` on one line are one problem.
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(
            err.iter()
                .any(|e| e.starts_with("hw.rs:2: `hw` (low) imports `aging` (high)"))
        );
        assert!(
            err.iter()
                .any(|e| e.contains("`vm::memory` (mid) imports `aging` (high)"))
        );
    }

    #[test]
    fn super_paths_resolve_and_a_submodule_may_sit_higher() {
        // vm::probe is in a higher layer than vm: it may import vm, vm may
        // not import it.
        let ok = with(&[(
            "vm/probe.rs",
            "use super::memory; fn f() { super::super::aging::x(); }",
        )]);
        assert_eq!(check_of(&ok), Ok(()));
        let bad = with(&[("vm/memory.rs", "fn f() { super::probe::x(); }")]);
        let err = check_of(&bad).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("`vm::memory` (mid) imports `vm::probe` (high)"));
    }

    #[test]
    fn comments_strings_and_root_items_are_not_imports() {
        let files = with(&[(
            "hw.rs",
            "//! Neighbours: `crate::aging`.\n/* crate::vm */\nfn f() { let s = \"crate::aging::x\"; let c = '\"'; crate::println!(\"{s}\"); g::<'static>(); }\nmacro_rules! m { () => { $crate::hw::out() } }",
        )]);
        assert_eq!(check_of(&files), Ok(()));
    }

    #[test]
    fn a_module_without_a_layer_is_reported() {
        let files = with(&[("devices/uart.rs", "")]);
        let err = check_of(&files).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].contains("module `devices::uart` has no layer"),
            "{}",
            err[0]
        );
    }
}
