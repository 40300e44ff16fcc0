//! The cluster aggregator: per-node state and exact cluster sums ([`state`]), the gRPC ingest service
//! ([`ingest`]), the HTTP endpoints ([`http`]), publishing to sinks ([`publish`]), the wiring
//! ([`server`]) and a self-contained [`demo`].
#![forbid(unsafe_code)]

pub mod cloudwatch;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod http;
pub mod ingest;
pub mod publish;
pub mod server;
pub mod state;
pub mod tls;
pub mod watch;
