//! The CloudWatch sink, drop-in for upstream's publisher: namespace `Kubernetes`, dimension
//! `CLUSTER_ID=<id>`, upstream's MetricNames (see docs/metrics.md).
//!
//! Built like a Vector sink, a file per section:
//! - **config** ([`config`], [`CloudWatchConfig`]): namespace, storage resolution, allow-list, backlog bound;
//! - a **pure encoder** ([`encode`]: [`encode_window`], [`batches`]): every datum carries its window's timestamp;
//!   NaN/±Inf are skipped and counted; batches hold ≤ 1000 datums and ≤ 1 MB (estimated with a safety
//!   margin; split when over);
//! - the **service**: [`Sink::publish`] only queues the window ([`queue`]: a bounded backlog, oldest window
//!   dropped first, counted and logged), and the [`sender`] task delivers the queue in order with
//!   PutMetricData through its SDK `client`, one method per outcome (delivered, healing, retried, rejected);
//! - an explicit **retry classification** ([`crate::aws::retry`], shared with EC2) in three classes:
//!   - *transient* (throttling, 5xx, timeouts, network): retried with the shared jittered backoff;
//!   - *healing* (authentication, authorization, expired credentials, clock skew, request expiry, any
//!     other error that names no datum): nothing is wrong with the data, someone has to fix IAM, IRSA,
//!     Pod Identity or the clock. The windows stay in the backlog, attempts go on with a longer backoff
//!     (`auth_backoff`, to 5 min), `/readyz` fails with the fix, and it is logged once per state change;
//!   - *rejected* (InvalidParameterValue and the like, which refuse particular datums): the batch is
//!     bisected so the good datums still land, and each refused datum is logged, counted and dropped.
//!
//! Both retried classes hold data forever while the backlog bound holds.
//!
//! The SDK's own retries are off so every attempt is visible in the self-metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatch::types::StandardUnit;
use cni_metrics_proto::exposition::Page;
use cni_metrics_proto::labels::Counts;
use tokio::sync::{watch, Notify};
use tracing::{error, warn};

mod client;
pub mod config;
pub mod encode;
pub mod hint;
mod queue;
mod sender;

pub use config::{
    default_auth_backoff, CloudWatchArgs, CloudWatchConfig, UnknownMetric, DIMENSION, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES,
};
pub use encode::{batches, datum_size, encode_window, next_batch_len, Queued};
pub use hint::heal_hint;

use super::{BoxFuture, Sink, SinkError};
use crate::aws::{AwsError, ErrorKind, Retry};
use crate::state::{Unit, Window};
use queue::Queue;

cni_metrics_proto::label_enum! {
    /// The `result` of `cni_metrics_cloudwatch_requests_total`.
    enum RequestResult {
        Ok => "ok",
        RetryableError => "retryable_error",
        HeldError => "held_error",
        Rejected => "rejected",
    }
}

cni_metrics_proto::label_enum! {
    /// The `outcome` of `cni_metrics_cloudwatch_datums_total`.
    enum DatumOutcome {
        Sent => "sent",
        Rejected => "rejected",
        SkippedNonfinite => "skipped_nonfinite",
        Filtered => "filtered",
        DroppedBacklogFull => "dropped_backlog_full",
        DroppedShutdown => "dropped_shutdown",
    }
}

impl From<Unit> for StandardUnit {
    fn from(u: Unit) -> Self {
        match u {
            Unit::Count => StandardUnit::Count,
            Unit::Milliseconds => StandardUnit::Milliseconds,
            Unit::Percent => StandardUnit::Percent,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    requests: Counts<RequestResult>,
    datums: Counts<DatumOutcome>,
    errors: Counts<ErrorKind>,
    retries: u64,
    last_success_ms: Option<i64>,
    last_attempt_ok: Option<bool>,
    waiting_for: Option<&'static str>,
    /// The healing error the sink is waiting on (see [`Retry::Heal`]).
    healing: Option<ErrorKind>,
}

impl Stats {
    /// One PutMetricData attempt of `datums` datums ended.
    fn record_attempt(&mut self, datums: usize, result: Result<(), &AwsError>, now_ms: i64) {
        match result {
            Ok(()) => {
                self.requests.inc(RequestResult::Ok);
                self.datums.add(DatumOutcome::Sent, datums as u64);
                self.last_success_ms = Some(now_ms);
                self.last_attempt_ok = Some(true);
            }
            Err(e) => {
                self.requests.inc(match e.retry {
                    Retry::Retryable => RequestResult::RetryableError,
                    Retry::Heal => RequestResult::HeldError,
                    Retry::Rejected => RequestResult::Rejected,
                });
                self.errors.inc(e.kind);
                self.last_attempt_ok = Some(false);
            }
        }
    }
}

/// What the sink and its sender task share.
struct Shared {
    cfg: CloudWatchConfig,
    /// The region the agents agree on, from the latest window.
    region_hint: Mutex<Option<String>>,
    queue: Mutex<Queue>,
    stats: Mutex<Stats>,
    notify: Notify,
}

/// The sink: queue in front, sender task behind.
pub struct CloudWatchSink {
    shared: Arc<Shared>,
    close: watch::Sender<Option<tokio::time::Instant>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl CloudWatchSink {
    /// Start the sink. The SDK client is built lazily at the first delivery so the region can come from
    /// the agents when neither the flag nor `AWS_REGION` gives it.
    pub fn start(cfg: CloudWatchConfig) -> Self {
        let shared = Arc::new(Shared {
            cfg,
            region_hint: Mutex::default(),
            queue: Mutex::default(),
            stats: Mutex::default(),
            notify: Notify::new(),
        });
        let (close, close_rx) = watch::channel(None);
        let task = tokio::spawn(sender::Sender::new(shared.clone(), close_rx).run());
        Self { shared, close, task: Mutex::new(Some(task)) }
    }

    /// (windows, datums) waiting for delivery.
    pub fn backlog(&self) -> (usize, usize) {
        lock(&self.shared.queue).backlog()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink for CloudWatchSink {
    fn name(&self) -> &'static str {
        "cloudwatch"
    }

    fn publish<'a>(&'a self, seq: u64, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let (datums, nonfinite, filtered) = encode_window(window, &self.shared.cfg);
            if window.region_hint.is_some() {
                lock(&self.shared.region_hint).clone_from(&window.region_hint);
            }
            let dropped = lock(&self.shared.queue).push_window(seq, datums, self.shared.cfg.max_backlog_windows);
            let mut st = lock(&self.shared.stats);
            st.datums.add(DatumOutcome::SkippedNonfinite, nonfinite);
            st.datums.add(DatumOutcome::Filtered, filtered);
            if nonfinite > 0 {
                warn!(count = nonfinite, "NaN/Inf datums skipped: CloudWatch rejects them");
            }
            if dropped > 0 {
                st.datums.add(DatumOutcome::DroppedBacklogFull, dropped as u64);
                error!(
                    datums = dropped,
                    max_windows = self.shared.cfg.max_backlog_windows,
                    "CloudWatch backlog full: oldest window dropped"
                );
            }
            drop(st);
            self.shared.notify.notify_one();
            Ok(())
        })
    }

    fn delivered_through(&self) -> u64 {
        lock(&self.shared.queue).delivered_through()
    }

    fn close(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.close.send(Some(tokio::time::Instant::now() + grace));
            self.shared.notify.notify_one();
            let task = lock(&self.task).take();
            if let Some(mut t) = task {
                if tokio::time::timeout(grace + Duration::from_secs(1), &mut t).await.is_err() {
                    t.abort();
                }
            }
            let (_, left) = self.backlog();
            if left > 0 {
                lock(&self.shared.stats).datums.add(DatumOutcome::DroppedShutdown, left as u64);
                error!(datums = left, "CloudWatch datums not delivered before shutdown");
            }
        })
    }

    fn readiness(&self) -> Result<(), String> {
        let st = lock(&self.shared.stats);
        if let Some(w) = st.waiting_for {
            return Err(format!("cloudwatch: {w}"));
        }
        if let Some(kind) = st.healing {
            return Err(format!("cloudwatch: {kind}, windows held: {}", heal_hint(kind)));
        }
        match st.last_attempt_ok {
            Some(false) => Err("cloudwatch: the last PutMetricData failed".into()),
            _ => Ok(()),
        }
    }

    fn render_metrics(&self, page: &mut Page<'_>) {
        let (windows, datums) = self.backlog();
        let st = lock(&self.shared.stats);
        page.counts("cni_metrics_cloudwatch_requests_total", "PutMetricData attempts by result", "result", &st.requests);
        page.counts("cni_metrics_cloudwatch_datums_total", "Datums by outcome", "outcome", &st.datums);
        page.counts("cni_metrics_cloudwatch_errors_total", "Failed PutMetricData attempts by error type", "error_type", &st.errors);
        page.counter("cni_metrics_cloudwatch_retries_total", "PutMetricData retries", st.retries);
        page.gauge("cni_metrics_cloudwatch_backlog_windows", "Publish windows waiting for delivery", windows as f64);
        page.gauge("cni_metrics_cloudwatch_backlog_datums", "Datums waiting for delivery", datums as f64);
        if let Some(ms) = st.last_success_ms {
            page.gauge(
                "cni_metrics_cloudwatch_last_success_timestamp_seconds",
                "Time of the last accepted PutMetricData",
                ms as f64 / 1000.0,
            );
        }
    }
}
