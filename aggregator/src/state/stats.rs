//! Why ingestion refused something, and what it counted: the bounded reasons and counters behind the
//! aggregator's ingest self-metrics.

use std::collections::BTreeMap;

use cni_metrics_proto::v1::ScrapeStatus;

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

/// Self-metrics of ingestion (names in [`ClusterState::render_prometheus`](super::ClusterState::render_prometheus)).
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
