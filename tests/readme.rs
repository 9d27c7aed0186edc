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
