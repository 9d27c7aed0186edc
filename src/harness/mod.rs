//! Measurement: wall time ([`timing`]) and peak heap bytes ([`memory`]).

pub mod memory;
pub mod timing;
