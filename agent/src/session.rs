//! The stream to the aggregator, as the event loop sees it: [`spawn_connect`] dials (jittered backoff,
//! TLS files re-read per attempt) and hands over a channel; [`Session::open`] sends the Hello and runs
//! the bidirectional stream in its own task, turning the aggregator's Welcome, Ack and Commit messages
//! into [`Event`]s. The loop owns every decision; this file only moves messages. [`read_token`] reads the
//! ServiceAccount token a stream is opened with.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cni_metrics_proto::backoff::Attempts;
use cni_metrics_proto::parts::{split, PART_BYTES};
use cni_metrics_proto::v1::ingest_client::IngestClient;
use cni_metrics_proto::v1::{agent_message, aggregator_message, AgentMessage, Goodbye, Hello, Report, Welcome};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::metrics::AgentStats;

/// Largest message the agent accepts from or sends to the aggregator.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Outbound queue of one session: a stuck stream defers reports instead of growing memory.
const SESSION_QUEUE: usize = 16;

/// What the connection tasks tell the event loop.
pub(crate) enum Event {
    Connected(Channel, Attempts),
    Welcome { session: u64, welcome: Welcome },
    Ack { session: u64, seq: u64 },
    Commit { session: u64, seq: u64 },
    Ended { session: u64, error: Option<String> },
}

/// One stream to the aggregator.
pub(crate) struct Session {
    id: u64,
    /// The snapshot went out (after the Welcome): deltas may follow.
    welcomed: bool,
    /// The aggregator's Welcome said it assembles reports sent in parts.
    accepts_parts: bool,
    /// One queue slot per report, whole or in parts (the stream sends a slot's messages back to back).
    /// Dropped to end the stream's sending side (after the goodbye).
    tx: mpsc::Sender<Vec<AgentMessage>>,
    task: JoinHandle<()>,
}

impl Session {
    /// Start stream `id` on `channel` with `hello` as its first message.
    pub(crate) fn open(id: u64, channel: Channel, hello: Hello, token: Option<MetadataValue<Ascii>>, events: mpsc::Sender<Event>) -> Self {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        // A fresh queue of SESSION_QUEUE slots always takes it.
        let _ = tx.try_send(vec![wrap(agent_message::Body::Hello(hello))]);
        let task = tokio::spawn(drive_session(id, channel, rx, token, events));
        Self { id, welcomed: false, accepts_parts: false, tx, task }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the snapshot went out after the Welcome (deltas may follow).
    pub(crate) fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// The snapshot went out.
    pub(crate) fn mark_welcomed(&mut self) {
        self.welcomed = true;
    }

    /// Whether the aggregator assembles reports sent in parts (its Welcome says).
    pub(crate) fn set_accepts_parts(&mut self, accepts: bool) {
        self.accepts_parts = accepts;
    }

    /// End the sending side (after the goodbye); the stream's task, still reading commits, is returned.
    pub(crate) fn close(self) -> JoinHandle<()> {
        self.task
    }

    /// Queue `report`, in parts of about 1 KiB when the aggregator accepts them; false when the queue
    /// is full or the stream gone.
    pub(crate) fn try_send_report(&self, report: Report) -> bool {
        let messages = if self.accepts_parts { split(report, PART_BYTES) } else { vec![report] };
        let batch = messages.into_iter().map(|r| wrap(agent_message::Body::Report(r))).collect();
        self.tx.try_send(batch).is_ok()
    }

    /// Queue a goodbye, waiting for room until `deadline`; whether it was queued.
    pub(crate) async fn send_goodbye(&self, reason: &str, deadline: tokio::time::Instant) -> bool {
        let bye = vec![wrap(agent_message::Body::Goodbye(Goodbye { reason: reason.to_owned() }))];
        tokio::time::timeout_at(deadline, self.tx.send(bye)).await.is_ok_and(|r| r.is_ok())
    }
}

fn wrap(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

/// The queue's slots, one message at a time.
struct Messages {
    rx: mpsc::Receiver<Vec<AgentMessage>>,
    slot: std::vec::IntoIter<AgentMessage>,
}

impl Messages {
    fn new(rx: mpsc::Receiver<Vec<AgentMessage>>) -> Self {
        Self { rx, slot: Vec::new().into_iter() }
    }
}

impl tokio_stream::Stream for Messages {
    type Item = AgentMessage;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<AgentMessage>> {
        loop {
            if let Some(m) = self.slot.next() {
                return std::task::Poll::Ready(Some(m));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.slot = batch.into_iter(),
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

/// Connect (after `delay`, then with backoff) and hand the channel to the event loop. TLS files are
/// re-read at every attempt, so rotated certificates apply at the next reconnect.
pub(crate) fn spawn_connect(
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
                        warn!(error = %e, attempt = attempts.attempt(), retry_in = %cni_metrics_proto::duration::format(d), "cannot reach aggregator");
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
async fn drive_session(
    id: u64,
    channel: Channel,
    rx: mpsc::Receiver<Vec<AgentMessage>>,
    token: Option<MetadataValue<Ascii>>,
    ev: mpsc::Sender<Event>,
) {
    let mut client = IngestClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut request = tonic::Request::new(Messages::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", t);
    }
    let error = match client.stream(request).await {
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

/// Largest token file read (Kubernetes tokens are about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// The `authorization` value for the token in `path`: `Bearer <token>`.
pub(crate) fn read_token(path: &std::path::Path) -> Result<MetadataValue<Ascii>, String> {
    use std::io::Read;
    let mut token = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut token))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() || token.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!("{} is empty or longer than {MAX_TOKEN_BYTES} bytes", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)) {
        return Err(format!("{} does not hold a JWT (base64url parts separated by dots)", path.display()));
    }
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| format!("{}: {e}", path.display()))
}
