//! Cluster series ("slots") and how a node's values fold into them: definitions, gauge sums and maxima,
//! counter increments into the open window, capacity gauges. A report costs O(series it changes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cni_metrics_proto::catalog::{self, NodeFold};
use cni_metrics_proto::v1::{FamilyType, MetricKind, SeriesDef};

use super::node::{unpublished_entry, NodeSeries, ResumeKey};
use super::{CapRole, ClusterState, SeriesRefusal};

/// One cluster series.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) family: Arc<str>,
    pub(super) name: Arc<str>,
    pub(super) labels: Vec<(String, String)>,
    pub(super) kind: MetricKind,
    pub(super) fold: NodeFold,
    /// Gauge: sum of contributing nodes' finite values.
    pub(super) sum: f64,
    /// Gauge: number of contributing nodes.
    pub(super) contributors: u32,
    /// Gauge with max fold: value per contributing node, and how many nodes have each value (by
    /// [`order_key`]), so the maximum is read in O(log values) instead of a pass over the nodes.
    pub(super) per_node: HashMap<Arc<str>, f64>,
    pub(super) maxima: BTreeMap<u64, u32>,
    /// Counter: increments since aggregator start.
    pub(super) total: f64,
    /// Counter: increments in the open publish window.
    pub(super) window: f64,
}

impl Slot {
    fn new(family: Arc<str>, name: Arc<str>, labels: Vec<(String, String)>, kind: MetricKind, fold: NodeFold) -> Self {
        Self {
            family,
            name,
            labels,
            kind,
            fold,
            sum: 0.0,
            contributors: 0,
            per_node: HashMap::new(),
            maxima: BTreeMap::new(),
            total: 0.0,
            window: 0.0,
        }
    }

    pub(super) fn gauge_value(&self) -> Option<f64> {
        if self.contributors == 0 {
            return None;
        }
        match self.fold {
            NodeFold::Sum => Some(self.sum),
            NodeFold::Max => self.maxima.last_key_value().map(|(k, _)| from_order_key(*k)),
        }
    }

    /// A max-fold node value now `v` (`None`: withdrawn).
    fn set_node_max(&mut self, node: &Arc<str>, v: Option<f64>) {
        let old = match v {
            Some(v) => {
                *self.maxima.entry(order_key(v)).or_default() += 1;
                self.per_node.insert(node.clone(), v)
            }
            None => self.per_node.remove(node),
        };
        if let Some(old) = old {
            let k = order_key(old);
            if let Some(c) = self.maxima.get_mut(&k) {
                *c -= 1;
                if *c == 0 {
                    self.maxima.remove(&k);
                }
            }
        }
    }
}

/// A key that orders as the (non-NaN) number does.
pub(crate) fn order_key(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

pub(super) fn from_order_key(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

impl ClusterState {
    pub(super) fn define(&mut self, node_name: &Arc<str>, d: &SeriesDef) {
        if self.nodes.get(node_name).is_some_and(|n| n.series.contains_key(&d.id)) {
            return; // Known from an earlier stream of the same run: keep its last total.
        }
        let per_node = self.nodes.get(node_name).map_or(0, |n| n.series.len());
        let kind = MetricKind::try_from(d.kind).unwrap_or(MetricKind::Gauge);
        let slot = if per_node >= self.cfg.max_series_per_node {
            self.stats.series_rejected.inc(SeriesRefusal::NodeLimit);
            None
        } else {
            self.slot_for(d, kind)
        };
        if let Some(n) = self.nodes.get_mut(node_name) {
            let role = CapRole::of(&d.name, d.labels.is_empty()).filter(|_| kind == MetricKind::Gauge);
            let counter = kind == MetricKind::Counter;
            // A counter starts from its committed total: only increments never published are counted.
            let value = if counter && d.committed_total.is_finite() && d.committed_total >= 0.0 { d.committed_total } else { f64::NAN };
            let key = counter.then(|| {
                let mut labels: Vec<(String, String)> = d.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                labels.sort_unstable();
                let key = ResumeKey { name: d.name.clone(), labels };
                match self.resume_keys.get(&key) {
                    Some(k) => k.clone(),
                    None => {
                        let k = Arc::new(key);
                        self.resume_keys.insert(k.clone());
                        k
                    }
                }
            });
            n.series.insert(d.id, NodeSeries { slot, kind, value, raw: f64::NAN, key, contributing: false, role });
        }
    }

    /// Find or create the cluster slot of a definition; `None` when refused (counted).
    pub(super) fn slot_for(&mut self, d: &SeriesDef, kind: MetricKind) -> Option<u32> {
        let spec = catalog::family(&d.family);
        let drop = spec.map_or(&[][..], |s| s.cluster_drop_labels);
        let mut labels: Vec<(String, String)> =
            d.labels.iter().filter(|l| !drop.contains(&l.name.as_str())).map(|l| (l.name.clone(), l.value.clone())).collect();
        labels.sort_unstable();
        let name = self.intern(&d.name);
        let key = (name.clone(), labels);
        if let Some(&i) = self.slot_index.get(&key) {
            if self.slots[i as usize].kind != kind {
                self.stats.series_rejected.inc(SeriesRefusal::KindConflict);
                return None;
            }
            return Some(i);
        }
        if self.slots.len() >= self.cfg.max_cluster_series {
            self.stats.series_rejected.inc(SeriesRefusal::ClusterLimit);
            return None;
        }
        let family = self.intern(&d.family);
        let family_type = spec.map_or_else(|| FamilyType::try_from(d.family_type).unwrap_or(FamilyType::Untyped), |s| s.family_type);
        self.families.entry(family.clone()).or_insert(family_type);
        let fold =
            if key.1.iter().any(|(n, _)| n == "quantile") && family_type == FamilyType::Summary { NodeFold::Max } else { NodeFold::Sum };
        let i = self.slots.len() as u32;
        self.slots.push(Slot::new(family, name, key.1.clone(), kind, fold));
        self.slot_index.insert(key, i);
        Some(i)
    }

    pub(super) fn update(&mut self, node_name: &Arc<str>, id: u32, v: f64) {
        if let Some(role) = self.apply_value(node_name, id, v) {
            self.set_capacity(node_name, role, v.is_finite().then_some(v));
        }
    }

    /// Apply one value; returns the capacity role of the series when it is a capacity gauge.
    pub(super) fn apply_value(&mut self, node_name: &Arc<str>, id: u32, v: f64) -> Option<CapRole> {
        let node = self.nodes.get_mut(node_name)?;
        let Some(s) = node.series.get_mut(&id) else {
            self.stats.series_rejected.inc(SeriesRefusal::UnknownId);
            return None;
        };
        let slot_i = s.slot?;
        let slot = &mut self.slots[slot_i as usize];
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
                slot.sum += v;
                slot.contributors += 1;
                if slot.fold == NodeFold::Max {
                    slot.set_node_max(node_name, Some(v));
                }
                s.value = v;
                s.contributing = true;
            }
        }
        s.role
    }

    /// A capacity gauge of a node changed (`None`: withdrawn): update its derived numbers and the sums.
    pub(super) fn set_capacity(&mut self, node_name: &Arc<str>, role: CapRole, v: Option<f64>) {
        let Some(node) = self.nodes.get_mut(node_name) else { return };
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, false);
        node.capacity.set(role, v);
        let new = node.capacity.derive(self.cfg.low_ip_threshold);
        let old = std::mem::replace(&mut node.derived, new);
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, true);
        self.capacity.sub(&old);
        self.capacity.add(&new);
        if new.anomalous && !old.anomalous {
            self.stats.capacity_anomalies += 1;
        }
    }

    pub(super) fn remove_series(&mut self, node_name: &Arc<str>, id: u32) {
        let Some(node) = self.nodes.get_mut(node_name) else { return };
        let Some(s) = node.series.remove(&id) else { return };
        if let (Some(i), true) = (s.slot, s.contributing) {
            withdraw(&mut self.slots[i as usize], node_name, s.value);
        }
        if let Some(role) = s.role {
            self.set_capacity(node_name, role, None);
        }
    }
}

pub(super) fn withdraw(slot: &mut Slot, node: &Arc<str>, v: f64) {
    slot.sum -= v;
    slot.contributors = slot.contributors.saturating_sub(1);
    if slot.contributors == 0 {
        slot.sum = 0.0; // no residue from float rounding once nobody contributes
    }
    if slot.fold == NodeFold::Max {
        slot.set_node_max(node, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_order_as_numbers_and_round_trip() {
        let vals = [f64::NEG_INFINITY, -1e9, -2.5, -0.0, 0.0, 1e-300, 1.0, 2.5, 1e9, f64::INFINITY];
        let keys: Vec<u64> = vals.iter().map(|v| order_key(*v)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        for v in vals {
            assert_eq!(from_order_key(order_key(v)).to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn the_maximum_follows_nodes_in_and_out() {
        let mut slot = Slot::new(Arc::from("f"), Arc::from("f"), Vec::new(), MetricKind::Gauge, NodeFold::Max);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        // (node, value or withdrawn, the maximum after)
        let steps: [(&Arc<str>, Option<f64>, Option<f64>); 7] = [
            (&a, Some(3.0), Some(3.0)),
            (&b, Some(7.0), Some(7.0)),
            (&c, Some(7.0), Some(7.0)),
            (&b, Some(1.0), Some(7.0)),
            (&c, None, Some(3.0)),
            (&a, Some(-2.0), Some(1.0)),
            (&b, None, Some(-2.0)),
        ];
        for (i, (node, v, want)) in steps.into_iter().enumerate() {
            slot.set_node_max(node, v);
            slot.contributors = slot.per_node.len() as u32;
            assert_eq!(slot.gauge_value(), want, "step {i}");
        }
        slot.set_node_max(&a, None);
        assert!(slot.maxima.is_empty() && slot.per_node.is_empty());
    }
}
