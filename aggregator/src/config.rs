//! The aggregator's one typed configuration (clap with `env =`), validated at start-up. Boolean switches
//! take yes/true/no/false in any case like upstream's `USE_CLOUDWATCH`, but an unrecognised value is an
//! error instead of being silently ignored.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::telemetry::LogFormat;

/// Parse yes/true/1/on or no/false/0/off, case-insensitively.
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        other => Err(format!("{other:?} is not one of yes/true/no/false")),
    }
}

#[derive(Clone, Debug, Parser)]
#[command(name = "cni-metrics-aggregator", version, about = "Sums per-node ipamd reports into exact cluster metrics, publishes and re-exposes them")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub aggregator: AggregatorConfig,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run an aggregator with simulated nodes (fake ipamd pages, real agents, real gRPC); no AWS, no cluster.
    Demo(DemoConfig),
}

#[derive(Clone, Debug, Args)]
pub struct AggregatorConfig {
    /// gRPC listen address for agents.
    #[arg(long, env = "GRPC_LISTEN", default_value = "0.0.0.0:61690")]
    pub grpc_listen: SocketAddr,

    /// HTTP listen address for /metrics, /healthz and /readyz (upstream helper's Prometheus port).
    #[arg(long, env = "HTTP_LISTEN", default_value = "0.0.0.0:61681")]
    pub http_listen: SocketAddr,

    /// Cluster id: the CLUSTER_ID dimension and the cluster_id label.
    #[arg(long, env = "AWS_CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// Publish window length.
    #[arg(long, env = "PUBLISH_INTERVAL", default_value = "60s", value_parser = parse_positive)]
    pub publish_interval: Duration,

    /// Drop a node that neither reports nor says goodbye for this long (default: 3 × its interval).
    #[arg(long, env = "NODE_TTL", value_parser = parse_positive)]
    pub node_ttl: Option<Duration>,

    /// Serve the cluster aggregates on /metrics.
    #[arg(long, env = "USE_PROMETHEUS", default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub prometheus: bool,

    /// Print every publish window to stdout, one line per datum (dry run).
    #[arg(long, env = "USE_STDOUT", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub stdout: bool,

    /// Largest gRPC message accepted from an agent, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most cluster series held; new ones beyond it are refused and counted.
    #[arg(long, env = "MAX_CLUSTER_SERIES", default_value_t = 200_000)]
    pub max_cluster_series: usize,

    /// Most series one node may define.
    #[arg(long, env = "MAX_SERIES_PER_NODE", default_value_t = 5_000)]
    pub max_series_per_node: usize,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Args)]
pub struct DemoConfig {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Scrape interval of the simulated agents (and step of the simulated ipamds).
    #[arg(long, default_value = "1s", value_parser = parse_positive)]
    pub interval: Duration,
    /// Publish window of the demo aggregator.
    #[arg(long = "demo-publish-interval", default_value = "5s", value_parser = parse_positive)]
    pub publish_interval: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = parse_positive)]
    pub duration: Option<Duration>,
    /// HTTP address of the demo aggregator's /metrics (a free port is taken when busy).
    #[arg(long = "demo-http-listen", default_value = "127.0.0.1:61681")]
    pub http_listen: SocketAddr,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-message-bytes must be at least 64 KiB")]
    MaxMessage,
    #[error("--max-cluster-series and --max-series-per-node must be at least 1")]
    Limits,
    #[error("--cluster-id / AWS_CLUSTER_ID must not be blank when set")]
    BlankClusterId,
}

impl AggregatorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 64 * 1024 {
            return Err(ConfigError::MaxMessage);
        }
        if self.max_cluster_series == 0 || self.max_series_per_node == 0 {
            return Err(ConfigError::Limits);
        }
        if self.cluster_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::BlankClusterId);
        }
        Ok(())
    }

    /// Defaults for an in-process aggregator on loopback (tests and the demo).
    pub fn for_test(cluster_id: &str) -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_id: Some(cluster_id.to_owned()),
            publish_interval: Duration::from_secs(60),
            node_ttl: None,
            prometheus: true,
            stdout: false,
            max_message_bytes: 4 * 1024 * 1024,
            max_cluster_series: 200_000,
            max_series_per_node: 5_000,
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cni-metrics-aggregator").chain(args.iter().copied()))
    }

    #[test]
    fn switches_table() {
        for (s, want) in [("yes", Ok(true)), ("TRUE", Ok(true)), ("No", Ok(false)), ("false", Ok(false))] {
            assert_eq!(parse_switch(s), want, "{s}");
        }
        assert!(parse_switch("ture").is_err());
        let err = parse(&["--prometheus", "maybe"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("maybe"), "{err}");
        assert_eq!(parse(&["--stdout", "YES"]).map(|c| c.aggregator.stdout).ok(), Some(true));
    }

    #[test]
    fn defaults_and_demo() {
        let c = parse(&[]).map(|c| c.aggregator).ok();
        assert_eq!(c.as_ref().map(|c| c.grpc_listen.port()), Some(61690));
        assert_eq!(c.as_ref().map(|c| c.http_listen.port()), Some(61681));
        assert_eq!(c.as_ref().map(|c| c.publish_interval), Some(Duration::from_secs(60)));
        assert!(matches!(parse(&["demo", "--nodes", "2"]).map(|c| c.command), Ok(Some(Command::Demo(DemoConfig { nodes: 2, .. })))));
        assert!(parse(&["--publish-interval", "0"]).is_err());
        let mut a = AggregatorConfig::for_test("x");
        a.cluster_id = Some("  ".into());
        assert!(matches!(a.validate(), Err(ConfigError::BlankClusterId)));
    }
}
