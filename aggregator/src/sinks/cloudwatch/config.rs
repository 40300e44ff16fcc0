//! The CloudWatch sink's configuration and CloudWatch's own limits.

use std::collections::BTreeSet;
use std::time::Duration;

use cni_metrics_proto::backoff::Backoff;
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::flags::{at_least, parse_switch};

/// CloudWatch's PutMetricData limits.
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
pub const DIMENSION: &str = "CLUSTER_ID";

#[derive(Clone, Debug)]
pub struct CloudWatchConfig {
    pub namespace: String,
    /// 60 (standard) or 1 (high resolution).
    pub storage_resolution: i32,
    /// Only these MetricNames are published, when set.
    pub allow_list: Option<BTreeSet<String>>,
    /// Windows kept while CloudWatch is unreachable.
    pub max_backlog_windows: usize,
    /// Region from the flag or `AWS_REGION`.
    pub region: Option<String>,
    /// Time limit of one PutMetricData attempt.
    pub attempt_timeout: Duration,
    /// Backoff after transient errors.
    pub backoff: Backoff,
    /// Backoff after errors that heal only when someone fixes credentials or permissions.
    pub auth_backoff: Backoff,
}

/// `serve`'s flags for CloudWatch.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "CloudWatch")]
pub struct CloudWatchArgs {
    /// Publish to CloudWatch (namespace, CLUSTER_ID dimension and MetricNames of upstream's helper).
    #[arg(long, env = "USE_CLOUDWATCH", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub cloudwatch: bool,

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
    #[arg(long, env = "MAX_BACKLOG_WINDOWS", default_value_t = 1440, value_parser = at_least(1usize, "1"))]
    pub max_backlog_windows: usize,

    /// Longest wait between PutMetricData attempts while CloudWatch refuses the credentials (access
    /// denied, expired token, clock skew): windows are held meanwhile, nothing is dropped.
    #[arg(long, env = "CLOUDWATCH_AUTH_RETRY_MAX", default_value = "5m", value_parser = parse_positive)]
    pub cloudwatch_auth_retry_max: Duration,
}

/// A `--metric-allow-list` entry that is no CloudWatch MetricName this aggregator publishes.
#[derive(Debug, thiserror::Error)]
#[error("--metric-allow-list: unknown CloudWatch metric name {0:?} (see docs/metrics.md)")]
pub struct UnknownMetric(pub String);

impl CloudWatchArgs {
    /// The sink's configuration (`region`: the AWS flag's), `None` unless `--cloudwatch` is on;
    /// every allow-list entry must be a MetricName this aggregator publishes.
    pub fn config(&self, region: Option<String>) -> Result<Option<CloudWatchConfig>, UnknownMetric> {
        if let Some(name) = self.metric_allow_list.iter().find(|n| !known_metric(n)) {
            return Err(UnknownMetric(name.clone()));
        }
        Ok(self.cloudwatch.then(|| self.sink_config(region)))
    }

    /// The configuration these flags give, on or off.
    pub fn sink_config(&self, region: Option<String>) -> CloudWatchConfig {
        CloudWatchConfig {
            namespace: self.cloudwatch_namespace.clone(),
            storage_resolution: self.storage_resolution,
            allow_list: (!self.metric_allow_list.is_empty()).then(|| self.metric_allow_list.iter().cloned().collect()),
            max_backlog_windows: self.max_backlog_windows,
            region,
            auth_backoff: default_auth_backoff(self.cloudwatch_auth_retry_max),
            ..CloudWatchConfig::default()
        }
    }
}

fn known_metric(name: &str) -> bool {
    cni_metrics_proto::catalog::FAMILIES.iter().any(|f| f.cloudwatch_name == Some(name))
        || cni_metrics_proto::catalog::DERIVED_CLOUDWATCH_NAMES.contains(&name)
}

fn parse_resolution(s: &str) -> Result<i32, String> {
    match s.trim() {
        "60" => Ok(60),
        "1" => Ok(1),
        other => Err(format!("{other:?}: CloudWatch storage resolution is 60 or 1")),
    }
}

/// The default backoff after healing errors: 2 s doubling to 5 min, ±20 %.
pub fn default_auth_backoff(max: Duration) -> Backoff {
    let min = Duration::from_secs(2).min(max);
    Backoff::new(min, max, 2.0, 0.2).unwrap_or_default()
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            namespace: "Kubernetes".into(),
            storage_resolution: 60,
            allow_list: None,
            max_backlog_windows: 1440,
            region: None,
            attempt_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            auth_backoff: default_auth_backoff(Duration::from_secs(300)),
        }
    }
}
