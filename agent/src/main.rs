//! `cni-metrics-agent`: wires configuration, logging and the shutdown signal to [`cni_metrics_agent::run`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use clap::Parser;
use cni_metrics_agent::{run, AgentConfig, AgentStats};
use cni_metrics_proto::telemetry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cfg = AgentConfig::parse();
    telemetry::init(cfg.log_format);
    run(cfg, Arc::new(AgentStats::default()), telemetry::shutdown_signal()).await?;
    Ok(())
}
