//! The node book: every node the aggregator knows now ([`NodeState`], by name and in name order), the
//! records of nodes that left ([`Departures`], bounded), the agreed cluster name and region, and the
//! [`NodeIndex`] readers use instead of walking the nodes. The book keeps these in step by construction:
//! a node enters and leaves through [`NodeBook::insert`] and [`NodeBook::remove`], its identity changes
//! through [`NodeBook::set_identity`], and every other change goes through [`NodeBook::node_mut`], whose
//! guard reindexes the node when it is dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::v1::ScrapeStatus;

use super::index::{Indexed, NodeChanges, NodeIndex, Tally};
use super::node::{CommitMark, Departed, NodeState};

#[derive(Debug, Default)]
pub(super) struct NodeBook {
    nodes: HashMap<Arc<str>, NodeState>,
    /// The nodes' names in order, so consumers page by name in O(page).
    by_name: BTreeSet<Arc<str>>,
    /// The nodes' cluster names and regions, for the one value they agree on.
    cluster_names: Tally,
    regions: Tally,
    index: NodeIndex,
    departed: Departures,
}

impl NodeBook {
    pub(super) fn new(max_departed: usize) -> Self {
        Self { departed: Departures::new(max_departed), ..Self::default() }
    }

    pub(super) fn get(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    /// A node to change: the guard reindexes it when dropped.
    pub(super) fn node_mut(&mut self, name: &str) -> Option<NodeMut<'_>> {
        let node = self.nodes.get_mut(name)?;
        Some(NodeMut { node, index: &mut self.index })
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name as the book holds it (one allocation per node), or a new one.
    pub(super) fn name(&self, name: &str) -> Arc<str> {
        let held = self.nodes.get_key_value(name).map(|(k, _)| k).or_else(|| self.departed.map.get_key_value(name).map(|(k, _)| k));
        held.cloned().unwrap_or_else(|| Arc::from(name))
    }

    /// A new node enters, indexed (a node of that name must not be in the book).
    pub(super) fn insert(&mut self, node: NodeState) {
        let name = node.name().clone();
        self.by_name.insert(name.clone());
        self.cluster_names.replace("", node.cluster_name());
        self.regions.replace("", node.region());
        self.nodes.insert(name.clone(), node);
        drop(self.node_mut(&name));
    }

    /// The node now reports this region and cluster name.
    pub(super) fn set_identity(&mut self, name: &str, region: &str, cluster_name: &str) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        self.regions.replace(n.region(), region);
        self.cluster_names.replace(n.cluster_name(), cluster_name);
        n.set_identity(region, cluster_name);
    }

    /// The node leaves the book (its departed record is the caller's to keep).
    pub(super) fn remove(&mut self, name: &Arc<str>) -> Option<NodeState> {
        let mut node = self.nodes.remove(name)?;
        self.by_name.remove(name);
        self.regions.replace(node.region(), "");
        self.cluster_names.replace(node.cluster_name(), "");
        self.index.update(name, node.replace_indexed(None), None);
        self.index.log_removal(name);
        Some(node)
    }

    /// What consumers see of the node changed.
    pub(super) fn log_change(&mut self, name: &str) {
        if let Some(n) = self.nodes.get(name) {
            self.index.log_change(n.name());
        }
    }

    /// Nodes by name, from just after `after` (from the first when `None`).
    pub(super) fn after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a NodeState> + 'a {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_name.range::<str, _>((from, Bound::Unbounded)).filter_map(|n| self.nodes.get(n))
    }

    /// Nodes by (IP headroom, name), least headroom first and unknown last, from just after `after`.
    pub(super) fn by_headroom_after<'a>(&'a self, after: Option<(u64, &str)>) -> impl Iterator<Item = (u64, &'a NodeState)> + 'a {
        self.index.by_headroom_after(after).filter_map(|(rank, n)| Some((rank, self.nodes.get(n)?)))
    }

    pub(super) fn index(&self) -> &NodeIndex {
        &self.index
    }

    /// Nodes past their TTL at `now`.
    pub(super) fn expired(&self, now: Instant) -> Vec<Arc<str>> {
        self.index.expired(now)
    }

    /// The nodes changed (or gone stale by time in [`since`, `now`)) and removed since the last call,
    /// and whether any went stale by time.
    pub(super) fn take_changes(&mut self, since: Instant, now: Instant) -> Option<(NodeChanges, bool)> {
        let mut log = self.index.take_log()?;
        let went: Vec<Arc<str>> = self.index.went_stale(since, now).cloned().collect();
        let went_stale = !went.is_empty();
        if went_stale {
            log.changed.extend(went);
            log.changed.sort_unstable();
            log.changed.dedup();
        }
        Some((log, went_stale))
    }

    pub(super) fn agreed_cluster_name(&self) -> Option<&str> {
        self.cluster_names.agreed()
    }

    pub(super) fn agreed_region(&self) -> Option<&str> {
        self.regions.agreed()
    }

    pub(super) fn status_count(&self, s: ScrapeStatus) -> u64 {
        self.index.count(s)
    }

    pub(super) fn departed(&self) -> &Departures {
        &self.departed
    }

    pub(super) fn departed_mut(&mut self) -> &mut Departures {
        &mut self.departed
    }

    /// At a window close: every run with reports since the last close promises them to this window
    /// (a withheld keeping run does not: its increments are out of the window). Returns the marks.
    pub(super) fn close_runs(&mut self) -> Vec<CommitMark> {
        let mut commits = Vec::new();
        let mut established = Vec::new();
        // Closing a window changes nothing the index holds: the nodes are changed in place.
        for n in self.nodes.values_mut().filter(|n| !n.withheld()) {
            if n.last_seq() > n.closed_seq() {
                if n.closed_seq() == 0 && n.keeps_position() && !self.departed.is_empty() {
                    established.push(n.name().clone());
                }
                commits.push(n.close_window());
            }
        }
        for name in &established {
            self.departed.remove(name);
        }
        commits.extend(self.departed.close_runs());
        commits
    }

    /// Every sink delivered a window with this mark: returns whether the run's commit advanced.
    pub(super) fn commit(&mut self, m: &CommitMark) -> bool {
        // The commit changes nothing the index holds: the node is changed in place.
        match (self.nodes.get_mut(&m.node), self.departed.map.get_mut(&m.node)) {
            (Some(n), _) if n.run_id() == m.run_id => n.advance_commit(m.seq),
            (_, Some(d)) if d.run_id == m.run_id => {
                let advanced = m.seq > d.committed_seq;
                d.committed_seq = d.committed_seq.max(m.seq);
                advanced
            }
            _ => false,
        }
    }
}

/// A node being changed; dropping it brings the node's index entry up to date.
pub(super) struct NodeMut<'a> {
    node: &'a mut NodeState,
    index: &'a mut NodeIndex,
}

impl std::ops::Deref for NodeMut<'_> {
    type Target = NodeState;

    fn deref(&self) -> &NodeState {
        self.node
    }
}

impl std::ops::DerefMut for NodeMut<'_> {
    fn deref_mut(&mut self) -> &mut NodeState {
        self.node
    }
}

impl Drop for NodeMut<'_> {
    fn drop(&mut self) {
        let new = Some(Indexed::of(self.node));
        let old = self.node.replace_indexed(new);
        if old != new {
            self.index.update(self.node.name(), old, new);
        }
    }
}

/// Records of nodes that left, at most `max` (the oldest is evicted first).
#[derive(Debug, Default)]
pub(super) struct Departures {
    map: HashMap<Arc<str>, Departed>,
    max: usize,
}

impl Departures {
    fn new(max: usize) -> Self {
        Self { map: HashMap::new(), max }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Departed> {
        self.map.get(name)
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<Departed> {
        self.map.remove(name)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keep the record; returns true when the oldest record was evicted to make room.
    pub(super) fn insert(&mut self, name: Arc<str>, d: Departed) -> bool {
        self.map.insert(name, d);
        if self.map.len() <= self.max {
            return false;
        }
        let Some(oldest) = self.map.iter().min_by_key(|(_, d)| d.at).map(|(n, _)| n.clone()) else { return false };
        self.map.remove(&oldest);
        true
    }

    /// Departed runs that do not keep their position publish what they sent before leaving.
    fn close_runs(&mut self) -> Vec<CommitMark> {
        let mut commits = Vec::new();
        for (name, d) in self.map.iter_mut().filter(|(_, d)| !d.keeps_position) {
            if d.last_seq > d.closed_seq {
                d.closed_seq = d.last_seq;
                commits.push(CommitMark { node: name.clone(), run_id: d.run_id, seq: d.last_seq });
            }
        }
        commits
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cni_metrics_proto::v1::Hello;

    use super::*;

    fn node(name: &str, run_id: u64, region: &str, cluster: &str, t: Instant) -> NodeState {
        let h = Hello { node_name: name.into(), run_id, interval_ms: 1000, ..Hello::default() };
        let mut n = NodeState::new(Arc::from(name), &h, 1, Duration::from_secs(1), Duration::from_secs(3), t);
        n.set_identity(region, cluster);
        n
    }

    #[test]
    fn nodes_enter_and_leave_in_step_with_names_tallies_and_index() {
        let t = Instant::now();
        let mut b = NodeBook::new(10);
        // (step, names in order after it, agreed region, agreed cluster)
        b.insert(node("b", 1, "eu-west-1", "prod", t));
        b.insert(node("a", 1, "eu-west-1", "", t));
        let names = |b: &NodeBook| b.after(None).map(|n| n.name().to_string()).collect::<Vec<_>>();
        assert_eq!(
            (names(&b), b.agreed_region(), b.agreed_cluster_name()),
            (vec!["a".into(), "b".into()], Some("eu-west-1"), Some("prod"))
        );
        assert_eq!(b.after(Some("a")).map(|n| &**n.name()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(b.status_count(ScrapeStatus::Pending), 2);
        b.set_identity("a", "us-east-1", "prod");
        assert_eq!((b.agreed_region(), b.agreed_cluster_name()), (None, Some("prod")), "two regions: none agreed");
        let a = b.name("a");
        assert!(b.remove(&a).is_some());
        assert_eq!((names(&b), b.agreed_region(), b.len()), (vec!["b".into()], Some("eu-west-1"), 1));
        assert_eq!(b.status_count(ScrapeStatus::Pending), 1, "a's index entry left with it");
        assert_eq!(b.take_changes(t, t).map(|(c, _)| c.removed), Some(vec![a.clone()]));
        assert!(b.remove(&a).is_none(), "removing twice changes nothing");
    }

    #[test]
    fn departures_are_bounded_oldest_first() {
        let t = Instant::now();
        let mut d = Departures::new(2);
        // (name, seconds after t it left, evicted someone)
        let steps = [("a", 1, false), ("b", 2, false), ("c", 3, true), ("a", 4, true)];
        for (name, at, evicted) in steps {
            let rec = node(name, 1, "", "", t + Duration::from_secs(at)).into_departed();
            assert_eq!(d.insert(Arc::from(name), rec), evicted, "{name} at {at}");
        }
        assert_eq!((d.len(), d.contains("a"), d.contains("b"), d.contains("c")), (2, true, false, true));
    }

    #[test]
    fn window_close_marks_runs_with_new_reports_and_commits_advance_once() {
        let t = Instant::now();
        let mut b = NodeBook::new(10);
        let mut n = node("a", 7, "", "", t);
        n.set_seqs_for_test(5, false, false);
        b.insert(n);
        let mut w = node("w", 8, "", "", t);
        w.set_seqs_for_test(3, true, true);
        b.insert(w);
        let mut gone = node("g", 9, "", "", t);
        gone.set_seqs_for_test(4, false, false);
        b.departed_mut().insert(Arc::from("g"), gone.into_departed());
        let mut marks = b.close_runs();
        marks.sort_by(|x, y| x.node.cmp(&y.node));
        let want = |node: &str, run_id, seq| CommitMark { node: Arc::from(node), run_id, seq };
        assert_eq!(marks, vec![want("a", 7, 5), want("g", 9, 4)], "the withheld run promises nothing");
        assert!(b.close_runs().is_empty(), "nothing new: no marks");
        // (mark, advanced)
        let cases = [
            (want("a", 7, 5), true),
            (want("a", 7, 5), false),
            (want("a", 6, 9), false),
            (want("g", 9, 4), true),
            (want("x", 1, 1), false),
        ];
        for (m, advanced) in cases {
            assert_eq!(b.commit(&m), advanced, "{m:?}");
        }
        assert_eq!(b.get("a").map(|n| n.committed_seq()), Some(5));
    }

    #[test]
    fn a_node_changed_through_its_guard_is_reindexed() {
        let t = Instant::now();
        let mut b = NodeBook::new(10);
        b.insert(node("a", 1, "", "", t));
        assert_eq!((b.status_count(ScrapeStatus::Pending), b.status_count(ScrapeStatus::Ok)), (1, 0), "indexed on entry");
        let report = cni_metrics_proto::v1::Report { seq: 1, snapshot: true, ..Default::default() };
        if let Some(mut n) = b.node_mut("a") {
            n.record(&report, ScrapeStatus::Ok, t + Duration::from_secs(1));
        }
        assert_eq!((b.status_count(ScrapeStatus::Pending), b.status_count(ScrapeStatus::Ok)), (0, 1), "reindexed when the guard dropped");
        // Expiry follows the new report time: 3 s TTL after t + 1 s.
        assert!(b.expired(t + Duration::from_millis(3500)).is_empty());
        assert_eq!(b.expired(t + Duration::from_secs(5)), vec![Arc::<str>::from("a")]);
    }
}
