//! Why ingestion refused something, and what it counted: the bounded reasons and counters behind the
//! aggregator's ingest self-metrics.

use std::collections::BTreeMap;

use cni_metrics_proto::labels::Counts;

cni_metrics_proto::label_enum! {
    /// Why a stream or message was refused: the `reason` of `cni_metrics_reports_rejected_total`.
    pub enum Refusal {
        TooManyStreams => "too_many_streams",
        NoHello => "no_hello",
        OversizedMessage => "oversized_message",
        Cancelled => "cancelled",
        StreamError => "stream_error",
        UnexpectedMessage => "unexpected_message",
        BadPart => "bad_part",
        BadNodeName => "bad_node_name",
        BadHelloField => "bad_hello_field",
        BadReportField => "bad_report_field",
        BadInterval => "bad_interval",
        StaleSession => "stale_session",
        SnapshotExpected => "snapshot_expected",
        LengthMismatch => "length_mismatch",
        Redefined => "redefined",
        BadDef => "bad_def",
        DuplicateNode => "duplicate_node",
        TokenMissing => "token_missing",
        TokenMalformed => "token_malformed",
        TokenUnknownKey => "token_unknown_key",
        TokenBadSignature => "token_bad_signature",
        TokenWrongIssuer => "token_wrong_issuer",
        TokenWrongAudience => "token_wrong_audience",
        TokenExpired => "token_expired",
        TokenWrongSubject => "token_wrong_subject",
        TokenNoNode => "token_no_node",
        TokenWrongNode => "token_wrong_node",
        TokenKeysUnavailable => "token_keys_unavailable",
    }
}

cni_metrics_proto::label_enum! {
    /// Why a series was refused: the `reason` of `cni_metrics_series_rejected_total`.
    pub enum SeriesRefusal {
        NodeLimit => "node_limit",
        ClusterLimit => "cluster_limit",
        KindConflict => "kind_conflict",
        UnknownId => "unknown_id",
    }
}

/// Why a hello or report was refused. Bounded: used as a metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the node name is not a Kubernetes node name (lowercase DNS subdomain, at most 253 characters)")]
    BadNodeName,
    #[error("the hello's {0} is too long or has characters its AWS shape does not allow")]
    BadHelloField(&'static str),
    #[error("the report's {0} is too long or has characters it may not contain")]
    BadReportField(&'static str),
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
    #[error("series definition {id} is refused: {why}")]
    BadDef { id: u32, why: &'static str },
    #[error("node {0:?} is already reported by another live agent (two agents claim one node name)")]
    DuplicateNode(String),
    #[error("report has {counters} counter values but {raws} counter raw values")]
    RawMismatch { counters: usize, raws: usize },
}

impl IngestError {
    pub fn refusal(&self) -> Refusal {
        match self {
            IngestError::BadNodeName => Refusal::BadNodeName,
            IngestError::BadInterval => Refusal::BadInterval,
            IngestError::StaleSession(_) => Refusal::StaleSession,
            IngestError::SnapshotExpected => Refusal::SnapshotExpected,
            IngestError::LengthMismatch { .. } | IngestError::RawMismatch { .. } => Refusal::LengthMismatch,
            IngestError::Redefined(_) => Refusal::Redefined,
            IngestError::BadDef { .. } => Refusal::BadDef,
            IngestError::BadHelloField(_) => Refusal::BadHelloField,
            IngestError::BadReportField(_) => Refusal::BadReportField,
            IngestError::DuplicateNode(_) => Refusal::DuplicateNode,
        }
    }

    /// The label value of [`IngestError::refusal`], for logs.
    pub fn reason(&self) -> &'static str {
        cni_metrics_proto::labels::Label::as_str(self.refusal())
    }
}

/// Self-metrics of ingestion (names in [`ClusterState::render_prometheus`](super::ClusterState::render_prometheus)).
#[derive(Debug, Default, Clone)]
pub struct IngestStats {
    pub(in crate::state) sessions: u64,
    pub(in crate::state) reports: u64,
    pub(in crate::state) reports_ignored_old_seq: u64,
    pub(in crate::state) rejected: Counts<Refusal>,
    pub(in crate::state) series_rejected: Counts<SeriesRefusal>,
    pub(in crate::state) scrape_errors: BTreeMap<&'static str, u64>,
    pub(in crate::state) bad_lines: u64,
    pub(in crate::state) nonfinite_values: u64,
    pub(in crate::state) counter_regressions: u64,
    pub(in crate::state) goodbyes: u64,
    pub(in crate::state) expired: u64,
    pub(in crate::state) agent_restarts: u64,
    /// Runs first seen mid-way (this aggregator restarted) and the increments counted from their
    /// committed totals: exact unless a previous aggregator delivered a window whose commit never
    /// reached the agent (then these were counted twice).
    pub(in crate::state) runs_recovered: u64,
    pub(in crate::state) recovered_increments: f64,
    /// First snapshots whose agent started counting without a baseline (increments before it unknown).
    pub(in crate::state) baseline_unknown_runs: u64,
    /// Runs counted from a young ipamd's start without a resume point by a younger aggregator (part may be
    /// counted twice).
    pub(in crate::state) baseline_in_doubt_runs: u64,
    /// New runs resumed from a departed record, and departed runs that came back and continued.
    pub(in crate::state) runs_resumed: u64,
    pub(in crate::state) runs_continued: u64,
    /// Departed records dropped at `max_departed` (a later agent run of those nodes cannot resume).
    pub(in crate::state) departed_evicted: u64,
    /// Times a node started reporting impossible capacity values.
    pub(in crate::state) capacity_anomalies: u64,
    /// Longest wait for the state lock since `/metrics` last rendered, and how long that render held it.
    pub(in crate::state) longest_lock_wait: std::time::Duration,
    pub(in crate::state) last_render_hold: std::time::Duration,
    /// Streams ended because the agent's token expired (the agent reconnects with its refreshed one).
    pub(in crate::state) token_expiries: u64,
    /// Reports applied that arrived in parts.
    pub(in crate::state) reports_in_parts: u64,
}
