//! The gRPC `Ingest` service: one task per agent stream that validates the hello, applies reports to the
//! shared [`ClusterState`](crate::state::ClusterState) under a short lock (never held across an await) and answers with acks.
//!
//! A stream that sends garbage gets a status and is closed; other nodes are unaffected.
//!
//! Besides acks, a stream carries commits: when the publisher records that every sink delivered a window
//! ([`ClusterState::commit`](crate::state::ClusterState::commit)) it bumps a watch; each stream then sends its node's new committed seq. At
//! shutdown the service first *freezes* (reports are no longer applied, so nothing enters a window that
//! will not be published), the publisher delivers the last window, and only then do streams send their
//! final commit and end with UNAVAILABLE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::ingest_server::Ingest;
use cni_metrics_proto::v1::{
    agent_message, aggregator_message, Ack, AgentMessage, AggregatorMessage, Commit, Label, Resume, ResumePoint, Welcome,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::shared::{lock, Shared};
use crate::state::{IngestError, Welcomed};

/// Outbound (ack) queue per stream; acks are cumulative, so a full queue just skips one.
const ACK_QUEUE: usize = 8;
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
    /// The state's commit generation, bumped by the publisher.
    pub commits: watch::Receiver<u64>,
}

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Most streams open at once.
    pub max_streams: usize,
    /// Time a new stream has to send its Hello.
    pub hello_timeout: Duration,
}

#[derive(Clone)]
pub struct IngestService {
    state: Shared,
    signals: StreamSignals,
    limits: IngestLimits,
    /// One permit per open stream (`--max-streams`), held by the stream's task whichever way it ends.
    open: Arc<Semaphore>,
    /// Random per process: agents tell a restarted aggregator from a reconnect.
    instance_id: u64,
    /// When this process started, for the agents (Unix ms).
    started_unix_ms: i64,
}

impl IngestService {
    pub fn new(state: Shared, signals: StreamSignals, limits: IngestLimits) -> Self {
        let open = Arc::new(Semaphore::new(limits.max_streams.min(Semaphore::MAX_PERMITS)));
        Self { state, signals, limits, open, instance_id: fastrand::u64(1..), started_unix_ms: cni_metrics_proto::clock::unix_ms_now() }
    }
}

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
    }
}

/// The node's committed seq when this stream has not sent it yet.
fn unsent_commit(state: &Shared, node: &str, session: u64, sent: u64) -> Option<u64> {
    lock(state).committed_seq(node, session).filter(|s| *s > sent)
}

fn commit_message(seq: u64) -> Result<AggregatorMessage, Status> {
    Ok(AggregatorMessage { body: Some(aggregator_message::Body::Commit(Commit { seq })) })
}

/// Count a broken inbound stream under a bounded reason (oversized messages among them).
fn count_stream_error(state: &Shared, status: &Status) {
    let reason = match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => "oversized_message",
        tonic::Code::Cancelled => "cancelled",
        _ => "stream_error",
    };
    *lock(state).stats.rejected.entry(reason).or_default() += 1;
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
    type StreamStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let Ok(slot) = self.open.clone().try_acquire_owned() else {
            *lock(&self.state).stats.rejected.entry("too_many_streams").or_default() += 1;
            warn!(?peer, max_streams = self.limits.max_streams, "stream refused: --max-streams reached");
            return Err(Status::resource_exhausted("too many agent streams (--max-streams)"));
        };
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.limits.hello_timeout, inbound.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(status)) => {
                count_stream_error(&self.state, &status);
                return Err(status);
            }
            Err(_) => {
                *lock(&self.state).stats.rejected.entry("no_hello").or_default() += 1;
                return Err(Status::deadline_exceeded(format!("no hello within {:?}", self.limits.hello_timeout)));
            }
        };
        let hello = match first.and_then(|m| m.body) {
            Some(agent_message::Body::Hello(h)) => h,
            _ => {
                *lock(&self.state).stats.rejected.entry("no_hello").or_default() += 1;
                return Err(Status::invalid_argument("the first message of a stream must be a Hello"));
            }
        };
        if *self.signals.frozen.borrow() {
            return Err(Status::unavailable("aggregator shutting down"));
        }
        let welcomed = lock(&self.state).hello(&hello, Instant::now()).map_err(|e| {
            warn!(?peer, node = %hello.node_name, error = %e, "hello refused");
            to_status(&e)
        })?;
        let session = welcomed.session;
        let run_id = hello.run_id;
        let node = hello.node_name;
        info!(
            ?peer,
            node = %node,
            session,
            run_id = hello.run_id,
            agent_version = %hello.agent_version,
            committed_seq = welcomed.committed_seq,
            resume_points = welcomed.resume.as_ref().map_or(0, |r| r.points.len()),
            continued = welcomed.continued,
            "agent connected"
        );
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let welcome = welcome_message(&welcomed, self.instance_id, self.started_unix_ms);
        let _ = tx.try_send(Ok(AggregatorMessage { body: Some(aggregator_message::Body::Welcome(welcome)) }));

        let state = self.state.clone();
        let StreamSignals { frozen, mut stop, mut commits } = self.signals.clone();
        let mut sent_commit = welcomed.committed_seq;
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    Ok(()) = commits.changed() => {
                        // Cumulative: should the queue be full, the next commit (or the last one at
                        // shutdown) covers this one.
                        if let Some(seq) = unsent_commit(&state, &node, session, sent_commit) {
                            if tx.try_send(commit_message(seq)).is_ok() {
                                sent_commit = seq;
                            }
                        }
                        continue;
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        if let Some(seq) = unsent_commit(&state, &node, session, sent_commit) {
                            let _ = tx.send(commit_message(seq)).await;
                        }
                        let _ = tx.send(Err(Status::unavailable("aggregator shutting down"))).await;
                        lock(&state).disconnected(&node, session);
                        return;
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        lock(&state).disconnected(&node, session);
                        debug!(node = %node, session, "agent stream closed without goodbye; node kept until its TTL");
                        return;
                    }
                    Err(status) => {
                        count_stream_error(&state, &status);
                        lock(&state).disconnected(&node, session);
                        warn!(node = %node, session, code = ?status.code(), error = %status.message(), "agent stream broken");
                        return;
                    }
                };
                match msg.body {
                    Some(agent_message::Body::Report(r)) => {
                        if *frozen.borrow() {
                            // Shutting down: not applied, not acknowledged; the agent's next aggregator
                            // counts it from the last commit.
                            continue;
                        }
                        let applied = lock(&state).report(&node, session, &r, Instant::now());
                        match applied {
                            Ok(a) => {
                                if let Some(recovered) = a.recovered {
                                    info!(node = %node, session, seq = r.seq, recovered, "run first seen mid-way: counting its increments since its last commit");
                                }
                                let ack = AggregatorMessage { body: Some(aggregator_message::Body::Ack(Ack { seq: a.ack })) };
                                let _ = tx.try_send(Ok(ack));
                            }
                            Err(e) => {
                                warn!(node = %node, session, seq = r.seq, error = %e, reason = e.reason(), "report refused; closing stream");
                                let _ = tx.send(Err(to_status(&e))).await;
                                lock(&state).disconnected(&node, session);
                                return;
                            }
                        }
                    }
                    Some(agent_message::Body::Goodbye(g)) => {
                        let removed = lock(&state).goodbye(&node, session);
                        info!(node = %node, session, reason = %g.reason, removed, "agent said goodbye");
                        // A keeping agent writes its position from the commits of windows already closed:
                        // send them before ending the stream.
                        let deadline = tokio::time::Instant::now() + FAREWELL;
                        let mut last = false;
                        loop {
                            let Some((committed, closed)) = lock(&state).departed_commits(&node, run_id) else { break };
                            if committed > sent_commit {
                                if tx.send(commit_message(committed)).await.is_err() {
                                    break;
                                }
                                sent_commit = committed;
                            }
                            if committed >= closed || last {
                                break;
                            }
                            // One more look after shutdown's final commit or the deadline, then end.
                            tokio::select! {
                                r = commits.changed() => if r.is_err() { break },
                                _ = stop.wait_for(|s| *s) => last = true,
                                _ = tokio::time::sleep_until(deadline) => last = true,
                            }
                        }
                        return;
                    }
                    Some(agent_message::Body::Hello(_)) | None => {
                        warn!(node = %node, session, "unexpected message on an open stream; closing it");
                        let _ = tx.send(Err(Status::invalid_argument("only Report or Goodbye may follow the Hello"))).await;
                        lock(&state).disconnected(&node, session);
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
