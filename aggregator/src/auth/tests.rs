//! The verifier, table-tested with tokens signed as an API server would sign them (testkit's
//! [`Issuer`], aws-lc-rs directly), and the key fetching against a real HTTP server on loopback.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cni_metrics_testkit::issuer::{jwks, now_unix, Issuer, JwksServer, AGENT_SUBJECT, AUDIENCE};
use serde_json::{json, Value};

use super::token::{verify, Keys, Policy, TokenError};
use super::{KeySourceConfig, TokenAuth, TokenAuthConfig};

const ISS: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
const NODE: &str = "ip-10-0-1-23.eu-west-1.compute.internal";

fn policy() -> Policy {
    Policy { issuer: ISS.into(), audience: AUDIENCE.into(), subject: AGENT_SUBJECT.into(), leeway_s: super::LEEWAY_S }
}

fn with(mut claims: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut claims;
    for p in &path[..path.len() - 1] {
        at = &mut at[*p];
    }
    at[path[path.len() - 1]] = value;
    claims
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

#[test]
fn tokens_as_an_api_server_signs_them() -> anyhow::Result<()> {
    let rsa = Issuer::rsa("rsa-1", ISS)?;
    let ec = Issuer::ec("ec-1", ISS)?;
    let impostor = Issuer::rsa("rsa-1", ISS)?; // same key id, another key
    let stranger = Issuer::rsa("rsa-9", ISS)?; // a key the cluster does not publish
    let keys = Keys::from_jwks(jwks(&[&rsa, &ec]).as_bytes())?;
    assert_eq!(keys.kids(), vec!["ec-1".to_owned(), "rsa-1".to_owned()]);
    let good = rsa.agent_claims(NODE, 3600);
    let now = now_unix();
    let tampered = {
        let t = rsa.agent_token(NODE)?;
        let parts: Vec<&str> = t.split('.').collect();
        let other = b64(&rsa.agent_claims("ip-10-0-9-9.eu-west-1.compute.internal", 3600).to_string());
        format!("{}.{}.{}", parts[0], other, parts[2])
    };
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","kid":"rsa-1"}"#), b64(&good.to_string()));
    // Algorithm confusion: HS256 with the RSA key's id (an attacker would use the public key as secret).
    let hs256 = format!("{}.{}.{}", b64(r#"{"alg":"HS256","kid":"rsa-1"}"#), b64(&good.to_string()), b64("mac"));
    let es_on_rsa = format!("{}.{}.{}", b64(r#"{"alg":"ES256","kid":"rsa-1"}"#), b64(&good.to_string()), b64("sig"));
    let no_kid = format!("{}.{}.{}", b64(r#"{"alg":"RS256"}"#), b64(&good.to_string()), b64("sig"));

    let table: Vec<(&str, String, Result<(), TokenError>)> = vec![
        ("own node, RSA", rsa.sign(&good)?, Ok(())),
        ("own node, ECDSA", ec.sign(&ec.agent_claims(NODE, 3600))?, Ok(())),
        ("aud as a single string", rsa.sign(&with(good.clone(), &["aud"], json!(AUDIENCE)))?, Ok(())),
        ("expired 30 s ago, within the leeway", rsa.sign(&rsa.agent_claims(NODE, -30))?, Ok(())),
        (
            "another node",
            rsa.sign(&rsa.agent_claims("ip-10-0-2-2.eu-west-1.compute.internal", 3600))?,
            Err(TokenError::WrongNode { token_node: "ip-10-0-2-2.eu-west-1.compute.internal".into(), hello_node: NODE.into() }),
        ),
        ("expired", rsa.sign(&rsa.agent_claims(NODE, -3600))?, Err(TokenError::Expired)),
        ("not valid yet", rsa.sign(&with(good.clone(), &["nbf"], json!(now + 3000)))?, Err(TokenError::Expired)),
        ("no expiry", rsa.sign(&with(good.clone(), &["exp"], Value::Null))?, Err(TokenError::Malformed("no expiry (exp)".into()))),
        (
            "wrong audience",
            rsa.sign(&with(good.clone(), &["aud"], json!(["https://kubernetes.default.svc"])))?,
            Err(TokenError::WrongAudience("https://kubernetes.default.svc".into())),
        ),
        ("no audience", rsa.sign(&with(good.clone(), &["aud"], Value::Null))?, Err(TokenError::WrongAudience(String::new()))),
        (
            "wrong issuer",
            rsa.sign(&with(good.clone(), &["iss"], json!("https://evil.example")))?,
            Err(TokenError::WrongIssuer("https://evil.example".into())),
        ),
        (
            "another ServiceAccount",
            rsa.sign(&with(good.clone(), &["sub"], json!("system:serviceaccount:default:default")))?,
            Err(TokenError::WrongSubject("system:serviceaccount:default:default".into())),
        ),
        (
            "no node claim (Kubernetes < 1.30)",
            rsa.sign(&with(good.clone(), &["kubernetes.io", "node"], Value::Null))?,
            Err(TokenError::NoNode),
        ),
        ("no kubernetes.io claims", rsa.sign(&with(good.clone(), &["kubernetes.io"], Value::Null))?, Err(TokenError::NoNode)),
        ("same key id, another key", impostor.sign(&good)?, Err(TokenError::BadSignature)),
        ("claims swapped under a valid signature", tampered, Err(TokenError::BadSignature)),
        ("a key the cluster does not publish", stranger.sign(&good)?, Err(TokenError::UnknownKey("rsa-9".into()))),
    ];
    for (case, token, want) in table {
        let got = verify(&token, NODE, &keys, &policy(), now as u64).map(|_| ());
        assert_eq!(got, want, "{case}");
    }
    for (case, token) in [
        ("alg none", alg_none),
        ("HS256 with an RSA key id", hs256),
        ("ES256 header on an RSA key", es_on_rsa),
        ("no key id", no_kid),
        ("not a JWT", "hello".to_owned()),
        ("empty", String::new()),
        ("too long", "a".repeat(super::token::MAX_TOKEN_BYTES + 1)),
    ] {
        let got = verify(&token, NODE, &keys, &policy(), now as u64);
        assert!(matches!(got, Err(TokenError::Malformed(_))), "{case}: {got:?}");
    }
    // A valid token names its pod and how long it holds.
    let id = verify(&rsa.sign(&good)?, NODE, &keys, &policy(), now as u64)?;
    assert_eq!(id.node, NODE);
    assert!(id.pod.starts_with("cni-metrics-agent-"), "{}", id.pod);
    assert_eq!(id.valid_until_unix, (now + 3600) as u64 + super::LEEWAY_S);
    Ok(())
}

#[test]
fn key_sets_keep_only_asymmetric_keys_with_ids() -> anyhow::Result<()> {
    let rsa = Issuer::rsa("rsa-1", ISS)?;
    let mut set: Value = serde_json::from_str(&jwks(&[&rsa]))?;
    if let Some(k) = set["keys"].as_array_mut() {
        k.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
        let mut no_kid = rsa.jwk();
        no_kid["kid"] = Value::Null;
        k.push(no_kid);
    }
    let keys = Keys::from_jwks(set.to_string().as_bytes())?;
    assert_eq!(keys.kids(), vec!["rsa-1".to_owned()]);
    assert!(Keys::from_jwks(br#"{"keys":[{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]}"#).is_err());
    assert!(Keys::from_jwks(b"<html>").is_err());
    Ok(())
}

fn auth_config(api: &str, min_refetch: Duration) -> TokenAuthConfig {
    TokenAuthConfig {
        source: KeySourceConfig { api_server: api.to_owned(), ca_file: None, token_file: None },
        issuer: None,
        audience: AUDIENCE.into(),
        subject: AGENT_SUBJECT.into(),
        refresh: Duration::from_secs(300),
        min_refetch,
    }
}

#[tokio::test]
async fn rotated_keys_are_fetched_on_an_unknown_key_id_at_a_bounded_rate() -> anyhow::Result<()> {
    let old = Issuer::rsa("2026-old", ISS)?;
    let new = Issuer::rsa("2026-new", ISS)?;
    let newer = Issuer::ec("2026-newer", ISS)?;
    let strays: Vec<Issuer> = (0..5).map(|i| Issuer::ec(&format!("made-up-{i}"), ISS)).collect::<Result<_, _>>()?;
    let server = JwksServer::start(ISS, jwks(&[&old])).await?;
    let auth = TokenAuth::new(auth_config(&server.url(), Duration::from_secs(1)))?;
    // Keys fetched on first use, issuer discovered.
    let bearer = |t: String| format!("Bearer {t}");
    assert_eq!(auth.admit(Some(&bearer(old.agent_token(NODE)?)), NODE).await?.node, NODE);
    assert_eq!(server.jwks_requests().len(), 1);
    // The cluster rotates: a token of the new key triggers one fetch and is admitted.
    server.set_jwks(jwks(&[&old, &new]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(auth.admit(Some(&bearer(new.agent_token(NODE)?)), NODE).await?.node, NODE);
    assert_eq!(server.jwks_requests().len(), 2);
    // Made-up key ids right after: no further fetch within min_refetch.
    for stray in &strays {
        let got = auth.admit(Some(&bearer(stray.agent_token(NODE)?)), NODE).await;
        assert!(matches!(got, Err(TokenError::UnknownKey(_))), "{got:?}");
    }
    assert_eq!(server.jwks_requests().len(), 2);
    // Past min_refetch, the next rotation is picked up again.
    server.set_jwks(jwks(&[&new, &newer]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(auth.admit(Some(&bearer(newer.agent_token(NODE)?)), NODE).await?.node, NODE);
    // The old key is gone from the set: its tokens no longer verify.
    let got = auth.admit(Some(&bearer(old.agent_token(NODE)?)), NODE).await;
    assert!(matches!(got, Err(TokenError::UnknownKey(_))), "{got:?}");
    // No token, or not a bearer token.
    assert_eq!(auth.admit(None, NODE).await, Err(TokenError::Missing));
    assert!(matches!(auth.admit(Some("Basic YTpi"), NODE).await, Err(TokenError::Malformed(_))));
    Ok(())
}

#[tokio::test]
async fn keys_not_reachable_is_unavailable_and_heals() -> anyhow::Result<()> {
    let issuer = Issuer::rsa("k1", ISS)?;
    // A port with nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let auth = TokenAuth::new(auth_config(&format!("http://{free}"), Duration::ZERO))?;
    let token = format!("Bearer {}", issuer.agent_token(NODE)?);
    let got = auth.admit(Some(&token), NODE).await;
    assert!(matches!(got, Err(TokenError::KeysUnavailable(_))), "{got:?}");
    assert_eq!(got.map_err(|e| e.status().code()).err(), Some(tonic::Code::Unavailable));
    // Once the API server answers, the next stream is admitted.
    let _server = JwksServer::start_at(free, ISS, jwks(&[&issuer])).await?;
    assert_eq!(auth.admit(Some(&token), NODE).await?.node, NODE);
    Ok(())
}
