//! The `Consumer` gRPC service for other consumers: `GetCluster`, `ListNodes` and `Subscribe`.
//!
//! Views are built by pure functions from the state ([`views`]) under the state lock, then sent outside
//! it; `ListNodes` is a [`query::NodeQuery`] that builds views of one page's nodes only. Subscriptions
//! are fed by one notifier task ([`ConsumerService::notifier`]) that builds an update only when the
//! state changed, at most once per interval, and broadcasts it: the cluster view, the nodes that changed
//! since its last broadcast (when a `changes` subscriber exists, see [`feed`]) and, for subscribers of
//! every node, every node. Every subscriber has a small bounded buffer, and one that falls behind is
//! dropped with RESOURCE_EXHAUSTED, so a slow consumer never slows ingestion or the other subscribers.
//!
//! Without `changes`, an update carries every node in one message: that holds up to
//! [`EVERY_NODE_LIMIT`] nodes. On a larger cluster such a subscription is refused (or ended, when the
//! cluster grows past it) with FAILED_PRECONDITION naming the alternatives, instead of the notifier
//! building 100,000 views per tick for a message no client could decode. A subscriber that names its
//! nodes (at most [`NAMED_NODES_LIMIT`]) gets views of those only, built for it alone.

pub mod feed;
pub mod query;
#[cfg(test)]
mod testing;
pub mod views;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::consumer_server::Consumer;
use cni_metrics_proto::v1::{
    ClusterUpdate, ClusterView, GetClusterRequest, ListNodesRequest, ListNodesResponse, NodeView, SubscribeRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::state::{ClusterState, StateHandle};
pub use views::{cluster_view, node_view, node_views};

/// `serve`'s flag for the consumer service.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Consumer API")]
pub struct ConsumerArgs {
    /// Subscribers get an update at most this often (when something changed).
    #[arg(long, env = "SUBSCRIBE_INTERVAL", default_value = "1s", value_parser = cni_metrics_proto::duration::parse_positive)]
    pub subscribe_interval: Duration,
}

/// Per-subscriber buffer of updates.
const SUBSCRIBER_BUFFER: usize = 4;
/// Updates kept for subscribers between notifier ticks.
const BROADCAST_BUFFER: usize = 4;
/// Most nodes a Subscribe without `changes` carries in an update (a `ListNodes` page's most).
pub const EVERY_NODE_LIMIT: usize = query::MAX_PAGE_SIZE;
/// Most nodes a subscriber may name.
pub const NAMED_NODES_LIMIT: usize = 1000;

/// Why a subscription of every node cannot be served on this cluster.
fn too_many_nodes(nodes: usize) -> Status {
    Status::failed_precondition(format!(
        "the cluster has {nodes} nodes, more than one update carries ({EVERY_NODE_LIMIT}): subscribe with changes (a picture in pages, then what changed), with cluster_only, or name the nodes"
    ))
}

/// Views of these nodes (those still there).
pub fn views_of(st: &ClusterState, names: &[Arc<str>], now: Instant) -> Vec<NodeView> {
    names.iter().filter_map(|n| st.node(n)).map(|n| node_view(n, now)).collect()
}

/// What the notifier broadcasts.
#[derive(Debug)]
pub struct Broadcast {
    pub version: u64,
    pub cluster: ClusterView,
    /// Every node; empty when no subscriber asked for every node, or the cluster has too many.
    pub nodes: Vec<NodeView>,
    /// Nodes known when there were more than [`EVERY_NODE_LIMIT`] (`nodes` is then empty).
    pub too_many_nodes: Option<usize>,
    /// The nodes that changed since the previous broadcast, and those removed.
    pub changed: Vec<NodeView>,
    pub removed: Vec<Arc<str>>,
    /// Whether `changed` and `removed` are all that changed (false when no change subscriber was there
    /// to need them, or more nodes left than the state remembers between two ticks).
    pub complete: bool,
}

#[derive(Clone)]
pub struct ConsumerService {
    state: StateHandle,
    updates: broadcast::Sender<Arc<Broadcast>>,
    /// Subscribers that want every node in every update (the notifier builds them only then).
    node_subscribers: Arc<AtomicUsize>,
    /// `changes` subscribers (the notifier lists changed nodes only then). Changed under the state
    /// lock, so a broadcast computed after a subscriber's first page has what it needs.
    change_subscribers: Arc<AtomicUsize>,
}

impl ConsumerService {
    pub fn new(state: StateHandle) -> Self {
        let (updates, _) = broadcast::channel(BROADCAST_BUFFER);
        Self { state, updates, node_subscribers: Arc::default(), change_subscribers: Arc::default() }
    }

    /// The notifier task: builds and broadcasts updates when the state changed, at most every
    /// `interval`, until `stop`.
    pub fn notifier(
        &self,
        interval: Duration,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let notifier = Notifier {
            state: self.state.clone(),
            updates: self.updates.clone(),
            wants_nodes: self.node_subscribers.clone(),
            wants_changes: self.change_subscribers.clone(),
            seen: u64::MAX,
            last_tick: Instant::now(),
        };
        notifier.run(interval, stop)
    }
}

/// The one task that turns state changes into broadcasts for every subscriber.
struct Notifier {
    state: StateHandle,
    updates: broadcast::Sender<Arc<Broadcast>>,
    wants_nodes: Arc<AtomicUsize>,
    wants_changes: Arc<AtomicUsize>,
    /// The state version of the last broadcast.
    seen: u64,
    last_tick: Instant,
}

impl Notifier {
    async fn run(mut self, interval: Duration, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Some(update) = self.tick() {
                let _ = self.updates.send(Arc::new(update));
            }
        }
    }

    /// One tick under the state lock: the broadcast, when subscribers exist and the state changed. The
    /// change log is taken every tick, so it stays short while nobody subscribes.
    fn tick(&mut self) -> Option<Broadcast> {
        let now = Instant::now();
        let since = std::mem::replace(&mut self.last_tick, now);
        let subscribed = self.updates.receiver_count() > 0;
        let (change_subscribers, node_subscribers) = (&self.wants_changes, &self.wants_nodes);
        let seen = self.seen;
        // The subscriber counts are read under the state lock, where subscribers register.
        let wants = || subscribed && change_subscribers.load(Ordering::Relaxed) > 0;
        let (version, update) = self.state.take_changes(since, now, wants, |st, log, wants_changes| {
            let wants_nodes = node_subscribers.load(Ordering::Relaxed) > 0;
            let version = st.version();
            if !subscribed || version == seen {
                return (version, None);
            }
            let (changed, removed) = match log {
                Some(log) if wants_changes => (views_of(st, &log.changed, now), Some(log.removed)),
                _ => (Vec::new(), None),
            };
            let too_many_nodes = (st.node_count() > EVERY_NODE_LIMIT).then_some(st.node_count());
            let nodes = if wants_nodes && too_many_nodes.is_none() { node_views(st, now, &[]) } else { Vec::new() };
            let complete = wants_changes && removed.is_some();
            let removed = removed.unwrap_or_default();
            let cluster = cluster_view(st, now, true);
            (version, Some(Broadcast { version, cluster, nodes, too_many_nodes, changed, removed, complete }))
        });
        self.seen = version;
        update
    }
}

/// Decrements a subscriber count when a subscription ends.
struct NodeInterest(Option<Arc<AtomicUsize>>);

impl Drop for NodeInterest {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a subscription without `changes` carries besides the cluster view.
enum Scope {
    ClusterOnly,
    EveryNode,
    /// These nodes, built for this subscriber alone.
    Named(Vec<String>),
}

/// One subscriber without `changes`: every broadcast newer than what it was sent, at most every
/// `min_interval`; cut off when it falls behind or when an update could not carry every node.
struct Subscription {
    state: StateHandle,
    rx: broadcast::Receiver<Arc<Broadcast>>,
    tx: mpsc::Sender<Result<ClusterUpdate, Status>>,
    scope: Scope,
    min_interval: Duration,
    peer: String,
    last_version: u64,
    _interest: NodeInterest,
}

impl Subscription {
    async fn run(mut self) {
        let mut last_sent = tokio::time::Instant::now();
        let mut pending: Option<Arc<Broadcast>> = None;
        loop {
            let due = last_sent + self.min_interval;
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(b) if b.version > self.last_version => pending = Some(b),
                    Ok(_) => {} // already covered by what was sent
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(peer = %self.peer, missed = n, "subscriber too slow; dropped");
                        return self.end(Status::resource_exhausted("consumer too slow: updates were missed; resubscribe"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(due), if pending.is_some() => {}
                _ = self.tx.closed() => return,
            }
            if tokio::time::Instant::now() < due {
                continue;
            }
            let Some(b) = pending.take() else { continue };
            if !self.send(&b) {
                return;
            }
            last_sent = tokio::time::Instant::now();
        }
    }

    /// Send the subscriber its update of `b`; false when the subscription ends.
    fn send(&mut self, b: &Broadcast) -> bool {
        if self.tx.capacity() <= 1 {
            warn!(peer = %self.peer, "subscriber not reading; dropped");
            self.end(Status::resource_exhausted("consumer too slow: its buffer is full; resubscribe"));
            return false;
        }
        if let (Some(n), Scope::EveryNode) = (b.too_many_nodes, &self.scope) {
            warn!(peer = %self.peer, nodes = n, "subscriber of every node ended: the cluster outgrew one update");
            self.end(too_many_nodes(n));
            return false;
        }
        let nodes = match &self.scope {
            Scope::ClusterOnly => Vec::new(),
            Scope::EveryNode => b.nodes.clone(),
            // Named nodes are built for this subscriber alone, as of now.
            Scope::Named(only) => self.state.read(|st| node_views(st, Instant::now(), only)),
        };
        let sent = self.tx.try_send(Ok(to_update(b, nodes))).is_ok();
        if sent {
            self.last_version = b.version;
        }
        sent
    }

    /// End the subscription with `status` (the slot reserved for it is free).
    fn end(&self, status: Status) {
        let _ = self.tx.try_send(Err(status));
    }
}

/// A subscriber's update: the broadcast's cluster view with `nodes`.
fn to_update(b: &Broadcast, nodes: Vec<NodeView>) -> ClusterUpdate {
    ClusterUpdate { cluster: Some(b.cluster.clone()), nodes, version: b.version, ..ClusterUpdate::default() }
}

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn get_cluster(&self, _req: Request<GetClusterRequest>) -> Result<Response<ClusterView>, Status> {
        let view = self.state.read(|st| cluster_view(st, Instant::now(), true));
        Ok(Response::new(view))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let q = query::NodeQuery::from_request(req.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let page = self.state.read(|st| q.page(st, Instant::now()));
        let next_page_token = page.next.map(|k| q.encode(&k)).unwrap_or_default();
        Ok(Response::new(ListNodesResponse { nodes: page.nodes, next_page_token, total_matching: page.total as u32 }))
    }

    type SubscribeStream = ReceiverStream<Result<ClusterUpdate, Status>>;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = req.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let SubscribeRequest { nodes: only, min_interval_ms, cluster_only, changes } = req.into_inner();
        let min_interval = Duration::from_millis(u64::from(min_interval_ms.max(100)));
        if changes && !cluster_only {
            let rx = self.updates.subscribe();
            // Counted under the state lock, so a broadcast computed after the first page has what it needs.
            let subscribers = self.change_subscribers.clone();
            self.state.read(move |_| subscribers.fetch_add(1, Ordering::Relaxed));
            let interest = NodeInterest(Some(self.change_subscribers.clone()));
            let (tx, out) = mpsc::channel(SUBSCRIBER_BUFFER + 1);
            let feed = feed::ChangeFeed { state: self.state.clone(), rx, tx, only, min_interval, peer };
            tokio::spawn(async move {
                let _interest = interest;
                feed.run().await;
            });
            return Ok(Response::new(ReceiverStream::new(out)));
        }
        if only.len() > NAMED_NODES_LIMIT {
            return Err(Status::invalid_argument(format!(
                "{} nodes named: at most {NAMED_NODES_LIMIT} (subscribe with changes for more)",
                only.len()
            )));
        }
        let every_node = !cluster_only && only.is_empty();
        let interest = NodeInterest(every_node.then(|| {
            self.node_subscribers.fetch_add(1, Ordering::Relaxed);
            self.node_subscribers.clone()
        }));
        let rx = self.updates.subscribe();
        // The first update at once, from the current state.
        let first = self.state.read(|st| {
            if every_node && st.node_count() > EVERY_NODE_LIMIT {
                return Err(too_many_nodes(st.node_count()));
            }
            let now = Instant::now();
            let nodes = if cluster_only { Vec::new() } else { node_views(st, now, &only) };
            Ok(ClusterUpdate { cluster: Some(cluster_view(st, now, true)), nodes, version: st.version(), ..ClusterUpdate::default() })
        })?;
        // One slot more than the buffer: reserved for the status that tells a slow consumer it was dropped.
        let (tx, out) = mpsc::channel(SUBSCRIBER_BUFFER + 1);
        let last_version = first.version;
        let _ = tx.try_send(Ok(first));
        info!(%peer, nodes = only.len(), cluster_only, "subscriber connected");
        let scope = if cluster_only {
            Scope::ClusterOnly
        } else if every_node {
            Scope::EveryNode
        } else {
            Scope::Named(only)
        };
        let subscription = Subscription { state: self.state.clone(), rx, tx, scope, min_interval, peer, last_version, _interest: interest };
        tokio::spawn(subscription.run());
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use cni_metrics_proto::v1::ScrapeStatus;
    use tokio_stream::StreamExt;

    use super::testing::{join, state};
    use super::*;

    fn service(nodes: usize) -> ConsumerService {
        let mut st = state();
        let now = Instant::now();
        for i in 0..nodes {
            join(&mut st, &format!("n{i:05}"), "az-a", 1.0, 30.0, now);
        }
        ConsumerService::new(StateHandle::from(st))
    }

    fn request(nodes: &[&str], changes: bool) -> Request<SubscribeRequest> {
        let nodes = nodes.iter().map(|n| (*n).to_owned()).collect();
        Request::new(SubscribeRequest { nodes, min_interval_ms: 100, cluster_only: false, changes })
    }

    async fn first(svc: &ConsumerService, req: Request<SubscribeRequest>) -> Result<ClusterUpdate, Status> {
        let mut out = svc.subscribe(req).await?.into_inner();
        out.next().await.unwrap_or_else(|| Err(Status::internal("stream ended")))
    }

    #[tokio::test]
    async fn every_node_without_changes_is_refused_past_one_update_and_named_nodes_are_served() {
        let svc = service(EVERY_NODE_LIMIT + 1);
        let refused = first(&svc, request(&[], false)).await.err().map(|s| (s.code(), s.message().to_owned()));
        let (code, message) = refused.unwrap_or((tonic::Code::Ok, String::new()));
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(message.contains("5001 nodes") && message.contains("changes"), "{message}");
        // Named nodes: only those, missing ones left out, each once.
        let named = first(&svc, request(&["n00007", "n00002", "missing", "n00007"], false)).await.map(|u| u.nodes);
        let names: Vec<String> = named.unwrap_or_default().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["n00002", "n00007"]);
        // Too many names.
        let many: Vec<String> = (0..=NAMED_NODES_LIMIT).map(|i| format!("n{i:05}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(first(&svc, request(&many, false)).await.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
        // With changes the same cluster is served (its picture in pages).
        assert!(first(&svc, request(&[], true)).await.is_ok_and(|u| u.reset && u.more));
    }

    #[tokio::test]
    async fn a_subscriber_of_every_node_is_ended_when_the_cluster_outgrows_one_update() {
        let svc = service(3);
        let mut out = svc.subscribe(request(&[], false)).await.map(Response::into_inner).ok();
        let got = match out.as_mut() {
            Some(o) => o.next().await.and_then(Result::ok).map(|u| u.nodes.len()),
            None => None,
        };
        assert_eq!(got, Some(3));
        let _notifier = tokio::spawn(svc.notifier(Duration::from_millis(20), std::future::pending()));
        svc.state.change(|st| {
            let now = Instant::now();
            for i in 3..=EVERY_NODE_LIMIT {
                join(st, &format!("n{i:05}"), "az-a", 1.0, 30.0, now);
            }
            let s = join(st, "n99999", "az-b", 1.0, 30.0, now);
            super::testing::set(st, "n99999", s, 2, 2.0, ScrapeStatus::Ok, now);
        });
        let mut end = None;
        if let Some(o) = out.as_mut() {
            while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), o.next()).await {
                if let Err(s) = item {
                    end = Some(s.code());
                    break;
                }
            }
        }
        assert_eq!(end, Some(tonic::Code::FailedPrecondition));
    }
}
