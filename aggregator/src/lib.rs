//! The cluster aggregator.
#![forbid(unsafe_code)]

pub mod state;
