//! The CloudWatch sink's configuration and CloudWatch's own limits.

use std::collections::BTreeSet;
use std::time::Duration;

use cni_metrics_proto::backoff::Backoff;

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
