//! Reports in parts, across real processes. A real aggregator; nodes speaking the Ingest protocol
//! directly with a v1.23 node's snapshot (the fleet generator's template, built by the agent's own delta
//! engine): one sends it whole, as every agent before reports in parts did, one in parts of about 1 KiB,
//! and both count the same. A sender that breaks the order of its parts is refused alone. Then the real
//! agent against a fake ipamd: its snapshot goes in parts and the sums stay exact.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::cluster::Cluster;
use cni_metrics_e2e::fleet::{SimAgent, Template};
use cni_metrics_e2e::*;
use cni_metrics_proto::parts::{split, PART_BYTES};
use cni_metrics_proto::v1::ingest_client::IngestClient;
use cni_metrics_proto::v1::{agent_message::Body, aggregator_message, AgentMessage, AggregatorMessage, Report};
use prost::Message as _;
use tokio::sync::mpsc;

/// One node's stream: what it sends, and what the aggregator answered.
struct Node {
    tx: mpsc::Sender<AgentMessage>,
    answers: tonic::Streaming<AggregatorMessage>,
    accepts_parts: bool,
}

impl Node {
    /// Hello, then wait for the Welcome.
    async fn join(channel: tonic::transport::Channel, sim: &SimAgent) -> Result<Self> {
        let (tx, rx) = mpsc::channel(256);
        tx.send(AgentMessage { body: Some(Body::Hello(sim.hello(60_000))) }).await?;
        let mut answers = IngestClient::new(channel).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), answers.message()).await.context("no welcome")??;
        let Some(AggregatorMessage { body: Some(aggregator_message::Body::Welcome(w)) }) = first else {
            anyhow::bail!("the first answer is not a Welcome: {first:?}");
        };
        Ok(Self { tx, answers, accepts_parts: w.accepts_parts })
    }

    async fn send(&self, reports: Vec<Report>) -> Result<()> {
        for r in reports {
            self.tx.send(AgentMessage { body: Some(Body::Report(r)) }).await?;
        }
        Ok(())
    }

    /// The next answer that is not a commit: an ack's seq, or the status the stream ended with.
    async fn next_ack(&mut self) -> Result<std::result::Result<u64, tonic::Status>> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.answers.message()).await.context("no answer")?;
            match m {
                Ok(Some(AggregatorMessage { body: Some(aggregator_message::Body::Ack(a)) })) => return Ok(Ok(a.seq)),
                Ok(Some(_)) => continue,
                Ok(None) => anyhow::bail!("the stream ended without a status"),
                Err(status) => return Ok(Err(status)),
            }
        }
    }
}

/// The cluster's `awscni_*` samples (name and labels → value).
fn awscni(page: &str) -> BTreeMap<String, f64> {
    let parsed = cni_metrics_agent::parse::parse(page);
    parsed
        .samples
        .iter()
        .filter(|s| s.name.starts_with("awscni_"))
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{}{{{}}}", s.name, labels.join(",")), s.value)
        })
        .collect()
}

async fn page(agg: &Aggregator) -> Result<String> {
    Ok(reqwest::get(format!("http://{}/metrics", agg.http)).await?.error_for_status()?.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_snapshot_and_one_in_parts_count_the_same() -> Result<()> {
    let dir = scratch_dir("parts")?;
    let agg = Aggregator::start(&dir, "aggregator", &[])?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.grpc))?.connect().await?;
    // One template: every simulated node has the same series and values.
    let templates = vec![Template::build(1, 4)];
    let now = cni_metrics_proto::clock::unix_ms_now();

    // An old-style agent: its snapshot in one message.
    let mut old_sim = SimAgent::new(0, &templates);
    let mut old = Node::join(channel.clone(), &old_sim).await?;
    ensure!(old.accepts_parts, "the aggregator's Welcome says it accepts parts");
    let whole = old_sim.snapshot(&templates, now);
    ensure!(whole.encoded_len() > 4 * PART_BYTES, "a v1.23 snapshot is several KiB ({} bytes)", whole.encoded_len());
    let whole_seq = whole.seq;
    old.send(vec![whole]).await?;
    ensure!(old.next_ack().await?.ok() == Some(whole_seq), "the whole snapshot is acknowledged");
    let one = awscni(&page(&agg).await?);
    ensure!(one.len() >= 10, "the node's series are on the page: {one:?}");

    // A new agent: the same snapshot in parts, acknowledged once, after the last part.
    let mut new_sim = SimAgent::new(1, &templates);
    let mut new = Node::join(channel.clone(), &new_sim).await?;
    let parts = split(new_sim.snapshot(&templates, now), PART_BYTES);
    let seq = parts[0].seq;
    ensure!(parts.len() >= 5, "{} parts", parts.len());
    ensure!(parts.iter().all(|p| p.encoded_len() <= PART_BYTES), "every part within {PART_BYTES} bytes");
    new.send(parts).await?;
    ensure!(new.next_ack().await?.ok() == Some(seq), "one ack, for the assembled report");
    let two = awscni(&page(&agg).await?);
    for (series, v) in &one {
        let got = two.get(series).copied();
        ensure!(got == Some(2.0 * v), "{series}: one node {v}, two identical nodes {got:?}");
    }
    ensure!(sample(&page(&agg).await?, "cni_metrics_reports_in_parts_total", &[]) == Some(1.0), "one report arrived in parts");

    // Deltas after the parts are plain reports.
    let delta = new_sim.delta(&templates, now + 1000);
    let delta_seq = delta.seq;
    new.send(split(delta, PART_BYTES)).await?;
    ensure!(new.next_ack().await?.ok() == Some(delta_seq), "a small delta goes whole and is acknowledged");
    // The delta's increments reach the page's counter totals when its window closes (200 ms windows):
    // two closes later `before` holds them, so a slow machine cannot see them land between the pages.
    let windows = |p: &str| sample(p, "cni_metrics_publish_windows_total", &[]).unwrap_or(0.0);
    let closed = windows(&page(&agg).await?);
    eventually(Duration::from_secs(10), || async {
        let now = windows(&page(&agg).await?);
        Ok(if now >= closed + 2.0 { Ok(()) } else { Err(format!("{now} windows closed, waiting for {}", closed + 2.0)) })
    })
    .await?;
    let before = awscni(&page(&agg).await?);

    // Parts out of order: that stream alone is closed, with what was expected.
    let mut bad_sim = SimAgent::new(2, &templates);
    let mut bad = Node::join(channel.clone(), &bad_sim).await?;
    let mut parts = split(bad_sim.snapshot(&templates, now), PART_BYTES);
    parts.remove(1);
    bad.send(parts).await?;
    let ended = bad.next_ack().await?;
    let status = ended.err().context("the stream with a part missing is refused")?;
    ensure!(status.code() == tonic::Code::InvalidArgument && status.message().contains("expected part 2"), "status: {status:?}");
    let after = page(&agg).await?;
    ensure!(
        sample(&after, "cni_metrics_reports_rejected_total", &[("reason", "bad_part")]) == Some(1.0),
        "the refusal is counted as bad_part"
    );
    ensure!(awscni(&after) == before, "the refused node added nothing and the others are unchanged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sends_its_snapshot_in_parts_and_sums_stay_exact() -> Result<()> {
    let mut c = Cluster::new("parts-agent", 2, false)?;
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(2).await?;
    c.step_all(3, Duration::from_millis(150)).await?;
    c.wait_exact("after the snapshots", Duration::from_secs(30)).await?;
    let in_parts = c.self_metric("cni_metrics_reports_in_parts_total").await?;
    ensure!(in_parts >= 2.0, "each agent's snapshot arrived in parts ({in_parts})");
    // A restarted agent sends its snapshot in parts again, and the sums stay exact through it.
    c.agent(0)?.kill();
    c.start_agent(0)?;
    c.step_all(2, Duration::from_millis(150)).await?;
    c.wait_exact("after an agent restart", Duration::from_secs(30)).await?;
    let again = c.self_metric("cni_metrics_reports_in_parts_total").await?;
    ensure!(again >= in_parts + 1.0, "the new run's snapshot arrived in parts ({again})");
    Ok(())
}
