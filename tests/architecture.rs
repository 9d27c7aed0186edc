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

/// Lower-case identifiers following `prefix` (module names; types start upper-case).
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    code.match_indices(prefix).map(move |(i, _)| {
        let rest = &code[i + prefix.len()..];
        rest.split("::")
            .map(|seg| {
                let end = seg
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(seg.len());
                &seg[..end]
            })
            .take_while(|s| s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .take(2)
            .collect()
    })
}

/// Edges between top-level modules, and between sibling submodules of [`LAYERED`] modules.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        let Some(top) = m.first() else { continue };
        let code = code(&f);
        for p in paths_after(&code, "crate::") {
            let Some(&target) = p.first() else { continue };
            if target != top {
                edges
                    .entry(top.clone())
                    .or_default()
                    .insert(target.to_string());
            } else if let (Some(sub), Some(&tsub)) = (m.get(1), p.get(1))
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
            for p in paths_after(&code, "super::") {
                if let Some(&t) = p.first()
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
    // Kernels and the engine know no variant.
    assert!(
        deps("kernels").iter().all(|d| d == "error"),
        "kernels import {:?}",
        deps("kernels")
    );
    forbid("engine", &["variants", "registry", "harness"]);
    // Inside kernels: the per-ISA files import only the tile leaf and exp.
    for f in ["kernels::portable", "kernels::tiles", "kernels::avx512"] {
        for d in deps(f) {
            assert!(
                d == "kernels::tile" || d == "kernels::exp",
                "{f} imports {d}"
            );
        }
    }
    assert!(
        deps("kernels::tile").is_empty(),
        "the leaf imports {:?}",
        deps("kernels::tile")
    );
    // A variant file imports no other variant, only the sparse wrapper.
    for (m, ds) in &edges {
        if m.starts_with("variants::") {
            for d in ds {
                assert_eq!(d, "variants::sparse", "{m} imports {d}");
            }
        }
    }
}

#[test]
fn unsafe_lives_in_the_listed_files_under_safety_comments() {
    let allowed = [
        "src/harness/memory.rs",
        "src/kernels/dispatch.rs",
        "src/kernels/tiles.rs",
        "src/kernels/avx512.rs",
        "src/kernels/gemm.rs",
    ];
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut blocks = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains("unsafe {") {
                continue;
            }
            let name = f.to_string_lossy().replace('\\', "/");
            assert!(
                allowed.contains(&name.as_str()),
                "{name}:{}: unsafe outside the listed files",
                i + 1
            );
            // The comment sits on the lines just above (a SAFETY paragraph may be long).
            let above = &lines[i.saturating_sub(12)..=i];
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
