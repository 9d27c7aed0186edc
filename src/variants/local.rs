//! `local(block)`: block-diagonal attention, each query attending its own block
//! ([`Local`]), exact on the tiled engine.

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
pub use crate::pattern::Local;

/// `local(block=128)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "local",
    summary: "block-diagonal: each query attends its own block",
    time: "O(n block d)",
    memory: "O(1) in n",
    params: &[ParamInfo {
        name: "block",
        default: "128",
        help: "block length",
    }],
    presets: &[],
    preview: "local(block=16)",
    build: |p| {
        boxed(
            &INFO,
            Local {
                block: p.positive("block")?,
            },
        )
    },
};



impl fmt::Display for Local {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.block)])
    }
}
