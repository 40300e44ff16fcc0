//! The per-node agent: scrape ipamd's page on the node ([`scrape`]), parse it ([`parse`]), turn it into
//! deltas ([`delta`]), build reports ([`report`]) and stream them to the aggregator ([`run()`]).
//!
//! - Pure cores (no I/O, table-tested): [`parse`], [`delta`], [`report`], [`commit`] (what the aggregator
//!   has published of this run), [`tally`] (one scrape folded in, reports numbered, commits taken: the
//!   counting core the event loop drives), [`multicard`] (page totals from introspection's per-card sums),
//!   [`position`]'s encoding (the counting position kept on the node).
//! - Edges: [`scrape`] (ipamd's page), [`introspect`] (per-subnet usage), [`imds`] (node facts), the
//!   state directory (`state_dir`: read at start, written after commits off the loop), the stream to
//!   the aggregator (`session`), [`http`] (the agent's `/metrics`, `/healthz`, `/readyz`, rendering
//!   [`metrics`]).
//! - [`mod@run`]: `struct Agent`, one method per event, and the loop that drives it.
//! - [`config`]: every flag with its environment variable, the one source of defaults. (The ipamd
//!   simulator the demo, benchmarks and tests use lives in the `cni-metrics-testkit` crate.)
#![forbid(unsafe_code)]

pub mod commit;
pub mod config;
pub mod delta;
pub mod history;
pub mod http;
pub mod imds;
pub mod introspect;
pub mod metrics;
pub mod multicard;
pub mod parse;
pub mod position;
pub mod report;
pub mod run;
pub mod scrape;
mod session;
mod state_dir;
pub mod tally;

pub use config::AgentConfig;
pub use metrics::AgentStats;
pub use run::{bind_http, run};
