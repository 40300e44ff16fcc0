//! Where the keys come from: the API server's service-account issuer discovery, over HTTPS trusting only
//! the cluster CA, with the aggregator's own ServiceAccount token (re-read at every fetch, as kubelet
//! rotates it). A plain hyper HTTP/1.1 client over tokio-rustls: no system roots are consulted (the image
//! has none): `/.well-known/openid-configuration` for the issuer, `/openid/v1/jwks` for the keys.

use std::path::PathBuf;
use std::time::Duration;

use super::token::{Keys, KeysError};

/// Largest discovery or key-set document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct KeySourceConfig {
    /// The API server, e.g. `https://kubernetes.default.svc`.
    pub api_server: String,
    /// CA bundle the API server's certificate chains to (for https).
    pub ca_file: Option<PathBuf>,
    /// Bearer token for the API server; absent file: anonymous.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read the API server CA {path}: {error}")]
    Ca { path: String, error: String },
    #[error("API server URL {0:?} must start with https:// or http://")]
    Url(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {error}")]
    Http { url: String, error: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {error}")]
    Keys { url: String, error: KeysError },
    #[error("{url}: no issuer in the discovery document")]
    NoIssuer { url: String },
}

pub struct KeySource {
    base: hyper::Uri,
    /// For https: the client configuration trusting only the cluster CA.
    tls: Option<tokio_rustls::TlsConnector>,
    token_file: Option<PathBuf>,
}

impl KeySource {
    pub fn new(cfg: &KeySourceConfig) -> Result<Self, SetupError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        let trimmed = cfg.api_server.trim_end_matches('/');
        let base: hyper::Uri = trimmed.parse().map_err(|_| SetupError::Url(cfg.api_server.clone()))?;
        let tls = match base.scheme_str() {
            Some("https") => {
                let path =
                    cfg.ca_file.as_ref().ok_or_else(|| SetupError::Ca { path: "(none)".into(), error: "https needs a CA file".into() })?;
                let ca_error = |e: String| SetupError::Ca { path: path.display().to_string(), error: e };
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
                    roots.add(cert.map_err(|e| ca_error(e.to_string()))?).map_err(|e| ca_error(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_error("no certificate in the file".into()));
                }
                let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
                let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| SetupError::Client(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
            }
            Some("http") => None,
            _ => return Err(SetupError::Url(cfg.api_server.clone())),
        };
        if base.host().is_none() {
            return Err(SetupError::Url(cfg.api_server.clone()));
        }
        Ok(Self { base, tls, token_file: cfg.token_file.clone() })
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/openid/v1/jwks", self.base_str())
    }

    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base_str())
    }

    fn base_str(&self) -> String {
        self.base.to_string().trim_end_matches('/').to_owned()
    }

    /// GET `url` (on the API server) over one HTTP/1.1 connection, bounded in time and size.
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get_once(url)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Http {
                url: url.to_owned(),
                error: format!("no answer within {}", cni_metrics_proto::duration::format(FETCH_TIMEOUT)),
            }),
        }
    }

    async fn get_once(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        use http_body_util::BodyExt as _;
        let http = |e: String| FetchError::Http { url: url.to_owned(), error: e };
        let host = self.base.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = self.base.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| http(e.to_string()))?;
        let mut req = hyper::Request::get(url.parse::<hyper::Uri>().map_err(|e| http(e.to_string()))?.path())
            .header(hyper::header::HOST, self.base.authority().map_or(host.clone(), |a| a.to_string()))
            .header(hyper::header::ACCEPT, "application/json");
        // Re-read at every fetch: kubelet rotates the token file.
        if let Some(token) = self.token_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            let token = token.trim();
            if !token.is_empty() {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
        }
        let req = req.body(http_body_util::Empty::<hyper::body::Bytes>::new()).map_err(|e| http(e.to_string()))?;
        let resp = match &self.tls {
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| http(e.to_string()))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| http(format!("TLS: {e}")))?;
                send(hyper_util::rt::TokioIo::new(stream), req).await.map_err(http)?
            }
            None => send(hyper_util::rt::TokioIo::new(tcp), req).await.map_err(http)?,
        };
        if !resp.status().is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: resp.status().as_u16() });
        }
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES);
        match limited.collect().await {
            Ok(body) => Ok(body.to_bytes().to_vec()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(FetchError::TooLarge { url: url.to_owned() }),
            Err(e) => Err(http(e.to_string())),
        }
    }

    /// The issuer named by the discovery document.
    pub async fn issuer(&self) -> Result<String, FetchError> {
        let url = self.discovery_url();
        let body = self.get(&url).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| FetchError::Keys { url: url.clone(), error: KeysError::Json(e.to_string()) })?;
        doc.get("issuer").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned).ok_or(FetchError::NoIssuer { url })
    }

    /// The current key set.
    pub async fn keys(&self) -> Result<Keys, FetchError> {
        let url = self.jwks_url();
        let body = self.get(&url).await?;
        Keys::from_jwks(&body).map_err(|error| FetchError::Keys { url, error })
    }
}

/// One request on a fresh HTTP/1.1 connection.
async fn send<T>(
    io: T,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}
