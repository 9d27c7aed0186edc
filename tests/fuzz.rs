//! Property tests over the parsers a user or a file feeds: variant specs, `.npy` files and
//! results CSVs (the CLI's argument surface is fuzzed beside its definitions, in
//! `src/cli/args.rs`). Each asserts what the reliability standard asks: no panic, and either
//! a clear error or a valid result. Case counts are fixed so CI time is bounded; set
//! `PROPTEST_CASES` to run more locally.

use std::path::PathBuf;

use attnbench::Registry;
use attnbench::npy::{encode_f32, parse_f32, parse_header};
use attnbench::report::data::read_results;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings built from a spec's alphabet, so that most get past the first character and
/// reach the parameter parsers, plus arbitrary text.
fn spec_text() -> impl Strategy<Value = String> {
    let name = prop::sample::select(
        Registry::builtin()
            .iter()
            .map(|i| i.name.to_string())
            .chain(["gaussian".to_string(), String::new()])
            .collect::<Vec<_>>(),
    );
    let params = "[a-z_]{0,8}=[-+0-9a-z.e{},_]{0,12}";
    prop_oneof![
        (
            name.clone(),
            prop::collection::vec(params, 0..4),
            any::<bool>()
        )
            .prop_map(|(n, ps, close)| format!(
                "{n}({}{}",
                ps.join(","),
                if close { ")" } else { "" }
            )),
        "[a-z(){}=,.0-9_ +-]{0,40}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn specs_parse_or_say_why(spec in spec_text()) {
        let registry = Registry::builtin();
        match registry.build(&spec) {
            // A built variant prints a spec that builds the same variant.
            Ok(v) => {
                let again = registry.build(&v.to_string()).expect("a printed spec builds");
                prop_assert_eq!(again.to_string(), v.to_string());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if let Err(e) = registry.build_list(&spec) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

/// A valid `.npy` file of a small random shape.
fn npy_file() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1usize..5, 1..4).prop_map(|shape| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
        encode_f32(&shape, &data)
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn npy_bytes_parse_or_say_why(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(a) = parse_f32(&bytes) {
            prop_assert_eq!(a.len(), a.shape().iter().product::<usize>());
        }
    }

    #[test]
    fn mutated_npy_files_parse_or_say_why(
        file in npy_file(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let mut bytes = file;
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        match parse_f32(&bytes) {
            Ok(a) => {
                // Whatever parsed is exactly what its header announces.
                let h = parse_header(&bytes).expect("the header parsed once");
                prop_assert_eq!(a.shape(), &h.shape[..]);
                prop_assert_eq!(bytes.len(), h.data_offset + h.data_bytes());
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn header_dicts_parse_or_say_why(dict in r#"\{('[a-z_]{0,14}'|"[a-z]{0,5}"|[0-9]{1,3}|\(|\)|\[|\]|,|:| |True|False|None|'<f[248]'|\(\d{1,4},( ?\d{1,4},?){0,3}\)){0,14}\}?"#) {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        if let Err(e) = parse_header(&bytes) {
            prop_assert!(!e.is_empty());
        }
    }
}

/// A committed results file's lines, to mutate.
fn results_lines() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/results/20261202T011523Z-minilm.csv"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(6)
        .map(str::to_string)
        .collect()
}

/// One edit of a CSV's text.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the field `field` of line `line` with `text`.
    Field(prop::sample::Index, prop::sample::Index, String),
    /// Overwrite a byte.
    Byte(prop::sample::Index, u8),
    /// Cut the file.
    Cut(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        Just("NaN".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("inf".to_string()),
        Just("0".to_string()),
        Just(String::new()),
        Just("\"a,b\"".to_string()),
        "[0-9.e+-]{1,8}",
        any::<String>(),
    ];
    prop_oneof![
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            value
        )
            .prop_map(|(l, f, t)| Edit::Field(l, f, t)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Cut),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn mutated_results_read_or_say_why(edits in prop::collection::vec(edit(), 1..4)) {
        let mut lines = results_lines();
        let mut bytes: Vec<u8>;
        for e in &edits {
            if let Edit::Field(l, f, t) = e {
                let line = l.index(lines.len() - 1) + 1;
                let mut fields: Vec<String> = lines[line].split(',').map(str::to_string).collect();
                let i = f.index(fields.len());
                fields[i] = t.clone();
                lines[line] = fields.join(",");
            }
        }
        bytes = (lines.join("\n") + "\n").into_bytes();
        for e in &edits {
            match e {
                Edit::Byte(i, b) => {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                Edit::Cut(i) => bytes.truncate(i.index(bytes.len())),
                Edit::Field(..) => {}
            }
        }
        let dir = std::env::temp_dir().join(format!("attnbench-fuzz-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path: PathBuf = dir.join("fuzz.csv");
        std::fs::write(&path, &bytes).unwrap();
        match read_results(std::slice::from_ref(&path)) {
            // Whatever is read is within the physical ranges.
            Ok(results) => {
                for r in &results.records {
                    prop_assert!(r.validate().is_ok(), "{:?}", r.validate());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
