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
//!
//! Layout: this file holds the node lifecycle (hello, report, goodbye, expiry); `node` the per-node
//! records, `series` the cluster series and how values fold into them, `commits` what sinks delivered
//! and the withheld increments of keeping runs, `window` the publish window, `views` the read helpers,
//! `render` the `/metrics` text, `stats` the bounded refusal reasons and counters, `capacity` and
//! `breakdown` the derived capacity numbers, `subnets` EC2's subnet facts (`--subnet-metrics`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{FamilyType, Hello, MetricKind, Report, ScrapeStatus};

mod breakdown;
mod capacity;
mod commits;
pub mod index;
mod node;
mod render;
mod series;
mod stats;
mod subnets;
pub mod validate;
mod views;
mod window;
pub use breakdown::{Breakdowns, Dim, GroupTotals, NodeSubnet, SubnetTotals};
pub use capacity::{CapRole, Capacity, CapacityTotals, NodeCapacity};
pub use cni_metrics_proto::status::status_label;
use index::{Indexed, NodeIndex};
use node::{unpublished_entry, Departed, NodeSeries, ResumeKey};
pub use node::{CommitMark, NodeState, Resume, Welcomed};
pub use render::MetricsView;
pub(crate) use series::order_key;
use series::{withdraw, Slot};
pub use stats::{IngestError, IngestStats, Refusal, SeriesRefusal};
pub use subnets::{RefreshResult, SubnetState};
pub use window::{Datum, Unit, Window};

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

/// The result of applying a report.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// The seq to acknowledge.
    pub ack: u64,
    /// False when the report was older than one already applied (ignored, still acknowledged).
    pub fresh: bool,
    /// Increments counted from the committed totals of a run first seen mid-way (to log).
    pub recovered: Option<f64>,
    /// The node run's committed seq: the stream sends it with the ack when its agent has not had it.
    pub committed: u64,
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
    /// The nodes' names in order, so consumers page by name in O(page).
    by_name: BTreeSet<Arc<str>>,
    /// The nodes' cluster names and regions, for the one value they agree on.
    cluster_names: index::Tally,
    regions: index::Tally,
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
    /// Counts, time orders and the change log of the nodes (see [`index`]).
    index: NodeIndex,
    /// The origin of [`ClusterState::report_key`].
    epoch: Instant,
    pub stats: IngestStats,
    /// `--subnet-metrics`: EC2's facts about the cluster's subnets.
    pub subnets: SubnetState,
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
            by_name: BTreeSet::new(),
            cluster_names: index::Tally::default(),
            regions: index::Tally::default(),
            departed: HashMap::new(),
            resume_keys: std::collections::HashSet::new(),
            commit_generation: 0,
            next_session: 0,
            capacity: CapacityTotals::default(),
            breakdowns,
            version: 0,
            index: NodeIndex::default(),
            epoch: Instant::now(),
            stats: IngestStats::default(),
            subnets: SubnetState::default(),
        }
    }

    /// A stream said hello: (re)register the node; returns its session id, TTL and commit/resume facts.
    /// A refused hello is counted by its reason.
    pub fn hello(&mut self, h: &Hello, now: Instant) -> Result<Welcomed, IngestError> {
        let result = self.admit(h, now);
        match &result {
            Ok(_) => {
                self.reindex(&h.node_name);
                self.mark_changed(&h.node_name);
            }
            Err(e) => self.stats.rejected.inc(e.refusal()),
        }
        result
    }

    fn admit(&mut self, h: &Hello, now: Instant) -> Result<Welcomed, IngestError> {
        validate::hello(h)?;
        if h.interval_ms == 0 {
            return Err(IngestError::BadInterval);
        }
        let interval = Duration::from_millis(h.interval_ms);
        let ttl = self.cfg.node_ttl.unwrap_or(interval * 3);
        // Another run while the current one is connected and reporting: a second agent claims this node
        // (a restarted agent's old stream is closed by then). Refuse it; the live one keeps the node.
        if let Some(n) = self.nodes.get(h.node_name.as_str()) {
            if n.run_id != h.run_id && n.connected && now.saturating_duration_since(n.last_seen) <= n.interval * 2 {
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
        if !self.nodes.contains_key(&name) {
            self.by_name.insert(name.clone());
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
            indexed: None,
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
        self.regions.replace(&node.region, &h.region);
        self.cluster_names.replace(&node.cluster_name, &h.cluster_name);
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
        let seen = |st: &Self| st.nodes.get(node).map(|n| n.view_fingerprint(Self::is_stale(n, now)));
        let before = seen(self);
        let result = self.apply(node, session, r, now);
        match &result {
            Ok(_) => self.stats.reports += 1,
            Err(e) => self.stats.rejected.inc(e.refusal()),
        }
        self.reindex(node);
        if seen(self) != before {
            self.mark_changed(node);
        }
        result
    }

    /// A change of what consumers see of `node`.
    fn mark_changed(&mut self, node: &str) {
        self.version += 1;
        if let Some(n) = self.nodes.get(node) {
            self.index.log_change(&n.name);
        }
    }

    /// Bring the node's index entry up to date.
    fn reindex(&mut self, node: &str) {
        let Some(n) = self.nodes.get_mut(node) else { return };
        let new = Some(Indexed::of(n));
        let old = std::mem::replace(&mut n.indexed, new);
        if old != new {
            let name = n.name.clone();
            self.index.update(&name, old, new);
        }
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
            let (ack, committed) = (node.last_seq, node.committed_seq);
            if let Some(n) = self.nodes.get_mut(node_name) {
                n.last_seen = now;
            }
            return Ok(Applied { ack, fresh: false, recovered: None, committed });
        }
        // Validate every string and definition before changing anything.
        validate::report(r)?;
        for d in &r.defs {
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
        Ok(Applied { ack: node.last_seq, fresh: true, recovered: recovering.then_some(recovered), committed: node.committed_seq })
    }

    fn remove_node(&mut self, name: &Arc<str>) {
        self.withhold(name);
        let Some(node) = self.nodes.remove(name) else { return };
        self.by_name.remove(name);
        self.regions.replace(&node.region, "");
        self.cluster_names.replace(&node.cluster_name, "");
        self.version += 1;
        self.index.update(name, node.indexed, None);
        self.index.log_removal(name);
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
        self.mark_changed(&name);
    }

    /// Drop nodes silent for longer than their TTL; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let dead = self.index.expired(now);
        for name in &dead {
            self.stats.expired += 1;
            self.remove_node(name);
        }
        dead
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

#[cfg(test)]
mod tests;
