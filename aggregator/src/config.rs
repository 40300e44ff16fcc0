//! The aggregator's one typed configuration (clap with `env =`), validated at start-up. Boolean switches
//! take yes/true/no/false in any case like upstream's `USE_CLOUDWATCH`, but an unrecognised value is an
//! error instead of being silently ignored.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::telemetry::LogFormat;

pub use cni_metrics_proto::flags::parse_switch;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "cni-metrics-aggregator",
    version,
    about = "Sums per-node ipamd reports into exact cluster metrics, publishes and re-exposes them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub aggregator: AggregatorConfig,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run an aggregator with simulated nodes (fake ipamd pages, real agents, real gRPC); no AWS, no cluster.
    #[cfg(feature = "demo")]
    Demo(DemoConfig),
    /// A terminal view of a running aggregator (its Consumer gRPC service).
    Watch(WatchConfig),
}

#[derive(Clone, Debug, Args)]
pub struct WatchConfig {
    /// The aggregator's gRPC address.
    #[arg(long = "aggregator", env = "AGGREGATOR_URL", default_value = "http://127.0.0.1:61690")]
    pub aggregator: String,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rows of the node table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Only these nodes (repeat the flag).
    #[arg(long)]
    pub node: Vec<String>,
    /// Redraw at most this often.
    #[arg(long = "refresh", default_value = "1s", value_parser = parse_positive)]
    pub interval: Duration,
    /// Client certificate, key and CA (PEM) when the aggregator requires mutual TLS (use an https:// URL).
    #[command(flatten)]
    pub tls: cni_metrics_proto::tls::ClientTlsFlags,
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

    /// Publish to CloudWatch (namespace, CLUSTER_ID dimension and MetricNames of upstream's helper).
    #[arg(long, env = "USE_CLOUDWATCH", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub cloudwatch: bool,

    /// AWS region of CloudWatch (else the agents' region, else the SDK chain).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// CloudWatch namespace.
    #[arg(long, env = "CLOUDWATCH_NAMESPACE", default_value = "Kubernetes")]
    pub cloudwatch_namespace: String,

    /// CloudWatch storage resolution in seconds: 60 (standard) or 1 (high resolution, costs more).
    #[arg(long, env = "STORAGE_RESOLUTION", default_value_t = 60, value_parser = parse_resolution)]
    pub storage_resolution: i32,

    /// Comma-separated CloudWatch MetricNames to publish (default: all); cuts custom-metric cost.
    #[arg(long, env = "METRIC_ALLOW_LIST", value_delimiter = ',')]
    pub metric_allow_list: Vec<String>,

    /// Publish windows kept while CloudWatch is unreachable (oldest dropped first, counted).
    #[arg(long, env = "MAX_BACKLOG_WINDOWS", default_value_t = 1440)]
    pub max_backlog_windows: usize,

    /// Longest wait between PutMetricData attempts while CloudWatch refuses the credentials (access
    /// denied, expired token, clock skew): windows are held meanwhile, nothing is dropped.
    #[arg(long, env = "CLOUDWATCH_AUTH_RETRY_MAX", default_value = "5m", value_parser = parse_positive)]
    pub cloudwatch_auth_retry_max: Duration,

    /// Time given to sinks to deliver queued windows at shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_positive)]
    pub shutdown_grace: Duration,

    /// Print every publish window to stdout, one line per datum (dry run).
    #[arg(long, env = "USE_STDOUT", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub stdout: bool,

    /// Concurrent gRPC streams one connection may open (an agent needs one).
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 16)]
    pub max_streams_per_connection: u32,

    /// Most agent streams open at once (one per node); more are refused with RESOURCE_EXHAUSTED and
    /// counted, so a flood of connections cannot exhaust memory. Open streams are never dropped for it.
    /// Unset: the open-file limit (raised to its hard limit at start) less 256; the effective value is
    /// logged at start.
    #[arg(long, env = "MAX_STREAMS")]
    pub max_streams: Option<usize>,

    /// Time a new agent stream has to send its Hello.
    #[arg(long, env = "HELLO_TIMEOUT", default_value = "10s", value_parser = parse_positive)]
    pub hello_timeout: Duration,

    /// Largest gRPC message accepted from an agent, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most cluster series held; new ones beyond it are refused and counted.
    #[arg(long, env = "MAX_CLUSTER_SERIES", default_value_t = 200_000)]
    pub max_cluster_series: usize,

    /// Most series one node may define.
    #[arg(long, env = "MAX_SERIES_PER_NODE", default_value_t = 5_000)]
    pub max_series_per_node: usize,

    /// Most departed-node records kept (a node that left: its counters' last totals and ipamd values, so
    /// its next agent run resumes exactly); the oldest is dropped beyond it, counted.
    #[arg(long, env = "MAX_DEPARTED_NODES", default_value_t = 100_000)]
    pub max_departed_nodes: usize,

    /// Break the capacity numbers down by these dimensions (comma-separated: az, instance_type, node), on
    /// /metrics (`cni_metrics_*_by_<label>` families) and as extra CloudWatch dimension sets.
    #[arg(long, env = "BREAKDOWN", value_enum, value_delimiter = ',')]
    pub breakdown: Vec<crate::state::Dim>,

    /// Most breakdown groups (label values over all dimensions); beyond it values go to `other` (counted).
    /// `--max-series`, its old name, still works.
    #[arg(long, alias = "max-series", env = "MAX_BREAKDOWN_SERIES", default_value_t = 1_000)]
    pub max_breakdown_groups: usize,

    /// Subscribers get an update at most this often (when something changed).
    #[arg(long, env = "SUBSCRIBE_INTERVAL", default_value = "1s", value_parser = parse_positive)]
    pub subscribe_interval: Duration,

    /// A node whose IP headroom (ip_max − assigned) is below this counts as low on IPs.
    #[arg(long, env = "LOW_IP_THRESHOLD", default_value_t = 5)]
    pub low_ip_threshold: u32,

    /// Server certificate (PEM) of the gRPC port; with --tls-key and --tls-client-ca turns on mutual TLS.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// CA (PEM) that client certificates must chain to.
    #[arg(long, env = "TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Most TLS handshakes in progress at once; further connections wait (in the listen backlog).
    #[arg(long, env = "MAX_TLS_HANDSHAKES", default_value_t = 256)]
    pub max_tls_handshakes: usize,

    /// Subnet capacity from EC2 (`DescribeSubnets`; needs ec2:DescribeSubnets, see
    /// deploy/iam-policy-subnets.json): per subnet, AZ and cluster, joined with the cluster's own use.
    #[arg(long, env = "SUBNET_METRICS", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub subnet_metrics: bool,

    /// Also the subnets tagged for the VPC CNI's subnet discovery (`kubernetes.io/role/cni`,
    /// `cni.networking.k8s.aws/cluster/<cluster>`) in the cluster's VPCs, used by a node or not.
    #[arg(long, env = "SUBNET_DISCOVERY", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub subnet_discovery: bool,

    /// How often the subnets are described (one paginated DescribeSubnets per refresh).
    #[arg(long, env = "SUBNET_REFRESH", default_value = "60s", value_parser = parse_positive)]
    pub subnet_refresh: Duration,

    /// A subnet is low on addresses below this: a share of its usable addresses (`10%`) or a count (`50`).
    #[arg(long, env = "SUBNET_LOW_THRESHOLD", default_value = "10%", value_parser = crate::state::LowThreshold::parse)]
    pub subnet_low_threshold: crate::state::LowThreshold,

    /// Free /28 prefixes per subnet (with --subnet-metrics; needs ec2:DescribeNetworkInterfaces and
    /// ec2:GetSubnetCidrReservations): `auto` counts once any node holds a prefix (prefix delegation).
    #[arg(long, env = "SUBNET_PREFIXES", value_enum, default_value = "auto")]
    pub subnet_prefixes: crate::state::subnets::space::PrefixMode,

    /// How often free prefixes are counted (one paginated DescribeNetworkInterfaces over the subnets and one
    /// GetSubnetCidrReservations per subnet).
    #[arg(long, env = "SUBNET_PREFIXES_REFRESH", default_value = "5m", value_parser = parse_positive)]
    pub subnet_prefixes_refresh: Duration,

    /// A subnet with fewer free /28 blocks than this is low on prefixes (see docs/metrics.md for the default).
    #[arg(long, env = "SUBNET_LOW_PREFIXES", default_value_t = 32)]
    pub subnet_low_prefixes: u32,

    /// The trailing window of the subnet exhaustion forecast (least squares over the refreshes' samples;
    /// published once at least 6 samples span a quarter of it).
    #[arg(long, env = "FORECAST_WINDOW", default_value = "6h", value_parser = parse_positive)]
    pub forecast_window: Duration,

    /// How an agent proves which node it speaks for. `token`: its projected ServiceAccount token
    /// (audience --token-audience) must be signed by the cluster and name the node of its Hello; others
    /// are refused (UNAUTHENTICATED / PERMISSION_DENIED) and counted. `none`: any client that reaches
    /// the gRPC port may speak for any node (only behind mutual TLS or a tight NetworkPolicy).
    #[arg(long, env = "AGENT_AUTH", value_enum, default_value = "none")]
    pub agent_auth: AgentAuthMode,

    /// Audience the agents' tokens are projected for.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "cni-metrics-aggregator")]
    pub token_audience: String,

    /// ServiceAccount the agents run as (the token's `sub`).
    #[arg(long, env = "TOKEN_SUBJECT", default_value = "system:serviceaccount:kube-system:cni-metrics-agent")]
    pub token_subject: String,

    /// Issuer the agents' tokens must name; by default the API server's (its
    /// `/.well-known/openid-configuration`).
    #[arg(long, env = "TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// The Kubernetes API server, for the token signing keys (`/openid/v1/jwks`).
    #[arg(long = "kubernetes-api-url", env = "KUBERNETES_API_URL", default_value = "https://kubernetes.default.svc")]
    pub api_server: String,

    /// CA bundle of the API server's certificate.
    #[arg(long = "kubernetes-ca-file", env = "KUBERNETES_CA_FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")]
    pub api_ca_file: std::path::PathBuf,

    /// The aggregator's own token for the API server (re-read at every fetch; a missing file: anonymous).
    #[arg(
        long = "kubernetes-token-file",
        env = "KUBERNETES_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub api_token_file: std::path::PathBuf,

    /// Refresh the token signing keys this often (also when a token names an unknown key).
    #[arg(long, env = "TOKEN_KEYS_REFRESH", default_value = "5m", value_parser = parse_positive)]
    pub token_keys_refresh: Duration,

    /// Least time between two key fetches caused by unknown key ids.
    #[arg(long, env = "TOKEN_KEYS_MIN_REFETCH", default_value = "10s", value_parser = parse_positive)]
    pub token_keys_min_refetch: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `--agent-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentAuthMode {
    None,
    Token,
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
    /// Append every published datum to this file (the live view shows a summary of the last window).
    #[arg(long)]
    pub datums_log: Option<std::path::PathBuf>,
    /// Write the logs here (default on a terminal: cni-metrics-demo.log in the temporary directory;
    /// otherwise stderr).
    #[arg(long)]
    pub log_file: Option<std::path::PathBuf>,
}

fn parse_resolution(s: &str) -> Result<i32, String> {
    match s.trim() {
        "60" => Ok(60),
        "1" => Ok(1),
        other => Err(format!("{other:?}: CloudWatch storage resolution is 60 or 1")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-message-bytes must be at least 64 KiB")]
    MaxMessage,
    #[error("--max-cluster-series and --max-series-per-node must be at least 1")]
    Limits,
    #[error("--metric-allow-list: unknown CloudWatch metric name {0:?} (see docs/metrics.md)")]
    UnknownMetric(String),
    #[error("--max-backlog-windows must be at least 1")]
    Backlog,
    #[error("--max-tls-handshakes must be at least 1")]
    Handshakes,
    #[error("mutual TLS needs all of --tls-cert, --tls-key and --tls-client-ca (or none)")]
    TlsIncomplete,
}

impl AggregatorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 64 * 1024 {
            return Err(ConfigError::MaxMessage);
        }
        if self.max_cluster_series == 0 || self.max_series_per_node == 0 {
            return Err(ConfigError::Limits);
        }
        if self.max_backlog_windows == 0 {
            return Err(ConfigError::Backlog);
        }
        if self.max_tls_handshakes == 0 {
            return Err(ConfigError::Handshakes);
        }
        let set = [self.tls_cert.is_some(), self.tls_key.is_some(), self.tls_client_ca.is_some()];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return Err(ConfigError::TlsIncomplete);
        }
        for name in &self.metric_allow_list {
            let known = cni_metrics_proto::catalog::FAMILIES.iter().any(|f| f.cloudwatch_name == Some(name.as_str()))
                || cni_metrics_proto::catalog::DERIVED_CLOUDWATCH_NAMES.contains(&name.as_str());
            if !known {
                return Err(ConfigError::UnknownMetric(name.clone()));
            }
        }
        Ok(())
    }

    /// Blank optional values (an env var set to "") mean unset.
    pub fn normalized(mut self) -> Self {
        self.cluster_id = self.cluster_id.filter(|c| !c.trim().is_empty());
        self.region = self.region.filter(|r| !r.trim().is_empty());
        self
    }

    /// The mutual-TLS files, when configured.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles { cert: self.tls_cert.clone()?, key: self.tls_key.clone()?, client_ca: self.tls_client_ca.clone()? })
    }

    /// The CloudWatch sink's configuration.
    pub fn cloudwatch_config(&self) -> crate::sinks::cloudwatch::CloudWatchConfig {
        crate::sinks::cloudwatch::CloudWatchConfig {
            namespace: self.cloudwatch_namespace.clone(),
            storage_resolution: self.storage_resolution,
            allow_list: (!self.metric_allow_list.is_empty()).then(|| self.metric_allow_list.iter().cloned().collect()),
            max_backlog_windows: self.max_backlog_windows,
            region: self.region.clone().filter(|r| !r.trim().is_empty()),
            auth_backoff: crate::sinks::cloudwatch::default_auth_backoff(self.cloudwatch_auth_retry_max),
            ..crate::sinks::cloudwatch::CloudWatchConfig::default()
        }
    }

    /// The token verifier's configuration, in `--agent-auth token` mode.
    pub fn token_auth_config(&self) -> Option<crate::auth::TokenAuthConfig> {
        (self.agent_auth == AgentAuthMode::Token).then(|| crate::auth::TokenAuthConfig {
            source: crate::auth::KeySourceConfig {
                api_server: self.api_server.clone(),
                ca_file: Some(self.api_ca_file.clone()),
                token_file: Some(self.api_token_file.clone()),
            },
            issuer: self.token_issuer.clone().filter(|i| !i.trim().is_empty()),
            audience: self.token_audience.clone(),
            subject: self.token_subject.clone(),
            refresh: self.token_keys_refresh,
            min_refetch: self.token_keys_min_refetch,
        })
    }

    /// The cluster state's configuration.
    pub fn state_config(&self) -> crate::state::StateConfig {
        crate::state::StateConfig {
            cluster_id: self.cluster_id.clone().unwrap_or_default(),
            node_ttl: self.node_ttl,
            max_cluster_series: self.max_cluster_series,
            max_series_per_node: self.max_series_per_node,
            low_ip_threshold: self.low_ip_threshold as f64,
            breakdown: self.breakdown.clone(),
            max_breakdown_groups: self.max_breakdown_groups,
            max_departed: self.max_departed_nodes,
        }
    }

    /// Every flag at its default, the environment ignored. The clap attributes above are the one
    /// source of defaults: [`AggregatorConfig::for_test`] derives from them and the cores' `Default`s
    /// are tested against them.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Cli::command().mut_args(|a| a.env(None::<&'static str>));
        // Only the defaults are parsed here, so this fails only if an attribute above is broken
        // (`defaults_and_demo` proves it does not).
        let m = cmd.try_get_matches_from(["cni-metrics-aggregator"]).expect("the aggregator's flag defaults parse");
        Cli::from_arg_matches(&m).expect("the aggregator's flag defaults parse").aggregator
    }

    /// Defaults for an in-process aggregator on loopback (tests and the demo): free ports, no sink.
    pub fn for_test(cluster_id: &str) -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_id: Some(cluster_id.to_owned()),
            cloudwatch: false,
            stdout: false,
            // Quicker than production: tests and the demo stop and redraw in fractions of a second.
            shutdown_grace: Duration::from_secs(5),
            subscribe_interval: Duration::from_millis(200),
            ..Self::defaults()
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
    fn switches() {
        let err = parse(&["--prometheus", "maybe"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("maybe"), "{err}");
        assert_eq!(parse(&["--stdout", "YES"]).map(|c| c.aggregator.stdout).ok(), Some(true));
    }

    #[test]
    fn breakdown_groups_under_the_new_and_the_old_name() {
        for flag in ["--max-breakdown-groups", "--max-series"] {
            assert_eq!(parse(&[flag, "7"]).map(|c| c.aggregator.max_breakdown_groups).ok(), Some(7), "{flag}");
        }
        assert_eq!(parse(&[]).map(|c| c.aggregator.max_breakdown_groups).ok(), Some(1_000));
    }

    #[test]
    fn defaults_match_the_cores() {
        let d = AggregatorConfig::defaults();
        let (state, core) = (d.state_config(), crate::state::StateConfig::default());
        assert_eq!(
            (
                state.node_ttl,
                state.max_cluster_series,
                state.max_series_per_node,
                state.low_ip_threshold,
                state.max_breakdown_groups,
                state.max_departed
            ),
            (
                core.node_ttl,
                core.max_cluster_series,
                core.max_series_per_node,
                core.low_ip_threshold,
                core.max_breakdown_groups,
                core.max_departed
            ),
            "StateConfig::default drifted from the flags"
        );
        let (cw, core) = (d.cloudwatch_config(), crate::sinks::cloudwatch::CloudWatchConfig::default());
        assert_eq!(
            (&cw.namespace, cw.storage_resolution, cw.max_backlog_windows, format!("{:?}", cw.auth_backoff)),
            (&core.namespace, core.storage_resolution, core.max_backlog_windows, format!("{:?}", core.auth_backoff)),
            "CloudWatchConfig::default drifted from the flags"
        );
        let t = AggregatorConfig::for_test("x");
        assert_eq!((t.max_streams, t.publish_interval, t.cloudwatch), (d.max_streams, d.publish_interval, false));
    }

    #[test]
    fn defaults_and_demo() {
        let c = parse(&[]).map(|c| c.aggregator).ok();
        assert_eq!(c.as_ref().map(|c| c.grpc_listen.port()), Some(61690));
        assert_eq!(c.as_ref().map(|c| c.http_listen.port()), Some(61681));
        assert_eq!(c.as_ref().map(|c| c.publish_interval), Some(Duration::from_secs(60)));
        #[cfg(feature = "demo")]
        assert!(matches!(parse(&["demo", "--nodes", "2"]).map(|c| c.command), Ok(Some(Command::Demo(DemoConfig { nodes: 2, .. })))));
        #[cfg(not(feature = "demo"))]
        assert!(parse(&["demo"]).is_err(), "a build without the demo feature has no demo");
        assert!(parse(&["--publish-interval", "0"]).is_err());
        // Upstream's manifest sets AWS_CLUSTER_ID="": blank means unset, never a cluster called "".
        let mut a = AggregatorConfig::for_test("x");
        a.cluster_id = Some("  ".into());
        assert_eq!(a.normalized().cluster_id, None);
        let allow = parse(&["--metric-allow-list", "addReqCount,assignIPAddresses"]).map(|c| c.aggregator).ok();
        assert_eq!(allow.as_ref().map(|a| a.metric_allow_list.len()), Some(2));
        assert!(allow.is_some_and(|a| a.validate().is_ok()));
        let typo = parse(&["--metric-allow-list", "addReqCnt"]).map(|c| c.aggregator).ok();
        assert!(matches!(typo.map(|a| a.validate()), Some(Err(ConfigError::UnknownMetric(_)))));
        assert!(parse(&["--storage-resolution", "30"]).is_err());
        assert_eq!(parse(&["--storage-resolution", "1"]).map(|c| c.aggregator.storage_resolution).ok(), Some(1));
        assert!(parse(&["--cloudwatch", "maybe"]).is_err());
    }
}
