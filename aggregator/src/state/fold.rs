//! How a node's series fold into the cluster series: definitions (a node series points at its slot),
//! gauge values into sums and maxima, counter running totals into the open window as increments, and
//! the capacity gauges into the node's derived capacity, the cluster's and the breakdowns'. A report
//! costs O(series it changes), never O(nodes).

use std::sync::Arc;

use cni_metrics_proto::v1::{MetricKind, SeriesDef};

use super::node::{Folded, NodeSeries, SlotChange};
use super::{CapRole, ClusterState, SeriesRefusal};

impl ClusterState {
    /// A node defines a series (kept as it is when the run defined it on an earlier stream).
    pub(super) fn define(&mut self, node_name: &Arc<str>, d: &SeriesDef) {
        let Some(node) = self.book.get(node_name) else { return };
        if node.series(d.id).is_some() {
            return; // Known from an earlier stream of the same run: keep its last total.
        }
        let per_node = node.series_count();
        let kind = MetricKind::try_from(d.kind).unwrap_or(MetricKind::Gauge);
        let slot = if per_node >= self.cfg.max_series_per_node { Err(SeriesRefusal::NodeLimit) } else { self.series.slot_for(d, kind) };
        let slot = slot.map_err(|why| self.stats.series_rejected.inc(why)).ok();
        let role = CapRole::of(&d.name, d.labels.is_empty()).filter(|_| kind == MetricKind::Gauge);
        let counter = kind == MetricKind::Counter;
        // A counter starts from its committed total: only increments never published are counted.
        let value = if counter && d.committed_total.is_finite() && d.committed_total >= 0.0 { d.committed_total } else { f64::NAN };
        let key = counter.then(|| self.series.resume_key(d));
        if let Some(mut n) = self.book.node_mut(node_name) {
            n.define_series(d.id, NodeSeries { slot, kind, value, raw: f64::NAN, key, contributing: false, role });
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
        let folded = self.book.node_mut(node_name)?.set_value(id, v);
        let (slot, change, role) = match folded {
            Folded::UnknownId => {
                self.stats.series_rejected.inc(SeriesRefusal::UnknownId);
                return None;
            }
            Folded::NoSlot => return None,
            Folded::Into { slot, change, role } => (slot, change, role),
        };
        match change {
            SlotChange::NonFinite { withdraw } => {
                self.stats.nonfinite_values += 1;
                if let Some(old) = withdraw {
                    self.series.withdraw(slot, node_name, old);
                }
            }
            SlotChange::Regressed => self.stats.counter_regressions += 1,
            // Into the open window; the Prometheus total follows when the window closes.
            SlotChange::Increment(by) => self.series.add_increment(slot, by),
            SlotChange::Gauge { old, new } => {
                if let Some(old) = old {
                    self.series.withdraw(slot, node_name, old);
                }
                self.series.contribute(slot, node_name, new);
            }
        }
        role
    }

    /// A capacity gauge of a node changed (`None`: withdrawn): update its derived numbers and the sums.
    pub(super) fn set_capacity(&mut self, node_name: &Arc<str>, role: CapRole, v: Option<f64>) {
        self.change_capacity(node_name, |c| c.set(role, v));
    }

    /// Whether the node's introspection lists IPv6 prefixes; a change moves the node in or out of the
    /// IPv4 capacity numbers.
    pub(super) fn set_ipv6_prefixes(&mut self, node_name: &Arc<str>, ipv6: bool) {
        if self.book.get(node_name).is_some_and(|n| n.capacity().ipv6_prefixes != ipv6) {
            self.change_capacity(node_name, |c| c.ipv6_prefixes = ipv6);
        }
    }

    /// The node's count of addresses in ipamd's cooldown (`None`: unknown).
    pub(super) fn set_cooldown(&mut self, node_name: &Arc<str>, cooldown: Option<f64>) {
        if self.book.get(node_name).is_some_and(|n| n.capacity().cooldown != cooldown) {
            self.change_capacity(node_name, |c| c.cooldown = cooldown);
        }
    }

    fn change_capacity(&mut self, node_name: &Arc<str>, change: impl FnOnce(&mut super::capacity::Capacity)) {
        let Some(mut node) = self.book.node_mut(node_name) else { return };
        self.breakdowns.apply(node.groups(), node.capacity(), node.derived(), false);
        let (old, new) = node.change_capacity(change, self.cfg.low_ip_threshold);
        self.breakdowns.apply(node.groups(), node.capacity(), node.derived(), true);
        self.capacity.sub(&old);
        self.capacity.add(&new);
        if new.anomalous && !old.anomalous {
            self.stats.capacity_anomalies += 1;
        }
    }

    /// A node's series is gone: its gauge leaves the sums (a counter's increments stay counted).
    pub(super) fn remove_series(&mut self, node_name: &Arc<str>, id: u32) {
        let Some(s) = self.book.node_mut(node_name).and_then(|mut n| n.remove_series(id)) else { return };
        if let (Some(i), true) = (s.slot, s.contributing) {
            self.series.withdraw(i, node_name, s.value);
        }
        if let Some(role) = s.role {
            self.set_capacity(node_name, role, None);
        }
    }

    /// A node left: every gauge it contributes leaves the sums.
    pub(super) fn withdraw_node(&mut self, node: &super::NodeState) {
        self.capacity.sub(node.derived());
        self.breakdowns.apply(node.groups(), node.capacity(), node.derived(), false);
        for (slot, v) in node.contributions() {
            self.series.withdraw(slot, node.name(), v);
        }
    }
}
