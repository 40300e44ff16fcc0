//! `cni-metrics-fleet`: a fleet of simulated agents against a real aggregator, for the fleet bench
//! (`cargo bench -p cni-metrics-e2e --bench fleet`). Each simulated agent opens its own HTTP/2
//! connection from `--source` (so several processes can spread over 127.0.0.x), sends an EKS-style
//! Hello, waits for the Welcome, sends a snapshot of a v1.23 page's series (in parts of about 1 KiB when
//! the aggregator accepts them, as the agent does; whole with `--whole-reports`) and then one delta report
//! per `--interval`, agents spread evenly over the interval. A broken stream reconnects after a jittered
//! backoff, as the real agent does, so an aggregator restart becomes a reconnect storm.
//!
//! Every second it prints one JSON line of cumulative counts and a histogram of report→ack latency
//! (bucket `k` holds latencies up to 2^(k/4) µs), which the bench turns into per-window figures.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use cni_metrics_e2e::fleet::{latency_bucket, SimAgent, Template, LATENCY_BUCKETS};
use cni_metrics_proto::parts::{split, PART_BYTES};
use cni_metrics_proto::v1::ingest_client::IngestClient;
use cni_metrics_proto::v1::{agent_message, aggregator_message, AgentMessage, AggregatorMessage};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "Simulated agents streaming to a real aggregator (fleet bench)")]
struct Args {
    /// The aggregator's gRPC address (host:port).
    #[arg(long)]
    aggregator: String,
    /// How many agents this process runs.
    #[arg(long)]
    agents: u64,
    /// Index of this process's first agent (node names and series follow from it).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Local address the connections are made from.
    #[arg(long)]
    source: Option<IpAddr>,
    /// Scrape interval of every agent.
    #[arg(long, default_value = "30s", value_parser = humantime)]
    interval: Duration,
    /// Connections are opened evenly over this time.
    #[arg(long, default_value = "10s", value_parser = humantime)]
    ramp: Duration,
    /// Largest reconnect backoff after a broken stream.
    #[arg(long, default_value = "5s", value_parser = humantime)]
    max_backoff: Duration,
    /// Mutual TLS: a folder with `ca.crt` (the aggregator's CA) and `agent.crt` / `agent.key` (the
    /// agents' client certificate, one for all); the aggregator's certificate must name `localhost`.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// Send every report whole, as agents before reports in parts did, even to an aggregator that
    /// accepts parts.
    #[arg(long)]
    whole_reports: bool,
}

fn humantime(s: &str) -> Result<Duration, String> {
    cni_metrics_proto::duration::parse_positive(s).map_err(|e| e.to_string())
}

#[derive(Default)]
struct Stats {
    connect_errors: AtomicU64,
    welcomed: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    ended: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    hist: Vec<AtomicU64>,
}

impl Stats {
    fn new() -> Self {
        Self { hist: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(), ..Self::default() }
    }

    fn record(&self, d: Duration) {
        if let Some(b) = self.hist.get(latency_bucket(d)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn line(&self, t: f64) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hist: Vec<u64> = self.hist.iter().map(g).collect();
        serde_json::json!({
            "t": t,
            "connect_errors": g(&self.connect_errors),
            "welcomed": g(&self.welcomed),
            "open": g(&self.open),
            "refused": g(&self.refused),
            "ended": g(&self.ended),
            "sent": g(&self.sent),
            "acked": g(&self.acked),
            "hist": hist,
        })
        .to_string()
    }
}

fn now_ms() -> i64 {
    cni_metrics_proto::clock::unix_ms_now()
}

/// One simulated agent, forever: connect, stream, reconnect.
async fn agent(mut sim: SimAgent, endpoint: Endpoint, templates: Arc<Vec<Template>>, phase: Duration, args: Arc<Args>, stats: Arc<Stats>) {
    tokio::time::sleep(phase).await;
    let interval_ms = args.interval.as_millis() as u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                // Reset only after a welcome: a refused stream keeps backing off.
                let ok = stream(&mut sim, channel, &templates, interval_ms, &args, &stats).await;
                stats.ended.fetch_add(1, Ordering::Relaxed);
                if ok {
                    backoff = Duration::from_millis(100);
                }
            }
            Err(_) => {
                stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Jittered backoff: up to the current step, doubling to --max-backoff.
        tokio::time::sleep(backoff.mul_f64(fastrand::f64())).await;
        backoff = (backoff * 2).min(args.max_backoff);
    }
}

/// One stream; true when it was welcomed.
async fn stream(
    sim: &mut SimAgent,
    channel: tonic::transport::Channel,
    templates: &[Template],
    interval_ms: u64,
    args: &Args,
    stats: &Stats,
) -> bool {
    let (tx, rx) = mpsc::channel::<AgentMessage>(4);
    let msg = |b| AgentMessage { body: Some(b) };
    if tx.try_send(msg(agent_message::Body::Hello(sim.hello(interval_ms)))).is_err() {
        return false;
    }
    let mut client = IngestClient::new(channel);
    let mut inbound = match client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::ResourceExhausted {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
    };
    let accepts_parts = match inbound.message().await {
        Ok(Some(AggregatorMessage { body: Some(aggregator_message::Body::Welcome(w)) })) => w.accepts_parts && !args.whole_reports,
        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        _ => return false,
    };
    stats.welcomed.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let snapshot = sim.snapshot(templates, now_ms());
    in_flight.push_back((snapshot.seq, Instant::now()));
    let parts = if accepts_parts { split(snapshot, PART_BYTES) } else { vec![snapshot] };
    for part in parts {
        let _ = tx.send(msg(agent_message::Body::Report(part))).await;
    }
    stats.sent.fetch_add(1, Ordering::Relaxed);
    // Reports on this agent's slot of the interval.
    let first = tokio::time::Instant::now() + args.interval.mul_f64(fastrand::f64());
    let mut ticks = tokio::time::interval_at(first, args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let r = sim.delta(templates, now_ms());
                in_flight.push_back((r.seq, Instant::now()));
                while in_flight.len() > 64 {
                    in_flight.pop_front();
                }
                if tx.send(msg(agent_message::Body::Report(r))).await.is_err() {
                    break;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(aggregator_message::Body::Ack(a)) = m.body {
                        while let Some((seq, at)) = in_flight.front().copied() {
                            if seq > a.seq {
                                break;
                            }
                            in_flight.pop_front();
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                            stats.record(at.elapsed());
                        }
                    }
                }
                _ => break,
            }
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
    true
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    // One file per connection: take the whole hard limit.
    let files = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
    anyhow::ensure!(files > args.agents + 64, "{} agents need more than the {files} open files this process may have", args.agents);
    let templates: Arc<Vec<Template>> = Arc::new((0..8).map(|s| Template::build(s + 1, 32)).collect());
    let scheme = if args.tls_dir.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", args.aggregator);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad aggregator address {url}"))?
        .local_address(args.source)
        .tcp_nodelay(true)
        .buffer_size(8)
        .connect_timeout(Duration::from_secs(10));
    if let Some(dir) = &args.tls_dir {
        let read = |f: &str| std::fs::read(dir.join(f)).with_context(|| format!("read {}", dir.join(f).display()));
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")?))
            .identity(tonic::transport::Identity::from_pem(read("agent.crt")?, read("agent.key")?))
            .domain_name("localhost");
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let stats = Arc::new(Stats::new());
    for i in 0..args.agents {
        let sim = SimAgent::new(args.first + i, &templates);
        let phase = args.ramp.mul_f64(i as f64 / args.agents.max(1) as f64);
        tokio::spawn(agent(sim, endpoint.clone(), templates.clone(), phase, args.clone(), stats.clone()));
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("{}", stats.line(start.elapsed().as_secs_f64())),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
