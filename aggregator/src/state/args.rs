//! `serve`'s flags for the cluster state (its identity, node TTL, limits, breakdowns and the low-IP
//! threshold), validated into the [`StateConfig`] the state runs with.

use std::time::Duration;

use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::flags::{at_least, blank_or, non_blank, NonBlank};

use super::{Dim, StateConfig};

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Cluster state")]
pub struct StateArgs {
    /// Cluster id: the CLUSTER_ID dimension and the cluster_id label (blank: unset, then the cluster
    /// name all agents agree on).
    #[arg(long, env = "AWS_CLUSTER_ID", default_value = "", hide_default_value = true, value_parser = non_blank::<String>)]
    pub cluster_id: NonBlank<String>,

    /// Drop a node that neither reports nor says goodbye for this long (default: 3 × its interval).
    #[arg(long, env = "NODE_TTL", default_value = "", hide_default_value = true, value_parser = blank_or(parse_positive))]
    pub node_ttl: NonBlank<Duration>,

    /// Most cluster series held; new ones beyond it are refused and counted.
    #[arg(long, env = "MAX_CLUSTER_SERIES", default_value_t = 200_000, value_parser = at_least(1usize, "1"))]
    pub max_cluster_series: usize,

    /// Most series one node may define.
    #[arg(long, env = "MAX_SERIES_PER_NODE", default_value_t = 5_000, value_parser = at_least(1usize, "1"))]
    pub max_series_per_node: usize,

    /// Most departed-node records kept (a node that left: its counters' last totals and ipamd values, so
    /// its next agent run resumes exactly); the oldest is dropped beyond it, counted.
    #[arg(long, env = "MAX_DEPARTED_NODES", default_value_t = 100_000)]
    pub max_departed_nodes: usize,

    /// Break the capacity numbers down by these dimensions (comma-separated: az, instance_type, node), on
    /// /metrics (`cni_metrics_*_by_<label>` families) and as extra CloudWatch dimension sets.
    #[arg(long, env = "BREAKDOWN", value_enum, value_delimiter = ',')]
    pub breakdown: Vec<Dim>,

    /// Most breakdown groups (label values over all dimensions); beyond it values go to `other` (counted).
    /// `--max-series`, its old name, still works.
    #[arg(long, alias = "max-series", env = "MAX_BREAKDOWN_SERIES", default_value_t = 1_000)]
    pub max_breakdown_groups: usize,

    /// A node whose IP headroom (ip_max − assigned) is below this counts as low on IPs.
    #[arg(long, env = "LOW_IP_THRESHOLD", default_value_t = 5)]
    pub low_ip_threshold: u32,
}

impl StateArgs {
    /// The state's configuration.
    pub fn config(&self) -> StateConfig {
        StateConfig {
            cluster_id: self.cluster_id.get().cloned().unwrap_or_default(),
            node_ttl: self.node_ttl.get().copied(),
            max_cluster_series: self.max_cluster_series,
            max_series_per_node: self.max_series_per_node,
            low_ip_threshold: f64::from(self.low_ip_threshold),
            breakdown: self.breakdown.clone(),
            max_breakdown_groups: self.max_breakdown_groups,
            max_departed: self.max_departed_nodes,
        }
    }
}
