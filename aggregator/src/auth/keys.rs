//! Where the keys come from: the API server's service-account issuer discovery, over HTTPS with the
//! cluster CA and the aggregator's own ServiceAccount token (both re-read at every fetch, as kubelet
//! rotates the token): `/.well-known/openid-configuration` for the issuer, `/openid/v1/jwks` for the keys.

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
    client: reqwest::Client,
    base: String,
    token_file: Option<PathBuf>,
}

impl KeySource {
    pub fn new(cfg: &KeySourceConfig) -> Result<Self, SetupError> {
        let base = cfg.api_server.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SetupError::Url(cfg.api_server.clone()));
        }
        let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT).connect_timeout(FETCH_TIMEOUT);
        if let Some(path) = cfg.ca_file.as_ref().filter(|_| base.starts_with("https://")) {
            let pem = std::fs::read(path).map_err(|e| SetupError::Ca { path: path.display().to_string(), error: e.to_string() })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SetupError::Ca { path: path.display().to_string(), error: e.to_string() })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build().map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(Self { client, base, token_file: cfg.token_file.clone() })
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/openid/v1/jwks", self.base)
    }

    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let http = |e: reqwest::Error| FetchError::Http { url: url.to_owned(), error: e.to_string() };
        let mut req = self.client.get(url).header("accept", "application/json");
        // Re-read at every fetch: kubelet rotates the token file.
        if let Some(token) = self.token_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            let token = token.trim();
            if !token.is_empty() {
                req = req.bearer_auth(token);
            }
        }
        let mut resp = req.send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: resp.status().as_u16() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge { url: url.to_owned() });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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
