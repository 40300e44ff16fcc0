//! `cargo bench -p cni-metrics-e2e`: footprint of the real release binaries. A fake ipamd serves a
//! realistic page that changes every scrape; an agent process scrapes it every 100 ms and streams to an
//! aggregator process. Prints the agent's and aggregator's resident memory and the agent's CPU time per
//! scrape (from /proc, whole process: HTTP, parse, delta, gRPC). Design targets: agent RSS ≤ 8 MiB,
//! ≤ 200 µs CPU per scrape.

use std::net::SocketAddr;
use std::time::Duration;

use cni_metrics_e2e::{proc_stat, scratch_dir, start_agent, Aggregator};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::FakeIpamd;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = scratch_dir("footprint")?;
    let sim = SimIpamd::new(PageStyle::Modern, 5, 1_700_000_000.0);
    let fake = FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let agg = Aggregator::start(&dir, "aggregator", &["--publish-interval", "1s"])?;
    let agent = start_agent(&dir, "node-1", &fake.url(), &agg.grpc, &["--interval", "100ms", "--scrape-timeout", "100ms"])?;
    agent.wait_log("connected to aggregator", Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let (_, cpu0) = proc_stat(agent.pid());
    let secs = 20u64;
    let page_bytes = fake.with_sim(|s| s.render().len());
    for _ in 0..secs * 10 {
        fake.with_sim(|s| s.step());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (agent_rss, cpu1) = proc_stat(agent.pid());
    let (agg_rss, _) = proc_stat(agg.proc.pid());
    let scrapes = secs * 10;
    println!("{:<46} {:>12}", "measure", "value");
    println!("{:<46} {:>12}", "ipamd page bytes (v1.23 style, changing)", page_bytes);
    println!("{:<46} {:>9.2}MiB", "agent RSS (steady, after 22 s)", agent_rss as f64 / 1024.0);
    println!("{:<46} {:>10.0}µs", "agent CPU per scrape (whole process)", (cpu1 - cpu0) / scrapes as f64 * 1e6);
    println!("{:<46} {:>9.2}MiB", "aggregator RSS (1 node)", agg_rss as f64 / 1024.0);
    Ok(())
}
