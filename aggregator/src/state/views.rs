//! Read-only views of the cluster state for `/metrics`, the consumer API, `watch`, the demo and tests:
//! nodes, cluster series, capacity totals, the change version. Nothing here changes the state.

use std::time::Instant;

use cni_metrics_proto::v1::{MetricKind, ScrapeStatus};

use super::{CapacityTotals, ClusterState, NodeState, SubnetState};

impl ClusterState {
    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.book.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.book.iter()
    }

    /// Nodes by name, from just after `after` (from the first when `None`).
    pub fn nodes_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a NodeState> + 'a {
        self.book.after(after)
    }

    /// Nodes by (IP headroom, name), least headroom first and unknown last, from just after `after`.
    pub fn nodes_by_headroom_after<'a>(&'a self, after: Option<(u64, &str)>) -> impl Iterator<Item = (u64, &'a NodeState)> + 'a {
        self.book.by_headroom_after(after)
    }

    pub fn node_count(&self) -> usize {
        self.book.len()
    }

    /// Every cluster series with a value: (name, labels, kind, value).
    pub fn aggregates(&self) -> impl Iterator<Item = (&str, &[(String, String)], MetricKind, f64)> {
        self.series.iter().filter_map(|s| Some((&**s.name(), s.labels(), s.kind(), s.value()?)))
    }

    /// Cluster sums of the derived capacity numbers.
    pub fn capacity(&self) -> &CapacityTotals {
        &self.capacity
    }

    /// Changes since start; a consumer that saw this number has seen the current state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the node's last report arrived, as a key that orders and pages (nanoseconds from an origin
    /// fixed per aggregator process).
    pub fn report_key(&self, n: &NodeState) -> u64 {
        n.last_seen().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Nodes whose last scrape had this status.
    pub fn status_count(&self, s: ScrapeStatus) -> u64 {
        self.book.status_count(s)
    }

    /// Nodes per scrape status (those with any).
    pub fn status_counts(&self) -> impl Iterator<Item = (ScrapeStatus, u64)> + '_ {
        self.book.index().by_status()
    }

    /// Stale nodes at `now` (see [`NodeState::is_stale`]), without a pass over the nodes.
    pub fn stale_count(&self, now: Instant) -> u64 {
        self.book.index().stale(now)
    }

    /// Series the nodes' agents dropped at their per-node limit, over all nodes.
    pub fn dropped_series(&self) -> u64 {
        self.book.index().dropped()
    }

    /// The one cluster name all agents that report one agree on.
    pub fn agreed_cluster_name(&self) -> Option<&str> {
        self.book.agreed_cluster_name()
    }

    /// The one AWS region all agents that report one agree on.
    pub fn agreed_region(&self) -> Option<&str> {
        self.book.agreed_region()
    }

    /// A counter's cluster total including the open window (reports applied, not yet published); a
    /// gauge's value as [`ClusterState::value`].
    pub fn live_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series.find(name, labels)?.live_value()
    }

    /// The cluster value of a series (gauge sum/max or counter total to the last closed window), for
    /// tests and views.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series.find(name, labels)?.value()
    }

    /// The subnet part (`--subnet-metrics`).
    pub fn subnets(&self) -> &SubnetState {
        &self.subnets
    }
}
