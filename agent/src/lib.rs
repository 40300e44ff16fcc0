//! The per-node agent: scrape ipamd's page on the node ([`scrape`]), parse it ([`parse`]), turn it into
//! deltas ([`delta`]), build reports ([`report`]) and stream them to the aggregator ([`run`]).
//! [`sim`] simulates ipamd pages for the demo, benchmarks and tests.
#![forbid(unsafe_code)]

pub mod commit;
pub mod config;
pub mod delta;
pub mod http;
pub mod imds;
pub mod introspect;
pub mod parse;
pub mod position;
pub mod report;
pub mod run;
pub mod scrape;
pub mod sim;

pub use config::AgentConfig;
pub use run::{run, AgentStats};
