//! The per-node agent: scrape ipamd's page on the node, parse it, turn it into deltas and stream them to
//! the aggregator.
#![forbid(unsafe_code)]

pub mod delta;
pub mod parse;
