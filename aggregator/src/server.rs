//! Wires the aggregator's parts around injected listeners and an injected shutdown future (so tests and
//! the demo run it on `127.0.0.1:0`): the gRPC ingest server, the HTTP server, the TTL sweeper and the
//! publisher. On shutdown, in this order: the ingest freezes (no report is applied any more), the
//! publisher publishes the last window and gives the sinks `--shutdown-grace` to deliver, commits what
//! they delivered; then every stream sends its last commit and ends, the servers drain, and `serve`
//! returns.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::consumer_server::ConsumerServer;
use cni_metrics_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::AggregatorConfig;
use crate::consumer::ConsumerService;
use crate::http::{router, HttpState};
use crate::ingest::{IngestLimits, IngestService, StreamSignals};
use crate::publish::{run_publisher, Commits, PublishStats};
use crate::shared::{lock, Shared};
use crate::sinks::Sink;
use crate::state::ClusterState;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("a server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("gRPC reflection set-up failed: {0}")]
    Reflection(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("agent authentication: {0}")]
    Auth(#[from] crate::auth::SetupError),
}

/// Handles shared with whoever embeds the aggregator (tests, demo view).
#[derive(Clone)]
pub struct Handles {
    pub state: Shared,
    pub publish: Arc<Mutex<PublishStats>>,
    pub tls_handshake_failures: Arc<std::sync::atomic::AtomicU64>,
    /// Failed accepts on the gRPC port (e.g. at the open-file limit).
    pub accept_errors: Arc<std::sync::atomic::AtomicU64>,
}

impl Handles {
    pub fn new(cfg: &AggregatorConfig) -> Self {
        let state = ClusterState::new(cfg.state_config());
        Self {
            state: Arc::new(Mutex::new(state)),
            publish: Arc::default(),
            tls_handshake_failures: Arc::default(),
            accept_errors: Arc::default(),
        }
    }
}

/// Run until `shutdown` completes.
pub async fn serve(
    cfg: AggregatorConfig,
    grpc: TcpListener,
    http: TcpListener,
    sinks: Vec<Arc<dyn Sink>>,
    handles: Handles,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (freeze_tx, freeze_rx) = watch::channel(false);
    let (commit_tx, commit_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        cluster_id = cfg.cluster_id.as_deref().unwrap_or(""),
        publish_interval = ?cfg.publish_interval,
        sinks = %sinks.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        "aggregator starting"
    );
    if cfg.cluster_id.is_none() {
        warn!("no cluster id: set AWS_CLUSTER_ID or --cluster-id; the cluster_id label is empty");
    }

    if cfg.subnet_metrics {
        lock(&handles.state).enable_subnets(cfg.subnet_low_threshold);
        let sub = crate::subnets::SubnetConfig {
            refresh: cfg.subnet_refresh,
            discovery: cfg.subnet_discovery,
            cluster_name: None,
            region: cfg.region.clone(),
        };
        tokio::spawn(crate::subnets::run_refresher(handles.state.clone(), sub, stopped()));
    }
    let mailbox = Arc::new(crate::ingest::CommitMailbox::default());
    let signals = StreamSignals { frozen: freeze_rx.clone(), stop: stop_tx.subscribe(), commits: commit_rx, mailbox: mailbox.clone() };
    let open_files = match crate::limits::raise_open_file_limit() {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit; the agent stream limit is not derived from it");
            None
        }
    };
    let stream_limit = crate::limits::derive(cfg.max_streams, open_files);
    info!(
        max_streams = stream_limit.max_streams,
        open_files = open_files.unwrap_or(0),
        reserved_files = crate::limits::RESERVED_FILES,
        source = if stream_limit.from_flag { "--max-streams" } else { "open-file limit" },
        "agent stream limit"
    );
    if stream_limit.exceeds_open_files() {
        warn!(
            max_streams = stream_limit.max_streams,
            open_files = open_files.unwrap_or(0),
            "--max-streams is above what the open-file limit allows: connections past the limit will fail; raise the limit (ulimit -n) or lower --max-streams"
        );
    }
    let limits = IngestLimits { max_streams: stream_limit.max_streams, hello_timeout: cfg.hello_timeout };
    let auth = match cfg.token_auth_config() {
        Some(c) => {
            info!(audience = %c.audience, subject = %c.subject, api_server = %c.source.api_server, "agents must prove their node with a ServiceAccount token");
            let auth = Arc::new(crate::auth::TokenAuth::new(c)?);
            tokio::spawn(auth.clone().run_refresher(stopped()));
            Some(auth)
        }
        None if cfg.tls_files().is_some() => {
            info!("agents are authenticated by mutual TLS only (--agent-auth none): any client with a certificate can speak for any node");
            None
        }
        None => {
            warn!("agents are not authenticated (--agent-auth none): any client that reaches the gRPC port can speak for any node");
            None
        }
    };
    let svc = IngestServer::new(IngestService::new(handles.state.clone(), signals, limits, auth.clone()))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let consumer = ConsumerService::new(handles.state.clone());
    let notifier = consumer.run_notifier(cfg.subscribe_interval, stopped());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    health.set_serving::<ConsumerServer<ConsumerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cni_metrics_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let grpc_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One stream per agent; a few for consumers. A client opening more is held back by HTTP/2.
        .max_concurrent_streams(Some(cfg.max_streams_per_connection))
        .add_service(svc)
        .add_service(ConsumerServer::new(consumer))
        .add_service(health_svc)
        .add_service(reflection);
    let grpc_task = match cfg.tls_files() {
        Some(files) => {
            let initial = crate::tls::server_config(&files)?;
            info!(cert = %files.cert.display(), client_ca = %files.client_ca.display(), "gRPC requires mutual TLS");
            let counters = crate::tls::Counters {
                handshake_failures: handles.tls_handshake_failures.clone(),
                accept_errors: handles.accept_errors.clone(),
            };
            let incoming = crate::tls::incoming(grpc, files, initial, counters, cfg.max_tls_handshakes);
            tokio::spawn(grpc_router.serve_with_incoming_shutdown(incoming, stopped()))
        }
        None => {
            let incoming = crate::listen::PlainIncoming::new(grpc, handles.accept_errors.clone());
            tokio::spawn(grpc_router.serve_with_incoming_shutdown(incoming, stopped()))
        }
    };

    let app = router(HttpState {
        cluster: handles.state.clone(),
        publish: handles.publish.clone(),
        prometheus: cfg.prometheus,
        sinks: sinks.clone(),
        tls_handshake_failures: cfg.tls_files().map(|_| handles.tls_handshake_failures.clone()),
        accept_errors: handles.accept_errors.clone(),
        auth,
    });
    let http_stop = stopped();
    let http_task = tokio::spawn(async move { axum::serve(http, app).with_graceful_shutdown(http_stop).await });

    let sweeper = {
        let state = handles.state.clone();
        let stop = stopped();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {
                        let expired = lock(&state).expire(Instant::now());
                        for node in expired {
                            warn!(node = %node, "node expired: no report within its TTL; its gauges left the sums");
                        }
                    }
                }
            }
        })
    };
    let frozen = {
        let mut rx = freeze_rx;
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let publisher = tokio::spawn(run_publisher(
        handles.state.clone(),
        sinks,
        cfg.publish_interval,
        cfg.shutdown_grace,
        handles.publish.clone(),
        Commits::new(commit_tx, mailbox),
        frozen,
    ));

    shutdown.await;
    info!("aggregator shutting down: ingest frozen, delivering the last window");
    let _ = freeze_tx.send(true);
    let publisher_result = publisher.await;
    let _ = stop_tx.send(true);
    let grpc_result = bounded(grpc_task).await;
    let http_result = bounded(http_task).await;
    let _ = sweeper.await;
    let _ = notifier.await;
    publisher_result?;
    grpc_result??;
    http_result??;
    info!("aggregator stopped");
    Ok(())
}

/// How long servers may take to drain at shutdown before they are aborted.
const DRAIN: Duration = Duration::from_secs(5);

async fn bounded<T>(mut task: tokio::task::JoinHandle<Result<(), T>>) -> Result<Result<(), T>, tokio::task::JoinError> {
    match tokio::time::timeout(DRAIN, &mut task).await {
        Ok(r) => r,
        Err(_) => {
            warn!("a server did not drain within 5s; aborting it");
            task.abort();
            Ok(Ok(()))
        }
    }
}
