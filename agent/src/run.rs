//! The agent's event loop: scrape on every tick, fold the page into the delta engine, and keep one
//! long-lived gRPC stream to the aggregator (hello, snapshot, then deltas), reconnecting with jittered
//! exponential backoff and resending a snapshot after every reconnect.
//!
//! Scraping never waits for the aggregator: while disconnected the engine keeps folding pages into its
//! running totals, and the snapshot sent on reconnect carries them, so nothing needs buffering here.
//!
//! A session is: Hello → (Welcome) → snapshot → deltas. The snapshot waits for the Welcome because the
//! first Welcome of a run may carry the aggregator's resume point (where the node's previous agent run
//! stopped), which corrects first-sight counter increments before anything is reported; every Welcome
//! and Commit advances the [`CommitLog`], whose committed totals travel in snapshots.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cni_metrics_proto::backoff::{Attempts, Backoff};
use cni_metrics_proto::v1::ingest_client::IngestClient;
use cni_metrics_proto::v1::{agent_message, aggregator_message, AgentMessage, Goodbye, Hello, ScrapeStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::commit::CommitLog;
use crate::config::{AgentConfig, ConfigError};
use crate::delta::{DeltaConfig, DeltaEngine, ResumePoints, SeriesKey};
use crate::imds::NodeFacts;
use crate::metrics::AgentStats;
use crate::parse::parse;
use crate::position::{Position, PositionFile};
use crate::report::{counter_totals, delta_report, snapshot_report, Pending, ScrapeFacts};
use crate::scrape::Scraper;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the ipamd HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("invalid aggregator endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("cannot listen on {0} (--http-listen): {1}")]
    HttpListen(std::net::SocketAddr, std::io::Error),
}

/// Largest message the agent accepts from or sends to the aggregator.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long a goodbye may take at shutdown, waiting for the last commits (well within Kubernetes'
/// default 30 s termination grace).
const GOODBYE_GRACE: Duration = Duration::from_secs(5);
/// Bound of the instance metadata lookup at start-up.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// Outbound queue of one session: a stuck stream defers reports instead of growing memory.
const SESSION_QUEUE: usize = 16;
/// Bound of the commit log: counter changes sent and not yet published (16 B each).
const MAX_COMMIT_LOG: usize = 1_000_000;

enum Event {
    Connected(Channel, Attempts),
    Welcome { session: u64, welcome: cni_metrics_proto::v1::Welcome },
    Ack { session: u64, seq: u64 },
    Commit { session: u64, seq: u64 },
    Ended { session: u64, error: Option<String> },
}

struct Session {
    id: u64,
    /// The snapshot went out (after the Welcome): deltas may follow.
    welcomed: bool,
    tx: mpsc::Sender<AgentMessage>,
    task: JoinHandle<()>,
}

/// Run the agent until `shutdown` completes; then say goodbye and return.
pub async fn run(cfg: AgentConfig, stats: Arc<AgentStats>, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    cfg.validate()?;
    let node = cfg.resolved_node_name()?;
    let scraper = Scraper::new(&cfg.ipamd_url, cfg.effective_scrape_timeout(), cfg.max_page_bytes)?;
    let endpoint = Endpoint::from_shared(cfg.aggregator.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.keepalive)
        .keep_alive_timeout(cfg.keepalive.min(Duration::from_secs(10)))
        .keep_alive_while_idle(true);
    let run_id = fastrand::u64(1..);
    let http_task = match cfg.http_addr()? {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| AgentError::HttpListen(addr, e))?;
            let bound = listener.local_addr().map_err(|e| AgentError::HttpListen(addr, e))?;
            info!(node = %node, http = %bound, "agent HTTP endpoint (/metrics, /healthz, /readyz)");
            let app = crate::http::router(crate::http::AgentHttp { node: Arc::from(node.as_str()), stats: stats.clone() });
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
        None => None,
    };
    info!(node = %node, run_id, ipamd = %cfg.ipamd_url, aggregator = %cfg.aggregator, interval = ?cfg.interval, "agent starting");

    let flags = NodeFacts {
        availability_zone: cfg.availability_zone.clone(),
        region: cfg.region.clone(),
        instance_type: cfg.instance_type.clone(),
        instance_id: cfg.instance_id.clone(),
        cluster_name: cfg.cluster_name.clone(),
    };
    let facts_of_node = if cfg.imds_enabled() && !flags.complete() {
        let imds = crate::imds::lookup(&cfg.imds_endpoint, IMDS_TIMEOUT).await;
        flags.or(imds)
    } else {
        flags
    };
    info!(
        node = %node,
        availability_zone = %facts_of_node.availability_zone,
        region = %facts_of_node.region,
        instance_type = %facts_of_node.instance_type,
        instance_id = %facts_of_node.instance_id,
        cluster_name = %facts_of_node.cluster_name,
        "node facts"
    );

    let (position_writer, mut file_resume) = open_state_dir(&cfg, &node, &stats).await;
    let mut engine = DeltaEngine::new(DeltaConfig { initial_window: cfg.initial_window, max_series: cfg.max_series });
    let mut pending = Pending::default();
    let mut commits = CommitLog::new(MAX_COMMIT_LOG);
    let mut resume_applied = false;
    let mut doubt_warned = false;
    let mut aggregator_instance = 0u64;
    let mut facts = ScrapeFacts {
        scrape_time_ms: now_ms(),
        status: ScrapeStatus::Pending,
        status_detail: "no scrape yet".to_owned(),
        bad_lines: 0,
        dropped_series: 0,
        ipamd_start_time: 0.0,
        subnets: Vec::new(),
    };
    let introspection = (!cfg.introspection_url.trim().is_empty())
        .then(|| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build())
        .transpose()?;
    let mut introspection_error: Option<String> = None;
    let mut seq = 0u64;
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(64);
    let mut session: Option<Session> = None;
    let mut next_session_id = 0u64;
    let mut connected_once = false;
    let mut attempts_slot: Option<Attempts> = None;
    let tls = Arc::new(cfg.tls.clone());
    spawn_connect(endpoint.clone(), tls.clone(), Duration::ZERO, Backoff::default().start(None), ev_tx.clone(), stats.clone());

    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                let fetched = tokio::select! {
                    r = scraper.fetch() => r,
                    _ = &mut shutdown => break,
                };
                scrape_once(fetched, &mut engine, &mut pending, &mut commits, &mut facts, &stats, &node);
                if !doubt_warned && engine.baseline_in_doubt() {
                    doubt_warned = true;
                    warn!(node = %node, "counting a young ipamd from its start with no resume point from an aggregator younger than it: if an earlier agent run of this node was counted, part is counted twice (reported as baseline_in_doubt)");
                }
                if let Some(client) = &introspection {
                    let r = crate::introspect::fetch(client, &cfg.introspection_url, cfg.max_page_bytes, cfg.effective_scrape_timeout()).await;
                    match r {
                        Ok(subnets) => {
                            if introspection_error.take().is_some() {
                                info!(node = %node, subnets = subnets.len(), "ipamd introspection ok");
                            }
                            if subnets != facts.subnets {
                                facts.subnets = subnets;
                                pending.subnets_changed = true;
                            }
                        }
                        Err(e) => {
                            stats.introspection_errors.fetch_add(1, Ordering::Relaxed);
                            let msg = e.to_string();
                            if introspection_error.as_deref() != Some(msg.as_str()) {
                                warn!(node = %node, error = %msg, "no per-subnet usage (introspection); keeping the last known");
                                introspection_error = Some(msg);
                            }
                        }
                    }
                }
                if let Some(s) = session.as_ref().filter(|s| s.welcomed) {
                    let report = delta_report(&engine, &pending, seq + 1, &facts);
                    let totals: Vec<(u32, f64, f64)> = counter_totals(&engine, &report).collect();
                    let start = report.ipamd_start_time_seconds;
                    match s.tx.try_send(wrap(agent_message::Body::Report(report))) {
                        Ok(()) => {
                            seq += 1;
                            commits.record(seq, start, totals);
                            note_commits(&stats, &commits);
                            pending.clear();
                            stats.reports_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            stats.reports_deferred.fetch_add(1, Ordering::Relaxed);
                            debug!(node = %node, "report deferred: session queue full or closed");
                        }
                    }
                }
            }
            Some(ev) = ev_rx.recv() => match ev {
                Event::Connected(channel, attempts) => {
                    next_session_id += 1;
                    let id = next_session_id;
                    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                    let hello = Hello {
                        node_name: node.clone(),
                        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                        run_id,
                        ipamd_start_time_seconds: engine.ipamd_start_time().unwrap_or(0.0),
                        availability_zone: facts_of_node.availability_zone.clone(),
                        instance_type: facts_of_node.instance_type.clone(),
                        instance_id: facts_of_node.instance_id.clone(),
                        interval_ms: cfg.interval.as_millis() as u64,
                        region: facts_of_node.region.clone(),
                        cluster_name: facts_of_node.cluster_name.clone(),
                        keeps_position: position_writer.is_some(),
                    };
                    // A fresh queue of SESSION_QUEUE slots always takes it.
                    let _ = tx.try_send(wrap(agent_message::Body::Hello(hello)));
                    stats.sessions.fetch_add(1, Ordering::Relaxed);
                    let task = tokio::spawn(drive_session(id, channel, rx, ev_tx.clone()));
                    session = Some(Session { id, welcomed: false, tx, task });
                    attempts_slot = Some(attempts);
                }
                Event::Welcome { session: id, welcome } if session.as_ref().is_some_and(|s| s.id == id && !s.welcomed) => {
                    if let Some(a) = attempts_slot.as_mut() { a.reset(); }
                    if !resume_applied {
                        resume_applied = true;
                        engine.set_aggregator_started(welcome.started_unix_ms as f64 / 1000.0);
                        let from_aggregator = welcome.resume.as_ref().map(resume_points);
                        if let (Some(p), Some(w)) = (&from_aggregator, &position_writer) {
                            // The aggregator's point is newer than the file's: it becomes the file's.
                            w.save(position_of_resume(&node, p));
                        }
                        // The aggregator's resume point wins (it is newer); else the file's.
                        let from_file = from_aggregator.is_none().then(|| file_resume.take()).flatten();
                        if from_file.is_some() {
                            info!(node = %node, "no resume point from the aggregator: resuming from the state file");
                        }
                        let points = from_aggregator.or(from_file);
                        let corrected = engine.apply_resume(points.clone());
                        match &points {
                            Some(p) => info!(node = %node, points = p.raw.len(), ipamd_start_time = p.ipamd_start_time, corrected = corrected.len(), "resuming the counting of the node's previous agent run"),
                            None if engine.baseline_unknown() => warn!(node = %node, "no resume point for this node and ipamd started before the initial window: counter increments before this agent's first scrape are not counted (reported as baseline_unknown)"),
                            None => {}
                        }
                    }
                    if aggregator_instance != 0 && aggregator_instance != welcome.instance_id && commits.backlog() > 0 {
                        info!(node = %node, uncommitted = commits.backlog(), "new aggregator instance: increments it never published are sent again from the last commit");
                    }
                    aggregator_instance = welcome.instance_id;
                    if commits.commit(welcome.committed_seq) {
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        save_position(&position_writer, &engine, &commits, &node);
                    }
                    seq += 1;
                    let snapshot = snapshot_report(&engine, &commits, seq, &facts);
                    let totals: Vec<(u32, f64, f64)> = counter_totals(&engine, &snapshot).collect();
                    let start = snapshot.ipamd_start_time_seconds;
                    if let Some(s) = session.as_mut() {
                        if s.tx.try_send(wrap(agent_message::Body::Report(snapshot))).is_ok() {
                            commits.record(seq, start, totals);
                            pending.clear();
                            s.welcomed = true;
                            stats.reports_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !connected_once { info!(node = %node, session = id, node_ttl_ms = welcome.node_ttl_ms, "connected to aggregator"); }
                    else { info!(node = %node, session = id, committed_seq = welcome.committed_seq, "reconnected to aggregator; snapshot sent"); }
                    connected_once = true;
                    note_commits(&stats, &commits);
                }
                Event::Ack { session: id, seq } if session.as_ref().is_some_and(|s| s.id == id) => {
                    stats.acks.fetch_add(1, Ordering::Relaxed);
                    debug!(node = %node, seq, "ack");
                }
                Event::Commit { session: id, seq } if session.as_ref().is_some_and(|s| s.id == id) => {
                    if commits.commit(seq) {
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        debug!(node = %node, seq, backlog = commits.backlog(), "commit");
                        save_position(&position_writer, &engine, &commits, &node);
                    }
                    note_commits(&stats, &commits);
                }
                Event::Ended { session: id, error } if session.as_ref().is_some_and(|s| s.id == id) => {
                    session = None;
                    let mut attempts = attempts_slot.take().unwrap_or_else(|| Backoff::default().start(None));
                    let delay = attempts.next_delay();
                    warn!(node = %node, error = error.as_deref().unwrap_or("stream closed"), retry_in = ?delay, "aggregator stream ended");
                    spawn_connect(endpoint.clone(), tls.clone(), delay, attempts, ev_tx.clone(), stats.clone());
                }
                _ => {} // an event of a session already replaced
            },
        }
    }

    if let Some(t) = http_task {
        t.abort();
    }
    if let Some(s) = session.take() {
        let deadline = tokio::time::Instant::now() + GOODBYE_GRACE;
        let bye = wrap(agent_message::Body::Goodbye(Goodbye { reason: "agent shutting down".to_owned() }));
        let sent = tokio::time::timeout_at(deadline, s.tx.send(bye)).await.is_ok_and(|r| r.is_ok());
        drop(s.tx);
        // Until the aggregator ends the stream, it may still send the commits of windows it had closed:
        // they advance the position kept on the node.
        loop {
            match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
                Ok(Some(Event::Commit { session: id, seq })) if id == s.id => {
                    if commits.commit(seq) {
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        save_position(&position_writer, &engine, &commits, &node);
                    }
                }
                Ok(Some(Event::Ended { session: id, .. })) if id == s.id => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        s.task.abort();
        info!(node = %node, goodbye_sent = sent, committed_seq = commits.committed_seq(), uncommitted = commits.backlog(), "agent stopped");
    } else {
        info!(node = %node, "agent stopped (no aggregator session)");
    }
    if let Some(w) = position_writer {
        w.finish(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Open `--state-dir`: read the node's position (a resume point for when no aggregator has one) and
/// check that the directory takes a file. Problems are logged once, counted and never fatal: without a
/// writable directory the agent runs without keeping its position.
async fn open_state_dir(cfg: &AgentConfig, node: &str, stats: &Arc<AgentStats>) -> (Option<PositionWriter>, Option<ResumePoints>) {
    let dir = cfg.state_dir.trim();
    if dir.is_empty() {
        return (None, None);
    }
    let file = PositionFile::new(std::path::Path::new(dir));
    let path = file.path().display().to_string();
    let resume = match file.load(node) {
        Ok(Some(p)) => {
            info!(node, path = %path, series = p.points.len(), ipamd_start_time = p.ipamd_start_time, written_unix_ms = p.written_unix_ms, "state file read: the committed position of the node's previous agent run");
            Some(p.resume_points())
        }
        Ok(None) => {
            info!(node, path = %path, "no state file yet");
            None
        }
        Err(e) => {
            stats.state_file_error(&e);
            warn!(node, path = %path, reason = e.reason(), error = %e, "state file ignored: this run follows the rules without a resume point from it");
            None
        }
    };
    match file.probe() {
        Ok(()) => (Some(PositionWriter::spawn(file, stats.clone(), node.to_owned())), resume),
        Err(e) => {
            stats.state_file_error(&e);
            warn!(node, dir, reason = e.reason(), error = %e, "the state directory cannot be written: the counting position is not kept on the node");
            (None, resume)
        }
    }
}

/// The committed position, for the state file: every live counter with a committed raw value.
fn save_position(writer: &Option<PositionWriter>, engine: &DeltaEngine, commits: &CommitLog, node: &str) {
    let Some(w) = writer else { return };
    let start = commits.committed_start();
    if start <= 0.0 {
        return;
    }
    let points = engine
        .live_ids()
        .into_iter()
        .filter_map(|id| {
            Some((
                engine.info(id).filter(|i| i.kind == cni_metrics_proto::v1::MetricKind::Counter)?.key.clone(),
                commits.committed_raw(id)?,
            ))
        })
        .collect();
    w.save(Position { node: node.to_owned(), ipamd_start_time: start, written_unix_ms: now_ms(), points });
}

fn position_of_resume(node: &str, r: &ResumePoints) -> Position {
    let mut points: Vec<(SeriesKey, f64)> = r.raw.iter().map(|(k, v)| (k.clone(), *v)).collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    Position { node: node.to_owned(), ipamd_start_time: r.ipamd_start_time, written_unix_ms: now_ms(), points }
}

/// Writes positions to the state file off the event loop: the latest position wins, writes never pile up.
struct PositionWriter {
    latest: tokio::sync::watch::Sender<Option<Position>>,
    task: JoinHandle<()>,
}

impl PositionWriter {
    fn spawn(file: PositionFile, stats: Arc<AgentStats>, node: String) -> Self {
        let (latest, mut rx) = tokio::sync::watch::channel::<Option<Position>>(None);
        let task = tokio::spawn(async move {
            let mut failing = false;
            while rx.changed().await.is_ok() {
                let Some(p) = rx.borrow_and_update().clone() else { continue };
                let f = file.clone();
                let result = tokio::task::spawn_blocking(move || f.store(&p)).await;
                match result {
                    Ok(Ok(bytes)) => {
                        stats.state_file_writes.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut failing) {
                            info!(node = %node, path = %file.path().display(), "state file written again");
                        }
                        debug!(node = %node, bytes, "state file written");
                    }
                    Ok(Err(e)) => {
                        stats.state_file_error(&e);
                        if !std::mem::replace(&mut failing, true) {
                            warn!(node = %node, path = %file.path().display(), reason = e.reason(), error = %e, "cannot write the state file; the previous position stays (a later agent run may count part of the increments again)");
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        Self { latest, task }
    }

    fn save(&self, p: Position) {
        self.latest.send_replace(Some(p));
    }

    /// Write what is pending and stop, within `grace`.
    async fn finish(self, grace: Duration) {
        let Self { latest, mut task } = self;
        drop(latest);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The proto resume as the engine's lookup.
fn resume_points(r: &cni_metrics_proto::v1::Resume) -> ResumePoints {
    let raw = r
        .points
        .iter()
        .map(|p| {
            let mut labels: Vec<(String, String)> = p.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
            labels.sort_unstable();
            (SeriesKey { name: p.name.clone(), labels }, p.raw)
        })
        .collect();
    ResumePoints { ipamd_start_time: r.ipamd_start_time_seconds, raw }
}

fn note_commits(stats: &AgentStats, commits: &CommitLog) {
    stats.commit_backlog.store(commits.backlog() as u64, Ordering::Relaxed);
    let before = stats.commit_log_overflow.swap(commits.overflowed(), Ordering::Relaxed);
    if commits.overflowed() > before {
        warn!(entries = commits.overflowed() - before, "commit log full: oldest uncommitted counter changes taken as committed");
    }
}

fn wrap(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Fold one scrape result into the engine and the pending report; log status changes once.
fn scrape_once(
    fetched: Result<String, crate::scrape::ScrapeError>,
    engine: &mut DeltaEngine,
    pending: &mut Pending,
    commits: &mut CommitLog,
    facts: &mut ScrapeFacts,
    stats: &AgentStats,
    node: &str,
) {
    stats.scrapes.fetch_add(1, Ordering::Relaxed);
    let now = now_ms();
    let (status, detail) = match fetched {
        Ok(text) => {
            let page = parse(&text);
            let obs = engine.observe(&page, now as f64 / 1000.0);
            stats.bad_lines.fetch_add(page.bad_lines as u64, Ordering::Relaxed);
            stats.invalid_samples.fetch_add(obs.invalid_samples as u64, Ordering::Relaxed);
            stats.dropped_series.fetch_add(obs.dropped_series as u64, Ordering::Relaxed);
            facts.bad_lines = page.bad_lines;
            if obs.dropped_series as u64 != facts.dropped_series {
                if obs.dropped_series > 0 {
                    warn!(node, dropped = obs.dropped_series, "series limit (--max-series) reached; new series dropped");
                } else if obs.usable {
                    info!(node, "all series within the series limit again");
                }
            }
            if obs.usable {
                facts.dropped_series = obs.dropped_series as u64;
            }
            if page.bad_lines > 0 {
                debug!(node, bad_lines = page.bad_lines, first = ?page.first_errors, "bad lines in ipamd page");
            }
            if obs.ipamd_restarted {
                info!(node, start_time = engine.ipamd_start_time().unwrap_or(0.0), "ipamd restarted; counters reset folded in");
            }
            if obs.usable {
                pending.absorb(&obs);
                obs.removed.iter().for_each(|id| commits.forget(*id));
                let detail = if page.bad_lines > 0 {
                    format!("{} bad lines, first: {:?}", page.bad_lines, page.first_errors.first())
                } else {
                    String::new()
                };
                (ScrapeStatus::Ok, detail)
            } else {
                stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
                let detail = format!(
                    "no usable awscni_ metric in {} bytes ({} bad lines, first: {:?})",
                    text.len(),
                    page.bad_lines,
                    page.first_errors.first()
                );
                (ScrapeStatus::Garbage, detail)
            }
        }
        Err(e) => {
            stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
            (e.status(), e.to_string())
        }
    };
    facts.scrape_time_ms = now;
    facts.ipamd_start_time = engine.ipamd_start_time().unwrap_or(0.0);
    let status_changed = status != facts.status;
    if status_changed || detail != facts.status_detail {
        pending.status_detail_changed = true;
    }
    if status_changed {
        if status == ScrapeStatus::Ok {
            info!(node, previous = facts.status.as_str_name(), "ipamd scrape ok");
        } else {
            warn!(node, status = status.as_str_name(), detail = %detail, "ipamd scrape failing; will keep retrying");
        }
    }
    facts.status = status;
    facts.status_detail = detail;
}

/// Connect (after `delay`, then with backoff) and hand the channel to the event loop. TLS files are
/// re-read at every attempt, so rotated certificates apply at the next reconnect.
fn spawn_connect(
    endpoint: Endpoint,
    tls: Arc<cni_metrics_proto::tls::ClientTlsFlags>,
    delay: Duration,
    mut attempts: Attempts,
    ev: mpsc::Sender<Event>,
    stats: Arc<AgentStats>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        loop {
            let attempt = match tls.apply(endpoint.clone()) {
                Ok(e) => e.connect().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(channel) => {
                    let _ = ev.send(Event::Connected(channel, attempts)).await;
                    return;
                }
                Err(e) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    let d = attempts.next_delay();
                    if attempts.attempt() == 1 || attempts.attempt().is_multiple_of(10) {
                        warn!(error = %e, attempt = attempts.attempt(), retry_in = ?d, "cannot reach aggregator");
                    }
                    if ev.is_closed() {
                        return;
                    }
                    tokio::time::sleep(d).await;
                }
            }
        }
    });
}

/// Run one stream: send the queued messages, forward the aggregator's answers as events.
async fn drive_session(id: u64, channel: Channel, rx: mpsc::Receiver<AgentMessage>, ev: mpsc::Sender<Event>) {
    let mut client = IngestClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let error = match client.stream(ReceiverStream::new(rx)).await {
        Err(status) => Some(format!("{}: {}", status.code(), status.message())),
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        let event = match msg.body {
                            Some(aggregator_message::Body::Welcome(w)) => Event::Welcome { session: id, welcome: w },
                            Some(aggregator_message::Body::Ack(a)) => Event::Ack { session: id, seq: a.seq },
                            Some(aggregator_message::Body::Commit(c)) => Event::Commit { session: id, seq: c.seq },
                            None => continue,
                        };
                        if ev.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(format!("{}: {}", status.code(), status.message())),
                }
            }
        }
    };
    let _ = ev.send(Event::Ended { session: id, error }).await;
}
