//! `window(w)`: a sliding window of `w` keys on each side ([`Window`]), exact on the tiled
//! engine (Longformer's local attention without global tokens).

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
pub use crate::pattern::Window;

/// `window(w=256)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "window",
    summary: "sliding window |p - j| <= w, p = i + n_kv - n_q (causal: p - w <= j <= p)",
    time: "O(n w d)",
    memory: "O(1) in n",
    params: &[ParamInfo {
        name: "w",
        default: "256",
        help: "keys on each side (inclusive); 0 = self only",
    }],
    presets: &[],
    preview: "window(w=8)",
    build: |p| boxed(&INFO, Window { w: p.usize("w")? }),
};



impl fmt::Display for Window {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.w)])
    }
}
