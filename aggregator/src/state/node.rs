//! What the aggregator keeps per node: its state while it reports ([`NodeState`] and its series), what
//! stays of it when it leaves (the departed record, for an exact resume or continuation), and what a
//! hello gets back ([`Welcomed`], [`Resume`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{Hello, MetricKind, ScrapeStatus};

use super::{CapRole, Capacity, Dim, NodeCapacity, NodeSubnet};

#[derive(Debug, Clone)]
pub(super) struct NodeSeries {
    pub(super) slot: Option<u32>,
    pub(super) kind: MetricKind,
    /// Gauge value or counter running total; NaN until the first value (counters: the committed total
    /// the definition carried).
    pub(super) value: f64,
    /// Counters: ipamd's raw value at the last report that carried it (NaN: unknown), and the sample
    /// name and labels, for the node's resume point.
    pub(super) raw: f64,
    pub(super) key: Option<Arc<ResumeKey>>,
    /// Whether `value` is currently counted in the slot (gauges).
    pub(super) contributing: bool,
    pub(super) role: Option<CapRole>,
}

/// A node's series by their stream-local id: a vector sorted by id. A v1.23 node has ~60 series; a hash
/// map of them took twice the memory (buckets at a load of at most 7/8, rounded up to a power of two, and
/// a control byte each), and the aggregator holds one per node. Ids come from the agent in increasing
/// order, so an insert is a push; lookups are a binary search.
#[derive(Debug, Clone, Default)]
struct SeriesMap(Vec<(u32, NodeSeries)>);

impl SeriesMap {
    fn find(&self, id: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(i, _)| *i)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, id: &u32) -> Option<&NodeSeries> {
        self.find(*id).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, id: &u32) -> Option<&mut NodeSeries> {
        self.find(*id).ok().map(|i| &mut self.0[i].1)
    }

    /// Insert or replace the series `id`.
    fn insert(&mut self, id: u32, s: NodeSeries) {
        match self.find(id) {
            Ok(i) => self.0[i].1 = s,
            Err(i) => self.0.insert(i, (id, s)),
        }
    }

    /// Give back the room beyond the series held (after a snapshot).
    fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    fn remove(&mut self, id: &u32) -> Option<NodeSeries> {
        self.find(*id).ok().map(|i| self.0.remove(i).1)
    }

    fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(id, _)| id)
    }

    fn values(&self) -> impl Iterator<Item = &NodeSeries> {
        self.0.iter().map(|(_, s)| s)
    }
}

impl FromIterator<(u32, NodeSeries)> for SeriesMap {
    fn from_iter<I: IntoIterator<Item = (u32, NodeSeries)>>(iter: I) -> Self {
        let mut v: Vec<(u32, NodeSeries)> = iter.into_iter().collect();
        v.sort_by_key(|(id, _)| *id);
        v.dedup_by_key(|(id, _)| *id);
        Self(v)
    }
}

impl IntoIterator for SeriesMap {
    type Item = (u32, NodeSeries);
    type IntoIter = std::vec::IntoIter<(u32, NodeSeries)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A counter of a keeping run changed since the last window that included the run: its raw value then
/// (the published position) and the increments it put in the open window since (withdrawn while the run
/// is withheld). Only series that changed have one, so idle nodes and runs that do not keep their
/// position cost nothing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unpublished {
    pub(super) id: u32,
    pub(super) raw_before: f64,
    pub(super) pending: f64,
}

/// The entry of `id`, created with the series' current raw value as its published position.
pub(super) fn unpublished_entry(list: &mut Vec<Unpublished>, id: u32, raw: f64) -> &mut Unpublished {
    let i = match list.iter().position(|u| u.id == id) {
        Some(i) => i,
        None => {
            list.push(Unpublished { id, raw_before: raw, pending: 0.0 });
            list.len() - 1
        }
    };
    &mut list[i]
}

/// What the aggregator knows of one node. Its fields are its own: the state's parts read them through
/// the accessors below and change them only through the methods that keep them consistent (the book
/// reindexes a node after every change, see `NodeBook::node_mut`).
#[derive(Debug)]
pub struct NodeState {
    name: Arc<str>,
    run_id: u64,
    session: u64,
    agent_version: String,
    availability_zone: String,
    instance_type: String,
    instance_id: String,
    region: String,
    cluster_name: String,
    interval: Duration,
    ttl: Duration,
    last_seen: Instant,
    last_seq: u64,
    snapshot_seen: bool,
    status: ScrapeStatus,
    status_detail: String,
    bad_lines_total: u64,
    dropped_series: u64,
    ipamd_start_time: f64,
    connected: bool,
    capacity: Capacity,
    derived: NodeCapacity,
    /// The breakdown groups the node belongs to.
    groups: Vec<(Dim, String)>,
    /// Per-subnet usage as last reported, and as placed in the subnet breakdown.
    subnets: Vec<cni_metrics_proto::v1::SubnetUsage>,
    subnet_groups: Vec<NodeSubnet>,
    /// Highest seq of the run in a closed window, and in a window every sink delivered.
    closed_seq: u64,
    committed_seq: u64,
    /// The run reported `baseline_in_doubt` (counted once per run).
    baseline_in_doubt: bool,
    /// The agent keeps its committed position on the node (`Hello.keeps_position`).
    keeps_position: bool,
    /// Its increments are out of the open window while its stream is gone (keeping runs only).
    withheld: bool,
    /// ipamd's start time when the last window that included the run closed.
    published_ipamd_start: f64,
    /// Keeping runs: counters changed since the last window that included the run.
    unpublished: Vec<Unpublished>,
    series: SeriesMap,
    /// The node's entry in the state's index, as last applied.
    indexed: Option<super::index::Indexed>,
}

/// What one value does to the node's cluster series ([`NodeState::set_value`]); the caller folds it
/// into the series table.
#[derive(Debug, PartialEq)]
pub(super) enum Folded {
    /// The node never defined this id.
    UnknownId,
    /// The series has no cluster series (its definition was refused): nothing to fold.
    NoSlot,
    /// Fold `change` into cluster series `slot`; `role`: the capacity gauge the series is.
    Into { slot: u32, change: SlotChange, role: Option<CapRole> },
}

/// A change of one node's contribution to a cluster series.
#[derive(Debug, PartialEq)]
pub(super) enum SlotChange {
    /// A value that is not finite: the gauge's old value, if it counted, leaves the sum.
    NonFinite { withdraw: Option<f64> },
    /// A counter's total went backwards: taken as the new baseline, nothing counted.
    Regressed,
    /// A counter's increment, into the open window.
    Increment(f64),
    /// A gauge's new value, and its old one when that counted.
    Gauge { old: Option<f64>, new: f64 },
}

/// What recording a report's status did ([`NodeState::record`]).
pub(super) struct Recorded {
    /// The seq to acknowledge and the run's committed seq.
    pub(super) ack: u64,
    pub(super) committed: u64,
    /// The run reported `baseline_in_doubt` for the first time.
    pub(super) newly_in_doubt: bool,
}

/// A counter's sample name and labels (as the agent defined them).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResumeKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// What stays of a node that left: enough to continue its run or resume a new one exactly.
#[derive(Debug)]
pub(super) struct Departed {
    pub(super) run_id: u64,
    pub(super) last_seq: u64,
    pub(super) closed_seq: u64,
    pub(super) committed_seq: u64,
    pub(super) ipamd_start_time: f64,
    /// The run keeps its position on the node: its increments not yet in a closed window were withheld,
    /// and a new run resumes from what was published (`published_*`).
    pub(super) keeps_position: bool,
    pub(super) published_ipamd_start: f64,
    pub(super) unpublished: Vec<Unpublished>,
    /// Its counter series (ids of its run), with their last totals and raw values.
    pub(super) series: Vec<(u32, NodeSeries)>,
    pub(super) at: Instant,
}

impl Departed {
    /// Where a new run of the node starts counting: a keeping run's increments after its last closed
    /// window were withheld, so the new run counts them from the published position; otherwise from
    /// the last applied one. `None` when ipamd's start is unknown.
    pub(super) fn resume_point(&self) -> Option<Resume> {
        let start = if self.keeps_position { self.published_ipamd_start } else { self.ipamd_start_time };
        let raw_of = |id: u32, s: &NodeSeries| match self.unpublished.iter().find(|u| u.id == id) {
            Some(u) if self.keeps_position => u.raw_before,
            _ => s.raw,
        };
        let points: Vec<(Arc<ResumeKey>, f64)> =
            self.series.iter().filter_map(|(id, s)| Some((s.key.clone()?, raw_of(*id, s)))).filter(|(_, raw)| raw.is_finite()).collect();
        (start > 0.0).then_some(Resume { ipamd_start_time: start, points })
    }
}

/// Where a node's previous agent run stopped counting, for a new run (see the proto's `Resume`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub ipamd_start_time: f64,
    pub points: Vec<(Arc<ResumeKey>, f64)>,
}

/// What a hello gets: the session, the node's TTL, and for the run what was committed or where a
/// previous run stopped.
#[derive(Debug, PartialEq)]
pub struct Welcomed {
    pub session: u64,
    pub ttl: Duration,
    pub committed_seq: u64,
    pub resume: Option<Resume>,
    /// The same run came back after it had left (its totals were kept).
    pub continued: bool,
}

/// A closed window's promise to one node run: its increments up to `seq` are in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitMark {
    pub node: Arc<str>,
    pub run_id: u64,
    pub seq: u64,
}

impl NodeState {
    /// A node first seen on this hello (identity and placement are the caller's next steps).
    pub(super) fn new(name: Arc<str>, h: &Hello, session: u64, interval: Duration, ttl: Duration, now: Instant) -> Self {
        Self {
            name,
            run_id: h.run_id,
            session,
            agent_version: String::new(),
            availability_zone: String::new(),
            instance_type: String::new(),
            instance_id: String::new(),
            region: String::new(),
            cluster_name: String::new(),
            interval,
            ttl,
            last_seen: now,
            last_seq: 0,
            snapshot_seen: false,
            status: ScrapeStatus::Pending,
            status_detail: String::new(),
            bad_lines_total: 0,
            dropped_series: 0,
            ipamd_start_time: h.ipamd_start_time_seconds,
            connected: true,
            capacity: Capacity::default(),
            derived: NodeCapacity::default(),
            groups: Vec::new(),
            subnets: Vec::new(),
            subnet_groups: Vec::new(),
            closed_seq: 0,
            committed_seq: 0,
            baseline_in_doubt: false,
            keeps_position: h.keeps_position,
            withheld: false,
            published_ipamd_start: 0.0,
            unpublished: Vec::new(),
            series: SeriesMap::default(),
            indexed: None,
        }
    }

    /// The same run came back: it continues from what its departed record kept.
    pub(super) fn continue_from(&mut self, d: &Departed) {
        self.last_seq = d.last_seq;
        self.closed_seq = d.closed_seq;
        self.committed_seq = d.committed_seq;
        self.ipamd_start_time = d.ipamd_start_time;
        self.published_ipamd_start = d.published_ipamd_start;
        self.unpublished.clone_from(&d.unpublished);
        self.series = d.series.iter().cloned().collect();
        self.withheld = d.keeps_position;
    }

    /// The hello's facts about the run and the node (its region and cluster name go through the book).
    pub(super) fn greet(&mut self, h: &Hello, session: u64, interval: Duration, ttl: Duration, now: Instant) {
        self.session = session;
        self.agent_version.clone_from(&h.agent_version);
        self.availability_zone.clone_from(&h.availability_zone);
        self.instance_type.clone_from(&h.instance_type);
        self.instance_id.clone_from(&h.instance_id);
        self.interval = interval;
        self.ttl = ttl;
        self.last_seen = now;
        self.snapshot_seen = false;
        self.connected = true;
        self.keeps_position = h.keeps_position;
    }

    /// Stale: the last scrape failed, or two reports were missed (the node is still within its TTL).
    pub fn is_stale(&self, now: Instant) -> bool {
        self.status != ScrapeStatus::Ok || self.reporting_is_late(now)
    }

    /// Two intervals without a report: the one rule of staleness by time.
    pub(super) fn reporting_is_late(&self, now: Instant) -> bool {
        now > self.late_at()
    }

    /// When the node's reporting becomes late (two intervals after its last report).
    pub(super) fn late_at(&self) -> Instant {
        self.last_seen + self.interval * 2
    }

    /// A window closed with the run's reports up to `last_seq` in it: the promise to the run.
    pub(super) fn close_window(&mut self) -> CommitMark {
        self.closed_seq = self.last_seq;
        self.published_ipamd_start = self.ipamd_start_time;
        // Kept for the next window unless it grew large (a snapshot), so busy windows do not allocate
        // and idle nodes hold at most a few entries' capacity.
        if self.unpublished.capacity() > 8 {
            self.unpublished = Vec::new();
        } else {
            self.unpublished.clear();
        }
        CommitMark { node: self.name.clone(), run_id: self.run_id, seq: self.last_seq }
    }

    /// What stays of the node when it leaves: its counters' last totals and raw values.
    pub(super) fn into_departed(self) -> Departed {
        Departed {
            run_id: self.run_id,
            last_seq: self.last_seq,
            closed_seq: self.closed_seq,
            committed_seq: self.committed_seq,
            ipamd_start_time: self.ipamd_start_time,
            keeps_position: self.keeps_position,
            published_ipamd_start: self.published_ipamd_start,
            unpublished: self.unpublished,
            series: self.series.into_iter().filter(|(_, s)| s.kind == MetricKind::Counter).collect(),
            at: self.last_seen,
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    pub fn availability_zone(&self) -> &str {
        &self.availability_zone
    }

    pub fn instance_type(&self) -> &str {
        &self.instance_type
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// When its last report (or hello) arrived.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// The last scrape's status, and what the agent said of it.
    pub fn status(&self) -> ScrapeStatus {
        self.status
    }

    pub fn status_detail(&self) -> &str {
        &self.status_detail
    }

    pub fn bad_lines_total(&self) -> u64 {
        self.bad_lines_total
    }

    pub fn dropped_series(&self) -> u64 {
        self.dropped_series
    }

    /// Whether its stream is open.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The capacity gauges as reported, and the numbers derived from them.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    pub fn derived(&self) -> &NodeCapacity {
        &self.derived
    }

    /// The highest seq of the run every sink delivered.
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(super) fn closed_seq(&self) -> u64 {
        self.closed_seq
    }

    pub(super) fn snapshot_seen(&self) -> bool {
        self.snapshot_seen
    }

    pub(super) fn keeps_position(&self) -> bool {
        self.keeps_position
    }

    pub(super) fn withheld(&self) -> bool {
        self.withheld
    }

    pub(super) fn groups(&self) -> &[(Dim, String)] {
        &self.groups
    }

    pub(super) fn subnets(&self) -> &[cni_metrics_proto::v1::SubnetUsage] {
        &self.subnets
    }

    pub(super) fn series(&self, id: u32) -> Option<&NodeSeries> {
        self.series.get(&id)
    }

    pub(super) fn series_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.series.keys().copied()
    }

    /// The gauges it counts in cluster series: (series, value).
    pub(super) fn contributions(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.series.values().filter(|s| s.contributing).filter_map(|s| Some((s.slot?, s.value)))
    }

    /// Its index entry is now `new`; returns the one it replaces.
    pub(super) fn replace_indexed(&mut self, new: Option<super::index::Indexed>) -> Option<super::index::Indexed> {
        std::mem::replace(&mut self.indexed, new)
    }

    /// The agent now reports this region and cluster name.
    pub(super) fn set_identity(&mut self, region: &str, cluster_name: &str) {
        region.clone_into(&mut self.region);
        cluster_name.clone_into(&mut self.cluster_name);
    }

    /// A report older than one applied still shows the node alive.
    pub(super) fn touch(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// Its stream ended without a goodbye.
    pub(super) fn disconnect(&mut self) {
        self.connected = false;
    }

    /// It now belongs to these breakdown groups.
    pub(super) fn set_groups(&mut self, groups: Vec<(Dim, String)>) {
        self.groups = groups;
    }

    /// Every sink delivered a window with the run's reports up to `seq`: returns whether its commit
    /// advanced.
    pub(super) fn advance_commit(&mut self, seq: u64) -> bool {
        let advanced = seq > self.committed_seq;
        self.committed_seq = self.committed_seq.max(seq);
        advanced
    }

    /// Take the run's increments out of the open window (`true`) or put them back (`false`); returns
    /// whether that changed anything (only keeping runs are withheld). Their amounts, by cluster
    /// series, are then [`NodeState::unpublished_by_slot`].
    pub(super) fn set_withheld(&mut self, withhold: bool) -> bool {
        if self.withheld == withhold || (withhold && !self.keeps_position) {
            return false;
        }
        self.withheld = withhold;
        true
    }

    /// The increments put in the open window since the last window that included the run, by cluster
    /// series.
    pub(super) fn unpublished_by_slot(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.unpublished.iter().filter_map(|u| Some((self.series.get(&u.id)?.slot?, u.pending)))
    }

    /// A new series (none of that id yet).
    pub(super) fn define_series(&mut self, id: u32, s: NodeSeries) {
        self.series.insert(id, s);
    }

    pub(super) fn remove_series(&mut self, id: u32) -> Option<NodeSeries> {
        self.series.remove(&id)
    }

    /// Give back the room beyond the series held (after a snapshot).
    pub(super) fn shrink_series(&mut self) {
        self.series.shrink_to_fit();
    }

    /// Series `id` now has value `v`: what that does to its cluster series.
    pub(super) fn set_value(&mut self, id: u32, v: f64) -> Folded {
        let Some(s) = self.series.get_mut(&id) else { return Folded::UnknownId };
        let Some(slot) = s.slot else { return Folded::NoSlot };
        let role = s.role;
        if !v.is_finite() {
            // The node has no meaningful value now: stop counting its old one.
            let withdraw = (s.kind == MetricKind::Gauge && s.contributing).then_some(s.value);
            if withdraw.is_some() {
                s.contributing = false;
            }
            return Folded::Into { slot, change: SlotChange::NonFinite { withdraw }, role };
        }
        let change = match s.kind {
            MetricKind::Counter => {
                let last = if s.value.is_nan() { 0.0 } else { s.value };
                let raw = s.raw;
                s.value = v;
                if v < last {
                    // Totals only grow within a run; take it as the new baseline, never as a negative.
                    SlotChange::Regressed
                } else {
                    if self.keeps_position {
                        unpublished_entry(&mut self.unpublished, id, raw).pending += v - last;
                    }
                    SlotChange::Increment(v - last)
                }
            }
            _ => {
                let old = s.contributing.then_some(s.value);
                s.value = v;
                s.contributing = true;
                SlotChange::Gauge { old, new: v }
            }
        };
        Folded::Into { slot, change, role }
    }

    /// The counters' raw values of report `r` (the resume point), before their totals apply; returns
    /// what a recovering run brings beyond its committed totals.
    pub(super) fn note_raws(&mut self, r: &cni_metrics_proto::v1::Report, recovering: bool) -> f64 {
        let mut raws = r.counter_raws.iter();
        let mut recovered = 0.0;
        for (&id, &v) in r.ids.iter().zip(&r.values) {
            let Some(s) = self.series.get_mut(&id).filter(|s| s.kind == MetricKind::Counter) else { continue };
            let base = if s.value.is_nan() { 0.0 } else { s.value };
            if let Some(&raw) = raws.next() {
                // The published position moves on: remember it, unless the series is new and brings
                // nothing to count (then its first raw value is its position).
                if self.keeps_position && raw != s.raw && !(s.raw.is_nan() && v <= base) {
                    unpublished_entry(&mut self.unpublished, id, s.raw);
                }
                s.raw = raw;
            }
            if recovering && v.is_finite() && v > base {
                recovered += v - base;
            }
        }
        recovered
    }

    /// The subnets of a report that changed them, placed in the subnet breakdown; their blocks only
    /// when kept (`keep_blocks`: they serve `--subnet-prefixes` only).
    pub(super) fn set_subnets(&mut self, usage: &[cni_metrics_proto::v1::SubnetUsage], placed: Vec<NodeSubnet>, keep_blocks: bool) {
        self.subnet_groups = placed;
        usage.clone_into(&mut self.subnets);
        if !keep_blocks {
            self.subnets.iter_mut().for_each(|s| s.blocks = Vec::new());
        }
    }

    /// Its subnets as placed in the subnet breakdown.
    pub(super) fn subnet_groups(&self) -> &[NodeSubnet] {
        &self.subnet_groups
    }

    /// A report's scrape status, counts and sequence.
    pub(super) fn record(&mut self, r: &cni_metrics_proto::v1::Report, status: ScrapeStatus, now: Instant) -> Recorded {
        if status != self.status || !r.status_detail.is_empty() || r.snapshot {
            self.status_detail.clone_from(&r.status_detail);
        }
        self.status = status;
        self.bad_lines_total += u64::from(r.bad_lines);
        self.dropped_series = r.dropped_series;
        if r.ipamd_start_time_seconds > 0.0 {
            self.ipamd_start_time = r.ipamd_start_time_seconds;
        }
        self.last_seen = now;
        self.last_seq = self.last_seq.max(r.seq);
        self.snapshot_seen = true;
        let newly_in_doubt = r.baseline_in_doubt && !self.baseline_in_doubt;
        self.baseline_in_doubt |= r.baseline_in_doubt;
        Recorded { ack: self.last_seq, committed: self.committed_seq, newly_in_doubt }
    }

    /// Change its capacity gauges; returns the derived numbers before and after.
    pub(super) fn change_capacity(&mut self, change: impl FnOnce(&mut Capacity), low_threshold: f64) -> (NodeCapacity, NodeCapacity) {
        change(&mut self.capacity);
        let new = self.capacity.derive(low_threshold);
        (std::mem::replace(&mut self.derived, new), new)
    }

    /// Tests: the run's last seq, whether it keeps its position and whether it is withheld.
    #[cfg(test)]
    pub(super) fn set_seqs_for_test(&mut self, last_seq: u64, keeps_position: bool, withheld: bool) {
        (self.last_seq, self.keeps_position, self.withheld) = (last_seq, keeps_position, withheld);
    }

    /// What a consumer sees of the node, but its report time, as a hash: a report that leaves it alone
    /// is no change for subscribers.
    pub(super) fn view_fingerprint(&self, stale: bool) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.status as i32, &self.status_detail, self.connected, stale, self.series.len(), self.bad_lines_total).hash(&mut h);
        let capacity = [self.capacity.assigned, self.capacity.total, self.capacity.max, self.capacity.cooldown];
        for v in capacity.into_iter().chain([self.derived.available, self.derived.headroom]) {
            v.map(f64::to_bits).hash(&mut h);
        }
        (self.derived.low, self.derived.anomalous).hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_when_failing_or_two_intervals_late() {
        let t = Instant::now();
        let h = Hello { node_name: "n".into(), run_id: 1, ..Hello::default() };
        let mut n = NodeState::new(Arc::from("n"), &h, 1, Duration::from_secs(10), Duration::from_secs(30), t);
        // (status, seconds since the last report, stale)
        let cases = [
            (ScrapeStatus::Ok, 0, false),
            (ScrapeStatus::Ok, 20, false),
            (ScrapeStatus::Ok, 21, true),
            (ScrapeStatus::Timeout, 0, true),
            (ScrapeStatus::Pending, 0, true),
        ];
        for (status, after, stale) in cases {
            n.status = status;
            assert_eq!(n.is_stale(t + Duration::from_secs(after)), stale, "{status:?} after {after}s");
        }
    }

    #[test]
    fn a_new_run_resumes_from_the_published_or_the_last_position() {
        let t = Instant::now();
        let key = Arc::new(ResumeKey { name: "c_total".into(), labels: Vec::new() });
        let series = |raw: f64| NodeSeries {
            slot: None,
            kind: MetricKind::Counter,
            value: 0.0,
            raw,
            key: Some(key.clone()),
            contributing: false,
            role: None,
        };
        let departed = |keeps: bool, unpublished: Vec<Unpublished>, raw: f64, start: f64| Departed {
            run_id: 1,
            last_seq: 3,
            closed_seq: 2,
            committed_seq: 2,
            ipamd_start_time: start,
            keeps_position: keeps,
            published_ipamd_start: 50.0,
            unpublished,
            series: vec![(1, series(raw))],
            at: t,
        };
        let before = vec![Unpublished { id: 1, raw_before: 7.0, pending: 3.0 }];
        // (record, the resume point's start and raw value)
        let cases = [
            (departed(false, Vec::new(), 10.0, 100.0), Some((100.0, vec![10.0]))),
            (departed(false, before.clone(), 10.0, 100.0), Some((100.0, vec![10.0]))),
            (departed(true, before, 10.0, 100.0), Some((50.0, vec![7.0]))),
            (departed(true, Vec::new(), 10.0, 100.0), Some((50.0, vec![10.0]))),
            (departed(false, Vec::new(), f64::NAN, 100.0), Some((100.0, vec![]))),
            (departed(false, Vec::new(), 10.0, 0.0), None),
        ];
        for (i, (d, want)) in cases.into_iter().enumerate() {
            let got = d.resume_point().map(|r| (r.ipamd_start_time, r.points.iter().map(|p| p.1).collect::<Vec<_>>()));
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_value_says_what_it_does_to_its_cluster_series() {
        let t = Instant::now();
        let h = Hello { node_name: "n".into(), run_id: 1, keeps_position: true, ..Hello::default() };
        let mut n = NodeState::new(Arc::from("n"), &h, 1, Duration::from_secs(10), Duration::from_secs(30), t);
        let series = |slot: Option<u32>, kind: MetricKind, value: f64, role: Option<CapRole>| NodeSeries {
            slot,
            kind,
            value,
            raw: 5.0,
            key: None,
            contributing: false,
            role,
        };
        n.define_series(1, series(Some(10), MetricKind::Gauge, f64::NAN, Some(CapRole::Assigned)));
        n.define_series(2, series(Some(11), MetricKind::Counter, 100.0, None));
        n.define_series(3, series(None, MetricKind::Gauge, f64::NAN, None));
        let into = |slot, change, role| Folded::Into { slot, change, role };
        let assigned = Some(CapRole::Assigned);
        // (series, value, what it does)
        let steps = [
            (9, 1.0, Folded::UnknownId),
            (3, 1.0, Folded::NoSlot),
            (1, 4.0, into(10, SlotChange::Gauge { old: None, new: 4.0 }, assigned)),
            (1, 6.0, into(10, SlotChange::Gauge { old: Some(4.0), new: 6.0 }, assigned)),
            (1, f64::NAN, into(10, SlotChange::NonFinite { withdraw: Some(6.0) }, assigned)),
            (1, f64::INFINITY, into(10, SlotChange::NonFinite { withdraw: None }, assigned)),
            (1, 2.0, into(10, SlotChange::Gauge { old: None, new: 2.0 }, assigned)),
            (2, 103.0, into(11, SlotChange::Increment(3.0), None)),
            (2, 103.0, into(11, SlotChange::Increment(0.0), None)),
            (2, 90.0, into(11, SlotChange::Regressed, None)),
            (2, 95.0, into(11, SlotChange::Increment(5.0), None)),
        ];
        for (i, (id, v, want)) in steps.into_iter().enumerate() {
            assert_eq!(n.set_value(id, v), want, "step {i}: series {id} = {v}");
        }
        // A keeping run remembers what it put in the open window since the last window that included it.
        assert_eq!(n.unpublished_by_slot().collect::<Vec<_>>(), vec![(11, 8.0)]);
        assert!(n.set_withheld(true) && !n.set_withheld(true), "withheld once");
        assert_eq!(n.contributions().collect::<Vec<_>>(), vec![(10, 2.0)], "the gauge counts its last value");
    }
}
