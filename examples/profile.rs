//! One call of one variant, for profilers: no timing loop, no oracle, nothing else in the
//! profile.
//!
//! ```text
//! cargo build --release --example profile
//! valgrind --tool=callgrind --callgrind-out-file=flash.cg \
//!     target/release/examples/profile 'flash(isa=avx2)' 2048 2
//! callgrind_annotate --inclusive=yes flash.cg | head -40
//! ```
//!
//! Arguments: a variant spec (default `flash`), the length n (default 2048) and the number of
//! heads (default 2); b = 1, d = 64, bidirectional, Gaussian inputs, the rayon pool's threads
//! (set `RAYON_NUM_THREADS=1` for one). Valgrind does not emulate AVX-512: under it the
//! widest path a kernel can detect is AVX2.

use attnbench::workload::gaussian;
use attnbench::{Options, Problem, Registry, Shape};
use ndarray::Array4;

fn main() -> attnbench::Result<()> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "flash".into());
    let number = |s: Option<String>, default: usize| -> usize {
        match s.map(|s| s.parse::<usize>().map_err(|_| s)) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(s)) => {
                eprintln!("error: expected a positive integer, got '{s}'");
                std::process::exit(2);
            }
        }
    };
    let n = number(args.next(), 2048);
    let heads = number(args.next(), 2);
    let shape = Shape::self_attention(1, heads, n, 64)?;
    let qkv = gaussian(&shape, 1.0, 0);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new())?;
    let variant = Registry::builtin().build(&spec)?;
    let mut out = Array4::<f32>::zeros(shape.out_dims());
    attnbench::attention::run(variant.as_ref(), &p, out.view_mut())?;
    println!(
        "{variant} at n={n}, {heads} heads: output sum {}",
        out.sum()
    );
    Ok(())
}
