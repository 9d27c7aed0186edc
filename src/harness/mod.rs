//! Measurement: wall time ([`timing`]), peak heap bytes ([`memory`]), the machine
//! ([`machine`]), and the sweep that puts them together ([`sweep`]) into the results schema
//! ([`record`]).

pub mod artefacts;
pub mod machine;
pub mod maps;
pub mod memory;
pub mod record;
pub mod sweep;
pub mod timing;
