//! What the aggregator keeps per node: its state while it reports ([`NodeState`] and its series), what
//! stays of it when it leaves (the departed record, for an exact resume or continuation), and what a
//! hello gets back ([`Welcomed`], [`Resume`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{MetricKind, ScrapeStatus};

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
    pub(super) series: HashMap<u32, NodeSeries>,
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
