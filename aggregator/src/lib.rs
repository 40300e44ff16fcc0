//! The cluster aggregator: per-node state and exact cluster sums ([`state`], pure, behind the one mutex
//! of [`shared`]), the gRPC ingest service for agents ([`ingest`]) and the consumer service for `watch`
//! and other clients ([`consumer`]), the HTTP endpoints ([`http`]), publishing windows to sinks
//! ([`publish`]: the publisher and commits; [`sinks`]: the `Sink` trait, stdout and CloudWatch), mutual TLS ([`tls`]), the wiring ([`server`]), typed flags ([`config`]), the terminal view
//! ([`watch`]) and, with the default `demo` feature, a self-contained `demo` (real agents against
//! simulated ipamds; the production image is built without it, so it links neither the agent nor the
//! test fixtures).
#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod ingest;
pub mod publish;
pub mod server;
pub mod shared;
pub mod sinks;
pub mod state;
pub mod tls;
pub mod watch;
