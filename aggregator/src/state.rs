//! The aggregator's pure state: per-node series and the cluster aggregates derived from them. No I/O and
//! no clock (the caller passes `now`), so every rule is table-tested.
//!
//! - A **cluster series** ("slot") is a sample name plus the labels left after the catalogue's cluster
//!   fold. Gauge slots hold the sum (or, for summary quantiles, the max) over live nodes, maintained
//!   incrementally: a report costs O(series it changes), never O(nodes).
//! - Counter slots hold the increments summed over every node ever seen since the aggregator started
//!   (`total`, monotonic: a node leaving never makes it go back) and the increments of the current publish
//!   window (`window`).
//! - Agents send counters as running totals per agent run (see the proto); the increment applied is the
//!   difference with the last total seen for that node, run and series, so a replayed or duplicated
//!   report cannot count twice.
//! - Exactness across restarts: counter increments enter the open window when applied and the
//!   Prometheus totals when the window closes; each closed window carries commit marks (node, run, seq)
//!   that [`ClusterState::commit`] records once every sink delivered it. A run first seen mid-way (this
//!   aggregator restarted) counts from the committed totals in its snapshot. A node that leaves (goodbye,
//!   TTL, new agent run) leaves a *departed* record: its counters' last totals and ipamd raw values. The
//!   same run coming back (a healed partition) continues from the totals; a new run of the node gets the
//!   raw values as its resume point ([`ClusterState::hello`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::catalog::{self, CloudWatchFold, NodeFold};
use cni_metrics_proto::v1::{FamilyType, Hello, MetricKind, Report, ScrapeStatus, SeriesDef};

mod breakdown;
mod capacity;
pub use breakdown::{Breakdowns, Dim, GroupTotals, NodeSubnet, SubnetTotals};
pub use capacity::{CapRole, Capacity, CapacityTotals, NodeCapacity};

/// Limits and defaults of the state.
#[derive(Clone, Debug)]
pub struct StateConfig {
    pub cluster_id: String,
    /// Fixed node TTL; `None` = 3 × the interval the agent announced.
    pub node_ttl: Option<Duration>,
    /// Most cluster series; new ones beyond are rejected and counted.
    pub max_cluster_series: usize,
    /// Most series one node may define.
    pub max_series_per_node: usize,
    /// A node whose headroom (ip_max − assigned) is below this is low on IPs.
    pub low_ip_threshold: f64,
    /// Breakdown dimensions (opt-in) and the bound on their groups.
    pub breakdown: Vec<Dim>,
    pub max_breakdown_groups: usize,
    /// Most departed-node records kept (oldest evicted, counted).
    pub max_departed: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            cluster_id: String::new(),
            node_ttl: None,
            max_cluster_series: 200_000,
            max_series_per_node: 5_000,
            low_ip_threshold: 5.0,
            breakdown: Vec::new(),
            max_breakdown_groups: 1_000,
            max_departed: 100_000,
        }
    }
}

/// Why a hello or report was refused. Bounded: used as a metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("node name is empty or longer than 253 bytes")]
    BadNodeName,
    #[error("hello announces a zero interval")]
    BadInterval,
    #[error("session {0} is no longer the node's current stream")]
    StaleSession(u64),
    #[error("the first report of a stream must be a snapshot")]
    SnapshotExpected,
    #[error("report has {ids} ids but {values} values")]
    LengthMismatch { ids: usize, values: usize },
    #[error("series id {0} redefined with another identity")]
    Redefined(u32),
    #[error("series definition {0} is invalid")]
    BadDef(u32),
    #[error("node {0:?} is already reported by another live agent (two agents claim one node name)")]
    DuplicateNode(String),
    #[error("report has {counters} counter values but {raws} counter raw values")]
    RawMismatch { counters: usize, raws: usize },
}

impl IngestError {
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::BadNodeName => "bad_node_name",
            IngestError::BadInterval => "bad_interval",
            IngestError::StaleSession(_) => "stale_session",
            IngestError::SnapshotExpected => "snapshot_expected",
            IngestError::LengthMismatch { .. } => "length_mismatch",
            IngestError::Redefined(_) => "redefined",
            IngestError::BadDef(_) => "bad_def",
            IngestError::DuplicateNode(_) => "duplicate_node",
            IngestError::RawMismatch { .. } => "length_mismatch",
        }
    }
}

/// One cluster series.
#[derive(Debug)]
struct Slot {
    family: Arc<str>,
    name: Arc<str>,
    labels: Vec<(String, String)>,
    kind: MetricKind,
    fold: NodeFold,
    /// Gauge: sum of contributing nodes' finite values.
    sum: f64,
    /// Gauge: number of contributing nodes.
    contributors: u32,
    /// Gauge with max fold: value per contributing node.
    per_node: HashMap<Arc<str>, f64>,
    /// Counter: increments since aggregator start.
    total: f64,
    /// Counter: increments in the open publish window.
    window: f64,
}

impl Slot {
    fn gauge_value(&self) -> Option<f64> {
        if self.contributors == 0 {
            return None;
        }
        match self.fold {
            NodeFold::Sum => Some(self.sum),
            NodeFold::Max => self.per_node.values().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        }
    }
}

#[derive(Debug, Clone)]
struct NodeSeries {
    slot: Option<u32>,
    kind: MetricKind,
    /// Gauge value or counter running total; NaN until the first value (counters: the committed total
    /// the definition carried).
    value: f64,
    /// Counters: ipamd's raw value at the last report that carried it (NaN: unknown), and the sample
    /// name and labels, for the node's resume point.
    raw: f64,
    key: Option<Arc<ResumeKey>>,
    /// Whether `value` is currently counted in the slot (gauges).
    contributing: bool,
    role: Option<CapRole>,
}

/// A counter of a keeping run changed since the last window that included the run: its raw value then
/// (the published position) and the increments it put in the open window since (withdrawn while the run
/// is withheld). Only series that changed have one, so idle nodes and runs that do not keep their
/// position cost nothing.
#[derive(Debug, Clone, Copy)]
struct Unpublished {
    id: u32,
    raw_before: f64,
    pending: f64,
}

/// The entry of `id`, created with the series' current raw value as its published position.
fn unpublished_entry(list: &mut Vec<Unpublished>, id: u32, raw: f64) -> &mut Unpublished {
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
    published_ipamd_start: f64,
    /// Keeping runs: counters changed since the last window that included the run.
    unpublished: Vec<Unpublished>,
    series: HashMap<u32, NodeSeries>,
}

/// A counter's sample name and labels (as the agent defined them).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResumeKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// What stays of a node that left: enough to continue its run or resume a new one exactly.
#[derive(Debug)]
struct Departed {
    run_id: u64,
    last_seq: u64,
    closed_seq: u64,
    committed_seq: u64,
    ipamd_start_time: f64,
    /// The run keeps its position on the node: its increments not yet in a closed window were withheld,
    /// and a new run resumes from what was published (`published_*`).
    keeps_position: bool,
    published_ipamd_start: f64,
    unpublished: Vec<Unpublished>,
    /// Its counter series (ids of its run), with their last totals and raw values.
    series: Vec<(u32, NodeSeries)>,
    at: Instant,
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
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

/// Self-metrics of ingestion (names in [`ClusterState::render_prometheus`]).
#[derive(Debug, Default, Clone)]
pub struct IngestStats {
    pub sessions: u64,
    pub reports: u64,
    pub reports_ignored_old_seq: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub series_rejected: BTreeMap<&'static str, u64>,
    pub scrape_errors: BTreeMap<&'static str, u64>,
    pub bad_lines: u64,
    pub nonfinite_values: u64,
    pub counter_regressions: u64,
    pub goodbyes: u64,
    pub expired: u64,
    pub agent_restarts: u64,
    /// Runs first seen mid-way (this aggregator restarted) and the increments counted from their
    /// committed totals: exact unless a previous aggregator delivered a window whose commit never
    /// reached the agent (then these were counted twice).
    pub runs_recovered: u64,
    pub recovered_increments: f64,
    /// First snapshots whose agent started counting without a baseline (increments before it unknown).
    pub baseline_unknown_runs: u64,
    /// Runs counted from a young ipamd's start without a resume point by a younger aggregator (part may be
    /// counted twice).
    pub baseline_in_doubt_runs: u64,
    /// New runs resumed from a departed record, and departed runs that came back and continued.
    pub runs_resumed: u64,
    pub runs_continued: u64,
    /// Departed records dropped at `max_departed` (a later agent run of those nodes cannot resume).
    pub departed_evicted: u64,
    /// Times a node started reporting impossible capacity values.
    pub capacity_anomalies: u64,
}

/// The result of applying a report.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// The seq to acknowledge.
    pub ack: u64,
    /// False when the report was older than one already applied (ignored, still acknowledged).
    pub fresh: bool,
    /// Increments counted from the committed totals of a run first seen mid-way (to log).
    pub recovered: Option<f64>,
}

/// One CloudWatch-style datum of a publish window.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub metric_name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// A breakdown dimension (name, value) besides CLUSTER_ID.
    pub dimension: Option<(&'static str, String)>,
}

/// What a sink publishes: the cluster's values for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The configured cluster id, else the one cluster name all agents agree on, else empty.
    pub cluster_id: String,
    /// The one AWS region all agents that know it agree on.
    pub region_hint: Option<String>,
    /// Unix ms of the window's end (the datums' timestamp).
    pub end_unix_ms: i64,
    pub nodes: usize,
    pub datums: Vec<Datum>,
    /// What this window promises each node run (see [`ClusterState::commit`]).
    pub commits: Vec<CommitMark>,
    /// The publisher's sequence number of the window (0 until it numbers it).
    pub seq: u64,
}

/// A cluster series' identity: sample name and labels after the cluster fold.
type SlotKey = (Arc<str>, Vec<(String, String)>);

/// The whole cluster.
#[derive(Debug)]
pub struct ClusterState {
    cfg: StateConfig,
    slots: Vec<Slot>,
    slot_index: HashMap<SlotKey, u32>,
    /// Family → (type, help) for exposition.
    families: BTreeMap<Arc<str>, FamilyType>,
    names: HashMap<String, Arc<str>>,
    nodes: HashMap<Arc<str>, NodeState>,
    departed: HashMap<Arc<str>, Departed>,
    /// Counter identities, shared by every node that has them.
    resume_keys: std::collections::HashSet<Arc<ResumeKey>>,
    /// Bumped whenever commits advance; streams watch it.
    commit_generation: u64,
    next_session: u64,
    capacity: CapacityTotals,
    breakdowns: Breakdowns,
    /// Bumped by every change; subscribers poll it.
    version: u64,
    pub stats: IngestStats,
}

impl ClusterState {
    pub fn new(cfg: StateConfig) -> Self {
        let breakdowns = Breakdowns::new(cfg.breakdown.clone(), cfg.max_breakdown_groups);
        Self {
            cfg,
            slots: Vec::new(),
            slot_index: HashMap::new(),
            families: BTreeMap::new(),
            names: HashMap::new(),
            nodes: HashMap::new(),
            departed: HashMap::new(),
            resume_keys: std::collections::HashSet::new(),
            commit_generation: 0,
            next_session: 0,
            capacity: CapacityTotals::default(),
            breakdowns,
            version: 0,
            stats: IngestStats::default(),
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A stream said hello: (re)register the node; returns its session id, TTL and commit/resume facts.
    pub fn hello(&mut self, h: &Hello, now: Instant) -> Result<Welcomed, IngestError> {
        if h.node_name.is_empty() || h.node_name.len() > 253 {
            return Err(IngestError::BadNodeName);
        }
        if h.interval_ms == 0 {
            return Err(IngestError::BadInterval);
        }
        let interval = Duration::from_millis(h.interval_ms);
        let ttl = self.cfg.node_ttl.unwrap_or(interval * 3);
        // Another run while the current one is connected and reporting: a second agent claims this node
        // (a restarted agent's old stream is closed by then). Refuse it; the live one keeps the node.
        if let Some(n) = self.nodes.get(h.node_name.as_str()) {
            if n.run_id != h.run_id && n.connected && now.saturating_duration_since(n.last_seen) <= n.interval * 2 {
                *self.stats.rejected.entry("duplicate_node").or_default() += 1;
                return Err(IngestError::DuplicateNode(h.node_name.clone()));
            }
        }
        self.next_session += 1;
        let session = self.next_session;
        self.stats.sessions += 1;
        let name = self.intern(&h.node_name);
        let restarted = self.nodes.get(&name).is_some_and(|n| n.run_id != h.run_id);
        if restarted {
            // A new agent run: its counter totals start from a new baseline.
            self.stats.agent_restarts += 1;
            self.remove_node(&name);
        }
        // A node not connected now: the same run coming back continues from its kept totals; a new run
        // resumes where the previous one stopped.
        let mut continued = None;
        let mut resume = None;
        if !self.nodes.contains_key(&name) {
            match self.departed.get(&name) {
                Some(d) if d.run_id == h.run_id => {
                    continued = self.departed.remove(&name);
                    self.stats.runs_continued += 1;
                }
                Some(d) => {
                    // A keeping run's increments after its last closed window were withheld: the new
                    // run counts them, from the published position. Otherwise from the last applied one.
                    let start = if d.keeps_position { d.published_ipamd_start } else { d.ipamd_start_time };
                    let raw_of = |id: u32, s: &NodeSeries| match d.unpublished.iter().find(|u| u.id == id) {
                        Some(u) if d.keeps_position => u.raw_before,
                        _ => s.raw,
                    };
                    let points: Vec<(Arc<ResumeKey>, f64)> = d
                        .series
                        .iter()
                        .filter_map(|(id, s)| Some((s.key.clone()?, raw_of(*id, s))))
                        .filter(|(_, raw)| raw.is_finite())
                        .collect();
                    if start > 0.0 {
                        resume = Some(Resume { ipamd_start_time: start, points });
                        self.stats.runs_resumed += 1;
                    }
                }
                None => {}
            }
        }
        let node = self.nodes.entry(name.clone()).or_insert_with(|| NodeState {
            name: name.clone(),
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
            series: HashMap::new(),
        });
        if let Some(d) = &continued {
            node.last_seq = d.last_seq;
            node.closed_seq = d.closed_seq;
            node.committed_seq = d.committed_seq;
            node.ipamd_start_time = d.ipamd_start_time;
            node.published_ipamd_start = d.published_ipamd_start;
            node.unpublished.clone_from(&d.unpublished);
            node.series = d.series.iter().cloned().collect();
            node.withheld = d.keeps_position;
        }
        let committed_seq = node.committed_seq;
        node.session = session;
        node.agent_version.clone_from(&h.agent_version);
        node.availability_zone.clone_from(&h.availability_zone);
        node.instance_type.clone_from(&h.instance_type);
        node.instance_id.clone_from(&h.instance_id);
        node.region.clone_from(&h.region);
        node.cluster_name.clone_from(&h.cluster_name);
        node.interval = interval;
        node.ttl = ttl;
        node.last_seen = now;
        node.snapshot_seen = false;
        node.connected = true;
        node.keeps_position = h.keeps_position;
        // (Re)place the node in its breakdown groups.
        let groups = self.breakdowns.place(&h.availability_zone, &h.instance_type, &h.node_name);
        if let Some(node) = self.nodes.get_mut(&name) {
            if node.groups != groups {
                self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, false);
                self.breakdowns.apply(&groups, &node.capacity, &node.derived, true);
                node.groups = groups;
            }
        }
        // The run's stream is live again: what it had withheld goes back into the open window.
        self.release(&name);
        Ok(Welcomed { session, ttl, committed_seq, resume, continued: continued.is_some() })
    }

    /// Apply one report of `node` on stream `session`.
    pub fn report(&mut self, node: &str, session: u64, r: &Report, now: Instant) -> Result<Applied, IngestError> {
        let result = self.apply(node, session, r, now);
        match &result {
            Ok(_) => self.stats.reports += 1,
            Err(e) => *self.stats.rejected.entry(e.reason()).or_default() += 1,
        }
        result
    }

    fn apply(&mut self, node_name: &str, session: u64, r: &Report, now: Instant) -> Result<Applied, IngestError> {
        let Some(node) = self.nodes.get(node_name) else {
            return Err(IngestError::StaleSession(session));
        };
        if node.session != session {
            return Err(IngestError::StaleSession(session));
        }
        if !node.snapshot_seen && !r.snapshot {
            return Err(IngestError::SnapshotExpected);
        }
        if r.ids.len() != r.values.len() {
            return Err(IngestError::LengthMismatch { ids: r.ids.len(), values: r.values.len() });
        }
        if !r.counter_raws.is_empty() {
            // Kinds of this report's definitions (a map only when it has any: deltas rarely do).
            let defined: HashMap<u32, bool> = r.defs.iter().map(|d| (d.id, d.kind == MetricKind::Counter as i32)).collect();
            let counters = r
                .ids
                .iter()
                .filter(|id| defined.get(id).copied().unwrap_or_else(|| node.series.get(id).is_some_and(|s| s.kind == MetricKind::Counter)))
                .count();
            if counters != r.counter_raws.len() {
                return Err(IngestError::RawMismatch { counters, raws: r.counter_raws.len() });
            }
        }
        if r.seq <= node.last_seq && !r.snapshot {
            self.stats.reports_ignored_old_seq += 1;
            let ack = node.last_seq;
            if let Some(n) = self.nodes.get_mut(node_name) {
                n.last_seen = now;
            }
            return Ok(Applied { ack, fresh: false, recovered: None });
        }
        // Validate definitions before changing anything.
        for d in &r.defs {
            validate_def(d)?;
            if let Some(existing) = node.series.get(&d.id) {
                if existing.kind as i32 != d.kind {
                    return Err(IngestError::Redefined(d.id));
                }
                if let Some(slot) = existing.slot {
                    let s = &self.slots[slot as usize];
                    if *s.name != *d.name {
                        return Err(IngestError::Redefined(d.id));
                    }
                }
            }
        }
        let name: Arc<str> = node.name.clone();

        for d in &r.defs {
            self.define(&name, d);
        }
        if r.snapshot {
            // Everything not in the snapshot is gone.
            let listed: std::collections::HashSet<u32> = r.ids.iter().copied().chain(r.defs.iter().map(|d| d.id)).collect();
            let gone: Vec<u32> = self.nodes[&name].series.keys().copied().filter(|id| !listed.contains(id)).collect();
            for id in gone {
                self.remove_series(&name, id);
            }
        }
        // A run first seen after it had already sent reports (this aggregator restarted): its counters
        // start from the committed totals their definitions carry (see `define`), so what a previous
        // aggregator never published is counted now.
        let recovering = r.snapshot && self.nodes[&name].last_seq == 0 && r.seq > 1;
        let first_report = self.nodes[&name].last_seq == 0;
        if first_report {
            // The run is established: a departed record of an earlier run has served its purpose (for a
            // keeping run, once a window with its increments closed: until then it is the resume point).
            if !self.nodes[&name].keeps_position {
                self.departed.remove(&name);
            }
            if r.baseline_unknown {
                self.stats.baseline_unknown_runs += 1;
            }
        }
        let mut recovered = 0.0;
        if !r.counter_raws.is_empty() || recovering {
            // Counters' raw values (the resume point), and what a recovered run brings, before applying.
            let mut raws = r.counter_raws.iter();
            if let Some(node) = self.nodes.get_mut(&name) {
                let keeps = node.keeps_position;
                for (&id, &v) in r.ids.iter().zip(&r.values) {
                    let Some(s) = node.series.get_mut(&id).filter(|s| s.kind == MetricKind::Counter) else { continue };
                    let base = if s.value.is_nan() { 0.0 } else { s.value };
                    if let Some(&raw) = raws.next() {
                        // The published position moves on: remember it, unless the series is new and
                        // brings nothing to count (then its first raw value is its position).
                        if keeps && raw != s.raw && !(s.raw.is_nan() && v <= base) {
                            unpublished_entry(&mut node.unpublished, id, s.raw);
                        }
                        s.raw = raw;
                    }
                    if recovering && v.is_finite() && v > base {
                        recovered += v - base;
                    }
                }
            }
        }
        for (&id, &v) in r.ids.iter().zip(&r.values) {
            self.update(&name, id, v);
        }
        if recovering {
            self.stats.runs_recovered += 1;
            self.stats.recovered_increments += recovered;
        }
        for &id in &r.removed {
            self.remove_series(&name, id);
        }

        let status = ScrapeStatus::try_from(r.status).unwrap_or(ScrapeStatus::Unreachable);
        if status != ScrapeStatus::Ok && status != ScrapeStatus::Pending {
            *self.stats.scrape_errors.entry(status_label(status)).or_default() += 1;
        }
        self.stats.bad_lines += r.bad_lines as u64;
        let Some(node) = self.nodes.get_mut(&name) else {
            return Err(IngestError::StaleSession(session));
        };
        if r.subnets_changed {
            let placed = self.breakdowns.place_subnets(&r.subnets);
            self.breakdowns.apply_subnets(&node.subnet_groups, false);
            self.breakdowns.apply_subnets(&placed, true);
            node.subnet_groups = placed;
            node.subnets.clone_from(&r.subnets);
        }
        if status != node.status || !r.status_detail.is_empty() || r.snapshot {
            node.status_detail.clone_from(&r.status_detail);
        }
        node.status = status;
        node.bad_lines_total += r.bad_lines as u64;
        node.dropped_series = r.dropped_series;
        if r.ipamd_start_time_seconds > 0.0 {
            node.ipamd_start_time = r.ipamd_start_time_seconds;
        }
        node.last_seen = now;
        node.last_seq = node.last_seq.max(r.seq);
        node.snapshot_seen = true;
        if r.baseline_in_doubt && !node.baseline_in_doubt {
            node.baseline_in_doubt = true;
            self.stats.baseline_in_doubt_runs += 1;
        }
        if !r.ids.is_empty() || !r.removed.is_empty() || !r.defs.is_empty() || r.snapshot {
            self.version += 1;
        }
        Ok(Applied { ack: node.last_seq, fresh: true, recovered: recovering.then_some(recovered) })
    }

    fn define(&mut self, node_name: &Arc<str>, d: &SeriesDef) {
        if self.nodes.get(node_name).is_some_and(|n| n.series.contains_key(&d.id)) {
            return; // Known from an earlier stream of the same run: keep its last total.
        }
        let per_node = self.nodes.get(node_name).map_or(0, |n| n.series.len());
        let kind = MetricKind::try_from(d.kind).unwrap_or(MetricKind::Gauge);
        let slot = if per_node >= self.cfg.max_series_per_node {
            *self.stats.series_rejected.entry("node_limit").or_default() += 1;
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
    fn slot_for(&mut self, d: &SeriesDef, kind: MetricKind) -> Option<u32> {
        let spec = catalog::family(&d.family);
        let drop = spec.map_or(&[][..], |s| s.cluster_drop_labels);
        let mut labels: Vec<(String, String)> =
            d.labels.iter().filter(|l| !drop.contains(&l.name.as_str())).map(|l| (l.name.clone(), l.value.clone())).collect();
        labels.sort_unstable();
        let name = self.intern(&d.name);
        let key = (name.clone(), labels);
        if let Some(&i) = self.slot_index.get(&key) {
            if self.slots[i as usize].kind != kind {
                *self.stats.series_rejected.entry("kind_conflict").or_default() += 1;
                return None;
            }
            return Some(i);
        }
        if self.slots.len() >= self.cfg.max_cluster_series {
            *self.stats.series_rejected.entry("cluster_limit").or_default() += 1;
            return None;
        }
        let family = self.intern(&d.family);
        let family_type = spec.map_or_else(|| FamilyType::try_from(d.family_type).unwrap_or(FamilyType::Untyped), |s| s.family_type);
        self.families.entry(family.clone()).or_insert(family_type);
        let fold =
            if key.1.iter().any(|(n, _)| n == "quantile") && family_type == FamilyType::Summary { NodeFold::Max } else { NodeFold::Sum };
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            family,
            name,
            labels: key.1.clone(),
            kind,
            fold,
            sum: 0.0,
            contributors: 0,
            per_node: HashMap::new(),
            total: 0.0,
            window: 0.0,
        });
        self.slot_index.insert(key, i);
        Some(i)
    }

    fn update(&mut self, node_name: &Arc<str>, id: u32, v: f64) {
        if let Some(role) = self.apply_value(node_name, id, v) {
            self.set_capacity(node_name, role, v.is_finite().then_some(v));
        }
    }

    /// Apply one value; returns the capacity role of the series when it is a capacity gauge.
    fn apply_value(&mut self, node_name: &Arc<str>, id: u32, v: f64) -> Option<CapRole> {
        let node = self.nodes.get_mut(node_name)?;
        let Some(s) = node.series.get_mut(&id) else {
            *self.stats.series_rejected.entry("unknown_id").or_default() += 1;
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
                    slot.per_node.insert(node_name.clone(), v);
                }
                s.value = v;
                s.contributing = true;
            }
        }
        s.role
    }

    /// A capacity gauge of a node changed (`None`: withdrawn): update its derived numbers and the sums.
    fn set_capacity(&mut self, node_name: &Arc<str>, role: CapRole, v: Option<f64>) {
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

    fn remove_series(&mut self, node_name: &Arc<str>, id: u32) {
        let Some(node) = self.nodes.get_mut(node_name) else { return };
        let Some(s) = node.series.remove(&id) else { return };
        if let (Some(i), true) = (s.slot, s.contributing) {
            withdraw(&mut self.slots[i as usize], node_name, s.value);
        }
        if let Some(role) = s.role {
            self.set_capacity(node_name, role, None);
        }
    }

    /// A keeping run's stream is gone: take its increments out of the open window (see the proto's
    /// `Hello.keeps_position`). They stay in its `unpublished` entries for a return of the same run.
    fn withhold(&mut self, name: &Arc<str>) {
        let Some(node) = self.nodes.get_mut(name).filter(|n| n.keeps_position && !n.withheld) else { return };
        node.withheld = true;
        for u in &node.unpublished {
            if let Some(i) = node.series.get(&u.id).and_then(|s| s.slot) {
                self.slots[i as usize].window -= u.pending;
            }
        }
    }

    /// The run's stream is live again: its withheld increments go back into the open window.
    fn release(&mut self, name: &Arc<str>) {
        let Some(node) = self.nodes.get_mut(name).filter(|n| n.withheld) else { return };
        node.withheld = false;
        for u in &node.unpublished {
            if let Some(i) = node.series.get(&u.id).and_then(|s| s.slot) {
                self.slots[i as usize].window += u.pending;
            }
        }
    }

    fn remove_node(&mut self, name: &Arc<str>) {
        self.withhold(name);
        let Some(node) = self.nodes.remove(name) else { return };
        self.version += 1;
        self.capacity.sub(&node.derived);
        self.breakdowns.apply(&node.groups, &node.capacity, &node.derived, false);
        for s in node.series.values() {
            if let (Some(i), true) = (s.slot, s.contributing) {
                withdraw(&mut self.slots[i as usize], name, s.value);
            }
        }
        // Keep what a return of this run, or the node's next run, needs. A run that never had a report
        // applied, or a keeping run none of whose increments was published, leaves an earlier record
        // in place (its resume point is still the right one).
        let published_nothing = node.keeps_position && node.closed_seq == 0;
        if node.last_seq > 0 && !(published_nothing && self.departed.contains_key(name)) {
            let series = node.series.into_iter().filter(|(_, s)| s.kind == MetricKind::Counter).collect();
            self.departed.insert(
                name.clone(),
                Departed {
                    run_id: node.run_id,
                    last_seq: node.last_seq,
                    closed_seq: node.closed_seq,
                    committed_seq: node.committed_seq,
                    ipamd_start_time: node.ipamd_start_time,
                    keeps_position: node.keeps_position,
                    published_ipamd_start: node.published_ipamd_start,
                    unpublished: node.unpublished,
                    series,
                    at: node.last_seen,
                },
            );
            if self.departed.len() > self.cfg.max_departed {
                if let Some(oldest) = self.departed.iter().min_by_key(|(_, d)| d.at).map(|(n, _)| n.clone()) {
                    self.departed.remove(&oldest);
                    self.stats.departed_evicted += 1;
                }
            }
        }
    }

    /// Record that every sink delivered windows with these marks; returns how many node runs advanced.
    pub fn commit(&mut self, marks: &[CommitMark]) -> usize {
        let mut advanced = 0;
        for m in marks {
            let committed = match (self.nodes.get_mut(&m.node), self.departed.get_mut(&m.node)) {
                (Some(n), _) if n.run_id == m.run_id => &mut n.committed_seq,
                (_, Some(d)) if d.run_id == m.run_id => &mut d.committed_seq,
                _ => continue,
            };
            if m.seq > *committed {
                *committed = m.seq;
                advanced += 1;
            }
        }
        if advanced > 0 {
            self.commit_generation += 1;
        }
        advanced
    }

    /// Bumped whenever a commit advances (streams compare it to send their node's commit).
    pub fn commit_generation(&self) -> u64 {
        self.commit_generation
    }

    /// The committed seq of the node's current session, if it is still that session.
    pub fn committed_seq(&self, node: &str, session: u64) -> Option<u64> {
        self.nodes.get(node).filter(|n| n.session == session).map(|n| n.committed_seq)
    }

    /// A departed keeping run's (committed, closed) seqs: what it still waits for after its goodbye.
    pub fn departed_commits(&self, node: &str, run_id: u64) -> Option<(u64, u64)> {
        self.departed.get(node).filter(|d| d.run_id == run_id && d.keeps_position).map(|d| (d.committed_seq, d.closed_seq))
    }

    /// Departed-node records held.
    pub fn departed_count(&self) -> usize {
        self.departed.len()
    }

    /// The node said goodbye: its gauges leave the sums at once.
    pub fn goodbye(&mut self, node: &str, session: u64) -> bool {
        let Some(name) = self.nodes.get(node).filter(|n| n.session == session).map(|n| n.name.clone()) else {
            return false;
        };
        self.stats.goodbyes += 1;
        self.remove_node(&name);
        true
    }

    /// The stream ended without a goodbye: keep the node until its TTL.
    pub fn disconnected(&mut self, node: &str, session: u64) {
        let Some(n) = self.nodes.get_mut(node).filter(|n| n.session == session) else { return };
        n.connected = false;
        let name = n.name.clone();
        self.withhold(&name);
    }

    /// Drop nodes silent for longer than their TTL; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let dead: Vec<Arc<str>> =
            self.nodes.values().filter(|n| now.saturating_duration_since(n.last_seen) > n.ttl).map(|n| n.name.clone()).collect();
        for name in &dead {
            self.stats.expired += 1;
            self.remove_node(name);
        }
        dead
    }

    /// Close the publish window: gauges as they are now, counters' increments since the last window.
    pub fn take_window(&mut self, end_unix_ms: i64) -> Window {
        let mut datums = Vec::new();
        for spec in catalog::FAMILIES {
            let Some(metric_name) = spec.cloudwatch_name else { continue };
            let slots = self.slots.iter().filter(|s| *s.family == *spec.name);
            let value = match spec.cloudwatch_fold {
                CloudWatchFold::GaugeSum => {
                    let mut any = false;
                    let mut sum = 0.0;
                    for s in slots {
                        if let Some(v) = s.gauge_value() {
                            any = true;
                            sum += v;
                        }
                    }
                    any.then_some(sum)
                }
                CloudWatchFold::CounterIncrease => {
                    let mut any = false;
                    let mut sum = 0.0;
                    for s in slots.filter(|s| s.kind == MetricKind::Counter) {
                        any = true;
                        sum += s.window;
                    }
                    any.then_some(sum)
                }
                CloudWatchFold::LatencyP99OrMean => latency(slots),
            };
            if let Some(value) = value {
                let unit = if spec.cloudwatch_fold == CloudWatchFold::LatencyP99OrMean { "Milliseconds" } else { "Count" };
                datums.push(Datum { metric_name, value, unit, dimension: None });
            }
        }
        for s in &mut self.slots {
            s.total += s.window;
            s.window = 0.0;
        }
        let mut commits = Vec::new();
        let mut established = Vec::new();
        for n in self.nodes.values_mut().filter(|n| !n.withheld) {
            if n.last_seq > n.closed_seq {
                if n.closed_seq == 0 && n.keeps_position && !self.departed.is_empty() {
                    established.push(n.name.clone());
                }
                n.closed_seq = n.last_seq;
                n.published_ipamd_start = n.ipamd_start_time;
                // Kept for the next window unless it grew large (a snapshot), so busy windows do not
                // allocate and idle nodes hold at most a few entries' capacity.
                if n.unpublished.capacity() > 8 {
                    n.unpublished = Vec::new();
                } else {
                    n.unpublished.clear();
                }
                commits.push(CommitMark { node: n.name.clone(), run_id: n.run_id, seq: n.last_seq });
            }
        }
        for name in &established {
            self.departed.remove(name);
        }
        for (name, d) in self.departed.iter_mut().filter(|(_, d)| !d.keeps_position) {
            if d.last_seq > d.closed_seq {
                d.closed_seq = d.last_seq;
                commits.push(CommitMark { node: name.clone(), run_id: d.run_id, seq: d.last_seq });
            }
        }
        if !self.nodes.is_empty() {
            let c = &self.capacity;
            let (u_total, u_max) = c.utilization();
            let derived = [
                ("availableIPAddresses", (c.with_available > 0).then_some(c.available), "Count"),
                ("ipHeadroom", (c.with_headroom > 0).then_some(c.headroom), "Count"),
                ("ipUtilization", u_total.map(|r| r * 100.0), "Percent"),
                ("ipCapacityUtilization", u_max.map(|r| r * 100.0), "Percent"),
                ("nodesLowOnIPs", Some(f64::from(c.low_nodes)), "Count"),
            ];
            for (metric_name, value, unit) in derived {
                if let Some(value) = value {
                    datums.push(Datum { metric_name, value, unit, dimension: None });
                }
            }
            for (subnet, t) in &self.breakdowns.subnets {
                for (metric_name, v) in
                    [("totalIPAddresses", t.total), ("assignIPAddresses", t.assigned), ("availableIPAddresses", t.available)]
                {
                    datums.push(Datum {
                        metric_name,
                        value: v,
                        unit: "Count",
                        dimension: Some((Dim::Subnet.cloudwatch(), subnet.clone())),
                    });
                }
            }
            for ((dim, value), g) in &self.breakdowns.groups {
                let c = &g.capacity;
                let per_group = [
                    ("assignIPAddresses", Some(g.assigned)),
                    ("totalIPAddresses", Some(g.total)),
                    ("maxIPAddresses", Some(g.max)),
                    ("availableIPAddresses", (c.with_available > 0).then_some(c.available)),
                    ("ipHeadroom", (c.with_headroom > 0).then_some(c.headroom)),
                    ("nodesLowOnIPs", Some(f64::from(c.low_nodes))),
                ];
                for (metric_name, v) in per_group {
                    if let Some(v) = v {
                        datums.push(Datum { metric_name, value: v, unit: "Count", dimension: Some((dim.cloudwatch(), value.clone())) });
                    }
                }
            }
        }
        let cluster_id = if self.cfg.cluster_id.is_empty() {
            self.reported(|n| &n.cluster_name).unwrap_or_default()
        } else {
            self.cfg.cluster_id.clone()
        };
        Window { cluster_id, region_hint: self.reported(|n| &n.region), end_unix_ms, nodes: self.nodes.len(), datums, commits, seq: 0 }
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

    /// The single non-empty value of a node fact agents report, if they agree on exactly one.
    pub fn reported(&self, field: impl Fn(&NodeState) -> &String) -> Option<String> {
        let mut found: Option<&String> = None;
        for n in self.nodes.values() {
            let v = field(n);
            if v.is_empty() {
                continue;
            }
            match found {
                None => found = Some(v),
                Some(f) if f == v => {}
                Some(_) => return None,
            }
        }
        found.cloned()
    }

    /// The cluster value of a series (gauge sum/max or counter total), for tests and views.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        l.sort_unstable();
        let i = *self.slot_index.get(&(Arc::from(name), l))?;
        let s = &self.slots[i as usize];
        match s.kind {
            MetricKind::Counter => Some(s.total),
            _ => s.gauge_value(),
        }
    }

    /// Append the Prometheus text exposition of the cluster aggregates and ingestion self-metrics.
    pub fn render_prometheus(&self, out: &mut String, now: Instant) {
        let cid = escape(&self.cfg.cluster_id);
        let mut by_family: BTreeMap<&str, Vec<&Slot>> = BTreeMap::new();
        for s in &self.slots {
            by_family.entry(&s.family).or_default().push(s);
        }
        for (family, mut slots) in by_family {
            slots.sort_by(|a, b| (&*a.name, &a.labels).cmp(&(&*b.name, &b.labels)));
            let lines: Vec<(&Slot, f64)> = slots
                .into_iter()
                .filter_map(|s| match s.kind {
                    MetricKind::Counter => Some((s, s.total)),
                    _ => s.gauge_value().map(|v| (s, v)),
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            let t = self.families.get(family).copied().unwrap_or(FamilyType::Untyped);
            let help = catalog::family(family).map_or("ipamd metric summed across the cluster's nodes", |f| f.help);
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {}", catalog::type_keyword(t));
            for (s, v) in lines {
                let _ = write!(out, "{}{{cluster_id=\"{cid}\"", s.name);
                for (k, val) in &s.labels {
                    let _ = write!(out, ",{k}=\"{}\"", escape(val));
                }
                let _ = writeln!(out, "}} {}", fmt_value(v));
            }
        }
        self.render_capacity(out, &cid, now);
        self.render_self_metrics(out, &cid);
    }

    fn render_capacity(&self, out: &mut String, cid: &str, now: Instant) {
        let c = &self.capacity;
        let gauge = |out: &mut String, name: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{cluster_id=\"{cid}\"}} {}", fmt_value(v));
            }
        };
        gauge(
            out,
            "cni_metrics_available_ip_addresses",
            "Sum over nodes of (total - assigned): warm IPs free for pods now",
            (c.with_available > 0).then_some(c.available),
        );
        gauge(
            out,
            "cni_metrics_ip_headroom",
            "Sum over nodes of (ip_max - assigned): IPs pods could still get as ENIs attach",
            (c.with_headroom > 0).then_some(c.headroom),
        );
        let (u_total, u_max) = c.utilization();
        if u_total.is_some() || u_max.is_some() {
            let name = "cni_metrics_ip_utilization_ratio";
            let _ = writeln!(
                out,
                "# HELP {name} Sum of assigned IPs over the sum of total (basis=total) or max (basis=max) IPs\n# TYPE {name} gauge"
            );
            for (basis, v) in [("total", u_total), ("max", u_max)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",basis=\"{basis}\"}} {}", fmt_value(v));
                }
            }
        }
        gauge(out, "cni_metrics_nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", Some(f64::from(c.low_nodes)));
        let stale = self.nodes.values().filter(|n| Self::is_stale(n, now)).count();
        gauge(out, "cni_metrics_nodes_stale", "Nodes whose last scrape failed or that missed two reports", Some(stale as f64));
        gauge(
            out,
            "cni_metrics_capacity_anomalies",
            "Nodes reporting impossible capacity (assigned > total or max, negative values)",
            Some(f64::from(c.anomalous_nodes)),
        );
        self.render_breakdowns(out, cid);
        let _ = writeln!(
            out,
            "# HELP cni_metrics_capacity_anomalies_total Times a node started reporting impossible capacity\n# TYPE cni_metrics_capacity_anomalies_total counter\ncni_metrics_capacity_anomalies_total{{cluster_id=\"{cid}\"}} {}",
            self.stats.capacity_anomalies
        );
    }

    /// `cni_metrics_<metric>_by_<label>` families: their own families, so `sum()` never double counts.
    fn render_breakdowns(&self, out: &mut String, cid: &str) {
        type Get = fn(&GroupTotals) -> Option<f64>;
        let metrics: [(&str, &str, Get); 7] = [
            ("nodes", "Nodes", |g| Some(f64::from(g.nodes))),
            ("assigned_ip_addresses", "IPs assigned to pods", |g| Some(g.assigned)),
            ("total_ip_addresses", "IPs held by the nodes", |g| Some(g.total)),
            ("ip_max", "Most IPs the nodes can hold", |g| Some(g.max)),
            ("available_ip_addresses", "Sum over nodes of (total - assigned)", |g| {
                (g.capacity.with_available > 0).then_some(g.capacity.available)
            }),
            ("ip_headroom", "Sum over nodes of (ip_max - assigned)", |g| (g.capacity.with_headroom > 0).then_some(g.capacity.headroom)),
            ("nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", |g| Some(f64::from(g.capacity.low_nodes))),
        ];
        if self.breakdowns.dims.contains(&Dim::Subnet) {
            type SubnetGet = fn(&SubnetTotals) -> f64;
            let subnet_metrics: [(&str, &str, SubnetGet); 4] = [
                ("nodes", "Nodes with ENIs", |t| f64::from(t.nodes)),
                ("total_ip_addresses", "IPs the cluster's nodes hold", |t| t.total),
                ("assigned_ip_addresses", "IPs assigned to pods", |t| t.assigned),
                ("available_ip_addresses", "Sum over nodes of (held - assigned)", |t| t.available),
            ];
            for (metric, help, get) in subnet_metrics {
                let name = format!("cni_metrics_{metric}_by_subnet_id");
                let _ = writeln!(out, "# HELP {name} {help}, by subnet (ipamd introspection)\n# TYPE {name} gauge");
                for (subnet, t) in &self.breakdowns.subnets {
                    let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",subnet_id=\"{}\"}} {}", escape(subnet), fmt_value(get(t)));
                }
            }
        }
        for dim in self.breakdowns.dims.iter().filter(|d| **d != Dim::Subnet) {
            let label = dim.label();
            for (metric, help, get) in metrics {
                let name = format!("cni_metrics_{metric}_by_{label}");
                let _ = writeln!(out, "# HELP {name} {help}, by {label}\n# TYPE {name} gauge");
                for ((d, value), g) in self.breakdowns.groups.range((*dim, String::new())..) {
                    if d != dim {
                        break;
                    }
                    if let Some(v) = get(g) {
                        let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",{label}=\"{}\"}} {}", escape(value), fmt_value(v));
                    }
                }
            }
        }
        if !self.breakdowns.dims.is_empty() {
            let _ = writeln!(
                out,
                "# HELP cni_metrics_breakdown_overflow_total Node placements put in the group \"other\" by --max-breakdown-groups\n# TYPE cni_metrics_breakdown_overflow_total counter\ncni_metrics_breakdown_overflow_total{{cluster_id=\"{cid}\"}} {}",
                self.breakdowns.overflow
            );
        }
    }

    fn render_self_metrics(&self, out: &mut String, cid: &str) {
        let st = &self.stats;
        let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut dropped = 0u64;
        for n in self.nodes.values() {
            *by_status.entry(status_label(n.status)).or_default() += 1;
            dropped += n.dropped_series;
        }
        let ok = by_status.get("ok").copied().unwrap_or(0);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{cluster_id=\"{cid}\"}} {}", fmt_value(v));
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{cluster_id=\"{cid}\"}} {v}");
        };
        let labelled = |out: &mut String, name: &str, help: &str, kind: &str, label: &str, m: &BTreeMap<&'static str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, v) in m {
                let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",{label}=\"{k}\"}} {v}");
            }
        };
        gauge(out, "cni_metrics_nodes_reporting", "Nodes whose last ipamd scrape succeeded", ok as f64);
        labelled(out, "cni_metrics_nodes", "Known nodes by the status of their last ipamd scrape", "gauge", "scrape_status", &by_status);
        gauge(out, "cni_metrics_cluster_series", "Cluster series held by the aggregator", self.slots.len() as f64);
        gauge(
            out,
            "cni_metrics_agent_dropped_series",
            "Series the agents dropped at their per-node limit in their latest scrape",
            dropped as f64,
        );
        counter(out, "cni_metrics_sessions_total", "Agent streams accepted", st.sessions);
        counter(out, "cni_metrics_reports_received_total", "Agent reports applied", st.reports);
        counter(
            out,
            "cni_metrics_reports_stale_total",
            "Reports ignored because a newer one was already applied",
            st.reports_ignored_old_seq,
        );
        labelled(out, "cni_metrics_reports_rejected_total", "Agent messages refused, by reason", "counter", "reason", &st.rejected);
        labelled(out, "cni_metrics_series_rejected_total", "Series refused, by reason", "counter", "reason", &st.series_rejected);
        labelled(
            out,
            "cni_metrics_scrape_errors_total",
            "Reports of a failed ipamd scrape, by status",
            "counter",
            "status",
            &st.scrape_errors,
        );
        counter(out, "cni_metrics_bad_lines_total", "ipamd page lines the agents could not parse", st.bad_lines);
        counter(out, "cni_metrics_nonfinite_values_total", "NaN or infinite values ignored", st.nonfinite_values);
        counter(
            out,
            "cni_metrics_counter_regressions_total",
            "Counter totals that went backwards within an agent run (ignored)",
            st.counter_regressions,
        );
        counter(out, "cni_metrics_node_goodbyes_total", "Nodes that left with a goodbye", st.goodbyes);
        counter(out, "cni_metrics_nodes_expired_total", "Nodes dropped after their TTL", st.expired);
        counter(out, "cni_metrics_agent_restarts_total", "Agent runs replaced by a new run of the same node", st.agent_restarts);
        counter(
            out,
            "cni_metrics_agent_runs_recovered_total",
            "Agent runs first seen mid-way (this aggregator restarted): counted from their committed totals",
            st.runs_recovered,
        );
        let _ = writeln!(
            out,
            "# HELP cni_metrics_recovered_increments_total Counter increments counted from agents' committed totals after an aggregator restart (delivered by no earlier aggregator, or in doubt)\n# TYPE cni_metrics_recovered_increments_total counter\ncni_metrics_recovered_increments_total{{cluster_id=\"{cid}\"}} {}",
            fmt_value(st.recovered_increments)
        );
        counter(
            out,
            "cni_metrics_agent_runs_resumed_total",
            "New agent runs that resumed counting where the node's previous run stopped",
            st.runs_resumed,
        );
        counter(
            out,
            "cni_metrics_agent_runs_continued_total",
            "Agent runs that came back after leaving (partition, expiry) and continued from their kept totals",
            st.runs_continued,
        );
        counter(
            out,
            "cni_metrics_agent_baseline_unknown_total",
            "Agent runs that started without a resume point on an ipamd older than their initial window: increments before their first scrape are not counted",
            st.baseline_unknown_runs,
        );
        counter(
            out,
            "cni_metrics_agent_baseline_in_doubt_total",
            "Agent runs that counted a young ipamd from its start without a resume point, on an aggregator younger than that ipamd: part may be counted twice",
            st.baseline_in_doubt_runs,
        );
        counter(
            out,
            "cni_metrics_departed_evicted_total",
            "Departed-node records dropped at their bound (those nodes' next agent run cannot resume)",
            st.departed_evicted,
        );
        gauge(out, "cni_metrics_departed_nodes", "Departed-node records kept for continuation and resume", self.departed.len() as f64);
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.to_owned(), a.clone());
        a
    }
}

fn withdraw(slot: &mut Slot, node: &Arc<str>, v: f64) {
    slot.sum -= v;
    slot.contributors = slot.contributors.saturating_sub(1);
    if slot.contributors == 0 {
        slot.sum = 0.0; // no residue from float rounding once nobody contributes
    }
    if slot.fold == NodeFold::Max {
        slot.per_node.remove(node);
    }
}

fn validate_def(d: &SeriesDef) -> Result<(), IngestError> {
    let kind_ok = matches!(MetricKind::try_from(d.kind), Ok(MetricKind::Gauge | MetricKind::Counter));
    if !kind_ok || d.name.is_empty() || d.family.is_empty() || !d.name.starts_with(d.family.as_str()) {
        return Err(IngestError::BadDef(d.id));
    }
    Ok(())
}

/// Max p99 over live nodes where quantiles exist, else the window's mean from `_sum`/`_count`.
fn latency<'a>(slots: impl Iterator<Item = &'a Slot>) -> Option<f64> {
    let mut p99: Option<f64> = None;
    let (mut sum, mut count) = (0.0, 0.0);
    for s in slots {
        if s.labels.iter().any(|(k, v)| k == "quantile" && v == "0.99") {
            if let Some(v) = s.gauge_value() {
                p99 = Some(p99.map_or(v, |m: f64| m.max(v)));
            }
        } else if s.name.ends_with("_sum") {
            sum += s.window;
        } else if s.name.ends_with("_count") {
            count += s.window;
        }
    }
    p99.or_else(|| (count > 0.0).then(|| sum / count))
}

pub fn status_label(s: ScrapeStatus) -> &'static str {
    match s {
        ScrapeStatus::Ok => "ok",
        ScrapeStatus::Refused => "refused",
        ScrapeStatus::Timeout => "timeout",
        ScrapeStatus::HttpError => "http_error",
        ScrapeStatus::TooLarge => "too_large",
        ScrapeStatus::Garbage => "garbage",
        ScrapeStatus::Unreachable => "unreachable",
        ScrapeStatus::Pending => "pending",
    }
}

fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests;
