//! Agent authentication (`--agent-auth token`): an agent may speak only for the node its pod runs on.
//!
//! Each agent sends the ServiceAccount token kubelet projects into its pod (audience
//! `cni-metrics-aggregator`, rotated by kubelet) as `authorization: Bearer …` on its stream. Kubernetes
//! signs that token and names the pod's node in it; [`TokenAuth::admit`] checks it against the node the
//! Hello claims ([`token::verify`], pure). The keys come from the API server's service-account issuer
//! discovery ([`keys`]): `/openid/v1/jwks`, which the default `system:service-account-issuer-discovery`
//! binding lets every ServiceAccount read, fetched at start, every `--token-keys-refresh` and again when
//! a token names a key not seen yet (at most once per `--token-keys-min-refetch`, so a flood of made-up
//! key ids cannot hammer the API server). The issuer is `--token-issuer` or the discovery document's.
//!
//! Failures heal: until keys are fetched, agents get UNAVAILABLE and retry (they keep their counts
//! meanwhile); a failed refresh keeps the keys already known.

pub mod keys;
pub mod token;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::exposition::Page;
use cni_metrics_proto::flags::{non_blank, NonBlank};
use tracing::{info, warn};

pub use keys::{KeySource, KeySourceConfig, SetupError};
pub use token::{Identity, Keys, Policy, TokenError};

/// `serve`'s flags for agent authentication.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Agent authentication")]
pub struct TokenAuthArgs {
    /// How an agent proves which node it speaks for. `token`: its projected ServiceAccount token
    /// (audience --token-audience) must be signed by the cluster and name the node of its Hello; others
    /// are refused (UNAUTHENTICATED / PERMISSION_DENIED) and counted. `none`: any client that reaches
    /// the gRPC port may speak for any node (only behind mutual TLS or a tight NetworkPolicy).
    #[arg(long, env = "AGENT_AUTH", value_enum, default_value = "none")]
    pub agent_auth: AgentAuthMode,

    /// Audience the agents' tokens are projected for.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "cni-metrics-aggregator")]
    pub token_audience: String,

    /// ServiceAccount the agents run as (the token's `sub`).
    #[arg(long, env = "TOKEN_SUBJECT", default_value = "system:serviceaccount:kube-system:cni-metrics-agent")]
    pub token_subject: String,

    /// Issuer the agents' tokens must name; by default (blank) the API server's (its
    /// `/.well-known/openid-configuration`).
    #[arg(long, env = "TOKEN_ISSUER", default_value = "", hide_default_value = true, value_parser = non_blank::<String>)]
    pub token_issuer: NonBlank<String>,

    /// The Kubernetes API server, for the token signing keys (`/openid/v1/jwks`).
    #[arg(long = "kubernetes-api-url", env = "KUBERNETES_API_URL", default_value = "https://kubernetes.default.svc")]
    pub kubernetes_api_url: String,

    /// CA bundle of the API server's certificate.
    #[arg(long = "kubernetes-ca-file", env = "KUBERNETES_CA_FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")]
    pub kubernetes_ca_file: PathBuf,

    /// The aggregator's own token for the API server (re-read at every fetch; a missing file: anonymous).
    #[arg(
        long = "kubernetes-token-file",
        env = "KUBERNETES_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kubernetes_token_file: PathBuf,

    /// Refresh the token signing keys this often (also when a token names an unknown key).
    #[arg(long, env = "TOKEN_KEYS_REFRESH", default_value = "5m", value_parser = parse_positive)]
    pub token_keys_refresh: Duration,

    /// Least time between two key fetches caused by unknown key ids.
    #[arg(long, env = "TOKEN_KEYS_MIN_REFETCH", default_value = "10s", value_parser = parse_positive)]
    pub token_keys_min_refetch: Duration,
}

/// `--agent-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentAuthMode {
    None,
    Token,
}

impl TokenAuthArgs {
    /// The token verifier's configuration, `None` unless `--agent-auth token`.
    pub fn config(&self) -> Option<TokenAuthConfig> {
        (self.agent_auth == AgentAuthMode::Token).then(|| TokenAuthConfig {
            source: KeySourceConfig {
                api_server: self.kubernetes_api_url.clone(),
                ca_file: Some(self.kubernetes_ca_file.clone()),
                token_file: Some(self.kubernetes_token_file.clone()),
            },
            issuer: self.token_issuer.get().cloned(),
            audience: self.token_audience.clone(),
            subject: self.token_subject.clone(),
            refresh: self.token_keys_refresh,
            min_refetch: self.token_keys_min_refetch,
        })
    }
}

/// What tokens must say, and where the keys are.
#[derive(Clone, Debug)]
pub struct TokenAuthConfig {
    pub source: KeySourceConfig,
    /// Expected `iss`; discovered from the API server when `None`.
    pub issuer: Option<String>,
    pub audience: String,
    pub subject: String,
    /// Periodic refresh of the keys (removed keys stop verifying after it).
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown key ids.
    pub min_refetch: Duration,
}

/// Clock skew tolerated on a token's validity window, as the API server's own verifier allows.
pub const LEEWAY_S: u64 = 60;

struct Verifier {
    keys: Keys,
    policy: Policy,
}

/// The verifier shared by every stream.
pub struct TokenAuth {
    cfg: TokenAuthConfig,
    source: KeySource,
    current: RwLock<Option<Arc<Verifier>>>,
    /// When the last fetch started, and its error if it failed; one fetch at a time.
    fetching: tokio::sync::Mutex<(Option<Instant>, Option<String>)>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
}

impl TokenAuth {
    pub fn new(cfg: TokenAuthConfig) -> Result<Self, SetupError> {
        let source = KeySource::new(&cfg.source)?;
        Ok(Self {
            cfg,
            source,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new((None, None)),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
        })
    }

    fn verifier(&self) -> Option<Arc<Verifier>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetch the keys (and the issuer, the first time) unless a fetch started less than
    /// `min_refetch` ago (`force` skips that check). Returns the last fetch's error, if it failed.
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut f = self.fetching.lock().await;
        if !force && f.0.is_some_and(|t| t.elapsed() < self.cfg.min_refetch) {
            return f.1.clone().map_or(Ok(()), Err);
        }
        f.0 = Some(Instant::now());
        let known_issuer = self.verifier().map(|v| v.policy.issuer.clone()).or_else(|| self.cfg.issuer.clone());
        let result = async {
            let issuer = match known_issuer {
                Some(i) => i,
                None => self.source.issuer().await?,
            };
            let keys = self.source.keys().await?;
            Ok::<_, keys::FetchError>((issuer, keys))
        }
        .await;
        match result {
            Ok((issuer, keys)) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let before = self.verifier().map(|v| v.keys.kids());
                let kids = keys.kids();
                if before.as_ref() != Some(&kids) {
                    info!(issuer = %issuer, keys = kids.len(), key_ids = %kids.join(","), "agent token keys loaded");
                }
                let policy = Policy { issuer, audience: self.cfg.audience.clone(), subject: self.cfg.subject.clone(), leeway_s: LEEWAY_S };
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Verifier { keys, policy }));
                f.1 = None;
                Ok(())
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                let kept = self.verifier().map_or(0, |v| v.keys.len());
                warn!(url = %self.source.jwks_url(), error = %e, keys_kept = kept, "cannot fetch the cluster's token signing keys; will retry");
                f.1 = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Admit a stream that speaks for `node`, given its `authorization` metadata.
    pub async fn admit(&self, authorization: Option<&str>, node: &str) -> Result<Identity, TokenError> {
        let token = bearer(authorization)?;
        let verifier = match self.verifier() {
            Some(v) => v,
            None => {
                self.refresh(false).await.map_err(TokenError::KeysUnavailable)?;
                self.verifier().ok_or_else(|| TokenError::KeysUnavailable("no key fetched yet".into()))?
            }
        };
        let now = cni_metrics_proto::clock::unix_ms_now().max(0) as u64 / 1000;
        match token::verify(token, node, &verifier.keys, &verifier.policy, now) {
            Err(TokenError::UnknownKey(kid)) => {
                // Maybe the cluster rotated its keys: look again (rate-limited), then verify once more.
                let _ = self.refresh(false).await;
                match self.verifier() {
                    Some(v) if token::key_id(token).is_some_and(|k| v.keys.contains(&k)) => {
                        token::verify(token, node, &v.keys, &v.policy, now)
                    }
                    _ => Err(TokenError::UnknownKey(kid)),
                }
            }
            other => other,
        }
    }

    /// Fetch now, then every `refresh`, until `shutdown`.
    pub async fn run_refresher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut every = tokio::time::interval(self.cfg.refresh);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => { let _ = self.refresh(true).await; }
                () = &mut shutdown => return,
            }
        }
    }

    /// Self-metrics: key fetches and keys held.
    pub fn render(&self, page: &mut Page<'_>) {
        page.family(
            "cni_metrics_token_key_fetches_total",
            cni_metrics_proto::exposition::Kind::Counter,
            "Fetches of the cluster's token signing keys, by result",
        )
        .sample(&[("result", "ok")], self.fetches_ok.load(Ordering::Relaxed) as f64)
        .sample(&[("result", "error")], self.fetches_failed.load(Ordering::Relaxed) as f64);
        page.gauge(
            "cni_metrics_token_keys",
            "Token signing keys the aggregator verifies agents with",
            self.verifier().map_or(0, |v| v.keys.len()) as f64,
        );
    }
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer(authorization: Option<&str>) -> Result<&str, TokenError> {
    let v = authorization.ok_or(TokenError::Missing)?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| TokenError::Malformed("the authorization metadata is not \"Bearer <token>\"".into()))?
        .trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
