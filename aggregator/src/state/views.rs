//! Read-only views of the cluster state for `/metrics`, the consumer API, `watch`, the demo and tests:
//! nodes, cluster series, capacity totals, the change version.

use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::v1::{MetricKind, ScrapeStatus};

use super::index::NodeChanges;
use super::{CapacityTotals, ClusterState, NodeState};

impl ClusterState {
    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }

    /// Nodes by name, from just after `after` (from the first when `None`).
    pub fn nodes_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a NodeState> + 'a {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_name.range::<str, _>((from, Bound::Unbounded)).filter_map(|n| self.nodes.get(n))
    }

    /// Nodes by (IP headroom, name), least headroom first and unknown last, from just after `after`.
    pub fn nodes_by_headroom_after<'a>(&'a self, after: Option<(u64, &str)>) -> impl Iterator<Item = (u64, &'a NodeState)> + 'a {
        self.index.by_headroom_after(after).filter_map(|(rank, n)| Some((rank, self.nodes.get(n)?)))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every cluster series with a value: (name, labels, kind, value).
    pub fn aggregates(&self) -> impl Iterator<Item = (&str, &[(String, String)], MetricKind, f64)> {
        self.slots.iter().filter_map(|s| {
            let v = match s.kind {
                MetricKind::Counter => Some(s.total),
                _ => s.gauge_value(),
            }?;
            Some((&*s.name, s.labels.as_slice(), s.kind, v))
        })
    }

    /// Cluster sums of the derived capacity numbers.
    pub fn capacity(&self) -> &CapacityTotals {
        &self.capacity
    }

    /// Changes since start; a consumer that saw this number has seen the current state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A node is stale when its last scrape failed or it missed two reports (it is still within its TTL).
    pub fn is_stale(n: &NodeState, now: Instant) -> bool {
        n.status != ScrapeStatus::Ok || now.saturating_duration_since(n.last_seen) > n.interval * 2
    }

    /// When the node's last report arrived, as a key that orders and pages (nanoseconds from an origin
    /// fixed per aggregator process).
    pub fn report_key(&self, n: &NodeState) -> u64 {
        n.last_seen.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A change no report made (nodes went stale by time): consumers that saw the old version look again.
    pub fn note_change(&mut self) {
        self.version += 1;
    }

    /// The nodes changed (or gone stale by time in [`since`, `now`)) and those removed since the last
    /// call, for the consumers' change feed; `None` when more changed than the state remembers between
    /// two calls (the feed then starts its picture again).
    pub fn take_changes(&mut self, since: Instant, now: Instant) -> Option<NodeChanges> {
        let mut log = self.index.take_log()?;
        let went: Vec<Arc<str>> = self.index.went_stale(since, now).cloned().collect();
        if !went.is_empty() {
            log.changed.extend(went);
            log.changed.sort_unstable();
            log.changed.dedup();
        }
        Some(log)
    }

    /// Nodes whose last scrape had this status.
    pub fn status_count(&self, s: ScrapeStatus) -> u64 {
        self.index.count(s)
    }

    /// Nodes per scrape status (those with any).
    pub fn status_counts(&self) -> impl Iterator<Item = (ScrapeStatus, u64)> + '_ {
        self.index.by_status()
    }

    /// Stale nodes at `now` (see [`ClusterState::is_stale`]), without a pass over the nodes.
    pub fn stale_count(&self, now: Instant) -> u64 {
        self.index.stale(now)
    }

    /// Series the nodes' agents dropped at their per-node limit, over all nodes.
    pub fn dropped_series(&self) -> u64 {
        self.index.dropped()
    }

    /// The one cluster name all agents that report one agree on.
    pub fn agreed_cluster_name(&self) -> Option<&str> {
        self.cluster_names.agreed()
    }

    /// The one AWS region all agents that report one agree on.
    pub fn agreed_region(&self) -> Option<&str> {
        self.regions.agreed()
    }

    /// A counter's cluster total including the open window (reports applied, not yet published); a
    /// gauge's value as [`ClusterState::value`].
    pub fn live_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let s = self.slot(name, labels)?;
        match s.kind {
            MetricKind::Counter => Some(s.total + s.window),
            _ => s.gauge_value(),
        }
    }

    /// The cluster value of a series (gauge sum/max or counter total to the last closed window), for
    /// tests and views.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let s = self.slot(name, labels)?;
        match s.kind {
            MetricKind::Counter => Some(s.total),
            _ => s.gauge_value(),
        }
    }

    fn slot(&self, name: &str, labels: &[(&str, &str)]) -> Option<&super::series::Slot> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        l.sort_unstable();
        let i = *self.slot_index.get(&(Arc::from(name), l))?;
        self.slots.get(i as usize)
    }
}
