//! A ServiceAccount token issuer for tests, as a Kubernetes API server would be one: [`Issuer`] holds a
//! signing key (RSA 2048 as EKS uses, or ECDSA P-256) and signs tokens with the claims kubelet's projected
//! tokens carry (`iss`, `sub`, `aud`, `exp`, `kubernetes.io` → `pod`/`node`); [`JwksServer`] is a real
//! HTTP server on loopback publishing the keys as the API server does (`/openid/v1/jwks`,
//! `/.well-known/openid-configuration`), with the key set swappable for rotation tests. Signing uses
//! aws-lc-rs directly, not the JWT library the aggregator verifies with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The audience agents' tokens are projected for in the deploy manifests.
pub const AUDIENCE: &str = "cni-metrics-aggregator";
/// The agents' ServiceAccount in the deploy manifests.
pub const AGENT_SUBJECT: &str = "system:serviceaccount:kube-system:cni-metrics-agent";

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// One signing key with its key id.
pub struct Issuer {
    pub kid: String,
    pub issuer: String,
    key: Key,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Issuer {
    /// A fresh RSA 2048 key (RS256), as EKS signs with.
    pub fn rsa(kid: &str, issuer: &str) -> anyhow::Result<Self> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        Ok(Self { kid: kid.to_owned(), issuer: issuer.to_owned(), key: Key::Rsa(key) })
    }

    /// A fresh ECDSA P-256 key (ES256).
    pub fn ec(kid: &str, issuer: &str) -> anyhow::Result<Self> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| anyhow::anyhow!("EC key generation failed"))?;
        Ok(Self { kid: kid.to_owned(), issuer: issuer.to_owned(), key: Key::Ec(key) })
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(k) => {
                // Uncompressed point: 0x04 || x || y.
                let p = k.public_key().as_ref();
                let (x, y) = p.get(1..).unwrap_or_default().split_at(p.len().saturating_sub(1) / 2);
                json!({"use": "sig", "kty": "EC", "kid": self.kid, "alg": "ES256", "crv": "P-256", "x": b64(x), "y": b64(y)})
            }
        }
    }

    /// Sign `claims` as a compact JWS.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let alg = match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        };
        let header = json!({"alg": alg, "kid": self.kid});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                sig
            }
            Key::Ec(k) => k.sign(&rng, input.as_bytes()).map_err(|_| anyhow::anyhow!("EC signing failed"))?.as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", b64(&sig)))
    }

    /// The claims of a projected token kubelet would mount for the agent pod on `node`, valid from now
    /// for `ttl_s` seconds (negative: expired that long ago).
    pub fn agent_claims(&self, node: &str, ttl_s: i64) -> Value {
        let now = now_unix();
        json!({
            "aud": [AUDIENCE],
            "exp": now + ttl_s,
            "iat": now.min(now + ttl_s) - 60,
            "nbf": now.min(now + ttl_s) - 60,
            "iss": self.issuer,
            "jti": format!("jti-{}", fastrand::u64(..)),
            "sub": AGENT_SUBJECT,
            "kubernetes.io": {
                "namespace": "kube-system",
                "node": {"name": node, "uid": "5d9e0f3c-0000-4000-8000-000000000001"},
                "pod": {"name": format!("cni-metrics-agent-{}", fastrand::u32(10_000..99_999)), "uid": "5d9e0f3c-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": "cni-metrics-agent", "uid": "5d9e0f3c-0000-4000-8000-000000000003"}
            }
        })
    }

    /// A valid token of the agent pod on `node`.
    pub fn agent_token(&self, node: &str) -> anyhow::Result<String> {
        self.sign(&self.agent_claims(node, 3600))
    }
}

/// The JWKS document of `issuers`' keys.
pub fn jwks(issuers: &[&Issuer]) -> String {
    json!({"keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>()}).to_string()
}

struct Published {
    issuer: String,
    jwks: Mutex<String>,
    requests: Mutex<Vec<Option<String>>>,
    tls: bool,
}

/// Accepts TLS connections for axum; a failed handshake (a client that does not trust us) is skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A real HTTP server publishing an issuer's discovery document and key set, like the API server's
/// service-account issuer discovery.
pub struct JwksServer {
    pub addr: SocketAddr,
    inner: Arc<Published>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serve on a free loopback port.
    pub async fn start(issuer: &str, jwks: String) -> std::io::Result<Self> {
        Self::start_at("127.0.0.1:0".parse().map_err(std::io::Error::other)?, issuer, jwks).await
    }

    /// Serve on `addr`.
    pub async fn start_at(addr: SocketAddr, issuer: &str, jwks: String) -> std::io::Result<Self> {
        Self::serve(addr, issuer, jwks, None).await
    }

    /// Serve HTTPS on a free loopback port with this certificate chain and key (PEM files), as the API
    /// server does.
    pub async fn start_tls(issuer: &str, jwks: String, cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<Self> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(e.to_string()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad(e.to_string()))?;
        Self::serve(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            issuer,
            jwks,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(addr: SocketAddr, issuer: &str, jwks: String, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner =
            Arc::new(Published { issuer: issuer.to_owned(), jwks: Mutex::new(jwks), requests: Mutex::default(), tls: tls.is_some() });
        let app = Router::new()
            .route("/openid/v1/jwks", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = match tls {
                Some(acceptor) => axum::serve(TlsListener { tcp: listener, acceptor }, app).await,
                None => axum::serve(listener, app).await,
            };
        });
        Ok(Self { addr, inner, task })
    }

    /// `http://127.0.0.1:port` (`https://localhost:port` with TLS), the `--kubernetes-api-url` of an
    /// aggregator using it.
    pub fn url(&self) -> String {
        if self.inner.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Publish another key set (key rotation).
    pub fn set_jwks(&self, jwks: String) {
        *self.inner.jwks.lock().unwrap_or_else(|e| e.into_inner()) = jwks;
    }

    /// The `Authorization` header of every key-set request so far, in order.
    pub fn jwks_requests(&self) -> Vec<Option<String>> {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_jwks(State(p): State<Arc<Published>>, headers: HeaderMap) -> impl IntoResponse {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    p.requests.lock().unwrap_or_else(|e| e.into_inner()).push(auth);
    let body = p.jwks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ([(header::CONTENT_TYPE, "application/jwk-set+json")], body)
}

async fn serve_discovery(State(p): State<Arc<Published>>) -> impl IntoResponse {
    let doc = json!({
        "issuer": p.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", p.issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"]
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string())
}
