//! The cluster aggregator.
//!
//! - [`state`] (pure, behind the one mutex of its [`state::StateHandle`]): per-node records, exact
//!   cluster sums, publish windows and commits, capacity and breakdowns, the `/metrics` text of the state.
//! - [`ingest`]: the gRPC service agents stream to, one `AgentStream` task per stream;
//!   [`consumer`]: the service `watch` and other clients subscribe to.
//! - [`publish`]: the publisher loop closing windows and recording commits; [`sinks`]: the `Sink`
//!   trait, stdout and CloudWatch (config, encoder, retry classification, client).
//! - [`subnets`]: the refresher asking EC2 for subnet capacity (`--subnet-metrics`); the state joins it
//!   with the cluster's use. [`aws`]: what both AWS callers share (SDK set-up, retry classification).
//! - [`auth`]: agent tokens (`--agent-auth token`): an agent speaks only for its own node.
//! - [`listen`]: the plaintext gRPC accept loop and what the listeners count.
//! - [`limits`]: the agent stream limit, derived from the open-file limit unless `--max-streams` is set.
//! - [`http`] (`/metrics`, `/healthz`, `/readyz`), [`tls`] (mutual TLS), [`server`] (the wiring).
//! - [`cli`] (the commands: serve, the default, watch, demo), [`config`] (serve's flags, a group per
//!   concern, validated once into a typed configuration; the one source of defaults).
//! - [`watch`] (the terminal view) and, with the default `demo` feature, `demo` (real agents against simulated ipamds; the production image is
//!   built without it, so it links neither the agent nor the test fixtures).
#![forbid(unsafe_code)]

pub mod auth;
pub mod aws;
pub mod cli;
pub mod config;
pub mod consumer;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod listen;
pub mod publish;
pub mod server;
pub mod sinks;
pub mod state;
pub mod subnets;
pub mod tls;
pub mod watch;
