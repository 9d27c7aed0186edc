//! The architecture invariants of ARCHITECTURE.md that a type cannot enforce, checked on the
//! source: module imports form no cycle and point the documented way, and `unsafe` lives only
//! in the listed files, each block under a `// SAFETY:` comment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules whose files are checked against each other (imports between their submodules).
const LAYERED: [&str; 7] = [
    "kernels", "engine", "harness", "report", "variants", "cli", "pattern",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `["a", "b"]`; `src/a/mod.rs` -> `["a"]`; lib.rs and main.rs -> `[]`.
fn module_of(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix("src").unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if matches!(parts.as_slice(), [p] if p == "lib" || p == "main") {
        parts.clear();
    }
    parts
}

/// The code of a file without its test module and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate root's re-exports (`pub use module::{A, B};` in lib.rs): name -> module.
fn reexports() -> BTreeMap<String, String> {
    let lib = code(Path::new("src/lib.rs"));
    let mut names = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items
            .trim_matches(|c| c == '{' || c == '}' || char::is_whitespace(c))
            .split(',')
        {
            let item = item.trim();
            if !item.is_empty() {
                names.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    names
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Splits a `{...}` group (starting at `{`) into its top-level items, and returns them with
/// the length consumed.
fn group_items(s: &str) -> (Vec<&str>, usize) {
    let (mut depth, mut start, mut items) = (0usize, 1usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&s[start..i]);
                    return (items, i + 1);
                }
            }
            ',' if depth == 1 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    (items, s.len())
}

/// The module paths (first two segments) that `code` names after `prefix` (`crate::` or
/// `super::`), through `{...}` groups and the crate root's re-exports.
fn targets(code: &str, prefix: &str, reexports: &BTreeMap<String, String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // `foo::super::` or a longer identifier
        }
        let rest = &code[i + prefix.len()..];
        let items: Vec<&str> = if rest.starts_with('{') {
            group_items(rest).0
        } else {
            vec![rest]
        };
        for item in items {
            let mut segs = Vec::new();
            let mut r = item.trim();
            loop {
                let id = ident(r);
                if id.is_empty() {
                    break;
                }
                segs.push(id.to_string());
                r = &r[id.len()..];
                match r.strip_prefix("::") {
                    Some(next) if segs.len() < 2 => r = next,
                    _ => break,
                }
            }
            let Some(first) = segs.first() else { continue };
            if first.starts_with(|c: char| c.is_ascii_uppercase()) {
                // A root re-export (`crate::Options`) stands for its module.
                if let Some(m) = reexports.get(first) {
                    out.push(vec![m.clone()]);
                }
                continue;
            }
            if first == "attnbench_main" {
                continue;
            }
            segs.retain(|s| s.starts_with(|c: char| c.is_ascii_lowercase()));
            out.push(segs);
        }
    }
    out
}

/// Edges between top-level modules, and between sibling submodules of [`LAYERED`] modules.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let names = reexports();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        let Some(top) = m.first() else { continue };
        let code = code(&f);
        for p in targets(&code, "crate::", &names) {
            let Some(target) = p.first() else { continue };
            if target != top {
                edges
                    .entry(top.clone())
                    .or_default()
                    .insert(target.to_string());
            } else if let (Some(sub), Some(tsub)) = (m.get(1), p.get(1))
                && LAYERED.contains(&top.as_str())
                && sub != tsub
            {
                edges
                    .entry(format!("{top}::{sub}"))
                    .or_default()
                    .insert(format!("{top}::{tsub}"));
            }
        }
        if let [top, sub] = m.as_slice()
            && LAYERED.contains(&top.as_str())
        {
            for p in targets(&code, "super::", &names) {
                if let Some(t) = p.first()
                    && t != sub
                {
                    edges
                        .entry(format!("{top}::{sub}"))
                        .or_default()
                        .insert(format!("{top}::{t}"));
                }
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        stack.push(u.to_string());
        for v in edges.get(u).into_iter().flatten() {
            match state.get(v.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == v).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in edges.keys() {
        if !state.contains_key(u.as_str())
            && let Some(c) = visit(u, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn module_imports_form_no_cycle() {
    let edges = imports();
    assert!(edges.len() > 10, "the scan found too little: {edges:?}");
    assert_eq!(find_cycle(&edges), None, "an import cycle");
}

#[test]
fn imports_point_the_documented_way() {
    let edges = imports();
    let deps = |m: &str| edges.get(m).cloned().unwrap_or_default();
    let forbid = |m: &str, banned: &[&str]| {
        let bad: Vec<_> = deps(m)
            .into_iter()
            .filter(|d| banned.contains(&d.as_str()))
            .collect();
        assert!(bad.is_empty(), "{m} imports {bad:?}");
    };
    // Reports are made from run files only.
    forbid(
        "report",
        &[
            "registry", "variants", "workload", "harness", "engine", "npy",
        ],
    );
    // The results schema is data: it knows neither who writes nor who reads it.
    forbid("results", &["harness", "report", "registry", "variants"]);
    // Variants know the spec leaf, not the registry, and nothing of the measurement.
    forbid(
        "variants",
        &["registry", "harness", "report", "cli", "check"],
    );
    forbid("spec", &["registry", "variants"]);
    // Only the CLI knows the registry: the harness measures what it is given.
    forbid("harness", &["registry", "cli"]);
    // Kernels and the engine know no variant.
    assert!(
        deps("kernels").iter().all(|d| d == "error"),
        "kernels import {:?}",
        deps("kernels")
    );
    forbid("engine", &["variants", "registry", "harness"]);
    // Inside kernels: the per-ISA files import only the tile leaf, exp and half.
    for f in ["kernels::portable", "kernels::tiles", "kernels::avx512"] {
        for d in deps(f) {
            assert!(
                d == "kernels::tile" || d == "kernels::exp" || d == "kernels::half",
                "{f} imports {d}"
            );
        }
    }
    assert!(
        deps("kernels::tile").is_empty(),
        "the leaf imports {:?}",
        deps("kernels::tile")
    );
    // A variant file imports no other variant, only the sparse wrapper and the shared
    // helpers (which import no variant).
    for (m, ds) in &edges {
        if m.starts_with("variants::") {
            for d in ds {
                assert!(
                    d == "variants::sparse" || d == "variants::shared",
                    "{m} imports {d}"
                );
            }
        }
    }
    assert!(
        deps("variants::shared").is_empty(),
        "variants::shared imports {:?}",
        deps("variants::shared")
    );
}

#[test]
fn unsafe_lives_in_the_listed_files_under_safety_comments() {
    let allowed = [
        "src/harness/memory.rs",
        "src/kernels/dispatch.rs",
        "src/kernels/tiles.rs",
        "src/kernels/avx512.rs",
        "src/kernels/bf16.rs",
        "src/kernels/gemm.rs",
        // The cache-line-aligned buffer's slice views.
        "src/kernels/tile.rs",
        // One libc call: SIGXFSZ ignored, so a full file-size limit is an error, not a kill.
        "src/cli/mod.rs",
    ];
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut blocks = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let block = code
                .match_indices("unsafe")
                .any(|(j, _)| code[j + 6..].trim_start().starts_with('{'));
            if !block && !code.contains("unsafe impl") {
                continue;
            }
            let name = f.to_string_lossy().replace('\\', "/");
            assert!(
                allowed.contains(&name.as_str()),
                "{name}:{}: unsafe outside the listed files",
                i + 1
            );
            // The comment sits on the lines just above (a SAFETY paragraph may be long).
            let above = &lines[i.saturating_sub(8)..=i];
            assert!(
                above
                    .iter()
                    .any(|l| l.trim_start().starts_with("// SAFETY")),
                "{name}:{}: unsafe block without a SAFETY comment",
                i + 1
            );
            blocks += 1;
        }
    }
    assert!(
        blocks >= 5,
        "found only {blocks} unsafe blocks: the scan is broken"
    );
}
