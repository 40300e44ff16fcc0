//! Mutual TLS between agents (and consumers) and the aggregator, with certificates made by `openssl` in a
//! cert-manager-like layout: a mutually authenticated agent works; a client without a certificate, with
//! one from another CA, or in plaintext is refused; rotated server certificates are picked up.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use cni_metrics_e2e::pki::{ca, leaf};
use cni_metrics_e2e::*;
use cni_metrics_proto::v1::consumer_client::ConsumerClient;
use cni_metrics_proto::v1::GetClusterRequest;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::FakeIpamd;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

async fn client(url: &str, dir: &Path, identity: Option<&str>, tls: bool) -> Result<ConsumerClient<tonic::transport::Channel>> {
    let mut ep = Endpoint::from_shared(url.to_owned())?.connect_timeout(Duration::from_secs(3));
    if tls {
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.crt"))?));
        if let Some(id) = identity {
            cfg = cfg
                .identity(Identity::from_pem(std::fs::read(dir.join(format!("{id}.crt")))?, std::fs::read(dir.join(format!("{id}.key")))?));
        }
        ep = ep.tls_config(cfg)?;
    }
    Ok(ConsumerClient::new(ep.connect().await?))
}

async fn get_cluster(url: &str, dir: &Path, identity: Option<&str>, tls: bool) -> Result<u32> {
    let mut c = client(url, dir, identity, tls).await?;
    Ok(c.get_cluster(GetClusterRequest {}).await?.into_inner().nodes_known)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_ca() -> Result<()> {
    let dir = scratch_dir("mtls")?;
    ca(&dir, "ca")?;
    ca(&dir, "other-ca")?;
    leaf(&dir, "ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    leaf(&dir, "ca", "agent", "subjectAltName=DNS:node-1\nextendedKeyUsage=clientAuth\n")?;
    leaf(&dir, "other-ca", "intruder", "subjectAltName=DNS:node-9\nextendedKeyUsage=clientAuth\n")?;
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let agg = Aggregator::start(
        &dir,
        "aggregator",
        &["--tls-cert", &p("server.crt"), "--tls-key", &p("server.key"), "--tls-client-ca", &p("ca.crt")],
    )?;
    let url = format!("https://{}", agg.grpc);

    // A mutually authenticated agent reports.
    let fake = FakeIpamd::start(SimIpamd::new(PageStyle::Modern, 1, 1.0), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let _agent = start_agent(
        &dir,
        "node-1",
        &fake.url(),
        &agg.grpc,
        &["--aggregator", &url, "--tls-cert", &p("agent.crt"), "--tls-key", &p("agent.key"), "--tls-ca", &p("ca.crt")],
    )?;
    eventually(Duration::from_secs(20), || async {
        let n = sample(&agg.metrics().await?, "cni_metrics_nodes_reporting", &[]);
        Ok(if n == Some(1.0) { Ok(()) } else { Err(format!("nodes reporting {n:?}")) })
    })
    .await?;
    ensure!(get_cluster(&url, &dir, Some("agent"), true).await? == 1, "a consumer with a client certificate is served");

    // Refused: no client certificate, a certificate of another CA, plaintext.
    ensure!(get_cluster(&url, &dir, None, true).await.is_err(), "anonymous TLS client refused");
    ensure!(get_cluster(&url, &dir, Some("intruder"), true).await.is_err(), "foreign CA refused");
    ensure!(get_cluster(&format!("http://{}", agg.grpc), &dir, None, false).await.is_err(), "plaintext refused");
    let refused = sample(&agg.metrics().await?, "cni_metrics_tls_handshake_failures_total", &[]).unwrap_or(0.0);
    ensure!(refused >= 3.0, "refusals counted: {refused}");

    // Rotation: a new server certificate in place is picked up without a restart.
    leaf(&dir, "ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    agg.proc.wait_log("TLS certificates reloaded", Duration::from_secs(25))?;
    ensure!(get_cluster(&url, &dir, Some("agent"), true).await? == 1, "served with the rotated certificate");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_bounded() -> Result<()> {
    let dir = scratch_dir("mtls-bound")?;
    ca(&dir, "ca")?;
    leaf(&dir, "ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
    leaf(&dir, "ca", "agent", "subjectAltName=DNS:node-1\nextendedKeyUsage=clientAuth\n")?;
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let tls = ["--tls-cert", &p("server.crt"), "--tls-key", &p("server.key"), "--tls-client-ca", &p("ca.crt")];
    let agg = Aggregator::start(&dir, "aggregator", &[&tls[..], &["--max-tls-handshakes", "2"]].concat())?;
    let url = format!("https://{}", agg.grpc);
    ensure!(get_cluster(&url, &dir, Some("agent"), true).await? == 0, "served while no handshake is stuck");
    // Two connections that never send a ClientHello hold both handshake slots.
    let idle = [tokio::net::TcpStream::connect(&agg.grpc).await?, tokio::net::TcpStream::connect(&agg.grpc).await?];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::time::timeout(Duration::from_secs(3), get_cluster(&url, &dir, Some("agent"), true)).await;
    ensure!(!matches!(waiting, Ok(Ok(_))), "a third handshake waits while both slots are held");
    // Closing them frees the slots at once (not only at the handshake timeout).
    drop(idle);
    let served = tokio::time::timeout(Duration::from_secs(5), get_cluster(&url, &dir, Some("agent"), true)).await;
    ensure!(matches!(served, Ok(Ok(0))), "served once the slots are free: {served:?}");
    Ok(())
}
