//! The delivery task: takes the next batch from the front of the queue, sends it with PutMetricData and
//! acts on the outcome, one method each: **delivered** (resolve the batch, reset the backoffs, say so
//! once after a healing error), **heal** (credentials, permissions, clock: hold everything, retry with
//! the long backoff, log what to fix once per state change), **retry** (transient: the shared jittered
//! backoff) and **reject** (a refused datum, found by bisecting the batch: logged, counted, dropped).
//! Nothing leaves the queue but through [`Queue::resolve`](super::queue::Queue::resolve).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_cloudwatch::Client;
use cni_metrics_proto::backoff::Attempts;
use cni_metrics_proto::clock::unix_ms_now;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{client, heal_hint, lock, DatumOutcome, Queued, Shared, DIMENSION};
use crate::aws::{AwsError, ErrorKind, Retry};

const OPERATION: &str = "PutMetricData";

/// The sender task's state between batches.
pub(super) struct Sender {
    shared: Arc<Shared>,
    /// `Some(deadline)` once the sink is closing.
    close: watch::Receiver<Option<Instant>>,
    client: Option<Client>,
    attempts: Attempts,
    auth_attempts: Attempts,
    /// The healing error being waited on (logged once per change).
    healing: Option<ErrorKind>,
    cluster_id: Option<Arc<str>>,
    warned_no_id: bool,
}

impl Sender {
    pub(super) fn new(shared: Arc<Shared>, close: watch::Receiver<Option<Instant>>) -> Self {
        let attempts = shared.cfg.backoff.start(None);
        let auth_attempts = shared.cfg.auth_backoff.start(None);
        Self { shared, close, client: None, attempts, auth_attempts, healing: None, cluster_id: None, warned_no_id: false }
    }

    /// Deliver the queue in order until closed (and, once closing, until empty or past the deadline).
    pub(super) async fn run(mut self) {
        loop {
            let closing = *self.close.borrow();
            if closing.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let batch = lock(&self.shared.queue).next_batch(&self.shared.cfg.namespace);
            if batch.is_empty() {
                if closing.is_some() {
                    return;
                }
                tokio::select! {
                    _ = self.shared.notify.notified() => {}
                    _ = self.close.changed() => {}
                }
                continue;
            }
            let Some(id) = self.cluster_id(&batch) else {
                self.wait(Duration::from_secs(5)).await;
                continue;
            };
            let client = self.client(&id).await;
            lock(&self.shared.stats).waiting_for = None;
            match self.deliver(&client, &batch, &id).await {
                Ok(()) => self.delivered(),
                Err(e) if e.retry == Retry::Heal => self.heal(e).await,
                Err(e) => self.retry(e, batch.len()).await,
            }
        }
    }

    /// The cluster id for the batch: required, never invented (upstream's `k8s-cluster` merged clusters).
    fn cluster_id(&mut self, batch: &[Queued]) -> Option<Arc<str>> {
        if let Some(id) = batch.iter().map(|q| &q.cluster_id).find(|id| !id.is_empty()) {
            if self.cluster_id.as_deref() != Some(id) {
                info!(cluster_id = %id, "CloudWatch CLUSTER_ID dimension resolved");
            }
            self.cluster_id = Some(id.clone());
        }
        if self.cluster_id.is_none() {
            lock(&self.shared.stats).waiting_for = Some("no cluster id");
            if !self.warned_no_id {
                error!(
                    "CloudWatch sink cannot publish: no cluster id. Set AWS_CLUSTER_ID (or --cluster-id) to the EKS cluster \
                     name, or let agents report it (CLUSTER_NAME on the agents, or the eks:cluster-name instance tag with \
                     instance metadata tags enabled). Windows are kept in the backlog until then."
                );
                self.warned_no_id = true;
            }
        }
        self.cluster_id.clone()
    }

    /// The SDK client, built at the first delivery. Region: the flag or AWS_REGION, else the agents'
    /// region, else the SDK chain.
    async fn client(&mut self, cluster_id: &str) -> Client {
        if let Some(c) = &self.client {
            return c.clone();
        }
        let region = self.shared.cfg.region.clone().or_else(|| lock(&self.shared.region_hint).clone());
        let c = client::build_client(region, cluster_id, &self.shared.cfg.namespace, self.shared.cfg.attempt_timeout).await;
        self.client = Some(c.clone());
        c
    }

    /// The batch is resolved (sent, or its refused datums dropped).
    fn delivered(&mut self) {
        self.attempts.reset();
        self.auth_attempts.reset();
        if let Some(kind) = self.healing.take() {
            lock(&self.shared.stats).healing = None;
            let (windows, datums) = lock(&self.shared.queue).backlog();
            info!(
                error_type = %kind,
                backlog_windows = windows,
                backlog_datums = datums,
                "CloudWatch accepts requests again; delivering the held windows with their own timestamps"
            );
        }
    }

    /// Credentials, permissions or the clock: hold everything, retry slowly, say what to fix once.
    async fn heal(&mut self, e: AwsError) {
        let delay = self.auth_attempts.next_delay();
        self.attempts.reset();
        {
            let mut st = lock(&self.shared.stats);
            st.retries += 1;
            st.healing = Some(e.kind);
        }
        if self.healing != Some(e.kind) {
            let (windows, _) = lock(&self.shared.queue).backlog();
            error!(error_type = %e.kind, fix = heal_hint(e.kind), backlog_windows = windows, retry_in = %cni_metrics_proto::duration::format(delay),
                "CloudWatch refuses the aggregator's requests; windows are held in the backlog and retried until this is fixed");
            self.healing = Some(e.kind);
        }
        self.wait(delay).await;
    }

    /// Transient: what is left of the batch is retried after the backoff.
    async fn retry(&mut self, e: AwsError, datums: usize) {
        let delay = self.attempts.next_delay();
        lock(&self.shared.stats).retries += 1;
        warn!(error_type = %e.kind, datums, retry_in = %cni_metrics_proto::duration::format(delay), "PutMetricData failed; will retry");
        self.wait(delay).await;
    }

    /// CloudWatch refused this one datum: logged, counted, dropped.
    fn reject(&self, q: &Queued, kind: ErrorKind) {
        lock(&self.shared.stats).datums.inc(DatumOutcome::Rejected);
        error!(error_type = %kind, metric = q.metric_name, value = q.value, timestamp_ms = q.window_end_ms, "CloudWatch rejected a datum; dropped");
    }

    /// Sleep `d`, cut short by shutdown.
    async fn wait(&mut self, d: Duration) {
        let deadline = *self.close.borrow();
        let until = Instant::now() + d;
        let until = deadline.map_or(until, |dl| until.min(dl));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.close.changed() => {}
        }
    }

    /// Send one batch; refused parts are bisected down to the refused datums. Resolves what it sent or
    /// rejected (always a prefix: parts go in order); Err = retry what is left.
    async fn deliver(&self, client: &Client, batch: &[Queued], cluster_id: &str) -> Result<(), AwsError> {
        let mut stack: Vec<&[Queued]> = vec![batch];
        let mut resolved = 0;
        while let Some(part) = stack.pop() {
            match put(client, &self.shared, part, cluster_id).await {
                Ok(()) => resolved += part.len(),
                Err(e) if e.retry != Retry::Rejected => {
                    lock(&self.shared.queue).resolve(resolved);
                    return Err(e);
                }
                Err(e) => match part {
                    [q] => {
                        self.reject(q, e.kind);
                        resolved += 1;
                    }
                    _ => {
                        let (a, b) = part.split_at(part.len() / 2);
                        stack.push(b);
                        stack.push(a);
                    }
                },
            }
        }
        lock(&self.shared.queue).resolve(resolved);
        Ok(())
    }
}

/// One PutMetricData of `part`, counted.
async fn put(client: &Client, shared: &Shared, part: &[Queued], cluster_id: &str) -> Result<(), AwsError> {
    let cfg = &shared.cfg;
    let data: Vec<MetricDatum> = part.iter().map(|q| datum(q, cluster_id, cfg.storage_resolution)).collect();
    let call = client.put_metric_data().namespace(&cfg.namespace).set_metric_data(Some(data)).send();
    let result = match tokio::time::timeout(cfg.attempt_timeout + Duration::from_secs(1), call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(AwsError::of(OPERATION, &e)),
        Err(_) => Err(AwsError::timed_out(OPERATION)),
    };
    lock(&shared.stats).record_attempt(part.len(), result.as_ref().map(|_| ()), unix_ms_now());
    if let Err(e) = &result {
        warn!(error_type = %e.kind, datums = part.len(), error = %e, "PutMetricData attempt failed");
    }
    result
}

fn datum(q: &Queued, cluster_id: &str, storage_resolution: i32) -> MetricDatum {
    let mut b =
        MetricDatum::builder().metric_name(q.metric_name).dimensions(Dimension::builder().name(DIMENSION).value(cluster_id).build());
    if let Some((name, value)) = &q.dimension {
        b = b.dimensions(Dimension::builder().name(*name).value(value.as_ref()).build());
    }
    b.timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_millis(q.window_end_ms))
        .value(q.value)
        .unit(StandardUnit::from(q.unit))
        .storage_resolution(storage_resolution)
        .build()
}
