//! The agent's one typed configuration: every knob is a flag with an environment variable, validated at
//! start-up so a bad value is a clear error instead of a silent default (upstream hung on an interval of 0).

use std::time::Duration;

use clap::Parser;
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::flags::{non_blank, parse_switch, NonBlank};
use cni_metrics_proto::telemetry::LogFormat;
use std::path::PathBuf;

/// IP_COOLDOWN_PERIOD: 0 (ipamd then keeps no freed address from pods), or a positive duration.
fn parse_cooldown(s: &str) -> Result<Duration, cni_metrics_proto::duration::DurationError> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_positive(s)
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "cni-metrics-agent",
    version,
    about = "Reads ipamd's metrics on this node and streams deltas to the cni-metrics aggregator"
)]
pub struct AgentConfig {
    /// ipamd's metrics page on this node.
    #[arg(long, env = "IPAMD_METRICS_URL", default_value = "http://127.0.0.1:61678/metrics")]
    pub ipamd_url: String,

    /// Scrape interval: plain seconds (`30`) or a duration (`500ms`, `2s`, `1m`).
    #[arg(long, env = "METRIC_UPDATE_INTERVAL", default_value = "30", value_parser = parse_positive, allow_hyphen_values = true)]
    pub interval: Duration,

    /// This node's name (from the downward API in a cluster); blank: the host name.
    #[arg(long, env = "NODE_NAME", default_value = "", hide_default_value = true, value_parser = non_blank::<String>)]
    pub node_name: NonBlank<String>,

    /// The aggregator's gRPC address.
    #[arg(long, env = "AGGREGATOR_URL", default_value = "http://cni-metrics-aggregator.kube-system.svc:61690")]
    pub aggregator: String,

    /// An ipamd that started at most this long before the agent's first scrape is a new node: its
    /// counters count from zero instead of being a baseline.
    #[arg(long, env = "INITIAL_WINDOW", default_value = "5m", value_parser = parse_positive)]
    pub initial_window: Duration,

    /// Time limit of one scrape (connect + full body); capped at the interval.
    #[arg(long, env = "SCRAPE_TIMEOUT", default_value = "5s", value_parser = parse_positive)]
    pub scrape_timeout: Duration,

    /// HTTP/2 keepalive ping interval on the aggregator stream: a link that died silently (a partition)
    /// is noticed within this plus min(10 s, this), and the agent reconnects.
    #[arg(long, env = "KEEPALIVE", default_value = "30s", value_parser = parse_positive)]
    pub keepalive: Duration,

    /// Largest ipamd page accepted, in bytes.
    #[arg(long, env = "MAX_PAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_page_bytes: usize,

    /// Most series kept for this node; new series beyond it are dropped and counted.
    #[arg(long, env = "MAX_SERIES", default_value_t = 2000)]
    pub max_series: usize,

    /// Availability zone reported to the aggregator (optional).
    #[arg(long, env = "AVAILABILITY_ZONE", default_value = "")]
    pub availability_zone: String,

    /// Instance type reported to the aggregator (optional).
    #[arg(long, env = "INSTANCE_TYPE", default_value = "")]
    pub instance_type: String,

    /// Instance id reported to the aggregator (optional).
    #[arg(long, env = "INSTANCE_ID", default_value = "")]
    pub instance_id: String,

    /// AWS region reported to the aggregator (else from instance metadata).
    #[arg(long, env = "AWS_REGION", default_value = "")]
    pub region: String,

    /// EKS cluster name reported to the aggregator (else the `eks:cluster-name` instance tag, when
    /// instance metadata tags are enabled).
    #[arg(long, env = "CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,

    /// Look up AZ, region, instance type/id and cluster name in EC2 instance metadata (IMDSv2).
    #[arg(long, env = "USE_IMDS", default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub imds: bool,

    /// Instance metadata endpoint.
    #[arg(long, env = "AWS_EC2_METADATA_SERVICE_ENDPOINT", default_value = "http://169.254.169.254")]
    pub imds_endpoint: String,

    /// The agent's own /metrics, /healthz and /readyz; empty disables it. Must not collide with ipamd
    /// (61678, 61679, 50051), the network-policy agent (8162, 8163) or upstream's helper (61681).
    #[arg(long, env = "AGENT_HTTP_LISTEN", default_value = "0.0.0.0:61691", value_parser = non_blank::<String>)]
    pub http_listen: NonBlank<String>,

    /// Mutual TLS to the aggregator (use an https:// --aggregator URL).
    #[command(flatten)]
    pub tls: cni_metrics_proto::tls::ClientTlsFlags,

    /// The projected ServiceAccount token (audience `cni-metrics-aggregator`) sent with every stream,
    /// so an aggregator in `--agent-auth token` mode knows this agent speaks for its own node. Re-read at
    /// every connection (kubelet rotates it). Empty: no token.
    #[arg(long, env = "TOKEN_FILE", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub token_file: NonBlank<PathBuf>,

    /// ipamd's introspection endpoint for per-subnet usage; empty disables it.
    #[arg(long, env = "INTROSPECTION_URL", default_value = "http://127.0.0.1:61679/v1/enis", value_parser = non_blank::<String>)]
    pub introspection_url: NonBlank<String>,

    /// ipamd's IP_COOLDOWN_PERIOD (aws-node's own variable: plain seconds, or a duration; 0 for none):
    /// how long a freed address stays from pods. The agent counts the free addresses still in it.
    #[arg(long, env = "IP_COOLDOWN_PERIOD", default_value = "30", value_parser = parse_cooldown)]
    pub ip_cooldown_period: Duration,

    /// How much of the node's pool history the agent keeps for the warm-pool advisor (one 32-byte
    /// sample per scrape, at most 8640).
    #[arg(long, env = "ADVISOR_WINDOW", default_value = "24h", value_parser = parse_positive)]
    pub advisor_window: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Directory (a hostPath) where the agent keeps its committed counting position, so that a new
    /// agent run resumes exactly when no aggregator knows the node (both restarted, e.g. an upgrade).
    /// Empty disables it.
    #[arg(long, env = "STATE_DIR", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub state_dir: NonBlank<PathBuf>,

    /// Create the state directory, give it to this `uid:gid` (mode 0700) and exit: the DaemonSet's init
    /// container, the one step that runs as root (with CAP_CHOWN only), as kubelet creates a hostPath
    /// directory owned by root.
    #[arg(long, value_name = "UID:GID")]
    pub prepare_state_dir: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no node name: set NODE_NAME (downward API spec.nodeName) or --node-name")]
    NoNodeName,
    #[error("node name {0:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253 characters)")]
    BadNodeName(String),
    #[error("{flag} {value:?} does not have the shape of an AWS {what} (lowercase letters, digits, '-', at most 32 characters; instance types also '.'; cluster names letters, digits, '-', '_', at most 100)")]
    BadFact { flag: &'static str, value: String, what: &'static str },
    #[error("--max-series must be at least 1")]
    MaxSeries,
    #[error("--max-page-bytes must be at least 1024")]
    MaxPageBytes,
    #[error("invalid --aggregator URL {0:?}: {1}")]
    Aggregator(String, String),
    #[error(transparent)]
    Tls(#[from] cni_metrics_proto::tls::ClientTlsError),
    #[error("invalid --http-listen address {0:?} (host:port, or empty to disable)")]
    HttpListen(String),
    #[error(
        "--http-listen port {0} is taken on EKS nodes (ipamd 61678/61679/50051, network-policy agent 8162/8163, upstream helper 61681)"
    )]
    ReservedPort(u16),
}

impl AgentConfig {
    /// Every flag at its default, the environment ignored. The clap attributes above are the one
    /// source of defaults: [`AgentConfig::for_test`] and the pure cores' `Default`s derive from them
    /// or are tested against them.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Self::command().mut_args(|a| a.env(None::<&'static str>));
        // Only the defaults are parsed here, so this fails only if an attribute above is broken
        // (`defaults_parse_and_match_the_cores` proves it does not).
        let m = cmd.try_get_matches_from(["cni-metrics-agent"]).expect("the agent's flag defaults parse");
        Self::from_arg_matches(&m).expect("the agent's flag defaults parse")
    }

    /// Defaults for an in-process agent (tests and the demo): loopback only, no instance metadata, no
    /// introspection, no HTTP endpoint.
    pub fn for_test(ipamd_url: &str, aggregator: &str, node_name: &str, interval: Duration) -> Self {
        Self {
            ipamd_url: ipamd_url.to_owned(),
            interval,
            node_name: NonBlank::new(Some(node_name.to_owned())),
            aggregator: aggregator.to_owned(),
            imds: false,
            introspection_url: NonBlank::default(),
            http_listen: NonBlank::default(),
            ..Self::defaults()
        }
    }

    /// Whether to query instance metadata (`AWS_EC2_METADATA_DISABLED=true` turns it off too).
    pub fn imds_enabled(&self) -> bool {
        self.imds && !std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The node name, from the flag or the host name.
    pub fn resolved_node_name(&self) -> Result<String, ConfigError> {
        if let Some(n) = self.node_name.get() {
            return Ok(n.trim().to_owned());
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .ok_or(ConfigError::NoNodeName)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_series == 0 {
            return Err(ConfigError::MaxSeries);
        }
        if self.max_page_bytes < 1024 {
            return Err(ConfigError::MaxPageBytes);
        }
        tonic::transport::Endpoint::from_shared(self.aggregator.clone())
            .map_err(|e| ConfigError::Aggregator(self.aggregator.clone(), e.to_string()))?;
        self.tls.enabled()?;
        if let Some(addr) = self.http_addr()? {
            if [61678, 61679, 50051, 8162, 8163, 61681].contains(&addr.port()) {
                return Err(ConfigError::ReservedPort(addr.port()));
            }
        }
        use cni_metrics_proto::shapes::{fact_ok, Fact};
        for (flag, fact, value, what) in [
            ("--availability-zone", Fact::AvailabilityZone, &self.availability_zone, "availability zone"),
            ("--region", Fact::Region, &self.region, "region"),
            ("--instance-type", Fact::InstanceType, &self.instance_type, "instance type"),
            ("--instance-id", Fact::InstanceId, &self.instance_id, "instance id"),
            ("--cluster-name", Fact::ClusterName, &self.cluster_name, "EKS cluster name"),
        ] {
            if !fact_ok(fact, value.trim()) {
                return Err(ConfigError::BadFact { flag, value: value.clone(), what });
            }
        }
        let node = self.resolved_node_name()?;
        if !cni_metrics_proto::shapes::is_dns1123_subdomain(&node) {
            return Err(ConfigError::BadNodeName(node));
        }
        Ok(())
    }

    /// The agent's HTTP address, `None` when disabled.
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(s) = self.http_listen.get().map(|s| s.trim()) else { return Ok(None) };
        s.parse().map(Some).map_err(|_| ConfigError::HttpListen(s.to_owned()))
    }

    /// The scrape timeout actually used: never longer than the interval.
    pub fn effective_scrape_timeout(&self) -> Duration {
        self.scrape_timeout.min(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentConfig, clap::Error> {
        AgentConfig::try_parse_from(std::iter::once("cni-metrics-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_parse_and_match_the_cores() {
        let d = AgentConfig::defaults();
        assert_eq!((d.interval, d.scrape_timeout, d.keepalive), (Duration::from_secs(30), Duration::from_secs(5), Duration::from_secs(30)));
        assert!(d.imds && !d.state_dir.is_set() && d.http_listen.get().is_some_and(|h| h == "0.0.0.0:61691"), "{d:?}");
        let core = crate::delta::DeltaConfig::default();
        assert_eq!((d.initial_window, d.max_series), (core.initial_window, core.max_series), "DeltaConfig::default drifted from the flags");
        let t = AgentConfig::for_test("http://i", "http://a", "n", Duration::from_secs(1));
        assert_eq!((t.max_page_bytes, t.imds, t.http_listen.is_set()), (d.max_page_bytes, false, false));
    }

    #[test]
    fn interval_forms_and_errors() {
        assert_eq!(parse(&["--interval", "30"]).map(|c| c.interval).ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse(&["--interval", "500ms"]).map(|c| c.interval).ok(), Some(Duration::from_millis(500)));
        for bad in ["0", "-3", "abc"] {
            let err = parse(&["--interval", bad]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("interval"), "{bad}: {err}");
        }
    }

    #[test]
    fn blank_means_unset_in_every_optional_flag() {
        let c = parse(&["--node-name", " ", "--http-listen", "", "--token-file", "", "--introspection-url", "  ", "--state-dir", ""]);
        let c = c.expect("blank values parse");
        assert!(!c.node_name.is_set() && !c.token_file.is_set() && !c.introspection_url.is_set() && !c.state_dir.is_set());
        assert!(matches!(c.http_addr(), Ok(None)), "a blank --http-listen disables the endpoint");
        let c = parse(&["--token-file", "/var/run/token", "--state-dir", "/var/lib/x"]).expect("values parse");
        assert_eq!((c.token_file.get().cloned(), c.state_dir.get().cloned()), (Some("/var/run/token".into()), Some("/var/lib/x".into())));
    }

    #[test]
    fn validation() {
        let mut c = AgentConfig::for_test("http://127.0.0.1:1/metrics", "http://127.0.0.1:2", "n1", Duration::from_secs(1));
        assert!(c.validate().is_ok());
        c.aggregator = "not a url".into();
        assert!(matches!(c.validate(), Err(ConfigError::Aggregator(..))));
        c.aggregator = "http://127.0.0.1:2".into();
        c.max_series = 0;
        assert!(matches!(c.validate(), Err(ConfigError::MaxSeries)));
        c.max_series = 1;
        let listen = |s: &str| NonBlank::new(Some(s.to_owned()));
        c.http_listen = listen("0.0.0.0:61678");
        assert!(matches!(c.validate(), Err(ConfigError::ReservedPort(61678))));
        c.http_listen = listen("nonsense");
        assert!(matches!(c.validate(), Err(ConfigError::HttpListen(_))));
        c.http_listen = listen("0.0.0.0:61691");
        assert!(c.validate().is_ok());
        c.scrape_timeout = Duration::from_secs(60);
        assert_eq!(c.effective_scrape_timeout(), Duration::from_secs(1));
    }
}
