//! `--agent-auth token` end to end: real aggregator and agent processes, fake ipamds, and an API
//! server's key publication on loopback (testkit's `JwksServer`) with tokens signed by the test as the
//! cluster's issuer would sign them. An agent with its own node's token is counted; agents with another
//! node's token, an expired one, one for another audience, one signed by a foreign key, or none are
//! refused, counted by reason, and their ipamds' numbers never reach the cluster sums. A stream ends when
//! its token expires and the agent comes back with the rotated token and key, losing nothing.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cni_metrics_e2e::*;
use cni_metrics_testkit::issuer::{jwks, Issuer, JwksServer};
use cni_metrics_testkit::sim::PageStyle;
use serde_json::json;

const ISS: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/E2E0000000000000000000000000TEST";

async fn ipamd(seed: u64) -> Result<cni_metrics_testkit::FakeIpamd> {
    fake_ipamd(PageStyle::Modern, seed, 3).await
}

fn write_token(dir: &Path, name: &str, token: &str) -> Result<String> {
    let path = dir.join(format!("{name}.token"));
    // As kubelet does: write aside, then rename over.
    let tmp = dir.join(format!("{name}.token.tmp"));
    std::fs::write(&tmp, token)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path.display().to_string())
}

fn rejected(page: &str, reason: &str) -> f64 {
    sample(page, "cni_metrics_reports_rejected_total", &[("reason", reason)]).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_speaks_only_for_its_own_node() -> Result<()> {
    let dir = scratch_dir("auth")?;
    let k1 = Issuer::rsa("2026-12-k1", ISS)?;
    let k2 = Issuer::ec("2026-12-k2", ISS)?;
    let foreign = Issuer::rsa("2026-12-k1", ISS)?; // the published key id, another key
    let api = JwksServer::start(ISS, jwks(&[&k1])).await?;
    let own_token = write_token(&dir, "aggregator-sa", "aggregator-own-token")?;
    let agg = Aggregator::start(
        &dir,
        "aggregator",
        &[
            "--agent-auth",
            "token",
            "--kubernetes-api-url",
            &api.url(),
            "--kubernetes-token-file",
            &own_token,
            "--token-keys-min-refetch",
            "1s",
        ],
    )?;

    // Honest agents: node-a for the whole test, node-b with a token that holds for about 10 s more
    // (the aggregator allows 60 s of clock skew past `exp`).
    let (ipamd_a, ipamd_b) = (ipamd(1).await?, ipamd(2).await?);
    let token_a = write_token(&dir, "node-a", &k1.agent_token("node-a")?)?;
    let token_b = write_token(&dir, "node-b", &k1.sign(&k1.agent_claims("node-b", -50))?)?;
    let _a = start_agent(&dir, "node-a", &ipamd_a.url(), &agg.grpc, &["--token-file", &token_a])?;
    let mut b = start_agent(&dir, "node-b", &ipamd_b.url(), &agg.grpc, &["--token-file", &token_b])?;

    // Everyone else: each scrapes an ipamd of its own, whose numbers must never reach the cluster.
    let wrong_aud = {
        let mut c = k1.agent_claims("node-f", 3600);
        c["aud"] = json!(["https://kubernetes.default.svc"]);
        k1.sign(&c)?
    };
    let rogues = [
        ("node-c", Some(k1.agent_token("node-a")?), "token_wrong_node"),
        ("node-d", None, "token_missing"),
        ("node-e", Some(k1.sign(&k1.agent_claims("node-e", -3600))?), "token_expired"),
        ("node-f", Some(wrong_aud), "token_wrong_audience"),
        ("node-g", Some(foreign.agent_token("node-g")?), "token_bad_signature"),
    ];
    let mut rogue_ipamds = Vec::new();
    let mut _rogue_agents = Vec::new();
    for (i, (node, token, _)) in rogues.iter().enumerate() {
        let f = ipamd(10 + i as u64).await?;
        let mut extra = Vec::new();
        let path;
        if let Some(t) = token {
            path = write_token(&dir, node, t)?;
            extra = vec!["--token-file", path.as_str()];
        }
        _rogue_agents.push(start_agent(&dir, node, &f.url(), &agg.grpc, &extra)?);
        rogue_ipamds.push(f);
    }

    let honest = [&ipamd_a, &ipamd_b];
    let exact = |page: &str| -> std::result::Result<(), String> {
        let add: u64 = honest.iter().map(|f| f.with_sim(|s| s.lifetime.add_ip_req)).sum();
        let assigned: u64 = honest.iter().map(|f| f.with_sim(|s| s.assigned)).sum();
        let got = (
            sample(page, "cni_metrics_nodes_reporting", &[]),
            sample(page, "awscni_add_ip_req_count", &[]),
            sample(page, "awscni_assigned_ip_addresses", &[]),
        );
        let want = (Some(2.0), Some(add as f64), Some(assigned as f64));
        if got == want {
            Ok(())
        } else {
            Err(format!("(nodes, add requests, assigned) = {got:?}, truth of node-a and node-b {want:?}"))
        }
    };
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        if let Err(why) = exact(&page) {
            return Ok(Err(why));
        }
        for (node, _, reason) in &rogues {
            if rejected(&page, reason) < 1.0 {
                return Ok(Err(format!("{node}: no refusal counted as {reason}")));
            }
        }
        Ok(Ok(()))
    })
    .await?;
    let page = agg.metrics().await?;
    assert!(promtool_check(&page)?, "the page with refusals parses");
    assert_eq!(sample(&page, "cni_metrics_token_keys", &[]), Some(1.0));
    // Refusals are logged in words, with the reason.
    let log = agg.proc.stderr() + &agg.proc.stdout();
    assert!(log.contains("the stream speaks for \\\"node-c\\\"") || log.contains("speaks for \"node-c\""), "{log}");
    // The aggregator asked the API server with its own ServiceAccount token.
    assert!(api.jwks_requests().iter().all(|a| a.as_deref() == Some("Bearer aggregator-own-token")), "{:?}", api.jwks_requests());

    // The cluster rotates its keys; kubelet rotates node-b's token (signed by the new key).
    api.set_jwks(jwks(&[&k1, &k2]));
    write_token(&dir, "node-b", &k2.agent_token("node-b")?)?;
    // node-b's first token stops holding: its stream ends, it reconnects with the new token, the
    // aggregator fetches the new key for it.
    eventually(Duration::from_secs(30), || async {
        let page = agg.metrics().await?;
        let expired = sample(&page, "cni_metrics_streams_token_expired_total", &[]).unwrap_or(0.0);
        let keys = sample(&page, "cni_metrics_token_keys", &[]).unwrap_or(0.0);
        let sessions = sample(&page, "cni_metrics_sessions_total", &[]).unwrap_or(0.0);
        if expired >= 1.0 && keys == 2.0 && sessions >= 3.0 {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("streams ended at expiry {expired}, keys {keys}, sessions {sessions}")))
        }
    })
    .await?;
    // Nothing lost across the reconnect, nothing let in: the sums follow both nodes exactly.
    for f in honest {
        f.with_sim(|s| {
            for _ in 0..3 {
                s.step();
            }
        });
    }
    eventually(Duration::from_secs(20), || async { Ok(exact(&agg.metrics().await?)) }).await?;
    assert!(!b.exited(), "node-b's agent keeps running through the reconnect");
    Ok(())
}

/// The keys are read over HTTPS trusting only the cluster CA (`--kubernetes-ca-file`): an API server
/// with a certificate of that CA serves them; the same server under another CA is refused, and agents
/// get UNAVAILABLE (counted) until the keys can be fetched.
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_read_over_https_trusting_only_the_cluster_ca() -> Result<()> {
    use cni_metrics_e2e::pki::{ca, leaf};
    let dir = scratch_dir("auth-https")?;
    ca(&dir, "cluster-ca")?;
    ca(&dir, "other-ca")?;
    leaf(&dir, "cluster-ca", "apiserver", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    let k1 = Issuer::rsa("https-k1", ISS)?;
    let api = JwksServer::start_tls(ISS, jwks(&[&k1]), &dir.join("apiserver.crt"), &dir.join("apiserver.key")).await?;
    let start = |name: &str, ca_file: &str| {
        let ca_path = dir.join(ca_file).display().to_string();
        let url = api.url();
        Aggregator::start(&dir, name, &["--agent-auth", "token", "--kubernetes-api-url", &url, "--kubernetes-ca-file", &ca_path])
    };
    let trusted = start("aggregator-trusted", "cluster-ca.crt")?;
    let misled = start("aggregator-other-ca", "other-ca.crt")?;
    let f = ipamd(40).await?;
    let token = write_token(&dir, "node-a", &k1.agent_token("node-a")?)?;
    let _a = start_agent(&dir, "node-a", &f.url(), &trusted.grpc, &["--token-file", &token])?;
    let _b = start_agent(&dir, "node-a", &f.url(), &misled.grpc, &["--token-file", &token])?;
    eventually(Duration::from_secs(20), || async {
        let (t, m) = (trusted.metrics().await?, misled.metrics().await?);
        let got = (
            sample(&t, "cni_metrics_nodes_reporting", &[]),
            sample(&t, "cni_metrics_token_keys", &[]),
            sample(&m, "cni_metrics_nodes_reporting", &[]),
            rejected(&m, "token_keys_unavailable") >= 1.0,
            sample(&m, "cni_metrics_token_key_fetches_total", &[("result", "error")]).is_some_and(|e| e >= 1.0),
        );
        Ok(if got == (Some(1.0), Some(1.0), Some(0.0), true, true) {
            Ok(())
        } else {
            Err(format!("(trusted nodes, keys; other-CA nodes, refused, fetch errors) = {got:?}"))
        })
    })
    .await?;
    let log = misled.proc.stderr() + &misled.proc.stdout();
    assert!(log.contains("cannot fetch the cluster's token signing keys") && log.contains("TLS"), "{log}");
    Ok(())
}
