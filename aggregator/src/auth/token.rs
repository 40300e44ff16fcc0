//! Verifying one agent's ServiceAccount token, as pure logic (no I/O, the clock injected): the signature
//! against the cluster's published keys ([`Keys`], from a JWKS document), then issuer, audience, validity
//! window, subject (the agent's ServiceAccount) and the `kubernetes.io` → `node` claim against the node
//! the stream speaks for. Every way to fail is one [`TokenError`], counted under one bounded [`Refusal`].
//!
//! Kubernetes signs ServiceAccount tokens with RSA (RS256) or ECDSA (ES256/ES384) keys; only those
//! algorithms are accepted. Symmetric keys (`kty: oct`) in a key set are ignored, so a token signed with
//! HS256 can never verify. Since Kubernetes 1.30 a pod's token names its node
//! (`ServiceAccountTokenPodNodeInfo`, on by default).

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::state::Refusal;

/// A refused token, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no ServiceAccount token: the agent must send its projected token (TOKEN_FILE)")]
    Missing,
    #[error("the token is not a signed JWT the aggregator accepts: {0}")]
    Malformed(String),
    #[error("the token is signed with key {0:?}, which the cluster does not publish")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was issued by {0:?}, not by this cluster")]
    WrongIssuer(String),
    #[error("the token is not meant for this aggregator (audience {0:?})")]
    WrongAudience(String),
    #[error("the token is expired or not valid yet")]
    Expired,
    #[error("the token belongs to {0:?}, not to the agent's ServiceAccount")]
    WrongSubject(String),
    #[error("the token names no node (Kubernetes 1.30 or later puts the pod's node in its tokens)")]
    NoNode,
    #[error("the token belongs to a pod on node {token_node:?}, but the stream speaks for {hello_node:?}")]
    WrongNode { token_node: String, hello_node: String },
    #[error("the cluster's signing keys could not be fetched yet: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// The bounded reason it is counted under (`cni_metrics_reports_rejected_total{reason}`).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Missing => Refusal::TokenMissing,
            Self::Malformed(_) => Refusal::TokenMalformed,
            Self::UnknownKey(_) => Refusal::TokenUnknownKey,
            Self::BadSignature => Refusal::TokenBadSignature,
            Self::WrongIssuer(_) => Refusal::TokenWrongIssuer,
            Self::WrongAudience(_) => Refusal::TokenWrongAudience,
            Self::Expired => Refusal::TokenExpired,
            Self::WrongSubject(_) => Refusal::TokenWrongSubject,
            Self::NoNode => Refusal::TokenNoNode,
            Self::WrongNode { .. } => Refusal::TokenWrongNode,
            Self::KeysUnavailable(_) => Refusal::TokenKeysUnavailable,
        }
    }

    /// The label value of [`TokenError::refusal`], for logs.
    pub fn reason(&self) -> &'static str {
        cni_metrics_proto::labels::Label::as_str(self.refusal())
    }

    /// The gRPC status: who you are is UNAUTHENTICATED, what you may speak for is PERMISSION_DENIED,
    /// keys not fetched yet is UNAVAILABLE (the agent retries; nothing is lost meanwhile).
    pub fn status(&self) -> tonic::Status {
        match self {
            Self::WrongSubject(_) | Self::NoNode | Self::WrongNode { .. } => tonic::Status::permission_denied(self.to_string()),
            Self::KeysUnavailable(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// Longest token accepted (Kubernetes tokens are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest value of a claim quoted in an error or a log line.
const QUOTE_MAX: usize = 128;

/// A string from a peer, bounded and printable, for errors and logs.
pub fn quote(s: &str) -> String {
    s.chars().take(QUOTE_MAX).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// What a token must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub issuer: String,
    pub audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    pub subject: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: String,
    pub pod: String,
    /// Unix seconds after which the token (leeway included) no longer holds.
    pub valid_until_unix: u64,
}

/// The cluster's verification keys by key id.
#[derive(Clone, Default)]
pub struct Keys {
    by_kid: HashMap<String, (DecodingKey, &'static [Algorithm])>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("not a JWKS document: {0}")]
    Json(String),
    #[error("the key set holds no RSA or EC key with a key id")]
    Empty,
}

const RSA_ALGS: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const EC_ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

impl Keys {
    /// Read a JWKS document (`/openid/v1/jwks`). Keys without a `kid` or of another type are skipped.
    pub fn from_jwks(json: &[u8]) -> Result<Self, KeysError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| KeysError::Json(e.to_string()))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let algs = match jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA_ALGS,
                AlgorithmParameters::EllipticCurve(_) => EC_ALGS,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            by_kid.insert(kid, (key, algs));
        }
        if by_kid.is_empty() {
            return Err(KeysError::Empty);
        }
        Ok(Self { by_kid })
    }

    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.by_kid.keys().map(|k| quote(k)).collect();
        k.sort();
        k
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    node: Option<Named>,
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

/// The key id a token names, if it is a JWT at all (to decide whether fetching the keys again may help).
pub fn key_id(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid)
}

/// Verify `token` for a stream that speaks for `node`, at `now_unix` seconds.
pub fn verify(token: &str, node: &str, keys: &Keys, policy: &Policy, now_unix: u64) -> Result<Identity, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let kid = header.kid.ok_or_else(|| TokenError::Malformed("no key id (kid) in its header".into()))?;
    let (key, algs) = keys.by_kid.get(&kid).ok_or_else(|| TokenError::UnknownKey(quote(&kid)))?;
    if !algs.contains(&header.alg) {
        return Err(TokenError::Malformed(format!("algorithm {:?} does not fit key {:?}", header.alg, quote(&kid))));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Claims>(token, key, &validation) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => return Err(TokenError::BadSignature),
        Err(e) => return Err(TokenError::Malformed(e.to_string())),
    };
    let iss = claims.iss.unwrap_or_default();
    if iss != policy.issuer {
        return Err(TokenError::WrongIssuer(quote(&iss)));
    }
    let audience_ok = match &claims.aud {
        Some(Audience::One(a)) => *a == policy.audience,
        Some(Audience::Many(all)) => all.contains(&policy.audience),
        None => false,
    };
    if !audience_ok {
        let shown = match &claims.aud {
            Some(Audience::One(a)) => quote(a),
            Some(Audience::Many(all)) => quote(&all.join(",")),
            None => String::new(),
        };
        return Err(TokenError::WrongAudience(shown));
    }
    let exp = claims.exp.filter(|e| e.is_finite() && *e >= 0.0).ok_or_else(|| TokenError::Malformed("no expiry (exp)".into()))?;
    let now = now_unix as f64;
    let leeway = policy.leeway_s as f64;
    if now > exp + leeway || claims.nbf.is_some_and(|nbf| !nbf.is_finite() || now + leeway < nbf) {
        return Err(TokenError::Expired);
    }
    let sub = claims.sub.unwrap_or_default();
    if sub != policy.subject {
        return Err(TokenError::WrongSubject(quote(&sub)));
    }
    let kubernetes = claims.kubernetes.ok_or(TokenError::NoNode)?;
    let token_node = kubernetes.node.map(|n| n.name).ok_or(TokenError::NoNode)?;
    if token_node != node {
        return Err(TokenError::WrongNode { token_node: quote(&token_node), hello_node: quote(node) });
    }
    Ok(Identity {
        node: token_node,
        pod: kubernetes.pod.map(|p| p.name).unwrap_or_default(),
        // `exp + leeway` fits: exp is finite and non-negative, and a u64 cast saturates.
        valid_until_unix: (exp + leeway) as u64,
    })
}
