//! Publishing: every `--publish-interval` the publisher closes a window of the cluster state
//! ([`ClusterState::take_window`]) and hands it to each sink outside the state lock.
//!
//! A sink is the seam the CloudWatch sink plugs into: a name, and an async `publish` of one window that
//! says whether it succeeded. The `stdout` sink prints one line per datum, like upstream's log lines, for
//! dry runs; its encoder is a pure function.
//!
//! End-to-end acknowledgement: every window gets a sequence number and keeps its commit marks in
//! [`Commits`] until every sink reports it resolved ([`Sink::delivered_through`]: delivered, or dropped
//! and counted by the sink); then the marks go to [`ClusterState::commit`](crate::state::ClusterState::commit)
//! and the commit watch wakes the streams, which tell their agents.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use std::collections::VecDeque;

use tokio::sync::watch;

use cni_metrics_proto::clock::{rfc3339, unix_ms_now};

use crate::shared::{lock, Shared};
use crate::state::{CommitMark, Window};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A destination of publish windows.
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;
    /// Take one window (deliver it, or queue it for a delivery task of the sink's own).
    fn publish<'a>(&'a self, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>>;
    /// The highest window `seq` up to which every window handed over is resolved: delivered, or dropped
    /// and counted. Sinks that deliver inside `publish` resolve everything (`u64::MAX`).
    fn delivered_through(&self) -> u64 {
        u64::MAX
    }
    /// At shutdown: deliver what is still queued within `grace`.
    fn close(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// For `/readyz`: why the sink is not healthy, if it is not.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
    /// Append the sink's self-metrics to `/metrics`.
    fn render_metrics(&self, _out: &mut String, _cluster_id: &str) {}
}

/// Prints each datum as a line to a writer (stdout by default).
pub struct StdoutSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self { out: Mutex::new(Box::new(std::io::stdout())) }
    }

    pub fn with_writer(w: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(w) }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn publish<'a>(&'a self, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let text = encode_lines(window);
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        })
    }
}

/// One line per datum: `<RFC 3339 time> cluster_id=<id> metric=<CloudWatch name> value=<v> unit=<unit>`.
pub fn encode_lines(w: &Window) -> String {
    let mut s = String::with_capacity(w.datums.len() * 96);
    let ts = rfc3339(w.end_unix_ms);
    for d in &w.datums {
        let dim = d.dimension.as_ref().map(|(n, v)| format!(" {n}={v}")).unwrap_or_default();
        let _ = writeln!(s, "{ts} cluster_id={}{dim} metric={} value={} unit={}", w.cluster_id, d.metric_name, d.value, d.unit);
    }
    s
}

/// Publish outcomes, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// (sink, "ok" | "error") → count.
    pub publishes: BTreeMap<(&'static str, &'static str), u64>,
    pub datums: BTreeMap<&'static str, u64>,
    pub windows: u64,
    pub last_success_unix_ms: BTreeMap<&'static str, i64>,
}

impl PublishStats {
    pub fn render(&self, out: &mut String, cluster_id: &str) {
        let _ = writeln!(
            out,
            "# HELP cni_metrics_publish_windows_total Publish windows closed\n# TYPE cni_metrics_publish_windows_total counter"
        );
        let _ = writeln!(out, "cni_metrics_publish_windows_total{{cluster_id=\"{cluster_id}\"}} {}", self.windows);
        let _ = writeln!(
            out,
            "# HELP cni_metrics_publishes_total Window publications by sink and result\n# TYPE cni_metrics_publishes_total counter"
        );
        for ((sink, result), v) in &self.publishes {
            let _ = writeln!(out, "cni_metrics_publishes_total{{cluster_id=\"{cluster_id}\",sink=\"{sink}\",result=\"{result}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP cni_metrics_published_datums_total Datums published by sink\n# TYPE cni_metrics_published_datums_total counter"
        );
        for (sink, v) in &self.datums {
            let _ = writeln!(out, "cni_metrics_published_datums_total{{cluster_id=\"{cluster_id}\",sink=\"{sink}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP cni_metrics_last_publish_success_timestamp_seconds Time of the last successful publication by sink\n# TYPE cni_metrics_last_publish_success_timestamp_seconds gauge");
        for (sink, ms) in &self.last_success_unix_ms {
            let _ = writeln!(
                out,
                "cni_metrics_last_publish_success_timestamp_seconds{{cluster_id=\"{cluster_id}\",sink=\"{sink}\"}} {}",
                *ms as f64 / 1000.0
            );
        }
    }
}

/// Windows handed to the sinks and not yet resolved by all of them, with their commit marks.
pub struct Commits {
    next_seq: u64,
    pending: VecDeque<(u64, Vec<CommitMark>)>,
    generation: watch::Sender<u64>,
}

impl Commits {
    pub fn new(generation: watch::Sender<u64>) -> Self {
        Self { next_seq: 0, pending: VecDeque::new(), generation }
    }

    /// Commit every window all sinks resolved; wake the streams when a node's commit advanced.
    pub fn settle(&mut self, state: &Shared, sinks: &[Arc<dyn Sink>]) {
        let through = sinks.iter().map(|s| s.delivered_through()).min().unwrap_or(u64::MAX);
        let mut marks = Vec::new();
        while self.pending.front().is_some_and(|(seq, _)| *seq <= through) {
            if let Some((_, m)) = self.pending.pop_front() {
                marks.extend(m);
            }
        }
        if marks.is_empty() {
            return;
        }
        let mut st = lock(state);
        if st.commit(&marks) > 0 {
            self.generation.send_replace(st.commit_generation());
        }
    }

    /// Windows waiting for their sinks.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// Close one window and publish it to every sink.
pub async fn publish_once(state: &Shared, sinks: &[Arc<dyn Sink>], stats: &Mutex<PublishStats>, commits: &mut Commits) {
    let mut window = lock(state).take_window(unix_ms_now());
    commits.next_seq += 1;
    window.seq = commits.next_seq;
    commits.pending.push_back((window.seq, std::mem::take(&mut window.commits)));
    stats.lock().unwrap_or_else(|e| e.into_inner()).windows += 1;
    for sink in sinks {
        let result = sink.publish(&window).await;
        let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                *st.publishes.entry((sink.name(), "ok")).or_default() += 1;
                *st.datums.entry(sink.name()).or_default() += window.datums.len() as u64;
                st.last_success_unix_ms.insert(sink.name(), window.end_unix_ms);
            }
            Err(e) => {
                *st.publishes.entry((sink.name(), "error")).or_default() += 1;
                warn!(sink = sink.name(), error = %e, datums = window.datums.len(), "publish failed");
            }
        }
    }
    commits.settle(state, sinks);
}

/// Pause between the freeze and the final window at shutdown.
const FINAL_WINDOW_SETTLE: Duration = Duration::from_millis(200);

/// How often delivery by queued sinks is checked for commits.
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// Publish every `interval` until `shutdown` (the ingest is frozen by then), then publish the last
/// partial window, give sinks `grace` to deliver what they queued, and commit what they delivered.
pub async fn run_publisher(
    state: Shared,
    sinks: Vec<Arc<dyn Sink>>,
    interval: Duration,
    grace: Duration,
    stats: Arc<Mutex<PublishStats>>,
    mut commits: Commits,
    shutdown: impl Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settle = tokio::time::interval(SETTLE_EVERY);
    settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => publish_once(&state, &sinks, &stats, &mut commits).await,
            _ = settle.tick(), if commits.waiting() > 0 => commits.settle(&state, &sinks),
        }
    }
    // Streams that ended just before the freeze (an agent killed in the same moment) are seen first, so
    // the last window does not publish increments their runs can no longer learn were committed.
    tokio::time::sleep(FINAL_WINDOW_SETTLE).await;
    info!(sinks = sinks.len(), "publishing the final window before exit");
    publish_once(&state, &sinks, &stats, &mut commits).await;
    for sink in &sinks {
        sink.close(grace).await;
    }
    commits.settle(&state, &sinks);
    if commits.waiting() > 0 {
        warn!(windows = commits.waiting(), "windows not delivered at exit: agents will send their increments again to the next aggregator");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Datum;

    #[test]
    fn stdout_lines() {
        let w = Window {
            cluster_id: "prod".into(),
            region_hint: None,
            end_unix_ms: 0,
            nodes: 2,
            seq: 0,
            commits: Vec::new(),
            datums: vec![
                Datum { metric_name: "assignIPAddresses", value: 42.0, unit: "Count", dimension: None },
                Datum { metric_name: "awsAPILatency", value: 12.5, unit: "Milliseconds", dimension: None },
                Datum { metric_name: "ipHeadroom", value: 7.0, unit: "Count", dimension: Some(("AvailabilityZone", "eu-west-1a".into())) },
            ],
        };
        assert_eq!(
            encode_lines(&w),
            "1970-01-01T00:00:00.000Z cluster_id=prod metric=assignIPAddresses value=42 unit=Count\n\
             1970-01-01T00:00:00.000Z cluster_id=prod metric=awsAPILatency value=12.5 unit=Milliseconds\n\
             1970-01-01T00:00:00.000Z cluster_id=prod AvailabilityZone=eu-west-1a metric=ipHeadroom value=7 unit=Count\n"
        );
    }
}
