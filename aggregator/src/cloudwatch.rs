//! The CloudWatch sink, drop-in for upstream's publisher: namespace `Kubernetes`, dimension
//! `CLUSTER_ID=<id>`, upstream's MetricNames (see the README's reference table).
//!
//! Built like a Vector sink:
//! - **config** ([`CloudWatchConfig`]): namespace, storage resolution, allow-list, backlog bound;
//! - a **pure encoder** ([`encode_window`], [`batches`]): every datum carries its window's timestamp;
//!   NaN/±Inf are skipped and counted; batches hold ≤ 1000 datums and ≤ 1 MB (estimated with a safety
//!   margin; split when over);
//! - the **service**: [`Sink::publish`] only queues the window (a bounded backlog, oldest window dropped
//!   first, counted and logged), and a sender task delivers the queue in order with PutMetricData;
//! - an explicit **retry classification** ([`classify`]) in three classes:
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_cloudwatch::Client;
use cni_metrics_proto::backoff::Backoff;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use cni_metrics_proto::clock::unix_ms_now;

use crate::publish::{BoxFuture, Sink, SinkError};
use crate::state::Window;

/// CloudWatch's PutMetricData limits.
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Bytes kept free under the request limit for the envelope and estimation error.
const SIZE_MARGIN: usize = 16 * 1024;
/// Conservative per-datum overhead beyond its strings (field names, value, timestamp, unit, framing).
const DATUM_OVERHEAD: usize = 160;

pub const DIMENSION: &str = "CLUSTER_ID";

#[derive(Clone, Debug)]
pub struct CloudWatchConfig {
    pub namespace: String,
    /// 60 (standard) or 1 (high resolution).
    pub storage_resolution: i32,
    /// Only these MetricNames are published, when set.
    pub allow_list: Option<BTreeSet<String>>,
    /// Windows kept while CloudWatch is unreachable.
    pub max_backlog_windows: usize,
    /// Region from the flag or `AWS_REGION`.
    pub region: Option<String>,
    /// Time limit of one PutMetricData attempt.
    pub attempt_timeout: Duration,
    /// Backoff after transient errors.
    pub backoff: Backoff,
    /// Backoff after errors that heal only when someone fixes credentials or permissions.
    pub auth_backoff: Backoff,
}

/// The default backoff after healing errors: 2 s doubling to 5 min, ±20 %.
pub fn default_auth_backoff(max: Duration) -> Backoff {
    let min = Duration::from_secs(2).min(max);
    Backoff::new(min, max, 2.0, 0.2).unwrap_or_default()
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            namespace: "Kubernetes".into(),
            storage_resolution: 60,
            allow_list: None,
            max_backlog_windows: 1440,
            region: None,
            attempt_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            auth_backoff: default_auth_backoff(Duration::from_secs(300)),
        }
    }
}

/// One datum waiting for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub window_end_ms: i64,
    pub cluster_id: Arc<str>,
    pub metric_name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// A breakdown dimension besides CLUSTER_ID.
    pub dimension: Option<(&'static str, Arc<str>)>,
}

/// Turn a window into queued datums; returns them and the number skipped as non-finite.
pub fn encode_window(w: &Window, cfg: &CloudWatchConfig) -> (Vec<Queued>, u64, u64) {
    let cluster: Arc<str> = Arc::from(w.cluster_id.as_str());
    let mut skipped = 0;
    let mut filtered = 0;
    let mut out = Vec::with_capacity(w.datums.len());
    for d in &w.datums {
        if cfg.allow_list.as_ref().is_some_and(|a| !a.contains(d.metric_name)) {
            filtered += 1;
            continue;
        }
        if !d.value.is_finite() {
            skipped += 1;
            continue;
        }
        out.push(Queued {
            window_end_ms: w.end_unix_ms,
            cluster_id: cluster.clone(),
            metric_name: d.metric_name,
            value: d.value,
            unit: d.unit,
            dimension: d.dimension.as_ref().map(|(n, v)| (*n, Arc::from(v.as_str()))),
        });
    }
    (out, skipped, filtered)
}

/// Estimated encoded size of one datum.
pub fn datum_size(q: &Queued) -> usize {
    let extra = q.dimension.as_ref().map_or(0, |(n, v)| n.len() + v.len() + 32);
    q.metric_name.len() + DIMENSION.len() + q.cluster_id.len() + q.unit.len() + DATUM_OVERHEAD + extra
}

/// How many datums from the front of `queue` make the next request (≥ 1 when the queue is not empty).
pub fn next_batch_len<'a>(queue: impl IntoIterator<Item = &'a Queued>, namespace: &str) -> usize {
    let mut bytes = namespace.len() + 64;
    let mut n = 0;
    for q in queue {
        let s = datum_size(q);
        if n == MAX_DATUMS_PER_REQUEST || (n > 0 && bytes + s > MAX_REQUEST_BYTES - SIZE_MARGIN) {
            break;
        }
        bytes += s;
        n += 1;
    }
    n
}

/// Split datums into request-sized batches (pure; used by tests and by the sender through
/// [`next_batch_len`]).
pub fn batches(datums: &[Queued], namespace: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < datums.len() {
        let n = next_batch_len(&datums[i..], namespace);
        out.push(i..i + n);
        i += n;
    }
    out
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient: try again after the backoff.
    Retryable,
    /// Nothing is wrong with the datums; credentials, permissions or the clock must be fixed. Hold the
    /// backlog, retry with the longer backoff, report not ready.
    Heal,
    /// Refuses particular datums: bisect and drop only what CloudWatch refuses.
    Rejected,
}

/// Classify an error from its HTTP status and error code (bounded label in the second field).
pub fn classify(status: Option<u16>, code: Option<&str>) -> (Retry, &'static str) {
    match code {
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" | "RequestThrottled") => {
            return (Retry::Retryable, "throttling")
        }
        Some("InternalServiceError" | "InternalServiceFault" | "InternalFailure" | "ServiceUnavailable") => {
            return (Retry::Retryable, "server")
        }
        Some("RequestTimeout" | "RequestTimeoutException") => return (Retry::Retryable, "timeout"),
        Some("InvalidParameterValue" | "InvalidParameterCombination" | "MissingParameter" | "MissingRequiredParameter") => {
            return (Retry::Rejected, "invalid_parameter")
        }
        Some(
            "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "NotAuthorized"
            | "MissingAuthenticationToken"
            | "IncompleteSignature"
            | "OptInRequired",
        ) => return (Retry::Heal, "access_denied"),
        Some("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => return (Retry::Heal, "expired_credentials"),
        Some("RequestExpired" | "SignatureDoesNotMatch" | "InvalidSignatureException" | "RequestTimeTooSkewed") => {
            return (Retry::Heal, "clock_skew")
        }
        _ => {}
    }
    match status {
        Some(429) => (Retry::Retryable, "throttling"),
        Some(408) => (Retry::Retryable, "timeout"),
        Some(s) if s >= 500 => (Retry::Retryable, "server"),
        Some(401 | 403) => (Retry::Heal, "access_denied"),
        // An error that names no datum is not the data's fault: hold it rather than drop it.
        Some(_) => (Retry::Heal, "other"),
        // No response at all: network, timeout, credentials not yet available.
        None => (Retry::Retryable, "network"),
    }
}

/// What an operator has to fix for a healing error (logged and shown by `/readyz`).
pub fn heal_hint(kind: &str) -> &'static str {
    match kind {
        "access_denied" => {
            "CloudWatch refuses the aggregator's credentials: grant cloudwatch:PutMetricData (deploy/iam-policy.json) to the role the \
             aggregator runs as, and check the IRSA annotation (eks.amazonaws.com/role-arn) on its ServiceAccount or its EKS Pod \
             Identity association"
        }
        "expired_credentials" => {
            "the aggregator's AWS credentials expired and were not refreshed: check the projected IRSA token or the Pod Identity \
             agent, and the role's trust policy"
        }
        "clock_skew" => {
            "CloudWatch says the request is expired or its signature does not match: check the node's clock (NTP) and the credentials"
        }
        _ => "CloudWatch refuses every request with an error that names no datum: see the error logged with it",
    }
}
#[derive(Debug, Default)]
struct Stats {
    requests: BTreeMap<&'static str, u64>,
    datums: BTreeMap<&'static str, u64>,
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
            *st.datums.entry("skipped_nonfinite").or_default() += nonfinite;
            *st.datums.entry("filtered").or_default() += filtered;
            if nonfinite > 0 {
                warn!(count = nonfinite, "NaN/Inf datums skipped: CloudWatch rejects them");
            }
            if dropped > 0 {
                *st.datums.entry("dropped_backlog_full").or_default() += dropped as u64;
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
                *lock(&self.shared.stats).datums.entry("dropped_shutdown").or_default() += left as u64;
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

    fn render_metrics(&self, out: &mut String, cluster_id: &str) {
        let (windows, datums) = self.backlog();
        let st = lock(&self.shared.stats);
        let c = cluster_id;
        let mut family = |name: &str, help: &str, kind: &str, label: &str, m: &BTreeMap<&'static str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, v) in m {
                let _ = writeln!(out, "{name}{{cluster_id=\"{c}\",{label}=\"{k}\"}} {v}");
            }
        };
        family("cni_metrics_cloudwatch_requests_total", "PutMetricData attempts by result", "counter", "result", &st.requests);
        family("cni_metrics_cloudwatch_datums_total", "Datums by outcome", "counter", "outcome", &st.datums);
        family("cni_metrics_cloudwatch_errors_total", "Failed PutMetricData attempts by error type", "counter", "error_type", &st.errors);
        let _ = writeln!(
            out,
            "# HELP cni_metrics_cloudwatch_retries_total PutMetricData retries\n# TYPE cni_metrics_cloudwatch_retries_total counter"
        );
        let _ = writeln!(out, "cni_metrics_cloudwatch_retries_total{{cluster_id=\"{c}\"}} {}", st.retries);
        let _ = writeln!(out, "# HELP cni_metrics_cloudwatch_backlog_windows Publish windows waiting for delivery\n# TYPE cni_metrics_cloudwatch_backlog_windows gauge");
        let _ = writeln!(out, "cni_metrics_cloudwatch_backlog_windows{{cluster_id=\"{c}\"}} {windows}");
        let _ = writeln!(
            out,
            "# HELP cni_metrics_cloudwatch_backlog_datums Datums waiting for delivery\n# TYPE cni_metrics_cloudwatch_backlog_datums gauge"
        );
        let _ = writeln!(out, "cni_metrics_cloudwatch_backlog_datums{{cluster_id=\"{c}\"}} {datums}");
        if let Some(ms) = st.last_success_ms {
            let _ = writeln!(out, "# HELP cni_metrics_cloudwatch_last_success_timestamp_seconds Time of the last accepted PutMetricData\n# TYPE cni_metrics_cloudwatch_last_success_timestamp_seconds gauge");
            let _ = writeln!(out, "cni_metrics_cloudwatch_last_success_timestamp_seconds{{cluster_id=\"{c}\"}} {}", ms as f64 / 1000.0);
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
            client = Some(build_client(region, &id, &shared.cfg.namespace).await);
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
                    *lock(&shared.stats).datums.entry("rejected").or_default() += 1;
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
                .unit(StandardUnit::from(q.unit))
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
            *st.requests.entry("ok").or_default() += 1;
            *st.datums.entry("sent").or_default() += part.len() as u64;
            st.last_success_ms = Some(unix_ms_now());
            st.last_attempt_ok = Some(true);
            Ok(())
        }
        Err((retry, kind, msg)) => {
            let result = match retry {
                Retry::Retryable => "retryable_error",
                Retry::Heal => "held_error",
                Retry::Rejected => "rejected",
            };
            *st.requests.entry(result).or_default() += 1;
            *st.errors.entry(kind).or_default() += 1;
            st.last_attempt_ok = Some(false);
            drop(st);
            warn!(error_type = kind, datums = part.len(), error = %msg, "PutMetricData attempt failed");
            Err((retry, kind))
        }
    }
}

/// Build the client from the SDK's default chain (env, IRSA web identity, EKS Pod Identity, profile,
/// IMDS) and log the start-up self-check: region, cluster id, credential source, endpoint.
async fn build_client(region: Option<String>, cluster_id: &str, namespace: &str) -> Client {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
        TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).operation_attempt_timeout(Duration::from_secs(10)).build(),
    );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    let sdk = loader.load().await;
    let credentials = match sdk.credentials_provider() {
        Some(p) => match aws_credential_source(&p).await {
            Ok(source) => source,
            Err(e) => {
                error!(error = %e, "no AWS credentials yet (IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE; Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI); will retry at each attempt");
                "unresolved".to_owned()
            }
        },
        None => "none".to_owned(),
    };
    info!(
        region = sdk.region().map(|r| r.as_ref()).unwrap_or("unresolved"),
        cluster_id,
        namespace,
        credentials = %credentials,
        endpoint = std::env::var("AWS_ENDPOINT_URL").as_deref().unwrap_or("default"),
        "CloudWatch sink ready"
    );
    if sdk.region().is_none() {
        error!("no AWS region: set AWS_REGION (or --region); agents did not report one and the SDK chain found none");
    }
    Client::new(&sdk)
}

/// The name of the provider that supplied the credentials (from their redacted Debug form).
async fn aws_credential_source(p: &aws_credential_types::provider::SharedCredentialsProvider) -> Result<String, String> {
    use aws_credential_types::provider::ProvideCredentials;
    let creds = p.provide_credentials().await.map_err(|e| format!("{}", aws_sdk_cloudwatch::error::DisplayErrorContext(&e)))?;
    let dbg = format!("{creds:?}");
    Ok(dbg.split("provider_name: \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("unknown").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Datum;

    fn window(n: usize, end: i64) -> Window {
        Window {
            cluster_id: "prod".into(),
            region_hint: None,
            end_unix_ms: end,
            nodes: 1,
            commits: Vec::new(),
            seq: end as u64,
            datums: (0..n)
                .map(|i| Datum {
                    metric_name: if i % 2 == 0 { "addReqCount" } else { "assignIPAddresses" },
                    value: i as f64,
                    unit: "Count",
                    dimension: None,
                })
                .collect(),
        }
    }

    #[test]
    fn encode_skips_nonfinite_and_filters() {
        let mut w = window(4, 7);
        w.datums[1].value = f64::NAN;
        w.datums[2].value = f64::INFINITY;
        let (q, skipped, filtered) = encode_window(&w, &CloudWatchConfig::default());
        assert_eq!((q.len(), skipped, filtered), (2, 2, 0));
        assert!(q.iter().all(|d| d.window_end_ms == 7 && &*d.cluster_id == "prod"));
        let cfg = CloudWatchConfig { allow_list: Some(["addReqCount".to_owned()].into()), ..CloudWatchConfig::default() };
        let (q, _, filtered) = encode_window(&window(4, 7), &cfg);
        assert_eq!((q.len(), filtered), (2, 2));
    }

    #[test]
    fn batches_respect_count_and_size() {
        let (q, _, _) = encode_window(&window(2500, 1), &CloudWatchConfig::default());
        let b = batches(&q, "Kubernetes");
        assert_eq!(b.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        // Long names: the byte limit splits first.
        let long: &'static str = Box::leak("m".repeat(250).into_boxed_str());
        let big: Vec<Queued> = (0..3000)
            .map(|i| Queued {
                window_end_ms: 0,
                cluster_id: Arc::from("c".repeat(1024)),
                metric_name: long,
                value: i as f64,
                unit: "Count",
                dimension: None,
            })
            .collect();
        let b = batches(&big, "Kubernetes");
        assert!(b.len() > 3);
        for r in &b {
            let bytes: usize = big[r.clone()].iter().map(datum_size).sum();
            assert!(bytes <= MAX_REQUEST_BYTES - SIZE_MARGIN && r.len() <= MAX_DATUMS_PER_REQUEST, "{r:?}: {bytes}");
        }
        assert_eq!(b.iter().map(|r| r.len()).sum::<usize>(), 3000);
    }

    #[test]
    fn retry_classification_table() {
        let cases = [
            (Some(400), Some("Throttling"), Retry::Retryable, "throttling"),
            (Some(400), Some("ThrottlingException"), Retry::Retryable, "throttling"),
            (Some(500), Some("InternalServiceError"), Retry::Retryable, "server"),
            (Some(503), None, Retry::Retryable, "server"),
            (Some(429), None, Retry::Retryable, "throttling"),
            (None, None, Retry::Retryable, "network"),
            (Some(400), Some("InvalidParameterValue"), Retry::Rejected, "invalid_parameter"),
            (Some(400), Some("MissingParameter"), Retry::Rejected, "invalid_parameter"),
            (Some(400), Some("InvalidParameterCombination"), Retry::Rejected, "invalid_parameter"),
            (Some(403), Some("AccessDenied"), Retry::Heal, "access_denied"),
            (Some(400), Some("AccessDeniedException"), Retry::Heal, "access_denied"),
            (Some(403), Some("InvalidClientTokenId"), Retry::Heal, "access_denied"),
            (Some(403), None, Retry::Heal, "access_denied"),
            (Some(401), None, Retry::Heal, "access_denied"),
            (Some(403), Some("ExpiredToken"), Retry::Heal, "expired_credentials"),
            (Some(400), Some("ExpiredTokenException"), Retry::Heal, "expired_credentials"),
            (Some(400), Some("RequestExpired"), Retry::Heal, "clock_skew"),
            (Some(403), Some("SignatureDoesNotMatch"), Retry::Heal, "clock_skew"),
            (Some(400), Some("RequestTimeout"), Retry::Retryable, "timeout"),
            (Some(408), None, Retry::Retryable, "timeout"),
            (Some(404), None, Retry::Heal, "other"),
            (Some(400), Some("SomethingNew"), Retry::Heal, "other"),
        ];
        for (status, code, retry, kind) in cases {
            assert_eq!(classify(status, code), (retry, kind), "{status:?} {code:?}");
        }
    }

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
