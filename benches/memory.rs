//! Peak heap bytes per benchmark case, for `cargo bench` users (criterion measures time
//! only). Prints one line per (variant, causal, n) with the measured peak of one call (after a
//! warm-up call) beside the variant's analytic workspace. Same environment variables as the
//! `attention` bench (`benches/common.rs`).
//!
//! ```text
//! cargo bench --bench memory
//! ```

use attnbench::harness::memory::{CountingAlloc, measure};
use attnbench::{Options, Problem};
use ndarray::Array4;

mod common;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    // `cargo bench` passes `--bench` (and filters); this harness takes no arguments.
    let variants = common::variants();
    let (batch, heads, d) = common::shape();
    println!(
        "{:<58} {:>7} {:>6} {:>14} {:>14}",
        "variant", "causal", "n", "peak bytes", "workspace"
    );
    for causal in common::causal_flags() {
        for n in common::lengths() {
            let (shape, qkv) = common::inputs(batch, heads, n, n, d);
            let opts = Options::new().causal(causal);
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
            let mut out = Array4::<f32>::zeros(shape.out_dims());
            for v in &variants {
                if !common::runnable(v.as_ref(), &shape, &opts) {
                    continue;
                }
                attnbench::attention::run(v.as_ref(), &p, out.view_mut()).expect("forward");
                let (r, peak) =
                    measure(|| attnbench::attention::run(v.as_ref(), &p, out.view_mut()));
                r.expect("forward");
                println!(
                    "{:<58} {:>7} {:>6} {:>14} {:>14}",
                    v.to_string(),
                    causal,
                    n,
                    peak.expect("the counting allocator is installed"),
                    v.cost(&shape, &opts, rayon::current_num_threads())
                        .workspace_bytes
                );
            }
        }
    }
}
