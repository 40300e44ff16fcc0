//! Wires the aggregator's parts around injected listeners and an injected shutdown future (so tests and
//! the demo run it on `127.0.0.1:0`): the gRPC ingest server, the HTTP server, the TTL sweeper and the
//! publisher. On shutdown, in this order: the ingest freezes (no report is applied any more), the
//! publisher publishes the last window and gives the sinks `--shutdown-grace` to deliver, commits what
//! they delivered; then every stream sends its last commit and ends, the servers drain, the background
//! tasks (TTL sweeper, consumer notifier, EC2 refreshers, token-key refresher) end, and `serve` returns:
//! every task it started is in [`Tasks`], so "serve returned" means "everything it started stopped".

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::consumer_server::ConsumerServer;
use cni_metrics_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::Router;
use tracing::{info, warn};

use crate::auth::TokenAuth;
use crate::config::ServerConfig;
use crate::consumer::ConsumerService;
use crate::http::{router, HttpState};
use crate::ingest::IngestArgs;
use crate::ingest::{CommitMailbox, IngestLimits, IngestService, StreamSignals};
use crate::listen::ConnectionStats;
use crate::publish::{run_publisher, Commits, PublishStats};
use crate::sinks::Sink;
use crate::state::StateHandle;
use crate::subnets::SubnetsConfig;

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
    pub state: StateHandle,
    pub publish: Arc<Mutex<PublishStats>>,
    /// What the gRPC listener counts (failed accepts, refused TLS handshakes).
    pub connections: Arc<ConnectionStats>,
}

impl Handles {
    pub fn new(cfg: &ServerConfig) -> Self {
        Self { state: StateHandle::new(cfg.state.clone()), publish: Arc::default(), connections: Arc::default() }
    }
}

/// The two signals that order a shutdown: the ingest freezes first (no report is applied any more),
/// then, once the publisher is done, everything else stops.
struct Lifecycle {
    freeze: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Lifecycle {
    fn new() -> Self {
        Self { freeze: watch::channel(false).0, stop: watch::channel(false).0 }
    }

    fn frozen(&self) -> impl Future<Output = ()> + Send + 'static {
        until_true(self.freeze.subscribe())
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        until_true(self.stop.subscribe())
    }
}

async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The background tasks `serve` starts besides the servers and the publisher: each stops when the
/// lifecycle says stop, and `serve` waits for all of them (aborting one that outlives [`DRAIN`]).
#[derive(Default)]
struct Tasks(tokio::task::JoinSet<()>);

impl Tasks {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(task);
    }

    /// Wait for every task; a task still running after `drain` is aborted. A panicked task is an error.
    async fn join(mut self, drain: Duration) -> Result<(), tokio::task::JoinError> {
        let all = async {
            while let Some(r) = self.0.join_next().await {
                r?;
            }
            Ok(())
        };
        match tokio::time::timeout(drain, all).await {
            Ok(r) => r,
            Err(_) => {
                warn!(drain = %cni_metrics_proto::duration::format(drain), left = self.0.len(), "background tasks did not end within the drain time; aborting them");
                self.0.shutdown().await;
                Ok(())
            }
        }
    }
}

/// Run until `shutdown` completes, then stop in the order the module doc gives; returns once every task
/// it started has ended.
pub async fn serve(
    cfg: ServerConfig,
    grpc: TcpListener,
    http: TcpListener,
    sinks: Vec<Arc<dyn Sink>>,
    handles: Handles,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    log_start(&cfg, &grpc, &http, &sinks)?;
    let life = Lifecycle::new();
    let (commit_tx, commit_rx) = watch::channel(0u64);
    let mut tasks = Tasks::default();
    if let Some(subnets) = &cfg.subnets {
        start_subnets(subnets, &handles.state, &mut tasks, life.stopped());
        start_prefixes(subnets, &handles.state, &mut tasks, life.stopped());
    }
    let mailbox = Arc::new(CommitMailbox::default());
    let signals =
        StreamSignals { frozen: life.freeze.subscribe(), stop: life.stop.subscribe(), commits: commit_rx, mailbox: mailbox.clone() };
    let auth = agent_auth(&cfg, &mut tasks, life.stopped())?;
    let router = grpc_services(&cfg, &handles.state, signals, auth.clone(), &mut tasks, life.stopped()).await?;
    let grpc_task = spawn_grpc(&cfg, router, grpc, handles.connections.clone(), life.stopped())?;
    let http_task = spawn_http(&cfg, http, &handles, sinks.clone(), auth, life.stopped());
    tasks.spawn(sweep(handles.state.clone(), life.stopped()));
    let publisher = tokio::spawn(run_publisher(
        handles.state.clone(),
        sinks,
        cfg.publish.publish_interval,
        cfg.publish.shutdown_grace,
        handles.publish.clone(),
        Commits::new(commit_tx, mailbox),
        life.frozen(),
    ));

    shutdown.await;
    info!("aggregator shutting down: ingest frozen, delivering the last window");
    let _ = life.freeze.send(true);
    let publisher_result = publisher.await;
    let _ = life.stop.send(true);
    let grpc_result = drained(grpc_task).await;
    let http_result = drained(http_task).await;
    let tasks_result = tasks.join(DRAIN).await;
    publisher_result?;
    tasks_result?;
    grpc_result??;
    http_result??;
    info!("aggregator stopped");
    Ok(())
}

fn log_start(cfg: &ServerConfig, grpc: &TcpListener, http: &TcpListener, sinks: &[Arc<dyn Sink>]) -> Result<(), ServeError> {
    info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        cluster_id = cfg.state.cluster_id.as_str(),
        publish_interval = %cni_metrics_proto::duration::format(cfg.publish.publish_interval),
        sinks = %sinks.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        "aggregator starting"
    );
    if cfg.state.cluster_id.is_empty() {
        warn!("no cluster id: set AWS_CLUSTER_ID or --cluster-id; the cluster_id label is empty");
    }
    Ok(())
}

/// `--subnet-metrics`: the state joins what the refresher fetches from EC2.
fn start_subnets(cfg: &SubnetsConfig, state: &StateHandle, tasks: &mut Tasks, stopped: impl Future<Output = ()> + Send + 'static) {
    state.enable_subnets(cfg.low_threshold, cfg.forecast_window);
    tasks.spawn(crate::subnets::run_refresher(state.clone(), cfg.refresher.clone(), stopped));
}

/// `--subnet-prefixes` (with `--subnet-metrics`): free /28 blocks, on their own refresh.
fn start_prefixes(cfg: &SubnetsConfig, state: &StateHandle, tasks: &mut Tasks, stopped: impl Future<Output = ()> + Send + 'static) {
    use crate::state::subnets::space::PrefixMode;
    if cfg.prefixes == PrefixMode::False {
        return;
    }
    state.enable_prefixes(cfg.prefixes, cfg.low_prefixes);
    let region = cfg.refresher.region.clone();
    tasks.spawn(crate::subnets::prefixes::run_refresher(state.clone(), region, cfg.prefixes_refresh, stopped));
}

/// The agent stream limit: `--max-streams`, else derived from the open-file limit (raised first).
fn stream_limits(cfg: &IngestArgs) -> IngestLimits {
    let open_files = match crate::limits::raise_open_file_limit() {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit; the agent stream limit is not derived from it");
            None
        }
    };
    let stream_limit = crate::limits::derive(cfg.max_streams.get().copied(), open_files);
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
    IngestLimits { max_streams: stream_limit.max_streams, hello_timeout: cfg.hello_timeout, max_message_bytes: cfg.max_message_bytes }
}

/// How agents prove who they are (`--agent-auth`); the token verifier's key refresher runs until stopped.
fn agent_auth(
    cfg: &ServerConfig,
    tasks: &mut Tasks,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<Arc<TokenAuth>>, ServeError> {
    match cfg.auth.clone() {
        Some(c) => {
            info!(audience = %c.audience, subject = %c.subject, api_server = %c.source.api_server, "agents must prove their node with a ServiceAccount token");
            let auth = Arc::new(TokenAuth::new(c)?);
            tasks.spawn(auth.clone().run_refresher(stopped));
            Ok(Some(auth))
        }
        None if cfg.tls.is_some() => {
            info!("agents are authenticated by mutual TLS only (--agent-auth none): any client with a certificate can speak for any node");
            Ok(None)
        }
        None => {
            warn!("agents are not authenticated (--agent-auth none): any client that reaches the gRPC port can speak for any node");
            Ok(None)
        }
    }
}

/// The gRPC services (ingest, consumer, health, reflection) on one router; the consumer notifier joins
/// `tasks`.
async fn grpc_services(
    cfg: &ServerConfig,
    state: &StateHandle,
    signals: StreamSignals,
    auth: Option<Arc<TokenAuth>>,
    tasks: &mut Tasks,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<Router, ServeError> {
    let ingest = IngestServer::new(IngestService::new(state.clone(), signals, stream_limits(&cfg.ingest), auth))
        .max_decoding_message_size(cfg.ingest.max_message_bytes)
        .max_encoding_message_size(cfg.ingest.max_message_bytes);
    let consumer = ConsumerService::new(state.clone());
    tasks.spawn(consumer.notifier(cfg.subscribe_interval, stopped));
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    health.set_serving::<ConsumerServer<ConsumerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cni_metrics_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One stream per agent; a few for consumers. A client opening more is held back by HTTP/2.
        .max_concurrent_streams(Some(cfg.ingest.max_streams_per_connection))
        .add_service(ingest)
        .add_service(ConsumerServer::new(consumer))
        .add_service(health_svc)
        .add_service(reflection);
    Ok(router)
}

/// Serve gRPC on `listener`: with mutual TLS when configured, else plaintext.
fn spawn_grpc(
    cfg: &ServerConfig,
    router: Router,
    listener: TcpListener,
    connections: Arc<ConnectionStats>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, ServeError> {
    Ok(match cfg.tls.clone() {
        Some(tls) => {
            let initial = crate::tls::server_config(&tls.files)?;
            info!(cert = %tls.files.cert.display(), client_ca = %tls.files.client_ca.display(), "gRPC requires mutual TLS");
            let incoming = crate::tls::incoming(listener, tls.files, initial, connections, tls.max_handshakes);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            let incoming = crate::listen::PlainIncoming::new(listener, connections);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    })
}

/// Serve `/metrics`, `/healthz`, `/readyz` on `listener`.
fn spawn_http(
    cfg: &ServerConfig,
    listener: TcpListener,
    handles: &Handles,
    sinks: Vec<Arc<dyn Sink>>,
    auth: Option<Arc<TokenAuth>>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = router(HttpState {
        cluster: handles.state.clone(),
        publish: handles.publish.clone(),
        prometheus: cfg.prometheus,
        sinks,
        connections: handles.connections.clone(),
        tls: cfg.tls.is_some(),
        auth,
    });
    tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await })
}

/// Drop nodes past their TTL, four times a second, until stopped.
async fn sweep(state: StateHandle, stopped: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {
                let expired = state.expire(Instant::now());
                for node in expired {
                    warn!(node = %node, "node expired: no report within its TTL; its gauges left the sums");
                }
            }
        }
    }
}

/// How long servers may take to drain at shutdown before they are aborted.
const DRAIN: Duration = Duration::from_secs(5);

/// Wait for a server to drain within [`DRAIN`], else abort it.
async fn drained<T>(mut task: tokio::task::JoinHandle<Result<(), T>>) -> Result<Result<(), T>, tokio::task::JoinError> {
    match tokio::time::timeout(DRAIN, &mut task).await {
        Ok(r) => r,
        Err(_) => {
            warn!(drain = %cni_metrics_proto::duration::format(DRAIN), "a server did not drain in time; aborting it");
            task.abort();
            Ok(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Tasks that end when told, one that never does, one that panics.
    #[tokio::test]
    async fn tasks_end_or_are_aborted_and_a_panic_is_an_error() {
        let life = Lifecycle::new();
        let ended = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::default();
        for _ in 0..3 {
            let (stopped, ended) = (life.stopped(), ended.clone());
            tasks.spawn(async move {
                stopped.await;
                ended.fetch_add(1, Ordering::Relaxed);
            });
        }
        let _ = life.stop.send(true);
        assert!(tasks.join(Duration::from_secs(5)).await.is_ok());
        assert_eq!(ended.load(Ordering::Relaxed), 3, "joined means ended");

        let mut stuck = Tasks::default();
        stuck.spawn(std::future::pending());
        let started = Instant::now();
        assert!(stuck.join(Duration::from_millis(50)).await.is_ok(), "a task past the drain is aborted");
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut panics = Tasks::default();
        panics.spawn(async { panic!("a refresher bug") });
        assert!(panics.join(Duration::from_secs(5)).await.is_err(), "a panic is reported");
    }
}
