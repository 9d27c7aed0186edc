//! README.md's variant table is the output of `attnbench list --markdown` for the built-in
//! registry: a variant added, renamed or re-described without regenerating it fails here.

use attnbench::Registry;
use attnbench::cli::variants_markdown;

#[test]
fn readme_variant_table_is_generated() {
    let readme = include_str!("../README.md");
    let start =
        "<!-- variants: the output of `attnbench list --markdown`; tests/readme.rs checks it -->\n";
    let end = "<!-- end of variants -->";
    let a = readme.find(start).expect("README has the variants marker") + start.len();
    let b = a + readme[a..].find(end).expect("README has the end marker");
    let generated = variants_markdown(&Registry::builtin());
    assert_eq!(
        &readme[a..b],
        generated,
        "README's variant table differs from `attnbench list --markdown`: regenerate it"
    );
    // Every registered variant has a row.
    for info in Registry::builtin().iter() {
        assert!(
            generated.contains(&format!("`{}", info.name)),
            "{}",
            info.name
        );
    }
}

/// Every figure README.md quotes from a run sits between
/// `<!-- quoted from reports/<run>/report.md ... -->` and `<!-- end of quote -->`, and every
/// line of it appears verbatim in that committed report: README numbers cannot drift from
/// the committed results.
#[test]
fn readme_quotes_committed_reports_verbatim() {
    let readme = include_str!("../README.md");
    let open = "<!-- quoted from ";
    let close = "<!-- end of quote -->";
    let mut rest = readme;
    let mut quotes = 0;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let (marker, body) = after.split_once("-->\n").expect("the marker closes");
        let path = marker
            .split_whitespace()
            .next()
            .expect("a report path")
            .trim_end_matches(';');
        let end = body.find(close).expect("every quote ends");
        let report = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("README quotes {path}, which cannot be read: {e}"));
        for line in body[..end].lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                report.lines().any(|r| r == line),
                "README quotes a line that {path} does not have:\n{line}"
            );
        }
        quotes += 1;
        rest = &body[end..];
    }
    assert!(quotes >= 2, "README quotes {quotes} report blocks");
}

#[test]
fn readme_structured_table_is_the_calibration() {
    let readme = include_str!("../README.md");
    let start = "<!-- structured: generated from src/workload/structured.json; tests/readme.rs checks it -->\n";
    let end = "<!-- end of structured -->";
    let a = readme
        .find(start)
        .expect("README has the structured marker")
        + start.len();
    let b = a + readme[a..].find(end).expect("README has the end marker");
    assert_eq!(
        &readme[a..b],
        attnbench::workload::structured::Calibration::builtin().markdown(),
        "README's structured table differs from src/workload/structured.json: regenerate it"
    );
}
