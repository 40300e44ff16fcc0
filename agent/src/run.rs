//! The agent's event loop: scrape on every tick, fold the page into the delta engine, and keep one
//! long-lived gRPC stream to the aggregator (hello, snapshot, then deltas), reconnecting with jittered
//! exponential backoff and resending a snapshot after every reconnect. [`run`] wires the parts and
//! loops; [`Agent`] holds the run's state and has one method per event (`on_tick`, `on_connected`,
//! `on_welcome`, `on_commit`, `on_ended`, `farewell`).
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
use std::time::Duration;

use cni_metrics_proto::backoff::{Attempts, Backoff};
use cni_metrics_proto::clock::unix_ms_now;
use cni_metrics_proto::tls::ClientTlsFlags;
use cni_metrics_proto::v1::{Hello, Report, ScrapeStatus, Welcome};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::commit::CommitLog;
use crate::config::{AgentConfig, ConfigError};
use crate::delta::{DeltaConfig, DeltaEngine, ResumePoints, SeriesKey};
use crate::imds::NodeFacts;
use crate::metrics::AgentStats;
use crate::parse::parse;
use crate::report::{counter_totals, delta_report, snapshot_report, Pending, ScrapeFacts};
use crate::scrape::{ScrapeError, Scraper};
use crate::session::{spawn_connect, Event, Session};
use crate::state_dir::{open_state_dir, position_of_resume, save_position, PositionWriter};

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

/// How long a goodbye may take at shutdown, waiting for the last commits (well within Kubernetes'
/// default 30 s termination grace).
const GOODBYE_GRACE: Duration = Duration::from_secs(5);
/// Bound of the instance metadata lookup at start-up.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of the commit log: counter changes sent and not yet published (16 B each).
const MAX_COMMIT_LOG: usize = 1_000_000;
/// How long the state file writer may take to write the last position at shutdown.
const STATE_FILE_GRACE: Duration = Duration::from_secs(2);

/// Bind the agent's HTTP endpoint (`--http-listen`), `None` when disabled. The binary binds it and
/// hands it to [`run`], as a test or the demo may bind their own.
pub async fn bind_http(cfg: &AgentConfig) -> Result<Option<TcpListener>, AgentError> {
    match cfg.http_addr()? {
        Some(addr) => TcpListener::bind(addr).await.map(Some).map_err(|e| AgentError::HttpListen(addr, e)),
        None => Ok(None),
    }
}

/// Run the agent until `shutdown` completes; then say goodbye and return. `http` serves `/metrics`,
/// `/healthz` and `/readyz` when given.
pub async fn run(
    cfg: AgentConfig,
    stats: Arc<AgentStats>,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    cfg.validate()?;
    let node = cfg.resolved_node_name()?;
    let http_task = match http {
        Some(listener) => {
            if let Ok(bound) = listener.local_addr() {
                info!(node = %node, http = %bound, "agent HTTP endpoint (/metrics, /healthz, /readyz)");
            }
            let app = crate::http::router(crate::http::AgentHttp { node: Arc::from(node.as_str()), stats: stats.clone() });
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
        None => None,
    };
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let mut agent = Agent::start(cfg, node, stats, events_tx).await?;
    let mut ticker = tokio::time::interval(agent.cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                let fetched = tokio::select! {
                    r = agent.scraper.fetch() => r,
                    _ = &mut shutdown => break,
                };
                agent.on_tick(fetched).await;
            }
            Some(ev) = events.recv() => agent.on_event(ev),
        }
    }
    if let Some(t) = http_task {
        t.abort();
    }
    agent.farewell(&mut events).await;
    Ok(())
}

/// One agent run: what it has counted, what the aggregator has committed, and its stream.
pub struct Agent {
    cfg: AgentConfig,
    node: String,
    run_id: u64,
    stats: Arc<AgentStats>,
    scraper: Scraper,
    /// `/v1/enis` client, when introspection is on.
    introspection: Option<reqwest::Client>,
    /// The last introspection error (logged once per distinct error).
    introspection_error: Option<String>,
    node_facts: NodeFacts,
    engine: DeltaEngine,
    pending: Pending,
    commits: CommitLog,
    /// The last scrape's outcome, sent with every report.
    scrape: ScrapeFacts,
    /// Sequence number of the last report sent.
    seq: u64,
    resume_applied: bool,
    doubt_warned: bool,
    aggregator_instance: u64,
    position_writer: Option<PositionWriter>,
    /// The state file's resume point, until the first Welcome decides.
    file_resume: Option<ResumePoints>,
    endpoint: Endpoint,
    tls: Arc<ClientTlsFlags>,
    events: mpsc::Sender<Event>,
    session: Option<Session>,
    next_session_id: u64,
    connected_once: bool,
    attempts: Option<Attempts>,
}

impl Agent {
    /// Build the run (node facts from flags or IMDS, the state directory) and start connecting.
    async fn start(cfg: AgentConfig, node: String, stats: Arc<AgentStats>, events: mpsc::Sender<Event>) -> Result<Self, AgentError> {
        let scraper = Scraper::new(&cfg.ipamd_url, cfg.effective_scrape_timeout(), cfg.max_page_bytes)?;
        let endpoint = Endpoint::from_shared(cfg.aggregator.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(cfg.keepalive)
            .keep_alive_timeout(cfg.keepalive.min(Duration::from_secs(10)))
            .keep_alive_while_idle(true);
        let run_id = fastrand::u64(1..);
        info!(node = %node, run_id, ipamd = %cfg.ipamd_url, aggregator = %cfg.aggregator, interval = %cni_metrics_proto::duration::format(cfg.interval), "agent starting");
        let flags = NodeFacts {
            availability_zone: cfg.availability_zone.clone(),
            region: cfg.region.clone(),
            instance_type: cfg.instance_type.clone(),
            instance_id: cfg.instance_id.clone(),
            cluster_name: cfg.cluster_name.clone(),
        };
        let mut node_facts = if cfg.imds_enabled() && !flags.complete() {
            flags.or(crate::imds::lookup(&cfg.imds_endpoint, IMDS_TIMEOUT).await)
        } else {
            flags
        };
        let blanked = node_facts.keep_in_shape();
        if !blanked.is_empty() {
            warn!(node = %node, fields = %blanked.join(","), "instance metadata answered values without their AWS shape; left blank");
        }
        info!(
            node = %node,
            availability_zone = %node_facts.availability_zone,
            region = %node_facts.region,
            instance_type = %node_facts.instance_type,
            instance_id = %node_facts.instance_id,
            cluster_name = %node_facts.cluster_name,
            "node facts"
        );
        let (position_writer, file_resume) = open_state_dir(&cfg, &node, &stats).await;
        let introspection = (!cfg.introspection_url.trim().is_empty())
            .then(|| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build())
            .transpose()?;
        let tls = Arc::new(cfg.tls.clone());
        spawn_connect(endpoint.clone(), tls.clone(), Duration::ZERO, Backoff::default().start(None), events.clone(), stats.clone());
        Ok(Self {
            engine: DeltaEngine::new(DeltaConfig { initial_window: cfg.initial_window, max_series: cfg.max_series }),
            cfg,
            node,
            run_id,
            stats,
            scraper,
            introspection,
            introspection_error: None,
            node_facts,
            pending: Pending::default(),
            commits: CommitLog::new(MAX_COMMIT_LOG),
            scrape: ScrapeFacts::pending(unix_ms_now()),
            seq: 0,
            resume_applied: false,
            doubt_warned: false,
            aggregator_instance: 0,
            position_writer,
            file_resume,
            endpoint,
            tls,
            events,
            session: None,
            next_session_id: 0,
            connected_once: false,
            attempts: None,
        })
    }

    /// A tick: fold the scrape into the engine, refresh per-subnet usage, send a delta when welcomed.
    async fn on_tick(&mut self, fetched: Result<String, ScrapeError>) {
        // Introspection first: on a multi-card instance its per-card sums correct this page's totals.
        let cards = self.refresh_subnets().await;
        self.fold_scrape(fetched, &cards);
        if !self.doubt_warned && self.engine.baseline_in_doubt() {
            self.doubt_warned = true;
            warn!(node = %self.node, "counting a young ipamd from its start with no resume point from an aggregator younger than it: if an earlier agent run of this node was counted, part is counted twice (reported as baseline_in_doubt)");
        }
        self.send_delta();
    }

    fn on_event(&mut self, ev: Event) {
        let current = |id: u64| self.session.as_ref().is_some_and(|s| s.id == id);
        match ev {
            Event::Connected(channel, attempts) => self.on_connected(channel, attempts),
            Event::Welcome { session, welcome } if self.session.as_ref().is_some_and(|s| s.id == session && !s.welcomed) => {
                self.on_welcome(session, welcome)
            }
            Event::Ack { session, seq } if current(session) => {
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                debug!(node = %self.node, seq, "ack");
            }
            Event::Commit { session, seq } if current(session) => self.on_commit(seq),
            Event::Ended { session, error } if current(session) => self.on_ended(error),
            _ => {} // an event of a session already replaced
        }
    }

    /// A new channel: open a stream with the Hello; the snapshot waits for the Welcome.
    fn on_connected(&mut self, channel: tonic::transport::Channel, attempts: Attempts) {
        self.next_session_id += 1;
        let hello = Hello {
            node_name: self.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            run_id: self.run_id,
            ipamd_start_time_seconds: self.engine.ipamd_start_time().unwrap_or(0.0),
            availability_zone: self.node_facts.availability_zone.clone(),
            instance_type: self.node_facts.instance_type.clone(),
            instance_id: self.node_facts.instance_id.clone(),
            interval_ms: self.cfg.interval.as_millis() as u64,
            region: self.node_facts.region.clone(),
            cluster_name: self.node_facts.cluster_name.clone(),
            keeps_position: self.position_writer.is_some(),
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let token = (!self.cfg.token_file.is_empty())
            .then(|| {
                crate::session::read_token(std::path::Path::new(&self.cfg.token_file))
                    .inspect_err(|e| {
                        self.stats.token_read_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(node = %self.node, error = %e, "connecting without a ServiceAccount token; an aggregator that requires one will refuse the stream");
                    })
                    .ok()
            })
            .flatten();
        self.session = Some(Session::open(self.next_session_id, channel, hello, token, self.events.clone()));
        self.attempts = Some(attempts);
    }

    /// The Welcome: on the run's first, decide where counting resumes; then commit what the aggregator
    /// has published and send the snapshot.
    fn on_welcome(&mut self, id: u64, welcome: Welcome) {
        if let Some(a) = self.attempts.as_mut() {
            a.reset();
        }
        if !self.resume_applied {
            self.resume_applied = true;
            self.apply_resume(&welcome);
        }
        if self.aggregator_instance != 0 && self.aggregator_instance != welcome.instance_id && self.commits.backlog() > 0 {
            info!(node = %self.node, uncommitted = self.commits.backlog(), "new aggregator instance: increments it never published are sent again from the last commit");
        }
        self.aggregator_instance = welcome.instance_id;
        self.take_commit(welcome.committed_seq);
        if let Some(s) = self.session.as_mut() {
            s.accepts_parts = welcome.accepts_parts;
        }
        let snapshot = snapshot_report(&self.engine, &self.commits, self.seq + 1, &self.scrape);
        if self.send_report(snapshot) {
            if let Some(s) = self.session.as_mut() {
                s.welcomed = true;
            }
        }
        if self.connected_once {
            info!(node = %self.node, session = id, committed_seq = welcome.committed_seq, "reconnected to aggregator; snapshot sent");
        } else {
            info!(node = %self.node, session = id, node_ttl_ms = welcome.node_ttl_ms, "connected to aggregator");
        }
        self.connected_once = true;
        note_commits(&self.stats, &self.commits);
    }

    /// The aggregator's resume point wins (it is newer, and becomes the file's); else the state file's.
    fn apply_resume(&mut self, welcome: &Welcome) {
        self.engine.set_aggregator_started(welcome.started_unix_ms as f64 / 1000.0);
        let from_aggregator = welcome.resume.as_ref().map(resume_points);
        if let (Some(p), Some(w)) = (&from_aggregator, &self.position_writer) {
            w.save(position_of_resume(&self.node, p));
        }
        let from_file = from_aggregator.is_none().then(|| self.file_resume.take()).flatten();
        if from_file.is_some() {
            info!(node = %self.node, "no resume point from the aggregator: resuming from the state file");
        }
        let points = from_aggregator.or(from_file);
        let corrected = self.engine.apply_resume(points.clone());
        match &points {
            Some(p) => {
                info!(node = %self.node, points = p.raw.len(), ipamd_start_time = p.ipamd_start_time, corrected = corrected.len(), "resuming the counting of the node's previous agent run")
            }
            None if self.engine.baseline_unknown() => {
                warn!(node = %self.node, "no resume point for this node and ipamd started before the initial window: counter increments before this agent's first scrape are not counted (reported as baseline_unknown)")
            }
            None => {}
        }
    }

    /// The aggregator published the windows up to report `seq`.
    fn on_commit(&mut self, seq: u64) {
        if self.take_commit(seq) {
            debug!(node = %self.node, seq, backlog = self.commits.backlog(), "commit");
        }
        note_commits(&self.stats, &self.commits);
    }

    /// The stream ended: reconnect with backoff (the engine keeps counting meanwhile).
    fn on_ended(&mut self, error: Option<String>) {
        self.session = None;
        let mut attempts = self.attempts.take().unwrap_or_else(|| Backoff::default().start(None));
        let delay = attempts.next_delay();
        warn!(node = %self.node, error = error.as_deref().unwrap_or("stream closed"), retry_in = %cni_metrics_proto::duration::format(delay), "aggregator stream ended");
        spawn_connect(self.endpoint.clone(), self.tls.clone(), delay, attempts, self.events.clone(), self.stats.clone());
    }

    /// Shutdown: say goodbye, take the commits of windows the aggregator had already closed (they
    /// advance the position kept on the node), write the last position.
    async fn farewell(mut self, events: &mut mpsc::Receiver<Event>) {
        if let Some(s) = self.session.take() {
            let deadline = tokio::time::Instant::now() + GOODBYE_GRACE;
            let sent = s.send_goodbye("agent shutting down", deadline).await;
            drop(s.tx);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Commit { session: id, seq })) if id == s.id => {
                        self.take_commit(seq);
                    }
                    Ok(Some(Event::Ended { session: id, .. })) if id == s.id => break,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            s.task.abort();
            info!(node = %self.node, goodbye_sent = sent, committed_seq = self.commits.committed_seq(), uncommitted = self.commits.backlog(), "agent stopped");
        } else {
            info!(node = %self.node, "agent stopped (no aggregator session)");
        }
        if let Some(w) = self.position_writer.take() {
            w.finish(STATE_FILE_GRACE).await;
        }
    }

    /// The aggregator's sinks delivered the reports up to `seq`: when that advances the commit, count it
    /// and save the position on the node. Returns whether it advanced.
    fn take_commit(&mut self, seq: u64) -> bool {
        let advanced = self.commits.commit(seq);
        if advanced {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            save_position(&self.position_writer, &self.engine, &self.commits, &self.node);
        }
        advanced
    }

    /// Queue `report` (numbered `self.seq + 1`) on the stream; once queued its counter totals wait in
    /// the commit log for the window that publishes them. Returns whether it was queued.
    fn send_report(&mut self, report: Report) -> bool {
        let Some(s) = self.session.as_ref() else { return false };
        let (seq, start) = (report.seq, report.ipamd_start_time_seconds);
        let totals: Vec<(u32, f64, f64)> = counter_totals(&self.engine, &report).collect();
        if !s.try_send_report(report) {
            return false;
        }
        self.seq = seq;
        self.commits.record(seq, start, totals);
        note_commits(&self.stats, &self.commits);
        self.pending.clear();
        self.stats.reports_sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Send a delta report when the stream is welcomed; a full queue defers it (the next carries it).
    fn send_delta(&mut self) {
        if !self.session.as_ref().is_some_and(|s| s.welcomed) {
            return;
        }
        let report = delta_report(&self.engine, &self.pending, self.seq + 1, &self.scrape);
        if !self.send_report(report) {
            self.stats.reports_deferred.fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.node, "report deferred: session queue full or closed");
        }
    }

    /// Per-subnet usage from ipamd's introspection (on error the last known stays); returns this read's
    /// network cards (none on error: the page is then taken as it is).
    async fn refresh_subnets(&mut self) -> Vec<crate::introspect::CardTotals> {
        let Some(client) = &self.introspection else { return Vec::new() };
        let timeout = self.cfg.effective_scrape_timeout();
        match crate::introspect::fetch(client, &self.cfg.introspection_url, self.cfg.max_page_bytes, timeout).await {
            Ok(crate::introspect::Introspection { cards, subnets }) => {
                if self.introspection_error.take().is_some() {
                    info!(node = %self.node, subnets = subnets.len(), "ipamd introspection ok");
                }
                if subnets != self.scrape.subnets {
                    self.scrape.subnets = subnets;
                    self.pending.subnets_changed = true;
                }
                cards
            }
            Err(e) => {
                self.stats.introspection_errors.fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                if self.introspection_error.as_deref() != Some(msg.as_str()) {
                    warn!(node = %self.node, error = %msg, "no per-subnet usage (introspection); keeping the last known");
                    self.introspection_error = Some(msg);
                }
                Vec::new()
            }
        }
    }

    /// Fold one scrape result into the engine and the pending report; log status changes once.
    fn fold_scrape(&mut self, fetched: Result<String, ScrapeError>, cards: &[crate::introspect::CardTotals]) {
        let Self { engine, pending, commits, scrape: facts, stats, node, .. } = self;
        let node = node.as_str();
        stats.scrapes.fetch_add(1, Ordering::Relaxed);
        let now = unix_ms_now();
        let (status, detail) = match fetched {
            Ok(text) => {
                let mut page = parse(&text);
                let corrected = crate::multicard::correct(&mut page, cards);
                if !corrected.is_empty() {
                    stats.multi_card_scrapes.fetch_add(1, Ordering::Relaxed);
                }
                *stats.multi_card.lock().unwrap_or_else(|e| e.into_inner()) = (cards.len(), corrected);
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
                    debug!(node, bad_lines = page.bad_lines, first = %crate::parse::describe(&page.first_errors), "bad lines in ipamd page");
                }
                if obs.ipamd_restarted {
                    info!(node, start_time = engine.ipamd_start_time().unwrap_or(0.0), "ipamd restarted; counters reset folded in");
                }
                if obs.usable {
                    pending.absorb(&obs);
                    obs.removed.iter().for_each(|id| commits.forget(*id));
                    let detail = if page.bad_lines > 0 {
                        format!(
                            "{} bad lines ({})",
                            page.bad_lines,
                            crate::parse::describe(&page.first_errors[..page.first_errors.len().min(1)])
                        )
                    } else {
                        String::new()
                    };
                    (ScrapeStatus::Ok, detail)
                } else {
                    stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
                    let first = crate::parse::describe(&page.first_errors[..page.first_errors.len().min(1)]);
                    let detail = if first.is_empty() {
                        format!("no usable awscni_ metric in {} bytes", text.len())
                    } else {
                        format!("no usable awscni_ metric in {} bytes ({} bad lines, first at {first})", text.len(), page.bad_lines)
                    };
                    (ScrapeStatus::Garbage, detail)
                }
            }
            Err(e) => {
                stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
                (e.status(), e.to_string())
            }
        };
        let detail = plain_detail(&detail);
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

/// A status detail as the aggregator accepts it: control characters as spaces, at most 512 bytes.
fn plain_detail(detail: &str) -> String {
    let mut out: String = detail.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > 512 {
        let mut end = 509;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plain_detail;

    #[test]
    fn status_details_are_plain_and_bounded() {
        assert_eq!(plain_detail("a\nb\tc"), "a b c");
        let long = "é".repeat(400);
        let d = plain_detail(&long);
        assert!(d.len() <= 512 && d.ends_with("..."), "{}", d.len());
    }
}
