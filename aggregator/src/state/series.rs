//! The cluster series table: every cluster series ("slot": a sample name plus the labels left after the
//! catalogue's cluster fold) with its gauge sum or maximum and its counter totals, found by identity in
//! O(1). The table owns its invariants: a slot's identity never changes, at most `max` slots exist, one
//! kind per identity, and each counter identity (its [`ResumeKey`]) is held once however many nodes
//! have it. Slots change only through the table's methods ([`SeriesTable::contribute`],
//! [`SeriesTable::withdraw`], [`SeriesTable::add_increment`], [`SeriesTable::close_window`]); which
//! node values fold into them is decided in `fold.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cni_metrics_proto::catalog::{self, NodeFold};
use cni_metrics_proto::v1::{FamilyType, MetricKind, SeriesDef};

use super::node::ResumeKey;
use super::SeriesRefusal;

/// A cluster series' identity: sample name and labels after the cluster fold.
type SlotKey = (Arc<str>, Vec<(String, String)>);

/// One cluster series.
#[derive(Debug)]
pub(super) struct Slot {
    family: Arc<str>,
    name: Arc<str>,
    labels: Vec<(String, String)>,
    kind: MetricKind,
    fold: NodeFold,
    /// Gauge: sum of contributing nodes' finite values.
    sum: f64,
    /// Gauge: number of contributing nodes.
    contributors: u32,
    /// Gauge with max fold: value per contributing node, and how many nodes have each value (by
    /// [`order_key`]), so the maximum is read in O(log values) instead of a pass over the nodes.
    per_node: HashMap<Arc<str>, f64>,
    maxima: BTreeMap<u64, u32>,
    /// Counter: increments since aggregator start.
    total: f64,
    /// Counter: increments in the open publish window.
    window: f64,
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

/// Every cluster series.
#[derive(Debug)]
pub(super) struct SeriesTable {
    slots: Vec<Slot>,
    index: HashMap<SlotKey, u32>,
    /// Family → type, for exposition.
    families: BTreeMap<Arc<str>, FamilyType>,
    /// Sample and family names, held once.
    names: HashMap<String, Arc<str>>,
    /// Counter identities, shared by every node that has them.
    resume_keys: HashSet<Arc<ResumeKey>>,
    max: usize,
}

impl SeriesTable {
    /// A table of at most `max` slots.
    pub(super) fn new(max: usize) -> Self {
        Self {
            slots: Vec::new(),
            index: HashMap::new(),
            families: BTreeMap::new(),
            names: HashMap::new(),
            resume_keys: HashSet::new(),
            max,
        }
    }

    /// The slot of a definition, created on first sight; refused when the identity has another kind or
    /// the table is full.
    pub(super) fn slot_for(&mut self, d: &SeriesDef, kind: MetricKind) -> Result<u32, SeriesRefusal> {
        let spec = catalog::family(&d.family);
        let drop = spec.map_or(&[][..], |s| s.cluster_drop_labels);
        let mut labels: Vec<(String, String)> =
            d.labels.iter().filter(|l| !drop.contains(&l.name.as_str())).map(|l| (l.name.clone(), l.value.clone())).collect();
        labels.sort_unstable();
        let name = self.intern(&d.name);
        let key = (name.clone(), labels);
        if let Some(&i) = self.index.get(&key) {
            return if self.slots[i as usize].kind == kind { Ok(i) } else { Err(SeriesRefusal::KindConflict) };
        }
        if self.slots.len() >= self.max {
            return Err(SeriesRefusal::ClusterLimit);
        }
        let family = self.intern(&d.family);
        let family_type = spec.map_or_else(|| FamilyType::try_from(d.family_type).unwrap_or(FamilyType::Untyped), |s| s.family_type);
        self.families.entry(family.clone()).or_insert(family_type);
        let fold =
            if key.1.iter().any(|(n, _)| n == "quantile") && family_type == FamilyType::Summary { NodeFold::Max } else { NodeFold::Sum };
        let i = self.slots.len() as u32;
        self.slots.push(Slot::new(family, name, key.1.clone(), kind, fold));
        self.index.insert(key, i);
        Ok(i)
    }

    /// The shared identity of a counter definition (sample name and sorted labels).
    pub(super) fn resume_key(&mut self, d: &SeriesDef) -> Arc<ResumeKey> {
        let mut labels: Vec<(String, String)> = d.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
        labels.sort_unstable();
        let key = ResumeKey { name: d.name.clone(), labels };
        if let Some(k) = self.resume_keys.get(&key) {
            return k.clone();
        }
        let k = Arc::new(key);
        self.resume_keys.insert(k.clone());
        k
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.to_owned(), a.clone());
        a
    }

    pub(super) fn get(&self, i: u32) -> &Slot {
        &self.slots[i as usize]
    }

    /// A node's gauge value `v` now counts in slot `i` (its previous one withdrawn first).
    pub(super) fn contribute(&mut self, i: u32, node: &Arc<str>, v: f64) {
        self.slots[i as usize].contribute(node, v);
    }

    /// A node's gauge value `v` no longer counts in slot `i`.
    pub(super) fn withdraw(&mut self, i: u32, node: &Arc<str>, v: f64) {
        self.slots[i as usize].withdraw(node, v);
    }

    /// A counter increment (negative: one taken back) in slot `i`'s open window.
    pub(super) fn add_increment(&mut self, i: u32, by: f64) {
        self.slots[i as usize].window += by;
    }

    /// The slot of this sample name and labels (any order).
    pub(super) fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Slot> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        l.sort_unstable();
        let i = *self.index.get(&(Arc::from(name), l))?;
        self.slots.get(i as usize)
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// The type of a family (untyped when unknown).
    pub(super) fn family_type(&self, family: &str) -> FamilyType {
        self.families.get(family).copied().unwrap_or(FamilyType::Untyped)
    }

    /// The slots of each family, in one pass.
    pub(super) fn by_family(&self) -> HashMap<&str, Vec<&Slot>> {
        let mut out: HashMap<&str, Vec<&Slot>> = HashMap::new();
        for s in &self.slots {
            out.entry(&*s.family).or_default().push(s);
        }
        out
    }

    /// The publish window closed: each counter's window increments move into its total.
    pub(super) fn close_window(&mut self) {
        for s in &mut self.slots {
            s.total += s.window;
            s.window = 0.0;
        }
    }
}

impl Slot {
    /// The cluster value: a counter's total to the last closed window, a gauge's sum or maximum.
    pub(super) fn value(&self) -> Option<f64> {
        match self.kind {
            MetricKind::Counter => Some(self.total),
            _ => self.gauge_value(),
        }
    }

    /// As [`Slot::value`], a counter including its open window.
    pub(super) fn live_value(&self) -> Option<f64> {
        match self.kind {
            MetricKind::Counter => Some(self.total + self.window),
            _ => self.gauge_value(),
        }
    }

    pub(super) fn family(&self) -> &Arc<str> {
        &self.family
    }

    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(super) fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    pub(super) fn kind(&self) -> MetricKind {
        self.kind
    }

    /// A counter's increments in the open publish window.
    pub(super) fn window(&self) -> f64 {
        self.window
    }

    /// A node's gauge value `v` now counts in the slot (its previous one, if any, withdrawn first).
    fn contribute(&mut self, node: &Arc<str>, v: f64) {
        self.sum += v;
        self.contributors += 1;
        if self.fold == NodeFold::Max {
            self.set_node_max(node, Some(v));
        }
    }

    /// A node's gauge value `v` no longer counts in the slot.
    fn withdraw(&mut self, node: &Arc<str>, v: f64) {
        self.sum -= v;
        self.contributors = self.contributors.saturating_sub(1);
        if self.contributors == 0 {
            self.sum = 0.0; // no residue from float rounding once nobody contributes
        }
        if self.fold == NodeFold::Max {
            self.set_node_max(node, None);
        }
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

    fn def(name: &str, family: &str, kind: MetricKind, labels: &[(&str, &str)]) -> SeriesDef {
        SeriesDef {
            name: name.into(),
            family: family.into(),
            kind: kind as i32,
            labels: labels.iter().map(|(n, v)| cni_metrics_proto::v1::Label { name: (*n).into(), value: (*v).into() }).collect(),
            ..SeriesDef::default()
        }
    }

    #[test]
    fn the_table_finds_folds_and_bounds_its_slots() {
        let mut t = SeriesTable::new(3);
        let (g, c) = (MetricKind::Gauge, MetricKind::Counter);
        let eni = "awscni_assigned_ip_per_eni";
        // (definition, the slot or the refusal)
        let cases: [(SeriesDef, Result<u32, SeriesRefusal>); 6] = [
            (def("awscni_total_ip_addresses", "awscni_total_ip_addresses", g, &[]), Ok(0)),
            (def("awscni_total_ip_addresses", "awscni_total_ip_addresses", g, &[]), Ok(0)),
            (def(eni, eni, g, &[("eni", "eni-1")]), Ok(1)),
            (def(eni, eni, g, &[("eni", "eni-2")]), Ok(1)),
            (def("awscni_total_ip_addresses", "awscni_total_ip_addresses", c, &[]), Err(SeriesRefusal::KindConflict)),
            (def("x_total", "x", c, &[("b", "2"), ("a", "1")]), Ok(2)),
        ];
        for (i, (d, want)) in cases.iter().enumerate() {
            let kind = MetricKind::try_from(d.kind).unwrap_or(MetricKind::Gauge);
            assert_eq!(t.slot_for(d, kind), *want, "case {i}");
        }
        assert_eq!(t.slot_for(&def("y", "y", g, &[]), g), Err(SeriesRefusal::ClusterLimit));
        assert_eq!(t.len(), 3);
        assert!(t.find("x_total", &[("a", "1"), ("b", "2")]).is_some(), "labels in any order");
        assert!(t.find(eni, &[]).is_some(), "the eni label is folded away for the cluster");
        let by_family = t.by_family();
        assert_eq!(by_family.values().map(Vec::len).sum::<usize>(), 3);
        let k1 = t.resume_key(&def("x_total", "x", c, &[("b", "2"), ("a", "1")]));
        let k2 = t.resume_key(&def("x_total", "x", c, &[("a", "1"), ("b", "2")]));
        assert!(Arc::ptr_eq(&k1, &k2), "one identity held once");
    }

    #[test]
    fn closing_the_window_moves_increments_into_totals() {
        let mut t = SeriesTable::new(10);
        let i = t.slot_for(&def("a_total", "a", MetricKind::Counter, &[]), MetricKind::Counter).expect("slot");
        t.add_increment(i, 5.0);
        assert_eq!((t.get(i).value(), t.get(i).live_value()), (Some(0.0), Some(5.0)));
        t.close_window();
        assert_eq!((t.get(i).value(), t.get(i).live_value()), (Some(5.0), Some(5.0)));
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
