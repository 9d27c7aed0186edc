//! Sparse patterns: hand-written masks, tile classification and row masking against
//! brute force for every pattern variant in the registry (with random parameters), key
//! counts, user patterns with empty rows, and parameter errors.

use attnbench::oracle::{compare, oracle};
use attnbench::pattern::{
    Causal, Global, Indexed, Intersection, KeyMajor, Local, Mask, OtherBlocks, Window,
};
use attnbench::variants::bigbird::BigBird;
use attnbench::variants::dilated::Dilated;
use attnbench::variants::fixed::Fixed;
use attnbench::variants::longformer::Longformer;
use attnbench::variants::sparse::Sparse;
use attnbench::variants::strided::Strided;
use attnbench::workload::gaussian;
use attnbench::{
    Attention, ErrorKind, Geometry, Options, Pattern, Problem, Registry, Shape, Tile, attend,
};
use ndarray::Axis;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn mask_string(p: &dyn Pattern, g: Geometry) -> String {
    let mut s = String::new();
    for i in 0..g.n_q {
        for j in 0..g.n_kv {
            s.push(if p.allows(g, i, j) { '#' } else { '.' });
        }
        s.push('\n');
    }
    s
}

fn sq(n: usize) -> Geometry {
    Geometry::new(n, n)
}

fn causal<P: Pattern>(p: P) -> Intersection<Causal, P> {
    Intersection(Causal, p)
}

#[test]
fn window_bounds_are_inclusive() {
    let bidirectional = "\
##......
###.....
.###....
..###...
...###..
....###.
.....###
......##
";
    assert_eq!(mask_string(&Window { w: 1 }, sq(8)), bidirectional);
    let causal_w2 = "\
#.......
##......
###.....
.###....
..###...
...###..
....###.
.....###
";
    assert_eq!(mask_string(&causal(Window { w: 2 }), sq(8)), causal_w2);
    // w = 0: self only.
    assert_eq!(mask_string(&Window { w: 0 }, sq(3)), "#..\n.#.\n..#\n");
}

#[test]
fn local_blocks() {
    let expected = "\
###.....
###.....
###.....
...###..
...###..
...###..
......##
......##
";
    assert_eq!(mask_string(&Local { block: 3 }, sq(8)), expected);
}

#[test]
fn strided_is_recent_plus_stripes() {
    // Causal, stride 3: i - 3 < j <= i, or (i - j) mod 3 == 0.
    let expected = "\
#.......
##......
###.....
####....
.####...
..####..
#..####.
.#..####
";
    assert_eq!(mask_string(&causal(Strided { stride: 3 }), sq(8)), expected);
    // Bidirectional: |i - j| < 3, or (i - j) mod 3 == 0.
    let row0 = "####..#..#";
    assert_eq!(&mask_string(&Strided { stride: 3 }, sq(10))[..10], row0);
}

#[test]
fn fixed_is_own_block_plus_summaries() {
    // block 4, c = 1: own block, plus column 3 and column 7 (the last of each block).
    let expected = "\
####...#
####...#
####...#
####...#
...#####
...#####
...#####
...#####
";
    assert_eq!(mask_string(&Fixed { block: 4, c: 1 }, sq(8)), expected);
}

#[test]
fn longformer_globals_see_and_are_seen() {
    let expected = "\
########
###.....
####....
#.###...
#..###..
#...###.
#....###
#.....##
";
    // w = 1, g = 1: token 0 is global.
    assert_eq!(mask_string(&Longformer { w: 1, g: 1 }, sq(8)), expected);
    assert_eq!(
        mask_string(&Global { g: 2 }, sq(4)),
        "####\n####\n##..\n##..\n"
    );
}

#[test]
fn dilated_skips_positions() {
    // w = 2, dilation = 2: j = i + {-4, -2, 0, 2, 4}.
    let expected = "\
#.#.#...
.#.#.#..
#.#.#.#.
.#.#.#.#
#.#.#.#.
.#.#.#.#
..#.#.#.
...#.#.#
";
    assert_eq!(mask_string(&Dilated { w: 2, dilation: 2 }, sq(8)), expected);
}

#[test]
fn bigbird_sliding_and_global_blocks() {
    // block 2, w = 3 sliding blocks, g = 1 global block, no random blocks.
    let bb = BigBird {
        block: 2,
        w: 3,
        g: 1,
        r: 0,
        seed: 0,
    };
    let expected = "\
##########
##########
######....
######....
########..
########..
##..######
##..######
##....####
##....####
";
    assert_eq!(mask_string(&bb, sq(10)), expected);
}

#[test]
fn bigbird_random_blocks_are_seeded() {
    let g = sq(256);
    let bb = |seed| BigBird {
        block: 16,
        w: 1,
        g: 0,
        r: 2,
        seed,
    };
    assert_eq!(mask_string(&bb(5), g), mask_string(&bb(5), g));
    assert_ne!(mask_string(&bb(5), g), mask_string(&bb(6), g));
    // Own block plus at most two random blocks per query block.
    for i in (0..256).step_by(16) {
        let keys = bb(5).keys_in_row(g, i);
        assert!((16..=48).contains(&keys), "row {i}: {keys}");
        assert!(bb(5).allows(g, i, i));
    }
}

/// The registered variants that have a pattern.
fn pattern_variants(reg: &Registry) -> Vec<&'static str> {
    reg.iter()
        .filter(|info| {
            let v = reg.build(info.name).expect("registered defaults build");
            v.pattern().is_some()
        })
        .map(|info| info.name)
        .collect()
}

/// A registered pattern variant `name` with random parameters small enough to make tiles
/// interesting: integers in 0..12, flags at random; specs the variant refuses (e.g. `c >
/// block`) are drawn again.
fn random_variant(reg: &Registry, name: &str, rng: &mut StdRng) -> Box<dyn Attention> {
    let info = reg.info(name).expect("registered");
    for _ in 0..1000 {
        let params: Vec<String> = info
            .params
            .iter()
            .map(|p| {
                let value = if p.default.parse::<u64>().is_ok() {
                    rng.random_range(0..12u32).to_string()
                } else if p.default.parse::<bool>().is_ok() {
                    rng.random_bool(0.5).to_string()
                } else {
                    p.default.to_string()
                };
                format!("{}={value}", p.name)
            })
            .collect();
        if let Ok(v) = reg.build(&format!("{name}({})", params.join(","))) {
            return v;
        }
    }
    panic!("{name} refused 1000 random specs");
}

/// A key-major tile of `st` (see `KeyMajor`).
fn key_major<'a>(
    rows: &std::ops::Range<usize>,
    c0: usize,
    cols: usize,
    st: &'a mut [f32],
    ld: usize,
) -> KeyMajor<'a> {
    KeyMajor {
        rows: rows.clone(),
        c0,
        cols,
        st,
        ld,
    }
}

fn brute(
    p: &dyn Pattern,
    g: Geometry,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Tile {
    let mut any = false;
    let mut all = true;
    for i in rows {
        for j in cols.clone() {
            let a = p.allows(g, i, j);
            any |= a;
            all &= a;
        }
    }
    match (any, all) {
        (_, true) => Tile::Full,
        (false, _) => Tile::Empty,
        _ => Tile::Partial,
    }
}

#[test]
fn classification_row_masks_and_counts_match_brute_force() {
    let reg = Registry::builtin();
    let names = pattern_variants(&reg);
    assert!(names.len() >= 7, "pattern variants: {names:?}");
    let mut rng = StdRng::seed_from_u64(2024);
    let mut conservative = 0usize;
    let mut tiles = 0usize;
    for round in 0..60 * names.len() {
        let variant = random_variant(&reg, names[round % names.len()], &mut rng);
        let pattern = variant.pattern().expect("a pattern variant");
        let g = Geometry::new(rng.random_range(1..48), rng.random_range(1..48));
        let causal_flag = rng.random_bool(0.5);
        let mask = Mask::new(Some(pattern), causal_flag);
        let (bq, bk) = (rng.random_range(1..10), rng.random_range(1..10));
        for r0 in (0..g.n_q).step_by(bq) {
            for c0 in (0..g.n_kv).step_by(bk) {
                let rows = r0..(r0 + bq).min(g.n_q);
                let cols = c0..(c0 + bk).min(g.n_kv);
                for p in [pattern, &mask as &dyn Pattern] {
                    let want = brute(p, g, rows.clone(), cols.clone());
                    let got = p.classify(g, rows.clone(), cols.clone());
                    tiles += 1;
                    // Never wrong; exact about emptiness (so no empty tile is computed);
                    // allowed to say Partial for a full tile of a composite pattern.
                    assert!(
                        got == want || (got == Tile::Partial && want == Tile::Full),
                        "{p:?} causal={causal_flag} {g:?} rows {rows:?} cols {cols:?}: {got:?} vs {want:?}"
                    );
                    conservative += usize::from(got != want);
                    // The key-major mask (the engine's layout: key t's column of queries at
                    // st[t * ld..], padding lanes past the rows) leaves exactly the allowed
                    // pairs and never touches the padding.
                    let ld = rows.len() + 3;
                    let mut st = vec![1.0f32; cols.len() * ld];
                    p.mask_key_major(
                        g,
                        &mut key_major(&rows, cols.start, cols.len(), &mut st, ld),
                    );
                    for (t, col) in st.chunks(ld).enumerate() {
                        for (r, &x) in col.iter().enumerate() {
                            let want = r >= rows.len() || p.allows(g, r0 + r, c0 + t);
                            assert_eq!(
                                x == 1.0,
                                want,
                                "{p:?} causal={causal_flag} {g:?} key-major rows {rows:?} query {} key {}",
                                r0 + r,
                                c0 + t
                            );
                        }
                    }
                }
            }
        }
        for i in 0..g.n_q {
            let mut row = vec![1.0f32; g.n_kv];
            mask.mask_row(g, i, 0, &mut row);
            // A row masked in two pieces must equal the row masked at once.
            let split = rng.random_range(0..=g.n_kv);
            let mut pieces = vec![1.0f32; g.n_kv];
            let (a, b) = pieces.split_at_mut(split);
            mask.mask_row(g, i, 0, a);
            mask.mask_row(g, i, split, b);
            assert_eq!(row, pieces, "{pattern:?} row {i} split at {split}");
            let allowed: Vec<bool> = (0..g.n_kv).map(|j| mask.allows(g, i, j)).collect();
            let masked: Vec<bool> = row.iter().map(|&x| x == 1.0).collect();
            assert_eq!(
                allowed, masked,
                "{pattern:?} causal={causal_flag} {g:?} row {i}"
            );
            let count = allowed.iter().filter(|&&a| a).count();
            assert_eq!(
                pattern.keys_in_row(g, i),
                (0..g.n_kv).filter(|&j| pattern.allows(g, i, j)).count(),
                "{pattern:?} {g:?} row {i}"
            );
            assert_eq!(
                mask.keys_in_row(g, i),
                count,
                "{pattern:?} {g:?} causal row {i}"
            );
        }
    }
    // Conservative answers only cost speed; they must stay rare.
    assert!(
        conservative * 50 < tiles,
        "{conservative} of {tiles} tiles classified as Partial but Full"
    );
}

#[test]
fn key_ranges_cover_every_allowed_key_and_are_tight_for_windows() {
    // The engine visits only the tiles meeting a query block's key ranges: a range that
    // misses an allowed key would silently drop it, so every registered pattern, with and
    // without causal masking, must cover every allowed pair of every block of rows.
    let reg = Registry::builtin();
    let names = pattern_variants(&reg);
    let mut rng = StdRng::seed_from_u64(77);
    let mut narrowed = 0usize;
    for round in 0..60 * names.len() {
        let variant = random_variant(&reg, names[round % names.len()], &mut rng);
        let pattern = variant.pattern().expect("a pattern variant");
        let g = Geometry::new(rng.random_range(1..96), rng.random_range(1..96));
        let mask = Mask::new(Some(pattern), rng.random_bool(0.5));
        let bq = rng.random_range(1..12);
        for r0 in (0..g.n_q).step_by(bq) {
            let rows = r0..(r0 + bq).min(g.n_q);
            for p in [pattern, &mask as &dyn Pattern] {
                let ranges = p.key_ranges(g, rows.clone());
                for w in ranges.windows(2) {
                    assert!(
                        w[0].end < w[1].start,
                        "{p:?}: {ranges:?} not sorted and disjoint"
                    );
                }
                assert!(
                    ranges.iter().all(|r| !r.is_empty() && r.end <= g.n_kv),
                    "{ranges:?}"
                );
                for i in rows.clone() {
                    for j in (0..g.n_kv).filter(|&j| p.allows(g, i, j)) {
                        assert!(
                            ranges.iter().any(|r| r.contains(&j)),
                            "{p:?} {g:?} rows {rows:?}: allowed ({i}, {j}) outside {ranges:?}"
                        );
                    }
                }
                narrowed += usize::from(ranges.iter().map(|r| r.len()).sum::<usize>() < g.n_kv);
            }
        }
    }
    assert!(narrowed > 0, "no pattern narrowed its key ranges");
    // A window's ranges are its reach: 2w + bq keys for a block away from the edges.
    let w = Window { w: 16 };
    let g = sq(1 << 20);
    assert_eq!(w.key_ranges(g, 500_000..500_064), vec![499_984..500_080]);
    assert_eq!(
        causal(w).key_ranges(g, 500_000..500_064),
        vec![499_984..500_064]
    );
    assert_eq!(Causal.key_ranges(g, 0..64), vec![0..64]);
}

#[test]
fn interval_patterns_classify_exactly() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let patterns: [Box<dyn Pattern>; 5] = [
            Box::new(Window {
                w: rng.random_range(0..10),
            }),
            Box::new(Local {
                block: rng.random_range(1..10),
            }),
            Box::new(Global {
                g: rng.random_range(0..6),
            }),
            Box::new(Dilated {
                w: rng.random_range(0..5),
                dilation: rng.random_range(1..4),
            }),
            Box::new(Causal),
        ];
        let g = Geometry::new(rng.random_range(1..40), rng.random_range(1..40));
        let (bq, bk) = (rng.random_range(1..9), rng.random_range(1..9));
        for p in &patterns {
            for r0 in (0..g.n_q).step_by(bq) {
                for c0 in (0..g.n_kv).step_by(bk) {
                    let rows = r0..(r0 + bq).min(g.n_q);
                    let cols = c0..(c0 + bk).min(g.n_kv);
                    assert_eq!(
                        p.classify(g, rows.clone(), cols.clone()),
                        brute(p.as_ref(), g, rows.clone(), cols.clone()),
                        "{p:?} {g:?} {rows:?} {cols:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn density_matches_counts() {
    let g = sq(1000);
    let w = Window { w: 10 };
    let exact: usize = (0..1000).map(|i| w.keys_in_row(g, i)).sum();
    assert!((w.density(g) - exact as f64 / 1e6).abs() < 1e-12);
    assert_eq!(exact, 1000 * 21 - 2 * (10 * 11 / 2));
    let l = Local { block: 100 };
    assert!((l.density(g) - 0.1).abs() < 1e-12);
}

/// Attends nothing from query 3 and everything elsewhere.
#[derive(Debug)]
struct SkipRowThree;

impl Pattern for SkipRowThree {
    fn allows(&self, _g: Geometry, i: usize, _j: usize) -> bool {
        i != 3
    }
}

impl std::fmt::Display for SkipRowThree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("skip3")
    }
}

#[test]
fn a_user_pattern_with_an_empty_row_gives_a_zero_row() {
    let shape = Shape::self_attention(1, 2, 20, 8).unwrap();
    let qkv = gaussian(&shape, 1.0, 1);
    let v = Sparse::new("skip3", SkipRowThree);
    for causal in [false, true] {
        let opts = Options::new().causal(causal);
        let out = attend(&v, qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
        assert!(out.index_axis(Axis(2), 3).iter().all(|&x| x == 0.0));
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
        let e = compare(out.view(), oracle(&p, Some(&SkipRowThree)).view());
        assert!(e.rel_frobenius < 1e-5, "{e:?}");
    }
}

#[test]
fn bad_parameters_name_the_parameter() {
    let reg = Registry::builtin();
    assert!(
        reg.build("window(w=0)").is_ok(),
        "w = 0 is self-only attention"
    );
    for (spec, param) in [
        ("local(block=0)", "block"),
        ("strided(stride=0)", "stride"),
        ("fixed(block=8,c=9)", "c"),
        ("fixed(block=0)", "block"),
        ("dilated(dilation=0)", "dilation"),
        ("bigbird(block=0)", "block"),
        ("bigbird(w=0)", "w"),
        ("window(w=-1)", "w"),
        ("longformer(g=x)", "g"),
        ("window(w=9223372036854775808)", "w"),
        ("dilated(w=1099511627776,dilation=2)", "w"),
    ] {
        let e = reg.build(spec).unwrap_err().to_string();
        assert!(e.contains(&format!("parameter {param}")), "{spec}: {e}");
    }
    // More global tokens than tokens: a clear error from attend, naming g.
    let lf = reg.build("longformer(w=4,g=16)").unwrap();
    let shape = Shape::self_attention(1, 1, 8, 4).unwrap();
    let qkv = gaussian(&shape, 1.0, 0);
    let e = attend(
        lf.as_ref(),
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        &Options::new(),
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }));
    assert!(e.to_string().contains("g=16"), "{e}");
}

#[test]
fn gathered_parts_are_disjoint_and_cover_exactly_the_pattern() {
    // Every pattern offering parts: over all parts, groups and local pairs, each allowed
    // pair of the (causal or not) mask is counted exactly once and no other pair at all.
    let reg = Registry::builtin();
    let names = pattern_variants(&reg);
    let mut rng = StdRng::seed_from_u64(17);
    let mut with_parts = std::collections::BTreeSet::new();
    for round in 0..80 * names.len() {
        let variant = random_variant(&reg, names[round % names.len()], &mut rng);
        let pattern = variant.pattern().expect("a pattern variant");
        let n = rng.random_range(1..60);
        let g = Geometry::new(n, n);
        for causal in [false, true] {
            let mask = Mask::new(Some(pattern), causal);
            let Some(parts) = mask.parts(g, causal) else {
                continue;
            };
            with_parts.insert(variant.name());
            let mut count = vec![0u32; n * n];
            for part in &parts {
                let mut seen = vec![false; n];
                for group in &part.groups {
                    let lg = group.geometry();
                    for a in 0..lg.n_q {
                        let q = group.queries.index(a);
                        assert!(!seen[q], "{pattern:?}: query {q} in two groups of a part");
                        seen[q] = true;
                        for b in 0..lg.n_kv {
                            if part.pattern.allows(lg, a, b) {
                                count[q * n + group.keys.index(b)] += 1;
                            }
                        }
                    }
                }
            }
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(
                        count[i * n + j],
                        u32::from(mask.allows(g, i, j)),
                        "{pattern:?} causal={causal} n={n} pair ({i}, {j})"
                    );
                }
            }
        }
    }
    // The stride-like patterns offer parts; the others keep the tile path.
    for name in ["strided", "dilated", "fixed"] {
        assert!(with_parts.contains(name), "{name}: {with_parts:?}");
    }
}

#[test]
fn other_blocks_classify_and_mask_like_brute_force() {
    // The local pattern of the gathered parts, on its own.
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..300 {
        let p = OtherBlocks {
            qb: rng.random_range(1..6),
            kb: rng.random_range(1..6),
            before: rng.random_bool(0.5),
        };
        let g = Geometry::new(rng.random_range(1..40), rng.random_range(1..40));
        let (bq, bk) = (rng.random_range(1..9), rng.random_range(1..9));
        for r0 in (0..g.n_q).step_by(bq) {
            let rows = r0..(r0 + bq).min(g.n_q);
            let ranges = p.key_ranges(g, rows.clone());
            for c0 in (0..g.n_kv).step_by(bk) {
                let cols = c0..(c0 + bk).min(g.n_kv);
                assert_eq!(
                    p.classify(g, rows.clone(), cols.clone()),
                    brute(&p, g, rows.clone(), cols.clone()),
                    "{p:?} {rows:?} {cols:?}"
                );
                let ld = rows.len() + 2;
                let mut st = vec![1.0f32; cols.len() * ld];
                p.mask_key_major(g, &mut key_major(&rows, c0, cols.len(), &mut st, ld));
                for (t, col) in st.chunks(ld).enumerate() {
                    for (r, &x) in col.iter().enumerate() {
                        let want = r >= rows.len() || p.allows(g, r0 + r, c0 + t);
                        assert_eq!(x == 1.0, want, "{p:?} query {} key {}", r0 + r, c0 + t);
                    }
                }
            }
            for i in rows.clone() {
                let mut row = vec![1.0f32; g.n_kv];
                p.mask_row(g, i, 0, &mut row);
                for (j, &x) in row.iter().enumerate() {
                    let allowed = p.allows(g, i, j);
                    assert_eq!(x == 1.0, allowed, "{p:?} row {i} key {j}");
                    if allowed {
                        assert!(ranges.iter().any(|r| r.contains(&j)), "{p:?} {i} {j}");
                    }
                }
            }
        }
    }
}

/// A user pattern given only `allows`: a band with holes, pairs the built-ins cannot state.
#[derive(Debug, Clone, Copy)]
struct Holes {
    w: usize,
}

impl Pattern for Holes {
    fn allows(&self, _g: Geometry, i: usize, j: usize) -> bool {
        (i.abs_diff(j) <= self.w && !(i + 2 * j).is_multiple_of(5)) || j % 97 == 3
    }
}

impl std::fmt::Display for Holes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "holes(w={})", self.w)
    }
}

#[test]
fn an_indexed_pattern_answers_the_grid_exactly_and_falls_back_off_it() {
    // Registered patterns (random parameters) and a user pattern, wrapped: on the index's
    // grid, classification is exact (not merely safe), key-major masks and key ranges match
    // `allows`; off the grid every answer comes from the wrapped pattern.
    let reg = Registry::builtin();
    let names = pattern_variants(&reg);
    let mut rng = StdRng::seed_from_u64(23);
    for round in 0..30 * (names.len() + 1) {
        let variant = random_variant(&reg, names[round % names.len()], &mut rng);
        let holes = Holes {
            w: rng.random_range(0..9),
        };
        let inner: &dyn Pattern = if round % (names.len() + 1) == 0 {
            &holes
        } else {
            variant.pattern().unwrap()
        };
        let (bq, bk) = (rng.random_range(1..9), rng.random_range(1..9));
        let indexed = Indexed::new(inner, bq, bk);
        let g = Geometry::new(rng.random_range(1..45), rng.random_range(1..45));
        for causal in [false, true] {
            let mask = Mask::new(Some(&indexed), causal);
            for r0 in (0..g.n_q).step_by(bq) {
                let rows = r0..(r0 + bq).min(g.n_q);
                let ranges = mask.key_ranges(g, rows.clone());
                for i in rows.clone() {
                    for j in 0..g.n_kv {
                        if mask.allows(g, i, j) {
                            assert!(ranges.iter().any(|r| r.contains(&j)), "{inner:?} {i} {j}");
                        }
                    }
                }
                for c0 in (0..g.n_kv).step_by(bk) {
                    let cols = c0..(c0 + bk).min(g.n_kv);
                    if !causal {
                        assert_eq!(
                            indexed.classify(g, rows.clone(), cols.clone()),
                            brute(inner, g, rows.clone(), cols.clone()),
                            "{inner:?} {rows:?} {cols:?}"
                        );
                    }
                    let ld = rows.len() + 1;
                    let mut st = vec![1.0f32; cols.len() * ld];
                    mask.mask_key_major(g, &mut key_major(&rows, c0, cols.len(), &mut st, ld));
                    for (t, col) in st.chunks(ld).enumerate() {
                        for (r, &x) in col.iter().enumerate() {
                            let want = r >= rows.len() || mask.allows(g, r0 + r, c0 + t);
                            assert_eq!(x == 1.0, want, "{inner:?} {} {}", r0 + r, c0 + t);
                        }
                    }
                }
            }
            // Off the grid: a tile shifted by one row.
            if g.n_q > 2 && g.n_kv > 1 {
                let (rows, cols) = (1..g.n_q.min(bq + 1), 0..g.n_kv.min(bk));
                let got = indexed.classify(g, rows.clone(), cols.clone());
                let want = brute(inner, g, rows.clone(), cols.clone());
                assert!(got == want || got == Tile::Partial, "{inner:?} off-grid");
            }
        }
        assert!(indexed.stored_bytes(g) > 0);
    }
}

#[test]
fn an_indexed_user_pattern_matches_the_oracle_on_the_engine() {
    // Through the engine's tiles (Sparse's 64 x 64), causal or not, with key padding and with
    // more keys than one split holds, so split tasks read the index too.
    for (n, lengths) in [(300, vec![300, 211]), (17000, vec![17000, 17000])] {
        let shape = Shape::new(2, 1, 1, n, n, 8, 8).unwrap();
        let qkv = gaussian(&shape, 1.0, 4);
        let holes = Holes { w: 40 };
        let v = Sparse::new("holes", Indexed::new(holes, 64, 64));
        for causal in [false, true] {
            let opts = Options::new().causal(causal);
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)
                .unwrap()
                .with_key_lengths(&lengths)
                .unwrap();
            let mut out = ndarray::Array4::from_elem(shape.out_dims(), f32::NAN);
            attnbench::attention::run(&v, &p, out.view_mut()).unwrap();
            let reference = oracle(&p, Some(&holes));
            let e = compare(out.view(), reference.view()).rel_frobenius;
            assert!(e < 1e-5, "n={n} causal={causal}: {e:e}");
        }
    }
}
