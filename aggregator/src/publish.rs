//! Publishing: every `--publish-interval` the publisher closes a window of the cluster state
//! ([`ClusterState::take_window`](crate::state::ClusterState::take_window)) and hands it to each sink outside the state lock.
//!
//! The sinks themselves live in [`crate::sinks`].
//!
//! End-to-end acknowledgement: every window gets a sequence number and keeps its commit marks in
//! [`Commits`] until every sink reports it resolved ([`Sink::delivered_through`]: delivered, or dropped
//! and counted by the sink); then the marks go to [`ClusterState::commit`](crate::state::ClusterState::commit)
//! and the [`CommitMailbox`] queues each node's commit on its stream, a chunk of nodes at a time
//! (the commit watch is bumped for streams waiting after a goodbye).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cni_metrics_proto::clock::unix_ms_now;
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::exposition::{Kind, Page};
use cni_metrics_proto::flags::parse_switch;
use cni_metrics_proto::labels::Label;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ingest::CommitMailbox;
use crate::sinks::Sink;
use crate::state::{CommitMark, StateHandle};

/// `serve`'s flags for publishing.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Publishing")]
pub struct PublishArgs {
    /// Publish window length.
    #[arg(long, env = "PUBLISH_INTERVAL", default_value = "60s", value_parser = parse_positive)]
    pub publish_interval: Duration,

    /// Time given to sinks to deliver queued windows at shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_positive)]
    pub shutdown_grace: Duration,

    /// Print every publish window to stdout, one line per datum (dry run).
    #[arg(long, env = "USE_STDOUT", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub stdout: bool,
}

cni_metrics_proto::label_enum! {
    /// The `result` of `cni_metrics_publishes_total`.
    pub enum PublishResult { Ok => "ok", Error => "error" }
}

/// Publish outcomes, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// (sink, result) → count.
    pub publishes: BTreeMap<(&'static str, PublishResult), u64>,
    pub datums: BTreeMap<&'static str, u64>,
    pub windows: u64,
    pub last_success_unix_ms: BTreeMap<&'static str, i64>,
    /// How long the last window close held the state lock.
    pub close_lock: Duration,
    /// How long the last commit took to reach every node's stream queue (state and mailbox).
    pub commit_fanout: Duration,
}

impl PublishStats {
    pub fn render(&self, page: &mut Page<'_>) {
        page.counter("cni_metrics_publish_windows_total", "Publish windows closed", self.windows);
        page.gauge(
            "cni_metrics_window_close_lock_seconds",
            "How long the last window close held the state lock",
            self.close_lock.as_secs_f64(),
        );
        page.gauge(
            "cni_metrics_commit_fanout_seconds",
            "How long the last commit took to reach every connected node's stream",
            self.commit_fanout.as_secs_f64(),
        );
        let name = "cni_metrics_publishes_total";
        let mut family = page.family(name, Kind::Counter, "Window publications by sink and result");
        for ((sink, result), v) in &self.publishes {
            family.sample(&[("sink", sink), ("result", result.as_str())], *v as f64);
        }
        let name = "cni_metrics_published_datums_total";
        let mut family = page.family(name, Kind::Counter, "Datums published by sink");
        for (sink, v) in &self.datums {
            family.sample(&[("sink", sink)], *v as f64);
        }
        let name = "cni_metrics_last_publish_success_timestamp_seconds";
        let mut family = page.family(name, Kind::Gauge, "Time of the last successful publication by sink");
        for (sink, ms) in &self.last_success_unix_ms {
            family.sample(&[("sink", sink)], *ms as f64 / 1000.0);
        }
    }
}

/// Windows handed to the sinks and not yet resolved by all of them, with their commit marks.
pub struct Commits {
    next_seq: u64,
    pending: VecDeque<(u64, Vec<CommitMark>)>,
    generation: watch::Sender<u64>,
    mailbox: Arc<CommitMailbox>,
}

/// Commit marks recorded per state lock hold: 100,000 nodes' marks are a few short holds, not one long.
const COMMIT_CHUNK: usize = 4096;

impl Commits {
    pub fn new(generation: watch::Sender<u64>, mailbox: Arc<CommitMailbox>) -> Self {
        Self { next_seq: 0, pending: VecDeque::new(), generation, mailbox }
    }

    /// Number the next window and keep its marks until every sink resolved it; returns its seq.
    fn number(&mut self, marks: Vec<CommitMark>) -> u64 {
        self.next_seq += 1;
        self.pending.push_back((self.next_seq, marks));
        self.next_seq
    }

    /// Commit every window all sinks resolved, then queue each node's new commit on its stream; returns
    /// how long that took when anything was committed.
    pub async fn settle(&mut self, state: &StateHandle, sinks: &[Arc<dyn Sink>]) -> Option<Duration> {
        let through = sinks.iter().map(|s| s.delivered_through()).min().unwrap_or(u64::MAX);
        let mut marks = Vec::new();
        while self.pending.front().is_some_and(|(seq, _)| *seq <= through) {
            if let Some((_, m)) = self.pending.pop_front() {
                marks.extend(m);
            }
        }
        if marks.is_empty() {
            return None;
        }
        let start = std::time::Instant::now();
        let mut advanced_to = None;
        for chunk in marks.chunks(COMMIT_CHUNK) {
            if let Some(generation) = state.commit(chunk) {
                advanced_to = Some(generation);
            }
        }
        if let Some(generation) = advanced_to {
            self.generation.send_replace(generation);
            self.mailbox.deliver(&marks).await;
        }
        Some(start.elapsed())
    }

    /// Windows waiting for their sinks.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// Close one window and publish it to every sink.
pub async fn publish_once(state: &StateHandle, sinks: &[Arc<dyn Sink>], stats: &Mutex<PublishStats>, commits: &mut Commits) {
    let (closed, close_lock) = state.close_window(unix_ms_now());
    let seq = commits.number(closed.commits);
    let window = closed.window;
    {
        let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
        st.windows += 1;
        st.close_lock = close_lock;
    }
    for sink in sinks {
        let result = sink.publish(seq, &window).await;
        let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                *st.publishes.entry((sink.name(), PublishResult::Ok)).or_default() += 1;
                *st.datums.entry(sink.name()).or_default() += window.datums.len() as u64;
                st.last_success_unix_ms.insert(sink.name(), window.end_unix_ms);
            }
            Err(e) => {
                *st.publishes.entry((sink.name(), PublishResult::Error)).or_default() += 1;
                warn!(sink = sink.name(), error = %e, datums = window.datums.len(), "publish failed");
            }
        }
    }
    settle(state, sinks, stats, commits).await;
}

/// Commit what the sinks delivered; note how long the fan-out took.
async fn settle(state: &StateHandle, sinks: &[Arc<dyn Sink>], stats: &Mutex<PublishStats>, commits: &mut Commits) {
    if let Some(took) = commits.settle(state, sinks).await {
        stats.lock().unwrap_or_else(|e| e.into_inner()).commit_fanout = took;
    }
}

/// Pause between the freeze and the final window at shutdown.
const FINAL_WINDOW_SETTLE: Duration = Duration::from_millis(200);

/// How often delivery by queued sinks is checked for commits.
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// Publish every `interval` until `shutdown` (the ingest is frozen by then), then publish the last
/// partial window, give sinks `grace` to deliver what they queued, and commit what they delivered.
pub async fn run_publisher(
    state: StateHandle,
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
            _ = settle.tick(), if commits.waiting() > 0 => self::settle(&state, &sinks, &stats, &mut commits).await,
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
    self::settle(&state, &sinks, &stats, &mut commits).await;
    if commits.waiting() > 0 {
        warn!(windows = commits.waiting(), "windows not delivered at exit: agents will send their increments again to the next aggregator");
    }
}
