//! `cni-metrics-agent`: wires configuration, logging, the HTTP listener and the shutdown signal to
//! [`cni_metrics_agent::run`]; `--prepare-state-dir` (the DaemonSet's init container) instead makes
//! the state directory the agent's and exits.
#![forbid(unsafe_code)]

use std::sync::Arc;

use clap::Parser;
use cni_metrics_agent::{bind_http, run, AgentConfig, AgentStats};
use cni_metrics_proto::telemetry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cfg = AgentConfig::parse();
    telemetry::init(cfg.log_format);
    if let Some(owner) = &cfg.prepare_state_dir {
        let dir = cfg.state_dir.get().ok_or_else(|| anyhow::anyhow!("--prepare-state-dir needs --state-dir (STATE_DIR)"))?;
        cni_metrics_agent::position::prepare_dir(dir, owner).map_err(anyhow::Error::msg)?;
        tracing::info!(dir = %dir.display(), owner = %owner, "state directory ready");
        return Ok(());
    }
    let http = bind_http(&cfg).await?;
    run(cfg, Arc::new(AgentStats::default()), http, telemetry::shutdown_signal()).await?;
    Ok(())
}
