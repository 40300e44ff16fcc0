//! The `Consumer` gRPC service for other consumers: `GetCluster`, `ListNodes` and `Subscribe`.
//!
//! Views are built by pure functions from the state ([`cluster_view`], [`node_view`]) under the state
//! lock, then sent outside it. Subscriptions are fed by one notifier task ([`ConsumerService::run_notifier`]) that builds
//! an update only when the state changed, at most once per interval, and broadcasts it; every subscriber
//! has a small bounded buffer, and one that falls behind is dropped with RESOURCE_EXHAUSTED, so a slow
//! consumer never slows ingestion or the other subscribers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::consumer_server::Consumer;
use cni_metrics_proto::v1::{
    Aggregate, ClusterUpdate, ClusterView, GetClusterRequest, Label, ListNodesRequest, ListNodesResponse, NodeView, ScrapeStatus,
    SubnetView, SubscribeRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use cni_metrics_proto::clock::unix_ms_now;

use crate::shared::{lock, Shared};
use crate::state::{ClusterState, NodeState};

/// Per-subscriber buffer of updates.
const SUBSCRIBER_BUFFER: usize = 4;
/// Updates kept for subscribers between notifier ticks.
const BROADCAST_BUFFER: usize = 4;

/// The cluster numbers.
pub fn cluster_view(st: &ClusterState, now: Instant, with_aggregates: bool) -> ClusterView {
    let c = st.capacity();
    let (u_total, u_max) = c.utilization();
    let sum = |name: &str| st.value(name, &[]).unwrap_or(0.0);
    let mut view = ClusterView {
        cluster_id: st.cluster_id().to_owned(),
        time_unix_ms: unix_ms_now(),
        nodes_known: st.node_count() as u32,
        nodes_reporting: st.nodes().filter(|n| n.status == ScrapeStatus::Ok).count() as u32,
        nodes_stale: st.nodes().filter(|n| ClusterState::is_stale(n, now)).count() as u32,
        nodes_low_on_ips: c.low_nodes,
        nodes_anomalous: c.anomalous_nodes,
        assigned_ips: sum("awscni_assigned_ip_addresses"),
        total_ips: sum("awscni_total_ip_addresses"),
        max_ips: sum("awscni_ip_max"),
        available_ips: c.available,
        ip_headroom: c.headroom,
        utilization_total: u_total.unwrap_or(-1.0),
        utilization_max: u_max.unwrap_or(-1.0),
        enis_allocated: sum("awscni_eni_allocated"),
        enis_max: sum("awscni_eni_max"),
        aggregates: Vec::new(),
        subnets: Vec::new(),
        subnet_available_ips: 0.0,
        subnets_low_on_ips: 0,
    };
    if let Some(r) = st.subnet_report() {
        view.subnet_available_ips = r.available;
        view.subnets_low_on_ips = r.low;
        view.subnets = r
            .rows
            .iter()
            .map(|row| SubnetView {
                subnet_id: row.subnet_id.clone(),
                availability_zone: row.availability_zone.clone(),
                usable_ips: row.usable,
                available_ips: row.available,
                held_by_cluster: row.held_by_cluster,
                assigned_to_pods: row.assigned_to_pods,
                held_by_others: row.held_by_others,
                low_on_ips: row.low,
                stale: st.subnets.stale,
                refreshed_unix_ms: st.subnets.refreshed_unix_ms,
            })
            .collect();
    }
    if with_aggregates {
        view.aggregates = st
            .aggregates()
            .map(|(name, labels, kind, value)| Aggregate {
                name: name.to_owned(),
                labels: labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                kind: kind as i32,
                value,
            })
            .collect();
    }
    view
}

/// One node.
pub fn node_view(n: &NodeState, now: Instant) -> NodeView {
    let known = |v: Option<f64>| v.unwrap_or(-1.0);
    NodeView {
        name: n.name.to_string(),
        status: n.status as i32,
        status_detail: n.status_detail.clone(),
        last_report_age_ms: now.saturating_duration_since(n.last_seen).as_millis() as u64,
        stale: ClusterState::is_stale(n, now),
        connected: n.connected,
        availability_zone: n.availability_zone.clone(),
        instance_type: n.instance_type.clone(),
        instance_id: n.instance_id.clone(),
        region: n.region.clone(),
        agent_version: n.agent_version.clone(),
        assigned_ips: known(n.capacity.assigned),
        total_ips: known(n.capacity.total),
        max_ips: known(n.capacity.max),
        available_ips: known(n.derived.available),
        ip_headroom: known(n.derived.headroom),
        low_on_ips: n.derived.low,
        anomalous: n.derived.anomalous,
        series: n.series_count() as u32,
        bad_lines_total: n.bad_lines_total,
    }
}

/// Node views sorted by name, filtered to `only` when not empty.
pub fn node_views(st: &ClusterState, now: Instant, only: &[String]) -> Vec<NodeView> {
    let mut v: Vec<NodeView> =
        st.nodes().filter(|n| only.is_empty() || only.iter().any(|o| **o == *n.name)).map(|n| node_view(n, now)).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// What the notifier broadcasts.
#[derive(Debug)]
pub struct Broadcast {
    pub version: u64,
    pub cluster: ClusterView,
    /// Empty when no subscriber asked for nodes.
    pub nodes: Vec<NodeView>,
}

#[derive(Clone)]
pub struct ConsumerService {
    state: Shared,
    updates: broadcast::Sender<Arc<Broadcast>>,
    /// Subscribers that want per-node details (the notifier builds them only then).
    node_subscribers: Arc<AtomicUsize>,
}

impl ConsumerService {
    pub fn new(state: Shared) -> Self {
        let (updates, _) = broadcast::channel(BROADCAST_BUFFER);
        Self { state, updates, node_subscribers: Arc::default() }
    }

    /// Build and broadcast updates when the state changed, at most every `interval`, until `stop`.
    pub fn run_notifier(&self, interval: Duration, stop: impl Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let (state, updates, wants_nodes) = (self.state.clone(), self.updates.clone(), self.node_subscribers.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = u64::MAX;
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {}
                }
                if updates.receiver_count() == 0 {
                    continue;
                }
                let update = {
                    let st = lock(&state);
                    if st.version() == seen {
                        continue;
                    }
                    seen = st.version();
                    let now = Instant::now();
                    let nodes = if wants_nodes.load(Ordering::Relaxed) > 0 { node_views(&st, now, &[]) } else { Vec::new() };
                    Broadcast { version: seen, cluster: cluster_view(&st, now, true), nodes }
                };
                let _ = updates.send(Arc::new(update));
            }
        })
    }
}

/// Decrements the node-subscriber count when a subscription ends.
struct NodeInterest(Option<Arc<AtomicUsize>>);

impl Drop for NodeInterest {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn to_update(b: &Broadcast, only: &[String], cluster_only: bool) -> ClusterUpdate {
    let nodes =
        if cluster_only { Vec::new() } else { b.nodes.iter().filter(|n| only.is_empty() || only.contains(&n.name)).cloned().collect() };
    ClusterUpdate { cluster: Some(b.cluster.clone()), nodes, version: b.version }
}

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn get_cluster(&self, _req: Request<GetClusterRequest>) -> Result<Response<ClusterView>, Status> {
        let view = cluster_view(&lock(&self.state), Instant::now(), true);
        Ok(Response::new(view))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let only = req.into_inner().nodes;
        let nodes = node_views(&lock(&self.state), Instant::now(), &only);
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    type SubscribeStream = ReceiverStream<Result<ClusterUpdate, Status>>;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = req.remote_addr();
        let SubscribeRequest { nodes: only, min_interval_ms, cluster_only } = req.into_inner();
        let min_interval = Duration::from_millis(u64::from(min_interval_ms.max(100)));
        let interest = NodeInterest((!cluster_only).then(|| {
            self.node_subscribers.fetch_add(1, Ordering::Relaxed);
            self.node_subscribers.clone()
        }));
        let mut rx = self.updates.subscribe();
        // The first update at once, from the current state.
        let first = {
            let st = lock(&self.state);
            let now = Instant::now();
            let nodes = if cluster_only { Vec::new() } else { node_views(&st, now, &only) };
            ClusterUpdate { cluster: Some(cluster_view(&st, now, true)), nodes, version: st.version() }
        };
        // One slot more than the buffer: reserved for the status that tells a slow consumer it was dropped.
        let (tx, out) = mpsc::channel(SUBSCRIBER_BUFFER + 1);
        let mut last_version = first.version;
        let _ = tx.try_send(Ok(first));
        info!(?peer, nodes = only.len(), cluster_only, "subscriber connected");
        tokio::spawn(async move {
            let _interest = interest;
            let mut last_sent = tokio::time::Instant::now();
            let mut pending: Option<Arc<Broadcast>> = None;
            loop {
                let due = last_sent + min_interval;
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(b) if b.version > last_version => pending = Some(b),
                        Ok(_) => {} // already covered by what was sent
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            warn!(?peer, missed = n, "subscriber too slow; dropped");
                            let _ = tx.try_send(Err(Status::resource_exhausted("consumer too slow: updates were missed; resubscribe")));
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep_until(due), if pending.is_some() => {}
                    _ = tx.closed() => return,
                }
                if pending.is_some() && tokio::time::Instant::now() >= due {
                    let Some(b) = pending.take() else { continue };
                    if tx.capacity() <= 1 {
                        warn!(?peer, "subscriber not reading; dropped");
                        let _ = tx.try_send(Err(Status::resource_exhausted("consumer too slow: its buffer is full; resubscribe")));
                        return;
                    }
                    match tx.try_send(Ok(to_update(&b, &only, cluster_only))) {
                        Ok(()) => {
                            last_sent = tokio::time::Instant::now();
                            last_version = b.version;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}
