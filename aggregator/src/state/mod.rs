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
//! Layout: [`StateHandle`] (`handle`) is the one owner of the lock: the rest of the aggregator changes
//! the state through its named methods and reads values out of it. [`ClusterState`] orchestrates parts
//! that own their fields and invariants: the [`series`] table (cluster series, their index, families,
//! names, counter identities; slots change only through its methods), the [`book`] of nodes (nodes by
//! name, departed records, the agreed cluster name and region, the [`index`]: a node changes only
//! through the book's guard, which reindexes it) and each [`NodeState`] (its fields private, changed
//! by methods that return what the change means for the series). This file holds the node
//! lifecycle (hello, report, goodbye, expiry) and `report` the checks and steps of one report; `node`
//! the per-node records, `fold` how a node's values fold into the series, `commits` what sinks
//! delivered and the withheld increments of keeping runs, `window` the publish window, `views` the
//! read-only views, `render` the `/metrics` text, `stats` the bounded refusal reasons and counters,
//! `capacity` and `breakdown` the derived capacity numbers, `subnets` EC2's subnet facts
//! (`--subnet-metrics`) and their pure model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{Hello, Report};

mod args;
mod book;
mod breakdown;
mod capacity;
mod commits;
mod fold;
mod handle;
pub mod index;
mod node;
mod render;
mod report;
mod series;
mod stats;
pub mod subnets;
pub mod validate;
mod views;
mod window;
pub use args::StateArgs;
use book::NodeBook;
pub use breakdown::{Breakdowns, Dim, GroupTotals, NodeSubnet, SubnetTotals};
pub use capacity::{CapRole, Capacity, CapacityTotals, NodeCapacity};
pub use cni_metrics_proto::status::status_label;
pub use handle::StateHandle;
pub use node::{CommitMark, NodeState, Resume, ResumeKey, Welcomed};
pub use render::MetricsView;
pub(crate) use series::order_key;
use series::SeriesTable;
pub use stats::{IngestError, IngestStats, Refusal, SeriesRefusal};
pub use subnets::model::{ClusterUse, LowThreshold, SubnetFacts, SubnetReport, SubnetRow};
pub use subnets::{RefreshResult, SubnetState};
pub use window::{ClosedWindow, Datum, Unit, Window};

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

/// The whole cluster: the orchestrator of the parts (series table, node book, capacity totals,
/// breakdowns, subnet facts, stats). Its `pub` methods are the operations the [`StateHandle`] exposes
/// and the read-only views; each runs in one critical section and keeps every part in step.
#[derive(Debug)]
pub struct ClusterState {
    cfg: StateConfig,
    series: SeriesTable,
    book: NodeBook,
    /// Bumped whenever commits advance; streams watch it.
    commit_generation: u64,
    next_session: u64,
    capacity: CapacityTotals,
    breakdowns: Breakdowns,
    /// Bumped by every change; subscribers poll it.
    version: u64,
    /// The origin of [`ClusterState::report_key`].
    epoch: Instant,
    stats: IngestStats,
    /// `--subnet-metrics`: EC2's facts about the cluster's subnets.
    subnets: SubnetState,
}

impl ClusterState {
    pub fn new(cfg: StateConfig) -> Self {
        Self {
            series: SeriesTable::new(cfg.max_cluster_series),
            book: NodeBook::new(cfg.max_departed),
            breakdowns: Breakdowns::new(cfg.breakdown.clone(), cfg.max_breakdown_groups),
            cfg,
            commit_generation: 0,
            next_session: 0,
            capacity: CapacityTotals::default(),
            version: 0,
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
            Ok(_) => self.mark_changed(&h.node_name),
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
        if let Some(n) = self.book.get(&h.node_name) {
            if n.run_id() != h.run_id && n.connected() && !n.reporting_is_late(now) {
                return Err(IngestError::DuplicateNode(h.node_name.clone()));
            }
        }
        self.next_session += 1;
        let session = self.next_session;
        self.stats.sessions += 1;
        let name = self.book.name(&h.node_name);
        if self.book.get(&name).is_some_and(|n| n.run_id() != h.run_id) {
            // A new agent run: its counter totals start from a new baseline.
            self.stats.agent_restarts += 1;
            self.remove_node(&name);
        }
        let (continued, resume) =
            if self.book.contains(&name) { (false, None) } else { self.arrive(&name, h, session, interval, ttl, now) };
        let Some(mut node) = self.book.node_mut(&name) else { return Err(IngestError::StaleSession(session)) };
        let committed_seq = node.committed_seq();
        node.greet(h, session, interval, ttl, now);
        drop(node);
        self.book.set_identity(&name, &h.region, &h.cluster_name);
        self.place(&name, h);
        // The run's stream is live again: what it had withheld goes back into the open window.
        self.release(&name);
        Ok(Welcomed { session, ttl, committed_seq, resume, continued })
    }

    /// A node not connected now enters the book: the same run coming back continues from its kept
    /// totals; a new run gets where the previous one stopped. Returns (continued, resume point).
    fn arrive(
        &mut self,
        name: &Arc<str>,
        h: &Hello,
        session: u64,
        interval: Duration,
        ttl: Duration,
        now: Instant,
    ) -> (bool, Option<Resume>) {
        let mut node = NodeState::new(name.clone(), h, session, interval, ttl, now);
        let departed = self.book.departed().get(name);
        let continues = departed.is_some_and(|d| d.run_id == h.run_id);
        let resume = departed.filter(|_| !continues).and_then(|d| d.resume_point());
        if continues {
            if let Some(d) = self.book.departed_mut().remove(name) {
                node.continue_from(&d);
            }
            self.stats.runs_continued += 1;
        }
        if resume.is_some() {
            self.stats.runs_resumed += 1;
        }
        self.book.insert(node);
        (continues, resume)
    }

    /// (Re)place the node in its breakdown groups.
    fn place(&mut self, name: &Arc<str>, h: &Hello) {
        let groups = self.breakdowns.place(&h.availability_zone, &h.instance_type, &h.node_name);
        if let Some(mut node) = self.book.node_mut(name) {
            if node.groups() != groups.as_slice() {
                self.breakdowns.apply(node.groups(), node.capacity(), node.derived(), false);
                self.breakdowns.apply(&groups, node.capacity(), node.derived(), true);
                node.set_groups(groups);
            }
        }
    }

    /// Apply one report of `node` on stream `session`.
    pub fn report(&mut self, node: &str, session: u64, r: &Report, now: Instant) -> Result<Applied, IngestError> {
        let seen = |st: &Self| st.book.get(node).map(|n| n.view_fingerprint(n.is_stale(now)));
        let before = seen(self);
        let result = self.apply(node, session, r, now);
        match &result {
            Ok(_) => self.stats.reports += 1,
            Err(e) => self.stats.rejected.inc(e.refusal()),
        }
        if seen(self) != before {
            self.mark_changed(node);
        }
        result
    }

    /// A change of what consumers see of `node`.
    fn mark_changed(&mut self, node: &str) {
        self.version += 1;
        self.book.log_change(node);
    }

    fn remove_node(&mut self, name: &Arc<str>) {
        self.withhold(name);
        let Some(node) = self.book.remove(name) else { return };
        self.version += 1;
        self.withdraw_node(&node);
        // Keep what a return of this run, or the node's next run, needs. A run that never had a report
        // applied, or a keeping run none of whose increments was published, leaves an earlier record
        // in place (its resume point is still the right one).
        let published_nothing = node.keeps_position() && node.closed_seq() == 0;
        let keep = node.last_seq() > 0 && !(published_nothing && self.book.departed().contains(name));
        if keep && self.book.departed_mut().insert(name.clone(), node.into_departed()) {
            self.stats.departed_evicted += 1;
        }
    }

    /// The node said goodbye: its gauges leave the sums at once.
    pub fn goodbye(&mut self, node: &str, session: u64) -> bool {
        let Some(name) = self.book.get(node).filter(|n| n.session() == session).map(|n| n.name().clone()) else {
            return false;
        };
        self.stats.goodbyes += 1;
        self.remove_node(&name);
        true
    }

    /// The stream ended without a goodbye: keep the node until its TTL.
    pub fn disconnected(&mut self, node: &str, session: u64) {
        let Some(mut n) = self.book.node_mut(node).filter(|n| n.session() == session) else { return };
        n.disconnect();
        let name = n.name().clone();
        drop(n);
        self.withhold(&name);
        self.mark_changed(&name);
    }

    /// Drop nodes silent for longer than their TTL; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let dead = self.book.expired(now);
        for name in &dead {
            self.stats.expired += 1;
            self.remove_node(name);
        }
        dead
    }

    /// The nodes changed (or gone stale by time in [`since`, `now`)) and those removed since the last
    /// call, for the consumers' change feed; `None` when more changed than the state remembers between
    /// two calls (the feed then starts its picture again). When `staleness_counts` and nodes went stale
    /// by time, the version moves: no report moved it, but consumers that saw the old version must look
    /// again.
    pub fn take_changes(&mut self, since: Instant, now: Instant, staleness_counts: bool) -> Option<index::NodeChanges> {
        let (changes, went_stale) = self.book.take_changes(since, now)?;
        if staleness_counts && went_stale {
            self.version += 1;
        }
        Some(changes)
    }

    /// Ingest statistics (changed only by the state and its `record_*` methods).
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// A stream or message refused before it reached the state (limits, authentication, framing).
    pub fn record_refusal(&mut self, why: Refusal) {
        self.stats.rejected.inc(why);
    }

    /// The report about to be applied arrived in parts.
    pub fn record_report_in_parts(&mut self) {
        self.stats.reports_in_parts += 1;
    }

    /// A stream ended because its agent's token expired.
    pub fn record_token_expiry(&mut self) {
        self.stats.token_expiries += 1;
    }

    /// Someone waited this long for the state lock.
    pub fn record_lock_wait(&mut self, waited: Duration) {
        self.stats.longest_lock_wait = self.stats.longest_lock_wait.max(waited);
    }

    /// A `/metrics` page held the lock this long: the longest wait starts over.
    pub fn record_render_hold(&mut self, held: Duration) {
        self.stats.longest_lock_wait = Duration::ZERO;
        self.stats.last_render_hold = held;
    }
}

#[cfg(test)]
mod tests;
