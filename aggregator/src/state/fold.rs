//! How a node's series fold into the cluster series: definitions (a node series points at its slot),
//! gauge values into sums and maxima, counter running totals into the open window as increments, and
//! the capacity gauges into the node's derived capacity, the cluster's and the breakdowns'. A report
//! costs O(series it changes), never O(nodes).

use std::sync::Arc;

use cni_metrics_proto::v1::{MetricKind, SeriesDef};

use super::node::{unpublished_entry, NodeSeries};
use super::series::withdraw;
use super::{CapRole, ClusterState, SeriesRefusal};

impl ClusterState {
    /// A node defines a series (kept as it is when the run defined it on an earlier stream).
    pub(super) fn define(&mut self, node_name: &Arc<str>, d: &SeriesDef) {
        let Some(per_node) = self.book.get(node_name).map(|n| n.series.len()) else { return };
        if self.book.get(node_name).is_some_and(|n| n.series.contains_key(&d.id)) {
            return; // Known from an earlier stream of the same run: keep its last total.
        }
        let kind = MetricKind::try_from(d.kind).unwrap_or(MetricKind::Gauge);
        let slot = if per_node >= self.cfg.max_series_per_node { Err(SeriesRefusal::NodeLimit) } else { self.series.slot_for(d, kind) };
        let slot = slot.map_err(|why| self.stats.series_rejected.inc(why)).ok();
        let role = CapRole::of(&d.name, d.labels.is_empty()).filter(|_| kind == MetricKind::Gauge);
        let counter = kind == MetricKind::Counter;
        // A counter starts from its committed total: only increments never published are counted.
        let value = if counter && d.committed_total.is_finite() && d.committed_total >= 0.0 { d.committed_total } else { f64::NAN };
        let key = counter.then(|| self.series.resume_key(d));
        if let Some(n) = self.book.get_mut(node_name) {
            n.series.insert(d.id, NodeSeries { slot, kind, value, raw: f64::NAN, key, contributing: false, role });
        }
    }

    /// A node's series now has value `v`.
    pub(super) fn update(&mut self, node_name: &Arc<str>, id: u32, v: f64) {
        if let Some(role) = self.apply_value(node_name, id, v) {
            self.set_capacity(node_name, role, v.is_finite().then_some(v));
        }
    }

    /// Apply one value; returns the capacity role of the series when it is a capacity gauge.
    fn apply_value(&mut self, node_name: &Arc<str>, id: u32, v: f64) -> Option<CapRole> {
        let node = self.book.get_mut(node_name)?;
        let Some(s) = node.series.get_mut(&id) else {
            self.stats.series_rejected.inc(SeriesRefusal::UnknownId);
            return None;
        };
        let slot = self.series.get_mut(s.slot?);
        if !v.is_finite() {
            self.stats.nonfinite_values += 1;
            if s.kind == MetricKind::Gauge && s.contributing {
                // The node has no meaningful value now: stop counting its old one.
                withdraw(slot, node_name, s.value);
                s.contributing = false;
            }
            return s.role;
        }
        match s.kind {
            MetricKind::Counter => {
                let last = if s.value.is_nan() { 0.0 } else { s.value };
                if v < last {
                    // Totals only grow within a run; take it as the new baseline, never as a negative.
                    self.stats.counter_regressions += 1;
                } else {
                    // Into the open window; the Prometheus total follows when the window closes.
                    slot.window += v - last;
                    if node.keeps_position {
                        unpublished_entry(&mut node.unpublished, id, s.raw).pending += v - last;
                    }
                }
                s.value = v;
            }
            _ => {
                if s.contributing {
                    withdraw(slot, node_name, s.value);
                }
                slot.contribute(node_name, v);
                s.value = v;
                s.contributing = true;
            }
        }
        s.role
    }

    /// A capacity gauge of a node changed (`None`: withdrawn): update its derived numbers and the sums.
    pub(super) fn set_capacity(&mut self, node_name: &Arc<str>, role: CapRole, v: Option<f64>) {
        self.change_capacity(node_name, |c| c.set(role, v));
    }

    /// Whether the node's introspection lists IPv6 prefixes; a change moves the node in or out of the
    /// IPv4 capacity numbers.
    pub(super) fn set_ipv6_prefixes(&mut self, node_name: &Arc<str>, ipv6: bool) {
        if self.book.get(node_name).is_some_and(|n| n.capacity.ipv6_prefixes != ipv6) {
            self.change_capacity(node_name, |c| c.ipv6_prefixes = ipv6);
        }
    }

    fn change_capacity(&mut self, node_name: &Arc<str>, change: impl FnOnce(&mut super::capacity::Capacity)) {
        let Some(node) = self.book.get_mut(node_name) else { return };
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, false);
        change(&mut node.capacity);
        let new = node.capacity.derive(self.cfg.low_ip_threshold);
        let old = std::mem::replace(&mut node.derived, new);
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, true);
        self.capacity.sub(&old);
        self.capacity.add(&new);
        if new.anomalous && !old.anomalous {
            self.stats.capacity_anomalies += 1;
        }
    }

    /// A node's series is gone: its gauge leaves the sums (a counter's increments stay counted).
    pub(super) fn remove_series(&mut self, node_name: &Arc<str>, id: u32) {
        let Some(node) = self.book.get_mut(node_name) else { return };
        let Some(s) = node.series.remove(&id) else { return };
        if let (Some(i), true) = (s.slot, s.contributing) {
            withdraw(self.series.get_mut(i), node_name, s.value);
        }
        if let Some(role) = s.role {
            self.set_capacity(node_name, role, None);
        }
    }

    /// A node left: every gauge it contributes leaves the sums.
    pub(super) fn withdraw_node(&mut self, node: &super::NodeState) {
        self.capacity.sub(&node.derived);
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, false);
        for s in node.series.values() {
            if let (Some(i), true) = (s.slot, s.contributing) {
                withdraw(self.series.get_mut(i), &node.name, s.value);
            }
        }
    }
}
