//! The agent's event loop: scrape on every tick, fold the page into the delta engine, and keep one
//! long-lived gRPC stream to the aggregator (hello, snapshot, then deltas), reconnecting with jittered
//! exponential backoff and resending a snapshot after every reconnect. [`run`] wires the parts and
//! loops; [`Agent`] is the I/O shell around the run's pure [`Tally`] and has one method per event
//! (`on_tick`, `on_connected`, `on_welcome`, `on_commit`, `on_ended`, `farewell`).
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
use cni_metrics_proto::v1::{Hello, ScrapeStatus, Welcome};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::commit::CommitLog;
use crate::config::{AgentConfig, ConfigError};
use crate::delta::{DeltaConfig, ResumePoints};
use crate::imds::NodeFacts;
use crate::metrics::AgentStats;
use crate::scrape::{ScrapeError, Scraper};
use crate::session::{spawn_connect, Event, Session};
use crate::state_dir::{open_state_dir, position_of_resume, save_position, PositionWriter};
use crate::tally::{Folded, Note, ResumeSource, Tally};

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

/// One agent run: the I/O shell around its [`Tally`] (what it has counted and what the aggregator has
/// committed): the scraper, introspection, the state directory, and the link to the aggregator.
pub struct Agent {
    cfg: AgentConfig,
    node: String,
    run_id: u64,
    stats: Arc<AgentStats>,
    scraper: Scraper,
    /// `/v1/enis`, when introspection is on.
    introspection: Option<Introspection>,
    node_facts: NodeFacts,
    tally: Tally,
    /// Until the run's first Welcome decides where counting resumes: the state file's point, if any.
    resume: Resume,
    doubt_warned: bool,
    position_writer: Option<PositionWriter>,
    link: Link,
}

/// Whether the run's resume point is decided (by its first Welcome).
enum Resume {
    Undecided(Option<ResumePoints>),
    Decided,
}

/// ipamd's introspection client and its last error (logged once per distinct error).
struct Introspection {
    client: reqwest::Client,
    url: String,
    last_error: Option<String>,
}

/// The link to the aggregator: where it is, the current stream and how reconnecting goes.
struct Link {
    endpoint: Endpoint,
    tls: Arc<ClientTlsFlags>,
    events: mpsc::Sender<Event>,
    session: Option<Session>,
    next_session_id: u64,
    connected_once: bool,
    attempts: Option<Attempts>,
    /// The instance of the aggregator that last welcomed the run (0: none yet).
    aggregator_instance: u64,
}

impl Link {
    /// The current session when its id is `id`.
    fn current(&self, id: u64) -> Option<&Session> {
        self.session.as_ref().filter(|s| s.id() == id)
    }

    /// Connect (after `delay`, with the backoff's attempts).
    fn connect(&self, delay: Duration, attempts: Attempts, stats: &Arc<AgentStats>) {
        spawn_connect(self.endpoint.clone(), self.tls.clone(), delay, attempts, self.events.clone(), stats.clone());
    }
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
        let node_facts = node_facts(&cfg, &node).await;
        let (position_writer, file_resume) = open_state_dir(&cfg, &node, &stats).await;
        let introspection = match cfg.introspection_url.get() {
            Some(url) => {
                let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build()?;
                Some(Introspection { client, url: url.clone(), last_error: None })
            }
            None => None,
        };
        let link = Link {
            endpoint,
            tls: Arc::new(cfg.tls.clone()),
            events,
            session: None,
            next_session_id: 0,
            connected_once: false,
            attempts: None,
            aggregator_instance: 0,
        };
        link.connect(Duration::ZERO, Backoff::default().start(None), &stats);
        let delta = DeltaConfig { initial_window: cfg.initial_window, max_series: cfg.max_series };
        Ok(Self {
            tally: Tally::new(delta, MAX_COMMIT_LOG, cfg.advisor_window, unix_ms_now()),
            cfg,
            node,
            run_id,
            stats,
            scraper,
            introspection,
            node_facts,
            resume: Resume::Undecided(file_resume),
            doubt_warned: false,
            position_writer,
            link,
        })
    }

    /// A tick: fold the scrape into the tally, refresh per-subnet usage, send a delta when welcomed.
    async fn on_tick(&mut self, fetched: Result<String, ScrapeError>) {
        // Introspection first: on a multi-card instance its per-card sums correct this page's totals.
        let cards = self.refresh_subnets().await;
        self.stats.scrapes.fetch_add(1, Ordering::Relaxed);
        let folded = self.tally.fold(fetched, &cards, unix_ms_now());
        let history = self.tally.history();
        self.stats.advisor_history_samples.store(history.len() as u64, Ordering::Relaxed);
        self.stats.advisor_history_seconds.store(history.span_seconds(), Ordering::Relaxed);
        self.count_scrape(&folded);
        self.log_notes(folded.notes);
        if !self.doubt_warned && self.tally.engine().baseline_in_doubt() {
            self.doubt_warned = true;
            warn!(node = %self.node, "counting a young ipamd from its start with no resume point from an aggregator younger than it: if an earlier agent run of this node was counted, part is counted twice (reported as baseline_in_doubt)");
        }
        self.send_delta();
    }

    /// One scrape in the agent's own metrics.
    fn count_scrape(&self, f: &Folded) {
        let stats = &self.stats;
        if let Some((cards, corrected)) = &f.multi_card {
            if !corrected.is_empty() {
                stats.multi_card_scrapes.fetch_add(1, Ordering::Relaxed);
            }
            *stats.multi_card.lock().unwrap_or_else(|e| e.into_inner()) = (*cards, corrected.clone());
            stats.bad_lines.fetch_add(u64::from(f.bad_lines), Ordering::Relaxed);
            stats.invalid_samples.fetch_add(u64::from(f.invalid_samples), Ordering::Relaxed);
            stats.dropped_series.fetch_add(u64::from(f.dropped_series), Ordering::Relaxed);
        }
        if f.status != ScrapeStatus::Ok {
            stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a person should hear of a scrape, in the log.
    fn log_notes(&self, notes: Vec<Note>) {
        let node = self.node.as_str();
        for note in notes {
            match note {
                Note::SeriesDropped(n) => warn!(node, dropped = n, "series limit (--max-series) reached; new series dropped"),
                Note::SeriesWithinLimit => info!(node, "all series within the series limit again"),
                Note::BadLines(n, first) => debug!(node, bad_lines = n, first = %first, "bad lines in ipamd page"),
                Note::IpamdRestarted(start_time) => info!(node, start_time, "ipamd restarted; counters reset folded in"),
                Note::Recovered(previous) => info!(node, previous = previous.as_str_name(), "ipamd scrape ok"),
                Note::Failing(status, detail) => {
                    warn!(node, status = status.as_str_name(), detail = %detail, "ipamd scrape failing; will keep retrying")
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected(channel, attempts) => self.on_connected(channel, attempts),
            Event::Welcome { session, welcome } if self.link.current(session).is_some_and(|s| !s.welcomed()) => {
                self.on_welcome(session, welcome)
            }
            Event::Ack { session, seq } if self.link.current(session).is_some() => {
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                debug!(node = %self.node, seq, "ack");
            }
            Event::Commit { session, seq } if self.link.current(session).is_some() => self.on_commit(seq),
            Event::Ended { session, error } if self.link.current(session).is_some() => self.on_ended(error),
            _ => {} // an event of a session already replaced
        }
    }

    /// A new channel: open a stream with the Hello; the snapshot waits for the Welcome.
    fn on_connected(&mut self, channel: tonic::transport::Channel, attempts: Attempts) {
        self.link.next_session_id += 1;
        let hello = Hello {
            node_name: self.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            run_id: self.run_id,
            ipamd_start_time_seconds: self.tally.engine().ipamd_start_time().unwrap_or(0.0),
            availability_zone: self.node_facts.availability_zone.clone(),
            instance_type: self.node_facts.instance_type.clone(),
            instance_id: self.node_facts.instance_id.clone(),
            interval_ms: self.cfg.interval.as_millis() as u64,
            region: self.node_facts.region.clone(),
            cluster_name: self.node_facts.cluster_name.clone(),
            keeps_position: self.position_writer.is_some(),
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let token = self.cfg.token_file.get().and_then(|path| {
            crate::session::read_token(path)
                .inspect_err(|e| {
                    self.stats.token_read_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %self.node, error = %e, "connecting without a ServiceAccount token; an aggregator that requires one will refuse the stream");
                })
                .ok()
        });
        self.link.session = Some(Session::open(self.link.next_session_id, channel, hello, token, self.link.events.clone()));
        self.link.attempts = Some(attempts);
    }

    /// The Welcome: on the run's first, decide where counting resumes; then commit what the aggregator
    /// has published and send the snapshot.
    fn on_welcome(&mut self, id: u64, welcome: Welcome) {
        if let Some(a) = self.link.attempts.as_mut() {
            a.reset();
        }
        if let Resume::Undecided(from_file) = std::mem::replace(&mut self.resume, Resume::Decided) {
            self.apply_resume(&welcome, from_file);
        }
        let backlog = self.tally.commits().backlog();
        if self.link.aggregator_instance != 0 && self.link.aggregator_instance != welcome.instance_id && backlog > 0 {
            info!(node = %self.node, uncommitted = backlog, "new aggregator instance: increments it never published are sent again from the last commit");
        }
        self.link.aggregator_instance = welcome.instance_id;
        self.take_commit(welcome.committed_seq);
        if let Some(s) = self.link.session.as_mut() {
            s.set_accepts_parts(welcome.accepts_parts);
        }
        if self.send_report(true) {
            if let Some(s) = self.link.session.as_mut() {
                s.mark_welcomed();
            }
        }
        if self.link.connected_once {
            info!(node = %self.node, session = id, committed_seq = welcome.committed_seq, "reconnected to aggregator; snapshot sent");
        } else {
            info!(node = %self.node, session = id, node_ttl_ms = welcome.node_ttl_ms, "connected to aggregator");
        }
        self.link.connected_once = true;
        note_commits(&self.stats, self.tally.commits());
    }

    /// The aggregator's resume point wins (it is newer, and becomes the file's); else the state file's.
    fn apply_resume(&mut self, welcome: &Welcome, from_file: Option<ResumePoints>) {
        let resumed = self.tally.resume(welcome, from_file);
        match (resumed.from, &resumed.points, &self.position_writer) {
            (ResumeSource::Aggregator, Some(p), Some(w)) => w.save(position_of_resume(&self.node, p)),
            (ResumeSource::StateFile, _, _) => {
                info!(node = %self.node, "no resume point from the aggregator: resuming from the state file")
            }
            _ => {}
        }
        match &resumed.points {
            Some(p) => {
                info!(node = %self.node, points = p.raw.len(), ipamd_start_time = p.ipamd_start_time, corrected = resumed.corrected, "resuming the counting of the node's previous agent run")
            }
            None if self.tally.engine().baseline_unknown() => {
                warn!(node = %self.node, "no resume point for this node and ipamd started before the initial window: counter increments before this agent's first scrape are not counted (reported as baseline_unknown)")
            }
            None => {}
        }
    }

    /// The aggregator published the windows up to report `seq`.
    fn on_commit(&mut self, seq: u64) {
        if self.take_commit(seq) {
            debug!(node = %self.node, seq, backlog = self.tally.commits().backlog(), "commit");
        }
        note_commits(&self.stats, self.tally.commits());
    }

    /// The stream ended: reconnect with backoff (the tally keeps counting meanwhile).
    fn on_ended(&mut self, error: Option<String>) {
        self.link.session = None;
        let mut attempts = self.link.attempts.take().unwrap_or_else(|| Backoff::default().start(None));
        let delay = attempts.next_delay();
        warn!(node = %self.node, error = error.as_deref().unwrap_or("stream closed"), retry_in = %cni_metrics_proto::duration::format(delay), "aggregator stream ended");
        self.link.connect(delay, attempts, &self.stats);
    }

    /// Shutdown: say goodbye, take the commits of windows the aggregator had already closed (they
    /// advance the position kept on the node), write the last position.
    async fn farewell(mut self, events: &mut mpsc::Receiver<Event>) {
        if let Some(s) = self.link.session.take() {
            let deadline = tokio::time::Instant::now() + GOODBYE_GRACE;
            let sent = s.send_goodbye("agent shutting down", deadline).await;
            let id = s.id();
            let task = s.close();
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Commit { session, seq })) if session == id => {
                        self.take_commit(seq);
                    }
                    Ok(Some(Event::Ended { session, .. })) if session == id => break,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            task.abort();
            let commits = self.tally.commits();
            info!(node = %self.node, goodbye_sent = sent, committed_seq = commits.committed_seq(), uncommitted = commits.backlog(), "agent stopped");
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
        let advanced = self.tally.commit(seq);
        if advanced {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            save_position(&self.position_writer, self.tally.engine(), self.tally.commits(), &self.node);
        }
        advanced
    }

    /// Queue the next report (a snapshot or a delta) on the stream; returns whether it was queued.
    fn send_report(&mut self, snapshot: bool) -> bool {
        let Some(s) = self.link.session.as_ref() else { return false };
        let report = self.tally.next_report(snapshot);
        if !self.tally.queue(report, |r| s.try_send_report(r)) {
            return false;
        }
        note_commits(&self.stats, self.tally.commits());
        self.stats.reports_sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Send a delta report when the stream is welcomed; a full queue defers it (the next carries it).
    fn send_delta(&mut self) {
        if !self.link.session.as_ref().is_some_and(Session::welcomed) {
            return;
        }
        if !self.send_report(false) {
            self.stats.reports_deferred.fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.node, "report deferred: session queue full or closed");
        }
    }

    /// Per-subnet usage from ipamd's introspection (on error the last known stays); returns this read's
    /// network cards (none on error: the page is then taken as it is).
    async fn refresh_subnets(&mut self) -> Vec<crate::introspect::CardTotals> {
        let Some(intro) = &mut self.introspection else { return Vec::new() };
        let timeout = self.cfg.effective_scrape_timeout();
        match crate::introspect::fetch(&intro.client, &intro.url, self.cfg.max_page_bytes, timeout, self.cfg.ip_cooldown_period).await {
            Ok(page) => {
                if intro.last_error.take().is_some() {
                    info!(node = %self.node, subnets = page.subnets.len(), "ipamd introspection ok");
                }
                self.tally.set_cooldown_ips(Some(page.cooldown_ips()));
                self.tally.set_subnets(page.subnets);
                page.cards
            }
            Err(e) => {
                // A cooldown count is a moment's: none rather than a stale one.
                self.tally.set_cooldown_ips(None);
                self.stats.introspection_errors.fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                if intro.last_error.as_deref() != Some(msg.as_str()) {
                    warn!(node = %self.node, error = %msg, "no per-subnet usage (introspection); keeping the last known");
                    intro.last_error = Some(msg);
                }
                Vec::new()
            }
        }
    }
}

/// The node's facts: from the flags, completed by the instance metadata service when allowed.
async fn node_facts(cfg: &AgentConfig, node: &str) -> NodeFacts {
    let flags = NodeFacts {
        availability_zone: cfg.availability_zone.clone(),
        region: cfg.region.clone(),
        instance_type: cfg.instance_type.clone(),
        instance_id: cfg.instance_id.clone(),
        cluster_name: cfg.cluster_name.clone(),
    };
    let mut facts =
        if cfg.imds_enabled() && !flags.complete() { flags.or(crate::imds::lookup(&cfg.imds_endpoint, IMDS_TIMEOUT).await) } else { flags };
    let blanked = facts.keep_in_shape();
    if !blanked.is_empty() {
        warn!(node = %node, fields = %blanked.join(","), "instance metadata answered values without their AWS shape; left blank");
    }
    info!(
        node = %node,
        availability_zone = %facts.availability_zone,
        region = %facts.region,
        instance_type = %facts.instance_type,
        instance_id = %facts.instance_id,
        cluster_name = %facts.cluster_name,
        "node facts"
    );
    facts
}

fn note_commits(stats: &AgentStats, commits: &CommitLog) {
    stats.commit_backlog.store(commits.backlog() as u64, Ordering::Relaxed);
    let before = stats.commit_log_overflow.swap(commits.overflowed(), Ordering::Relaxed);
    if commits.overflowed() > before {
        warn!(entries = commits.overflowed() - before, "commit log full: oldest uncommitted counter changes taken as committed");
    }
}
