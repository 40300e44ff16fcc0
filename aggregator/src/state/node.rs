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
pub(super) struct SeriesMap(Vec<(u32, NodeSeries)>);

impl SeriesMap {
    fn find(&self, id: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(i, _)| *i)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn get(&self, id: &u32) -> Option<&NodeSeries> {
        self.find(*id).ok().map(|i| &self.0[i].1)
    }

    pub(super) fn get_mut(&mut self, id: &u32) -> Option<&mut NodeSeries> {
        self.find(*id).ok().map(|i| &mut self.0[i].1)
    }

    pub(super) fn contains_key(&self, id: &u32) -> bool {
        self.find(*id).is_ok()
    }

    /// Insert or replace the series `id`.
    pub(super) fn insert(&mut self, id: u32, s: NodeSeries) {
        match self.find(id) {
            Ok(i) => self.0[i].1 = s,
            Err(i) => self.0.insert(i, (id, s)),
        }
    }

    /// Give back the room beyond the series held (after a snapshot).
    pub(super) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    pub(super) fn remove(&mut self, id: &u32) -> Option<NodeSeries> {
        self.find(*id).ok().map(|i| self.0.remove(i).1)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(id, _)| id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &NodeSeries> {
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

/// What the aggregator knows of one node.
#[derive(Debug)]
pub struct NodeState {
    pub name: Arc<str>,
    pub run_id: u64,
    pub session: u64,
    pub agent_version: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub instance_id: String,
    pub region: String,
    pub cluster_name: String,
    pub interval: Duration,
    pub ttl: Duration,
    pub last_seen: Instant,
    pub last_seq: u64,
    pub snapshot_seen: bool,
    pub status: ScrapeStatus,
    pub status_detail: String,
    pub bad_lines_total: u64,
    pub dropped_series: u64,
    pub ipamd_start_time: f64,
    pub connected: bool,
    pub capacity: Capacity,
    pub derived: NodeCapacity,
    /// The breakdown groups the node belongs to.
    pub groups: Vec<(Dim, String)>,
    /// Per-subnet usage as last reported, and as placed in the subnet breakdown.
    pub subnets: Vec<cni_metrics_proto::v1::SubnetUsage>,
    pub subnet_groups: Vec<NodeSubnet>,
    /// Highest seq of the run in a closed window, and in a window every sink delivered.
    pub closed_seq: u64,
    pub committed_seq: u64,
    /// The run reported `baseline_in_doubt` (counted once per run).
    pub baseline_in_doubt: bool,
    /// The agent keeps its committed position on the node (`Hello.keeps_position`).
    pub keeps_position: bool,
    /// Its increments are out of the open window while its stream is gone (keeping runs only).
    pub withheld: bool,
    /// ipamd's start time when the last window that included the run closed.
    pub(super) published_ipamd_start: f64,
    /// Keeping runs: counters changed since the last window that included the run.
    pub(super) unpublished: Vec<Unpublished>,
    pub(super) series: SeriesMap,
    /// The node's entry in the state's index, as last applied.
    pub(super) indexed: Option<super::index::Indexed>,
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

    /// What a consumer sees of the node, but its report time, as a hash: a report that leaves it alone
    /// is no change for subscribers.
    pub(super) fn view_fingerprint(&self, stale: bool) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.status as i32, &self.status_detail, self.connected, stale, self.series.len(), self.bad_lines_total).hash(&mut h);
        for v in [self.capacity.assigned, self.capacity.total, self.capacity.max, self.derived.available, self.derived.headroom] {
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
}
