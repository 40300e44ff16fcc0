//! The gRPC `Ingest` service: one task per agent stream that validates the hello, applies reports to the
//! shared [`ClusterState`] under a short lock (never held across an await) and answers with acks.
//!
//! A stream that sends garbage gets a status and is closed; other nodes are unaffected.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::ingest_server::Ingest;
use cni_metrics_proto::v1::{agent_message, aggregator_message, Ack, AgentMessage, AggregatorMessage, Welcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::state::{ClusterState, IngestError};

/// The state shared by the service, the HTTP endpoints and the publisher.
pub type Shared = Arc<Mutex<ClusterState>>;

/// Lock the state; a poisoned lock (a panic elsewhere) still yields the data.
pub fn lock(state: &Shared) -> MutexGuard<'_, ClusterState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound (ack) queue per stream; acks are cumulative, so a full queue just skips one.
const ACK_QUEUE: usize = 8;

#[derive(Clone)]
pub struct IngestService {
    state: Shared,
    /// Turns true at shutdown: every stream ends with UNAVAILABLE so agents reconnect elsewhere.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl IngestService {
    pub fn new(state: Shared, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { state, stop }
    }
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
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(status)) => {
                count_stream_error(&self.state, &status);
                return Err(status);
            }
            Err(_) => {
                *lock(&self.state).stats.rejected.entry("no_hello").or_default() += 1;
                return Err(Status::deadline_exceeded("no hello within 10s"));
            }
        };
        let hello = match first.and_then(|m| m.body) {
            Some(agent_message::Body::Hello(h)) => h,
            _ => {
                *lock(&self.state).stats.rejected.entry("no_hello").or_default() += 1;
                return Err(Status::invalid_argument("the first message of a stream must be a Hello"));
            }
        };
        let (session, ttl) = lock(&self.state).hello(&hello, Instant::now()).map_err(|e| {
            warn!(?peer, node = %hello.node_name, error = %e, "hello refused");
            to_status(&e)
        })?;
        let node = hello.node_name;
        info!(?peer, node = %node, session, run_id = hello.run_id, agent_version = %hello.agent_version, "agent connected");
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let welcome = Welcome { session_id: session, node_ttl_ms: ttl.as_millis() as u64 };
        let _ = tx.try_send(Ok(AggregatorMessage { body: Some(aggregator_message::Body::Welcome(welcome)) }));

        let state = self.state.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
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
                        let applied = lock(&state).report(&node, session, &r, Instant::now());
                        match applied {
                            Ok(a) => {
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
