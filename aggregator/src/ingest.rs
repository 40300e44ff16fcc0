//! The gRPC `Ingest` service: [`IngestService::stream`] admits a stream (a `--max-streams` permit, a
//! Hello in time, a valid node), then an [`AgentStream`] task runs it: reports are applied to the shared
//! [`ClusterState`](crate::state::ClusterState) under a short lock (never held across an await) and
//! answered with acks.
//!
//! A stream that sends garbage gets a status and is closed; other nodes are unaffected.
//!
//! With `--agent-auth token` the stream's `authorization` metadata must carry a token that names the
//! Hello's node ([`TokenAuth::admit`]); the stream then lives until that token expires, when it ends
//! with UNAUTHENTICATED and the agent reconnects with the token kubelet has refreshed meanwhile.
//!
//! Besides acks, a stream carries commits: when the publisher records that every sink delivered a window
//! ([`ClusterState::commit`](crate::state::ClusterState::commit)) it hands each node's new committed seq
//! to the [`CommitMailbox`], which puts it straight into the node's outbound queue, a paced chunk of
//! nodes at a time: no stream task wakes and no state lock is taken per stream, so 19,000 commits do
//! not stall the acks of reports arriving meanwhile. A commit that found its queue full (or came between
//! a Hello and the stream's registration) goes out with the node's next ack.
//!
//! At shutdown the service first *freezes* (reports are no longer applied, so nothing enters a window
//! that will not be published), the publisher delivers the last window, and only then do streams send
//! their final commit and end with UNAVAILABLE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::ingest_server::Ingest;
use cni_metrics_proto::v1::{
    agent_message, aggregator_message, Ack, AgentMessage, AggregatorMessage, Commit, Label, Resume, ResumePoint, Welcome,
};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::flags::{at_least, blank_or, NonBlank};
use cni_metrics_proto::parts::Assembler;

use crate::auth::TokenAuth;
use crate::state::{CommitMark, IngestError, Refusal, StateHandle, Welcomed};

/// `serve`'s flags for agent streams.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Agent streams")]
pub struct IngestArgs {
    /// Concurrent gRPC streams one connection may open (an agent needs one).
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 16)]
    pub max_streams_per_connection: u32,

    /// Most agent streams open at once (one per node); more are refused with RESOURCE_EXHAUSTED and
    /// counted, so a flood of connections cannot exhaust memory. Open streams are never dropped for it.
    /// Unset: the open-file limit (raised to its hard limit at start) less 256; the effective value is
    /// logged at start.
    #[arg(long, env = "MAX_STREAMS", default_value = "", hide_default_value = true, value_parser = blank_or(at_least(1usize, "1")))]
    pub max_streams: NonBlank<usize>,

    /// Time a new agent stream has to send its Hello.
    #[arg(long, env = "HELLO_TIMEOUT", default_value = "10s", value_parser = parse_positive)]
    pub hello_timeout: Duration,

    /// Largest gRPC message accepted from an agent, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = at_least(64 * 1024usize, "64 KiB"))]
    pub max_message_bytes: usize,
}

/// Outbound (ack) queue per stream; acks are cumulative, so a full queue just skips one.
const ACK_QUEUE: usize = 8;

/// Nodes handed their commits per mailbox lock hold, and the pause between chunks: at most 25,600
/// commits a second (19,000 nodes in under a second, 100,000 in about 4 s), so writing them never
/// takes every core from the acks of reports arriving meanwhile. Measured at 19,000 streams on 2
/// cores: unpaced, the burst (19,000 writes in ~0.4 s) put the ack p99 at 78–131 ms; paced, 3–5 ms.
const FANOUT_CHUNK: usize = 256;
const FANOUT_PAUSE: Duration = Duration::from_millis(10);

/// What a stream task queues for its agent, made a message only as the transport takes it. Kept small
/// (an ack is a number): a tokio channel allocates 32 slots at a time whatever its bound, one channel per
/// connected node.
enum Outbound {
    Welcome(Box<Welcome>),
    Ack(u64),
    Commit(u64),
    End(Box<Status>),
}

impl Outbound {
    fn into_message(self) -> Result<AggregatorMessage, Status> {
        let body = match self {
            Outbound::Welcome(w) => aggregator_message::Body::Welcome(*w),
            Outbound::Ack(seq) => aggregator_message::Body::Ack(Ack { seq }),
            Outbound::Commit(seq) => aggregator_message::Body::Commit(Commit { seq }),
            Outbound::End(status) => return Err(*status),
        };
        Ok(AggregatorMessage { body: Some(body) })
    }
}

/// The connected nodes' outbound queues, for the publisher's commits (see the module doc).
#[derive(Default)]
pub struct CommitMailbox {
    streams: Mutex<HashMap<Arc<str>, Mailbox>>,
}

/// One stream's entry in the [`CommitMailbox`].
struct Mailbox {
    session: u64,
    run_id: u64,
    tx: mpsc::Sender<Outbound>,
    /// The highest commit put in the queue (by the publisher or the stream).
    sent: Arc<AtomicU64>,
}

impl CommitMailbox {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Mailbox>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a welcomed stream (replacing the node's previous one); returns its sent-commit cell.
    fn register(&self, node: &Arc<str>, session: u64, run_id: u64, tx: mpsc::Sender<Outbound>, sent: u64) -> Arc<AtomicU64> {
        let cell = Arc::new(AtomicU64::new(sent));
        self.streams().insert(node.clone(), Mailbox { session, run_id, tx, sent: cell.clone() });
        cell
    }

    /// Remove the stream's entry unless a newer stream of the node replaced it.
    fn unregister(&self, node: &str, session: u64) {
        let mut streams = self.streams();
        if streams.get(node).is_some_and(|m| m.session == session) {
            streams.remove(node);
        }
    }

    /// Put each mark's seq into its node's queue when the node's stream is of that run; returns how
    /// many were queued. A full queue skips the mark: the node's next ack carries it.
    pub async fn deliver(&self, marks: &[CommitMark]) -> usize {
        let mut queued = 0;
        for (i, chunk) in marks.chunks(FANOUT_CHUNK).enumerate() {
            if i > 0 {
                tokio::time::sleep(FANOUT_PAUSE).await;
            }
            {
                let streams = self.streams();
                for m in chunk {
                    let Some(mb) = streams.get(&m.node).filter(|mb| mb.run_id == m.run_id) else { continue };
                    if mb.sent.load(Ordering::Relaxed) < m.seq && mb.tx.try_send(Outbound::Commit(m.seq)).is_ok() {
                        mb.sent.fetch_max(m.seq, Ordering::Relaxed);
                        queued += 1;
                    }
                }
            }
        }
        queued
    }
}

/// The response stream of one agent stream: its [`Outbound`] queue, as messages.
pub struct OutboundStream(mpsc::Receiver<Outbound>);

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<AggregatorMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Outbound::into_message))
    }
}
/// After a keeping agent's goodbye, how long its stream stays open for the commits of windows that hold
/// its increments (they are normally delivered within a second).
const FAREWELL: Duration = Duration::from_secs(10);

/// The signals a stream task follows.
#[derive(Clone)]
pub struct StreamSignals {
    /// True once shutdown began: reports are no longer applied.
    pub frozen: watch::Receiver<bool>,
    /// True once the last window is delivered: streams send their last commit and end with UNAVAILABLE
    /// so agents reconnect elsewhere.
    pub stop: watch::Receiver<bool>,
    /// The state's commit generation, bumped by the publisher (followed after a goodbye).
    pub commits: watch::Receiver<u64>,
    /// Where the publisher puts the nodes' commits.
    pub mailbox: Arc<CommitMailbox>,
}

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Most streams open at once.
    pub max_streams: usize,
    /// Time a new stream has to send its Hello.
    pub hello_timeout: Duration,
    /// Largest message, and largest report sent in parts once assembled (`--max-message-bytes`).
    pub max_message_bytes: usize,
}

#[derive(Clone)]
pub struct IngestService {
    state: StateHandle,
    signals: StreamSignals,
    limits: IngestLimits,
    /// One permit per open stream (`--max-streams`), held by the stream's task whichever way it ends.
    open: Arc<Semaphore>,
    /// Random per process: agents tell a restarted aggregator from a reconnect.
    instance_id: u64,
    /// When this process started, for the agents (Unix ms).
    started_unix_ms: i64,
    /// `--agent-auth token`: the verifier of the agents' tokens.
    auth: Option<Arc<TokenAuth>>,
}

impl IngestService {
    pub fn new(state: StateHandle, signals: StreamSignals, limits: IngestLimits, auth: Option<Arc<TokenAuth>>) -> Self {
        let open = Arc::new(Semaphore::new(limits.max_streams.min(Semaphore::MAX_PERMITS)));
        Self {
            state,
            signals,
            limits,
            open,
            instance_id: fastrand::u64(1..),
            started_unix_ms: cni_metrics_proto::clock::unix_ms_now(),
            auth,
        }
    }

    /// In token mode, admit the stream for `node`; returns when its token stops holding.
    async fn authenticate(&self, authorization: Option<&str>, node: &str, peer: &str) -> Result<Option<tokio::time::Instant>, Status> {
        let Some(auth) = &self.auth else { return Ok(None) };
        match auth.admit(authorization, node).await {
            Ok(id) => {
                let now_s = cni_metrics_proto::clock::unix_ms_now().max(0) as u64 / 1000;
                let left = Duration::from_secs(id.valid_until_unix.saturating_sub(now_s)).min(MAX_TOKEN_LIFETIME);
                debug!(peer = %peer, node = %node, pod = %id.pod, valid_for = %cni_metrics_proto::duration::format(left), "agent token verified");
                Ok(Some(tokio::time::Instant::now() + left))
            }
            Err(e) => {
                self.state.refuse(e.refusal());
                // `node` is not validated yet: quote it only bounded and printable.
                warn!(peer = %peer, node = %crate::auth::token::quote(node), reason = e.reason(), error = %e, "agent refused: its token does not prove this node");
                Err(e.status())
            }
        }
    }
}

/// Longest a stream may live on one token (Kubernetes caps projected tokens at 48 h by default).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(48 * 3600);

fn welcome_message(w: &Welcomed, instance_id: u64, started_unix_ms: i64) -> Welcome {
    Welcome {
        session_id: w.session,
        node_ttl_ms: w.ttl.as_millis() as u64,
        committed_seq: w.committed_seq,
        resume: w.resume.as_ref().map(|r| Resume {
            ipamd_start_time_seconds: r.ipamd_start_time,
            points: r
                .points
                .iter()
                .map(|(k, raw)| ResumePoint {
                    name: k.name.clone(),
                    labels: k.labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                    raw: *raw,
                })
                .collect(),
        }),
        instance_id,
        started_unix_ms,
        accepts_parts: true,
    }
}

/// The bounded reason a broken inbound stream is counted under (oversized messages among them).
fn stream_error(status: &Status) -> Refusal {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Refusal::OversizedMessage,
        tonic::Code::Cancelled => Refusal::Cancelled,
        _ => Refusal::StreamError,
    }
}

fn to_status(e: &IngestError) -> Status {
    match e {
        IngestError::StaleSession(_) => Status::failed_precondition(e.to_string()),
        IngestError::DuplicateNode(_) => Status::already_exists(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = OutboundStream;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            self.state.refuse(Refusal::TooManyStreams);
            warn!(peer = %peer, max_streams = self.limits.max_streams, "stream refused: --max-streams reached");
            return Err(Status::resource_exhausted("too many agent streams (--max-streams)"));
        };
        // Only read here; checked against the Hello's node below.
        let authorization = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or("").to_owned());
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.limits.hello_timeout, inbound.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(status)) => {
                self.state.refuse(stream_error(&status));
                return Err(status);
            }
            Err(_) => {
                self.state.refuse(Refusal::NoHello);
                return Err(Status::deadline_exceeded(format!("no hello within {:?}", self.limits.hello_timeout)));
            }
        };
        let hello = match first.and_then(|m| m.body) {
            Some(agent_message::Body::Hello(h)) => h,
            _ => {
                self.state.refuse(Refusal::NoHello);
                return Err(Status::invalid_argument("the first message of a stream must be a Hello"));
            }
        };
        if *self.signals.frozen.borrow() {
            return Err(Status::unavailable("aggregator shutting down"));
        }
        let token_deadline = self.authenticate(authorization.as_deref(), &hello.node_name, &peer).await?;
        let welcomed = self.state.hello(&hello, Instant::now()).map_err(|e| {
            warn!(peer = %peer, node = %hello.node_name, error = %e, reason = e.reason(), "hello refused");
            to_status(&e)
        })?;
        info!(
            peer = %peer,
            node = %hello.node_name,
            session = welcomed.session,
            run_id = hello.run_id,
            agent_version = %hello.agent_version,
            committed_seq = welcomed.committed_seq,
            resume_points = welcomed.resume.as_ref().map_or(0, |r| r.points.len()),
            continued = welcomed.continued,
            "agent connected"
        );
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let welcome = welcome_message(&welcomed, self.instance_id, self.started_unix_ms);
        let _ = tx.try_send(Outbound::Welcome(Box::new(welcome)));
        let node: Arc<str> = Arc::from(hello.node_name);
        let sent_commit = self.signals.mailbox.register(&node, welcomed.session, hello.run_id, tx.clone(), welcomed.committed_seq);
        let stream = AgentStream {
            state: self.state.clone(),
            node,
            session: welcomed.session,
            run_id: hello.run_id,
            inbound,
            tx,
            signals: self.signals.clone(),
            sent_commit,
            token_deadline,
            parts: Assembler::new(self.limits.max_message_bytes),
            _permit: permit,
        };
        tokio::spawn(stream.run());
        Ok(Response::new(OutboundStream(rx)))
    }
}

/// What the stream loop does after a message.
enum Next {
    Continue,
    End,
}

/// One admitted agent stream, run by its own task until the agent leaves, breaks the stream or the
/// aggregator stops. Holds its `--max-streams` permit whichever way it ends.
pub struct AgentStream {
    state: StateHandle,
    node: Arc<str>,
    session: u64,
    run_id: u64,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Outbound>,
    signals: StreamSignals,
    /// The last commit queued for the agent (shared with the [`CommitMailbox`]).
    sent_commit: Arc<AtomicU64>,
    /// When the agent's token stops holding (token mode).
    token_deadline: Option<tokio::time::Instant>,
    /// A report sent in parts, until its last part.
    parts: Assembler,
    _permit: OwnedSemaphorePermit,
}

/// The mailbox's queue sender would keep the response stream open: whichever way the task ends (a
/// panic included), its entry goes.
impl Drop for AgentStream {
    fn drop(&mut self) {
        self.signals.mailbox.unregister(&self.node, self.session);
    }
}

/// Until `deadline`, or forever.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl AgentStream {
    pub async fn run(mut self) {
        loop {
            let next = tokio::select! {
                m = self.inbound.message() => m,
                _ = async { let _ = self.signals.stop.wait_for(|s| *s).await; } => {
                    self.on_stop().await;
                    return;
                }
                () = until(self.token_deadline) => {
                    self.on_token_expired().await;
                    return;
                }
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.state.disconnected(&self.node, self.session);
                    debug!(node = %self.node, session = self.session, "agent stream closed without goodbye; node kept until its TTL");
                    return;
                }
                Err(status) => {
                    self.state.refuse(stream_error(&status));
                    self.state.disconnected(&self.node, self.session);
                    warn!(node = %self.node, session = self.session, code = %status.code(), error = %status.message(), "agent stream broken");
                    return;
                }
            };
            let next = match msg.body {
                Some(agent_message::Body::Report(r)) => match (r.parts > 1, self.parts.feed(r)) {
                    (in_parts, Ok(Some(report))) => self.on_report(&report, in_parts).await,
                    (_, Ok(None)) => Next::Continue,
                    (_, Err(e)) => {
                        warn!(node = %self.node, session = self.session, error = %e, "report parts refused; closing stream");
                        self.state.refuse(Refusal::BadPart);
                        self.close(Status::invalid_argument(format!("report parts: {e}"))).await;
                        Next::End
                    }
                },
                Some(agent_message::Body::Goodbye(g)) => {
                    self.on_goodbye(&g.reason).await;
                    Next::End
                }
                Some(agent_message::Body::Hello(_)) | None => {
                    warn!(node = %self.node, session = self.session, "unexpected message on an open stream; closing it");
                    self.state.refuse(Refusal::UnexpectedMessage);
                    self.close(Status::invalid_argument("only Report or Goodbye may follow the Hello")).await;
                    Next::End
                }
            };
            if let Next::End = next {
                return;
            }
        }
    }

    fn sent_commit(&self) -> u64 {
        self.sent_commit.load(Ordering::Relaxed)
    }

    /// Queue `seq` as a commit unless it is already queued; false when the queue is full or closed.
    fn try_commit(&self, seq: u64) -> bool {
        if seq <= self.sent_commit() {
            return true;
        }
        let queued = self.tx.try_send(Outbound::Commit(seq)).is_ok();
        if queued {
            self.sent_commit.fetch_max(seq, Ordering::Relaxed);
        }
        queued
    }

    /// Queue `seq` as a commit, waiting for room; false when the stream is gone.
    async fn send_commit(&self, seq: u64) -> bool {
        if seq <= self.sent_commit() {
            return true;
        }
        let queued = self.tx.send(Outbound::Commit(seq)).await.is_ok();
        if queued {
            self.sent_commit.fetch_max(seq, Ordering::Relaxed);
        }
        queued
    }

    /// The last window is delivered: send the last commit and end with UNAVAILABLE so the agent
    /// reconnects elsewhere.
    async fn on_stop(&mut self) {
        if let Some(seq) = self.state.unsent_commit(&self.node, self.session, self.sent_commit()) {
            let _ = self.send_commit(seq).await;
        }
        let _ = self.tx.send(Outbound::End(Box::new(Status::unavailable("aggregator shutting down")))).await;
        self.state.disconnected(&self.node, self.session);
    }

    /// A whole or assembled report (`in_parts`: it arrived in parts).
    async fn on_report(&mut self, r: &cni_metrics_proto::v1::Report, in_parts: bool) -> Next {
        if *self.signals.frozen.borrow() {
            // Shutting down: not applied, not acknowledged; the agent's next aggregator counts it from
            // the last commit.
            return Next::Continue;
        }
        match self.state.report(&self.node, self.session, r, in_parts, Instant::now()) {
            Ok(a) => {
                if let Some(recovered) = a.recovered {
                    info!(node = %self.node, session = self.session, seq = r.seq, recovered, "run first seen mid-way: counting its increments since its last commit");
                }
                // A commit the mailbox could not queue (or that came before the stream registered).
                self.try_commit(a.committed);
                let _ = self.tx.try_send(Outbound::Ack(a.ack));
                Next::Continue
            }
            Err(e) => {
                warn!(node = %self.node, session = self.session, seq = r.seq, error = %e, reason = e.reason(), "report refused; closing stream");
                self.close(to_status(&e)).await;
                Next::End
            }
        }
    }

    /// A goodbye: the node leaves. A keeping agent writes its position from the commits of windows
    /// already closed, so those are sent (within [`FAREWELL`]) before the stream ends.
    async fn on_goodbye(&mut self, reason: &str) {
        let removed = self.state.goodbye(&self.node, self.session);
        info!(node = %self.node, session = self.session, reason = %reason, removed, "agent said goodbye");
        let deadline = tokio::time::Instant::now() + FAREWELL;
        let mut last = false;
        while let Some((committed, closed)) = self.state.departed_commits(&self.node, self.run_id) {
            if !self.send_commit(committed).await {
                break;
            }
            if committed >= closed || last {
                break;
            }
            // One more look after shutdown's final commit or the deadline, then end.
            tokio::select! {
                r = self.signals.commits.changed() => if r.is_err() { break },
                _ = self.signals.stop.wait_for(|s| *s) => last = true,
                _ = tokio::time::sleep_until(deadline) => last = true,
            }
        }
    }

    /// The agent's token expired: end the stream; the agent reconnects with its refreshed token and
    /// resumes from its last commit, nothing lost.
    async fn on_token_expired(&mut self) {
        info!(node = %self.node, session = self.session, "agent token expired; ending the stream so the agent reconnects with a fresh one");
        self.state.record_token_expiry();
        self.close(Status::unauthenticated("the agent's token expired: reconnect with the refreshed token")).await;
    }

    /// End the stream with `status`.
    async fn close(&mut self, status: Status) {
        let _ = self.tx.send(Outbound::End(Box::new(status))).await;
        self.state.disconnected(&self.node, self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(node: &str, run_id: u64, seq: u64) -> CommitMark {
        CommitMark { node: Arc::from(node), run_id, seq }
    }

    fn queued(rx: &mut mpsc::Receiver<Outbound>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            match o {
                Outbound::Commit(seq) => out.push(seq),
                _ => out.push(u64::MAX),
            }
        }
        out
    }

    #[tokio::test]
    async fn mailbox_queues_commits_of_the_streams_run_once_and_skips_full_queues() {
        let mb = CommitMailbox::default();
        let (tx_a, mut rx_a) = mpsc::channel(2);
        let (tx_b, mut rx_b) = mpsc::channel(2);
        let sent_a = mb.register(&Arc::from("a"), 1, 10, tx_a, 3);
        let sent_b = mb.register(&Arc::from("b"), 2, 20, tx_b, 0);
        // a: a newer commit is queued, one not above what it has is not; b: another run's mark is not.
        let n = mb.deliver(&[mark("a", 10, 5), mark("a", 10, 2), mark("b", 99, 7), mark("gone", 1, 1)]).await;
        assert_eq!(n, 1);
        assert_eq!(queued(&mut rx_a), vec![5]);
        assert_eq!(sent_a.load(Ordering::Relaxed), 5);
        assert!(queued(&mut rx_b).is_empty());
        // A full queue skips the mark and leaves the sent cell where it was: the next ack carries it.
        mb.deliver(&[mark("b", 20, 1), mark("b", 20, 2)]).await;
        let n = mb.deliver(&[mark("b", 20, 3)]).await;
        assert_eq!(n, 0);
        assert_eq!(sent_b.load(Ordering::Relaxed), 2);
        assert_eq!(queued(&mut rx_b), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_newer_stream_of_the_node_keeps_its_entry_when_the_old_one_ends() {
        let mb = CommitMailbox::default();
        let (tx_old, _rx_old) = mpsc::channel(2);
        let (tx_new, mut rx_new) = mpsc::channel(2);
        let node: Arc<str> = Arc::from("n");
        mb.register(&node, 1, 7, tx_old, 0);
        mb.register(&node, 2, 7, tx_new, 0);
        mb.unregister("n", 1);
        assert_eq!(mb.deliver(&[mark("n", 7, 4)]).await, 1);
        assert_eq!(queued(&mut rx_new), vec![4]);
        mb.unregister("n", 2);
        assert_eq!(mb.deliver(&[mark("n", 7, 5)]).await, 0);
    }

    #[tokio::test]
    async fn thousands_of_marks_are_delivered_across_chunks() {
        let mb = CommitMailbox::default();
        let mut rxs = Vec::new();
        let marks: Vec<CommitMark> = (0..FANOUT_CHUNK * 3 + 7)
            .map(|i| {
                let (tx, rx) = mpsc::channel(1);
                mb.register(&Arc::from(format!("n{i}").as_str()), 1, 1, tx, 0);
                rxs.push(rx);
                mark(&format!("n{i}"), 1, i as u64 + 1)
            })
            .collect();
        assert_eq!(mb.deliver(&marks).await, marks.len());
        for (i, rx) in rxs.iter_mut().enumerate() {
            assert_eq!(queued(rx), vec![i as u64 + 1]);
        }
    }
}
