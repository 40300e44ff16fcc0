//! The contract shared by agent and aggregator: the generated gRPC types of `cni_metrics.v1`
//! (see `proto/cni_metrics/v1/ingest.proto`) and the [`catalog`] of ipamd metric families, which says
//! for every family how it is typed, how it folds across labels and nodes and what CloudWatch calls it.
//! It also holds the few runtime pieces both binaries share: the one Prometheus text writer
//! ([`exposition`]), the retry [`backoff`], [`duration`] and
//! switch ([`flags`]) parsing of knobs, bounded metric [`labels`] and the scrape [`status`] labels, the [`shapes`] of wire strings, the wall [`clock`], the small-buffer gRPC [`codec`], reports in [`parts`], the TLS client flags ([`tls`]) and
//! [`telemetry`] (logging) set-up.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod catalog;
pub mod clock;
pub mod codec;
pub mod duration;
pub mod exposition;
pub mod flags;
pub mod labels;
pub mod parts;
pub mod shapes;
pub mod status;
pub mod telemetry;
pub mod tls;

/// Generated code for the `cni_metrics.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cni_metrics.v1");

    /// The encoded descriptor set of the package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cni_metrics_descriptor.bin"));
}
