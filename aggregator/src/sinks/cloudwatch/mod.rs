//! The CloudWatch sink, drop-in for upstream's publisher: namespace `Kubernetes`, dimension
//! `CLUSTER_ID=<id>`, upstream's MetricNames (see the README's reference table).
//!
//! Built like a Vector sink, a file per section:
//! - **config** ([`config`], [`CloudWatchConfig`]): namespace, storage resolution, allow-list, backlog bound;
//! - a **pure encoder** ([`encode`]: [`encode_window`], [`batches`]): every datum carries its window's timestamp;
//!   NaN/±Inf are skipped and counted; batches hold ≤ 1000 datums and ≤ 1 MB (estimated with a safety
//!   margin; split when over);
//! - the **service** (this file) and its SDK `client`: [`Sink::publish`] only queues the window (a bounded backlog, oldest window dropped
//!   first, counted and logged), and a sender task delivers the queue in order with PutMetricData;
//! - an explicit **retry classification** ([`retry`]: [`classify`]) in three classes:
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_cloudwatch::Client;
use cni_metrics_proto::clock::unix_ms_now;
use cni_metrics_proto::exposition::{Kind, Page};
use cni_metrics_proto::labels::Counts;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

mod client;
pub mod config;
pub mod encode;
pub mod retry;

pub use config::{default_auth_backoff, CloudWatchConfig, DIMENSION, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES};
pub use encode::{batches, datum_size, encode_window, next_batch_len, Queued};
pub use retry::{classify, heal_hint, Retry};

use super::{BoxFuture, Sink, SinkError};
use crate::state::Window;

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

#[derive(Debug, Default)]
struct Stats {
    requests: Counts<RequestResult>,
    datums: Counts<DatumOutcome>,
    /// By error type: bounded by [`classify`]'s codes.
    errors: BTreeMap<&'static str, u64>,
    retries: u64,
    last_success_ms: Option<i64>,
    last_attempt_ok: Option<bool>,
    waiting_for: Option<&'static str>,
    /// The healing error the sink is waiting on (see [`Retry::Heal`]).
    healing: Option<&'static str>,
}

#[derive(Debug, Default)]
struct Queue {
    datums: VecDeque<Queued>,
    /// (datums, publisher's window seq) per queued window, oldest first.
    windows: VecDeque<(usize, u64)>,
    /// The highest window seq handed to the sink.
    accepted_through: u64,
    /// Datums of the front window already delivered (the window is partly sent).
    front_sent: usize,
}

impl Queue {
    /// Every window up to this seq is resolved: delivered, rejected (logged) or dropped (counted).
    fn delivered_through(&self) -> u64 {
        self.windows.front().map_or(self.accepted_through, |(_, seq)| seq.saturating_sub(1))
    }

    /// Remove `n` datums from the front, keeping window accounting right.
    fn pop_front(&mut self, mut n: usize) {
        while n > 0 {
            let Some(&mut (front, _)) = self.windows.front_mut() else { break };
            let take = n.min(front - self.front_sent);
            for _ in 0..take {
                self.datums.pop_front();
            }
            self.front_sent += take;
            n -= take;
            if self.front_sent == front {
                self.windows.pop_front();
                self.front_sent = 0;
            }
        }
    }
}

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
        let task = tokio::spawn(sender(shared.clone(), close_rx));
        Self { shared, close, task: Mutex::new(Some(task)) }
    }

    /// Datums waiting for delivery.
    pub fn backlog(&self) -> (usize, usize) {
        let q = lock(&self.shared.queue);
        (q.windows.len(), q.datums.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink for CloudWatchSink {
    fn name(&self) -> &'static str {
        "cloudwatch"
    }

    fn publish<'a>(&'a self, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let (datums, nonfinite, filtered) = encode_window(window, &self.shared.cfg);
            if window.region_hint.is_some() {
                lock(&self.shared.region_hint).clone_from(&window.region_hint);
            }
            let mut dropped = 0;
            {
                let mut q = lock(&self.shared.queue);
                if !datums.is_empty() {
                    q.windows.push_back((datums.len(), window.seq));
                    q.datums.extend(datums);
                }
                q.accepted_through = q.accepted_through.max(window.seq);
                while q.windows.len() > self.shared.cfg.max_backlog_windows {
                    let n = q.windows.front().map_or(0, |w| w.0) - q.front_sent;
                    q.pop_front(n);
                    dropped += n;
                }
            }
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
        let name = "cni_metrics_cloudwatch_errors_total";
        page.family(name, Kind::Counter, "Failed PutMetricData attempts by error type");
        for (kind, v) in &st.errors {
            page.sample(name, &[("error_type", kind)], *v as f64);
        }
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

/// The delivery loop.
async fn sender(shared: Arc<Shared>, mut close: watch::Receiver<Option<tokio::time::Instant>>) {
    let mut client: Option<Client> = None;
    let mut attempts = shared.cfg.backoff.start(None);
    let mut auth_attempts = shared.cfg.auth_backoff.start(None);
    let mut healing: Option<&'static str> = None;
    let mut cluster_id: Option<Arc<str>> = None;
    let mut warned_no_id = false;
    loop {
        let closing = *close.borrow();
        if closing.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return;
        }
        // The next batch (cloned: removed from the queue only once delivered or rejected).
        let batch: Vec<Queued> = {
            let q = lock(&shared.queue);
            let n = next_batch_len(q.datums.iter(), &shared.cfg.namespace);
            q.datums.iter().take(n).cloned().collect()
        };
        if batch.is_empty() {
            if closing.is_some() {
                return;
            }
            tokio::select! {
                _ = shared.notify.notified() => {}
                _ = close.changed() => {}
            }
            continue;
        }
        // A cluster id is required: never invent one (upstream's `k8s-cluster` merged clusters).
        if let Some(id) = batch.iter().map(|q| &q.cluster_id).find(|id| !id.is_empty()) {
            if cluster_id.as_deref() != Some(id) {
                info!(cluster_id = %id, "CloudWatch CLUSTER_ID dimension resolved");
            }
            cluster_id = Some(id.clone());
        }
        let Some(id) = cluster_id.clone() else {
            lock(&shared.stats).waiting_for = Some("no cluster id");
            if !warned_no_id {
                error!(
                    "CloudWatch sink cannot publish: no cluster id. Set AWS_CLUSTER_ID (or --cluster-id) to the EKS cluster \
                     name, or let agents report it (CLUSTER_NAME on the agents, or the eks:cluster-name instance tag with \
                     instance metadata tags enabled). Windows are kept in the backlog until then."
                );
                warned_no_id = true;
            }
            wait(&mut close, Duration::from_secs(5)).await;
            continue;
        };
        if client.is_none() {
            // Region: the flag or AWS_REGION, else the agents' region, else the SDK chain.
            let region = shared.cfg.region.clone().or_else(|| lock(&shared.region_hint).clone());
            client = Some(client::build_client(region, &id, &shared.cfg.namespace).await);
        }
        let Some(c) = client.as_ref() else { continue };
        lock(&shared.stats).waiting_for = None;
        match deliver(c, &shared, &batch, &id).await {
            Ok(()) => {
                attempts.reset();
                auth_attempts.reset();
                lock(&shared.queue).pop_front(batch.len());
                if let Some(kind) = healing.take() {
                    lock(&shared.stats).healing = None;
                    let (windows, datums) = {
                        let q = lock(&shared.queue);
                        (q.windows.len(), q.datums.len())
                    };
                    info!(
                        error_type = kind,
                        backlog_windows = windows,
                        backlog_datums = datums,
                        "CloudWatch accepts requests again; delivering the held windows with their own timestamps"
                    );
                }
            }
            // Credentials, permissions or the clock: hold everything, retry slowly, say what to fix once.
            Err((Retry::Heal, kind)) => {
                let delay = auth_attempts.next_delay();
                attempts.reset();
                {
                    let mut st = lock(&shared.stats);
                    st.retries += 1;
                    st.healing = Some(kind);
                }
                if healing != Some(kind) {
                    let windows = lock(&shared.queue).windows.len();
                    error!(error_type = kind, fix = heal_hint(kind), backlog_windows = windows, retry_in = ?delay,
                        "CloudWatch refuses the aggregator's requests; windows are held in the backlog and retried until this is fixed");
                    healing = Some(kind);
                }
                wait(&mut close, delay).await;
            }
            // Part of the batch may be resolved already (popped by `deliver`); the rest is retried.
            Err((_, kind)) => {
                let delay = attempts.next_delay();
                lock(&shared.stats).retries += 1;
                warn!(error_type = kind, datums = batch.len(), retry_in = ?delay, "PutMetricData failed; will retry");
                wait(&mut close, delay).await;
            }
        }
    }
}

/// Sleep `d`, cut short by shutdown.
async fn wait(close: &mut watch::Receiver<Option<tokio::time::Instant>>, d: Duration) {
    let deadline = *close.borrow();
    let until = tokio::time::Instant::now() + d;
    let until = deadline.map_or(until, |dl| until.min(dl));
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = close.changed() => {}
    }
}

/// Send one batch; rejected parts are bisected, logged and dropped (Ok). Err = retry what is left.
async fn deliver(client: &Client, shared: &Shared, batch: &[Queued], cluster_id: &str) -> Result<(), (Retry, &'static str)> {
    // Parts are processed in order, so what is resolved (sent or rejected) is always a prefix.
    let mut stack: Vec<&[Queued]> = vec![batch];
    while let Some(part) = stack.pop() {
        match put(client, shared, part, cluster_id).await {
            Ok(()) => {}
            Err((retry @ (Retry::Retryable | Retry::Heal), kind)) => {
                // Give what is left back to the retry loop; the resolved prefix is not sent again.
                let left: usize = stack.iter().map(|p| p.len()).sum::<usize>() + part.len();
                lock(&shared.queue).pop_front(batch.len() - left);
                return Err((retry, kind));
            }
            Err((Retry::Rejected, kind)) => {
                if part.len() > 1 {
                    let (a, b) = part.split_at(part.len() / 2);
                    stack.push(b);
                    stack.push(a);
                } else {
                    let q = &part[0];
                    lock(&shared.stats).datums.inc(DatumOutcome::Rejected);
                    error!(
                        error_type = kind,
                        metric = q.metric_name,
                        value = q.value,
                        timestamp_ms = q.window_end_ms,
                        "CloudWatch rejected a datum; dropped"
                    );
                }
            }
        }
    }
    Ok(())
}

async fn put(client: &Client, shared: &Shared, part: &[Queued], cluster_id: &str) -> Result<(), (Retry, &'static str)> {
    let cfg = &shared.cfg;
    let data: Vec<MetricDatum> = part
        .iter()
        .map(|q| {
            let mut b = MetricDatum::builder()
                .metric_name(q.metric_name)
                .dimensions(Dimension::builder().name(DIMENSION).value(cluster_id).build());
            if let Some((name, value)) = &q.dimension {
                b = b.dimensions(Dimension::builder().name(*name).value(value.as_ref()).build());
            }
            b.timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_millis(q.window_end_ms))
                .value(q.value)
                .unit(StandardUnit::from(q.unit.as_str()))
                .storage_resolution(cfg.storage_resolution)
                .build()
        })
        .collect();
    let call = client.put_metric_data().namespace(&cfg.namespace).set_metric_data(Some(data)).send();
    let result = tokio::time::timeout(cfg.attempt_timeout + Duration::from_secs(1), call).await;
    let outcome = match result {
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err((Retry::Retryable, "timeout", String::from("attempt timed out"))),
        Ok(Err(e)) => {
            let (status, code) = match &e {
                SdkError::ServiceError(ctx) => (Some(ctx.raw().status().as_u16()), ctx.err().code().map(str::to_owned)),
                SdkError::ResponseError(ctx) => (Some(ctx.raw().status().as_u16()), None),
                _ => (None, None),
            };
            let (retry, kind) = classify(status, code.as_deref());
            let kind = if matches!(e, SdkError::TimeoutError(_)) { "timeout" } else { kind };
            Err((retry, kind, format!("{}", aws_sdk_cloudwatch::error::DisplayErrorContext(&e))))
        }
    };
    let mut st = lock(&shared.stats);
    match outcome {
        Ok(()) => {
            st.requests.inc(RequestResult::Ok);
            st.datums.add(DatumOutcome::Sent, part.len() as u64);
            st.last_success_ms = Some(unix_ms_now());
            st.last_attempt_ok = Some(true);
            Ok(())
        }
        Err((retry, kind, msg)) => {
            st.requests.inc(match retry {
                Retry::Retryable => RequestResult::RetryableError,
                Retry::Heal => RequestResult::HeldError,
                Retry::Rejected => RequestResult::Rejected,
            });
            *st.errors.entry(kind).or_default() += 1;
            st.last_attempt_ok = Some(false);
            drop(st);
            warn!(error_type = kind, datums = part.len(), error = %msg, "PutMetricData attempt failed");
            Err((retry, kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode::tests::window;
    use super::*;

    #[test]
    fn queue_accounting_across_windows() {
        let mut q = Queue::default();
        for (n, end) in [(3, 1), (2, 2), (4, 3)] {
            let (d, _, _) = encode_window(&window(n, end), &CloudWatchConfig::default());
            q.windows.push_back((d.len(), end as u64));
            q.datums.extend(d);
            q.accepted_through = end as u64;
        }
        assert_eq!(q.delivered_through(), 0);
        q.pop_front(4);
        assert_eq!((q.windows.len(), q.front_sent, q.datums.len()), (2, 1, 5));
        assert_eq!(q.datums.front().map(|d| d.window_end_ms), Some(2));
        assert_eq!(q.delivered_through(), 1, "window 2 is only partly sent");
        q.pop_front(5);
        assert!(q.windows.is_empty() && q.datums.is_empty() && q.front_sent == 0);
        assert_eq!(q.delivered_through(), 3);
    }
}
