//! The aggregator and agent processes of the end-to-end tests, started through a [`Launch`] with the
//! tests' defaults (loopback addresses, JSON logs, the stdout sink, 200 ms publish windows, 200 ms scrapes).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::proc::{json_field, Launch, Proc};

/// A running aggregator process.
pub struct Aggregator {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
}

impl Aggregator {
    /// Start the host build with `--cluster-id e2e` and `extra` args (and the defaults of [`Aggregator::start_with`]).
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with(Self::launch(dir, name)?.args(["--cluster-id", "e2e"]).args(extra.iter().copied()))
    }

    /// The host build's aggregator as `name`: add args, environment, a namespace, then [`Aggregator::start_with`].
    pub fn launch(dir: &Path, name: &str) -> Result<Launch> {
        Launch::host("cni-metrics-aggregator", name, dir)
    }

    /// Start `launch` with what it does not set itself: gRPC and HTTP on free loopback ports, the stdout
    /// sink, JSON logs, 200 ms publish windows (counters reach /metrics when their window closes), and
    /// test credentials and region before its own environment. Returns once the aggregator logged its
    /// addresses.
    pub fn start_with(launch: Launch) -> Result<Self> {
        let test_env =
            [("AWS_ACCESS_KEY_ID", Some("testing")), ("AWS_SECRET_ACCESS_KEY", Some("testing")), ("AWS_REGION", Some("us-east-1"))];
        let launch = launch
            .default_arg("--grpc-listen", "127.0.0.1:0")
            .default_arg("--http-listen", "127.0.0.1:0")
            .default_arg("--publish-interval", "200ms")
            .default_arg("--stdout", "true")
            .default_arg("--log-format", "json")
            .with_env_first(&test_env);
        let proc = launch.start()?;
        let line = proc.wait_log("aggregator starting", Duration::from_secs(30))?;
        let grpc = json_field(&line, "grpc").context("grpc address in log")?;
        let http = json_field(&line, "http").context("http address in log")?;
        Ok(Self { proc, grpc, http })
    }

    pub async fn readyz(&self) -> Result<(u16, String)> {
        let r = reqwest::get(format!("http://{}/readyz", self.http)).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn metrics(&self) -> Result<String> {
        let body = reqwest::get(format!("http://{}/metrics", self.http)).await?.error_for_status()?.text().await?;
        Ok(body)
    }
}

/// Start an agent process for `node` scraping `ipamd_url` (introspection beside it), streaming to
/// `aggregator_grpc`, with `extra` args over the tests' defaults.
pub fn start_agent(dir: &Path, node: &str, ipamd_url: &str, aggregator_grpc: &str, extra: &[&str]) -> Result<Proc> {
    let enis = ipamd_url.replace("/metrics", "/v1/enis");
    Launch::host("cni-metrics-agent", node, dir)?
        .args(["--ipamd-url", ipamd_url, "--node-name", node, "--imds", "false", "--log-format", "json"])
        .args(extra.iter().copied())
        .default_arg("--aggregator", &format!("http://{aggregator_grpc}"))
        .default_arg("--interval", "200ms")
        .default_arg("--scrape-timeout", "150ms")
        .default_arg("--introspection-url", &enis)
        .default_arg("--http-listen", "127.0.0.1:0")
        .start()
}
