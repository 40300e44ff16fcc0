//! Mutual TLS for the gRPC port. When `--tls-cert`, `--tls-key` and `--tls-client-ca` are set the
//! aggregator accepts only TLS connections whose client certificate chains to that CA (agents and
//! consumers alike); plaintext and anonymous clients fail the handshake. Files use cert-manager's Secret
//! layout (`tls.crt`, `tls.key`, `ca.crt`) and are re-read when they change (checked every
//! `RELOAD_EVERY`), so rotated certificates apply to new connections without a restart; a broken new set
//! is logged and the previous one kept.
//!
//! At most `--max-tls-handshakes` handshakes run at once: beyond that the accept loop waits, so a connect
//! flood queues in the kernel's backlog instead of costing a task and a buffer each. Both loops stop
//! when the gRPC server drops the stream (shutdown).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use cni_metrics_proto::flags::{at_least, non_blank, NonBlank};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info};

pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("no certificate in {0}")]
    Empty(PathBuf),
    #[error("invalid TLS material: {0}")]
    Invalid(String),
}

/// `serve`'s flags for mutual TLS on the gRPC port.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Mutual TLS")]
pub struct TlsArgs {
    /// Server certificate (PEM) of the gRPC port; with --tls-key and --tls-client-ca turns on mutual TLS.
    #[arg(long, env = "TLS_CERT", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub tls_cert: NonBlank<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "TLS_KEY", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub tls_key: NonBlank<PathBuf>,

    /// CA (PEM) that client certificates must chain to.
    #[arg(long, env = "TLS_CLIENT_CA", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub tls_client_ca: NonBlank<PathBuf>,

    /// Most TLS handshakes in progress at once; further connections wait (in the listen backlog).
    #[arg(long, env = "MAX_TLS_HANDSHAKES", default_value_t = 256, value_parser = at_least(1usize, "1"))]
    pub max_tls_handshakes: usize,
}

/// Some but not all of the three TLS files.
#[derive(Debug, thiserror::Error)]
#[error("mutual TLS needs all of --tls-cert, --tls-key and --tls-client-ca (or none)")]
pub struct TlsIncomplete;

/// Mutual TLS on the gRPC port: the files and the handshake bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub files: TlsFiles,
    pub max_handshakes: usize,
}

impl TlsArgs {
    /// `None` when no file is given; all three or none.
    pub fn config(&self) -> Result<Option<TlsConfig>, TlsIncomplete> {
        match (self.tls_cert.get(), self.tls_key.get(), self.tls_client_ca.get()) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TlsConfig {
                files: TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() },
                max_handshakes: self.max_tls_handshakes,
            })),
            (None, None, None) => Ok(None),
            _ => Err(TlsIncomplete),
        }
    }
}

/// The three files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read(path.into(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read(path.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.into()));
    }
    Ok(certs)
}

/// Build the server configuration from the files (requires client certificates from the CA).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read(files.key.clone(), e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Invalid(e.to_string()))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

fn mtimes(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.cert, &files.key, &files.client_ca].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

/// Accept TCP connections, complete TLS handshakes off the accept loop, and yield authenticated streams.
/// Failed handshakes (plaintext, no or foreign client certificate) are logged and counted; they never
/// reach gRPC. After a failed accept the loop pauses ([`crate::listen::ACCEPT_PAUSE`]).
pub fn incoming(
    listener: TcpListener,
    files: TlsFiles,
    initial: Arc<ServerConfig>,
    stats: Arc<crate::listen::ConnectionStats>,
    max_handshakes: usize,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let current = Arc::new(RwLock::new(initial));
    let (tx, rx) = mpsc::channel(64);
    // Reload when the files change, until the server stops.
    tokio::spawn(reload(current.clone(), files, tx.clone()));
    let handshakes = Arc::new(Semaphore::new(max_handshakes.clamp(1, Semaphore::MAX_PERMITS)));
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            // A permit first: with every handshake slot busy, connections wait in the backlog.
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = tx.closed() => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => {
                    crate::listen::accept_recovered(&mut failing, &stats);
                    c
                }
                Err(e) => {
                    crate::listen::accept_failed(&e, &stats, &mut failing);
                    tokio::time::sleep(crate::listen::ACCEPT_PAUSE).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(current.read().unwrap_or_else(|e| e.into_inner()).clone());
            let tx = tx.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        stats.record_handshake_failure();
                        info!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        stats.record_handshake_failure();
                        info!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Re-read the certificate files when they change, until the accept stream is dropped; invalid new
/// files keep the previous configuration.
async fn reload(current: Arc<RwLock<Arc<ServerConfig>>>, files: TlsFiles, tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>) {
    let mut seen = mtimes(&files);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = tx.closed() => return,
        }
        let now = mtimes(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match server_config(&files) {
            Ok(cfg) => {
                *current.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                info!(cert = %files.cert.display(), "TLS certificates reloaded");
            }
            Err(e) => error!(error = %e, "new TLS files are invalid; keeping the previous ones"),
        }
    }
}
