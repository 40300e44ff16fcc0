//! The aggregator's listening sockets and its plaintext gRPC accept stream.
//!
//! [`bind`] listens with a backlog of [`BACKLOG`] (the kernel caps it at `net.core.somaxconn`) instead of
//! tokio's 1,024, so a reconnect storm of thousands of agents after a restart waits in the kernel's queue
//! instead of having SYNs dropped and retried seconds later.
//!
//! [`PlainIncoming`] hands accepted connections to the gRPC server with `TCP_NODELAY` set (the server
//! does not set it on connections it is given, and Nagle's algorithm would hold a commit or an ack behind
//! the previous one until the agent's delayed ACK), and pauses [`ACCEPT_PAUSE`] after an accept error:
//! at the open-file limit (`EMFILE`) the listener stays readable, and without a pause the accept loop
//! would spin a core until a file is free. Errors are counted (`cni_metrics_accept_errors_total`) and the
//! first of a run is logged.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Sleep;
use tracing::{info, warn};

/// Where the aggregator listens (`serve`).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Listening")]
pub struct ListenArgs {
    /// gRPC listen address for agents.
    #[arg(long, env = "GRPC_LISTEN", default_value = "0.0.0.0:61690")]
    pub grpc_listen: SocketAddr,

    /// HTTP listen address for /metrics, /healthz and /readyz (upstream helper's Prometheus port).
    #[arg(long, env = "HTTP_LISTEN", default_value = "0.0.0.0:61681")]
    pub http_listen: SocketAddr,
}

/// Connections the kernel may queue before the aggregator accepts them.
pub const BACKLOG: u32 = 4096;

/// Pause after a failed accept (both the plaintext and the TLS accept loops).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Listen on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, so a restarted aggregator can bind at once).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What the gRPC listener counts: failed accepts and, with mutual TLS, refused handshakes. Shared by the
/// accept loops (which record) and `/metrics` (which renders).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accept_errors: AtomicU64,
    handshake_failures: AtomicU64,
}

impl ConnectionStats {
    pub fn record_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// The self-metrics (the handshake counter only when mutual TLS is on).
    pub fn render(&self, page: &mut cni_metrics_proto::exposition::Page<'_>, tls: bool) {
        if tls {
            page.counter(
                "cni_metrics_tls_handshake_failures_total",
                "gRPC connections refused by mutual TLS (plaintext, no or foreign certificate)",
                self.handshake_failures(),
            );
        }
        page.counter(
            "cni_metrics_accept_errors_total",
            "gRPC connections the aggregator failed to accept (e.g. at its open-file limit)",
            self.accept_errors(),
        );
    }
}

/// Count an accept error; log the first of a run (`failing` says a run is on).
pub fn accept_failed(e: &io::Error, stats: &ConnectionStats, failing: &mut bool) {
    stats.record_accept_error();
    if !*failing {
        *failing = true;
        warn!(error = %e, pause = %cni_metrics_proto::duration::format(ACCEPT_PAUSE), "cannot accept gRPC connections (at the open-file limit?); retrying after a pause");
    }
}

/// A run of accept errors ended.
pub fn accept_recovered(failing: &mut bool, stats: &ConnectionStats) {
    if std::mem::take(failing) {
        info!(errors = stats.accept_errors(), "accepting gRPC connections again");
    }
}

/// Accepted plaintext connections, `TCP_NODELAY` set, with a pause after each accept error.
pub struct PlainIncoming {
    listener: TcpListener,
    pause: Option<Pin<Box<Sleep>>>,
    stats: Arc<ConnectionStats>,
    failing: bool,
}

impl PlainIncoming {
    pub fn new(listener: TcpListener, stats: Arc<ConnectionStats>) -> Self {
        Self { listener, pause: None, stats, failing: false }
    }
}

impl tokio_stream::Stream for PlainIncoming {
    type Item = io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let this = &mut *self;
        match ready!(this.listener.poll_accept(cx)) {
            Ok((tcp, _)) => {
                accept_recovered(&mut this.failing, &this.stats);
                let _ = tcp.set_nodelay(true);
                Poll::Ready(Some(Ok(tcp)))
            }
            Err(e) => {
                accept_failed(&e, &this.stats, &mut this.failing);
                this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                // The server logs it at trace level and polls again: the pause then holds it.
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_the_backlog_holds_a_burst() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        // More connections than tokio's default backlog of 1,024, made before any is accepted (fewer
        // where the kernel caps backlogs lower).
        let somaxconn: usize =
            std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096);
        // Two files per connection (both ends in this process).
        let files = crate::limits::raise_open_file_limit().map_or(1024, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let burst = 1500.min(somaxconn * 3 / 4).min(files.saturating_sub(256) / 2);
        let mut clients = Vec::new();
        for _ in 0..burst {
            let c = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
            clients.push(c.ok().and_then(Result::ok).expect("connected while nothing is accepted: the backlog holds it"));
        }
        let stats = Arc::new(ConnectionStats::default());
        let mut incoming = PlainIncoming::new(listener, stats.clone());
        for _ in 0..clients.len() {
            let tcp = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
            let tcp = tcp.ok().flatten().and_then(Result::ok).expect("accepted");
            assert!(tcp.nodelay().unwrap_or(false), "TCP_NODELAY set");
        }
        assert_eq!(stats.accept_errors(), 0);
    }
}
