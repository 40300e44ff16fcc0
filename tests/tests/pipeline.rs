//! End-to-end: real agent and aggregator processes, fake ipamds as real HTTP servers with the pages of
//! three ipamd generations, real gRPC over loopback. Every assertion compares the aggregator's numbers
//! with the truth kept by the simulators.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::{FakeIpamd, Mode};

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

struct Node {
    name: String,
    fake: FakeIpamd,
    /// add_ip_req lifetime value the agent took as its baseline.
    baseline_add: u64,
    baseline_del: u64,
}

/// Fake ipamds: an old 2019-style one (started a day ago: its counters are a baseline), then new nodes.
async fn fakes(styles: &[PageStyle], seed: u64) -> Result<Vec<Node>> {
    let mut out = Vec::new();
    for (i, style) in styles.iter().enumerate() {
        let start = if i == 0 { now() - 86_400.0 } else { now() - 2.0 };
        let mut sim = SimIpamd::new(*style, seed + i as u64, start);
        for _ in 0..3 {
            sim.step(); // history before the agent starts
        }
        let (baseline_add, baseline_del) = if i == 0 { (sim.lifetime.add_ip_req, sim.lifetime.del_ip_req_pod_deleted) } else { (0, 0) };
        let fake = FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        out.push(Node { name: format!("node-{}", i + 1), fake, baseline_add, baseline_del });
    }
    Ok(out)
}

struct Truth {
    assigned: f64,
    total: f64,
    max: f64,
    add: f64,
    del: f64,
}

fn truth(nodes: &[&Node]) -> Truth {
    let mut t = Truth { assigned: 0.0, total: 0.0, max: 0.0, add: 0.0, del: 0.0 };
    for n in nodes {
        n.fake.with_sim(|s| {
            t.assigned += s.assigned as f64;
            t.total += s.total_ips() as f64;
            t.max += s.ip_max() as f64;
            t.add += (s.lifetime.add_ip_req - n.baseline_add) as f64;
            t.del += (s.lifetime.del_ip_req_pod_deleted - n.baseline_del) as f64;
        });
    }
    t
}

/// Wait until the aggregator's /metrics equals the truth of `gauge_nodes` (gauges) and `counter_total`.
async fn assert_exact(agg: &Aggregator, gauge_nodes: &[&Node], add: f64, del: f64) -> Result<()> {
    let t = truth(gauge_nodes);
    eventually(Duration::from_secs(15), || async {
        let page = agg.metrics().await?;
        let got = (
            sample(&page, "awscni_assigned_ip_addresses", &[]),
            sample(&page, "awscni_total_ip_addresses", &[]),
            sample(&page, "awscni_ip_max", &[]),
            sample(&page, "awscni_add_ip_req_count", &[]),
            sample(&page, "awscni_del_ip_req_count", &[("reason", "PodDeleted")]),
        );
        let want = (Some(t.assigned), Some(t.total), Some(t.max), Some(add), Some(del));
        Ok(if got == want { Ok(()) } else { Err(format!("(assigned, total, max, add, del) got {got:?}, want {want:?}")) })
    })
    .await
}

async fn wait_reporting(agg: &Aggregator, n: f64) -> Result<()> {
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let got = sample(&page, "cni_metrics_nodes_reporting", &[]);
        Ok(if got == Some(n) { Ok(()) } else { Err(format!("nodes reporting {got:?}, want {n}")) })
    })
    .await
}

async fn step_all(nodes: &[&Node], times: usize) {
    for _ in 0..times {
        for n in nodes {
            n.fake.with_sim(|s| s.step());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_cluster_sums_across_page_styles_and_an_ipamd_restart() -> Result<()> {
    let dir = scratch_dir("exact")?;
    let nodes = fakes(&[PageStyle::Legacy2019, PageStyle::Modern, PageStyle::PrefixDelegation, PageStyle::GaugeTyped], 10).await?;
    let agg = Aggregator::start(&dir, "aggregator", &["--publish-interval", "500ms"])?;
    let agents: Vec<Proc> = nodes.iter().map(|n| start_agent(&dir, &n.name, &n.fake.url(), &agg.grpc, &[])).collect::<Result<_>>()?;
    wait_reporting(&agg, 4.0).await?;
    let all: Vec<&Node> = nodes.iter().collect();
    let t0 = truth(&all);
    assert_exact(&agg, &all, t0.add, t0.del).await?;

    // Each agent serves its own self-metrics and readiness.
    let line = agents[1].wait_log("agent HTTP endpoint", Duration::from_secs(5))?;
    let http = json_field(&line, "http").unwrap_or_default();
    eventually(Duration::from_secs(5), || async {
        let ready = reqwest::get(format!("http://{http}/readyz")).await?.status().as_u16();
        Ok(if ready == 200 { Ok(()) } else { Err(format!("agent readyz {ready}")) })
    })
    .await?;
    let m = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
    let scrapes = cni_metrics_agent::parse::parse(&m).samples.iter().find(|s| s.name == "cni_metrics_agent_scrapes_total").map(|s| s.value);
    assert!(scrapes.unwrap_or(0.0) >= 1.0, "{m}");
    // Both pages parse in Prometheus itself, four ipamd generations' series included.
    promtool_check(&m)?;
    promtool_check(&agg.metrics().await?)?;

    step_all(&all, 4).await;
    // ipamd on node-2 restarts: its page's counters drop to zero and grow again.
    nodes[1].fake.with_sim(|s| s.restart(now()));
    step_all(&all, 4).await;
    let t = truth(&all);
    assert!(t.add > t0.add, "the simulation moved");
    assert_exact(&agg, &all, t.add, t.del).await?;

    // The old ipamd's latency summary has quantiles: the cluster series is their max, not a sum.
    let page = agg.metrics().await?;
    let q = sample(&page, "awscni_aws_api_latency_ms", &[("api", "GetMetadata"), ("error", "false"), ("quantile", "0.99")]);
    let node1_p99 = nodes[0].fake.with_sim(|s| {
        let text = s.render();
        cni_metrics_agent::parse::parse(&text)
            .samples
            .iter()
            .find(|x| x.name == "awscni_aws_api_latency_ms" && x.label("api") == Some("GetMetadata") && x.label("quantile") == Some("0.99"))
            .map(|x| x.value)
    });
    assert_eq!(q, node1_p99);

    // The stdout sink's windows add up to the same counter truth (every increment in exactly one window).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = agg.proc.stdout();
    assert_eq!(stdout_sum(&out, "addReqCount"), t.add, "stdout sink windows:\n{out}");
    assert!(out.contains("cluster_id=e2e metric=assignIPAddresses value="), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_removes_at_once_and_ttl_expires_a_silent_node() -> Result<()> {
    let dir = scratch_dir("leave")?;
    let nodes = fakes(&[PageStyle::Modern, PageStyle::Modern, PageStyle::PrefixDelegation], 20).await?;
    let agg = Aggregator::start(&dir, "aggregator", &["--node-ttl", "4s"])?;
    let mut agents: Vec<Proc> = nodes.iter().map(|n| start_agent(&dir, &n.name, &n.fake.url(), &agg.grpc, &[])).collect::<Result<_>>()?;
    wait_reporting(&agg, 3.0).await?;
    let all: Vec<&Node> = nodes.iter().collect();
    step_all(&all, 3).await;
    let t = truth(&all);
    assert_exact(&agg, &all, t.add, t.del).await?;

    // SIGTERM: the agent says goodbye; its gauges leave well before any TTL.
    let started = std::time::Instant::now();
    assert!(agents[0].terminate(Duration::from_secs(5))?, "agent exits on SIGTERM");
    let rest: Vec<&Node> = nodes[1..].iter().collect();
    assert_exact(&agg, &rest, t.add, t.del).await?;
    assert!(started.elapsed() < Duration::from_secs(3), "goodbye took {:?}", started.elapsed());
    let page = agg.metrics().await?;
    assert_eq!(sample(&page, "cni_metrics_node_goodbyes_total", &[]), Some(1.0));
    assert_eq!(sample(&page, "cni_metrics_nodes_expired_total", &[]), Some(0.0), "removed by the goodbye, not the TTL");

    // SIGKILL: no goodbye; the node stays until its 4 s TTL, then leaves. Counters never go back.
    agents[1].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exact(&agg, &rest, t.add, t.del).await?;
    assert_eq!(sample(&agg.metrics().await?, "cni_metrics_nodes_expired_total", &[]), Some(0.0), "kept until its TTL");
    let last: Vec<&Node> = nodes[2..].iter().collect();
    assert_exact(&agg, &last, t.add, t.del).await?;
    assert_eq!(sample(&agg.metrics().await?, "cni_metrics_nodes_expired_total", &[]), Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_page_on_one_node_while_the_others_stay_exact() -> Result<()> {
    let dir = scratch_dir("garbage")?;
    let nodes = fakes(&[PageStyle::Modern, PageStyle::Legacy2019, PageStyle::PrefixDelegation], 30).await?;
    let agg = Aggregator::start(&dir, "aggregator", &[])?;
    let _agents: Vec<Proc> = nodes.iter().map(|n| start_agent(&dir, &n.name, &n.fake.url(), &agg.grpc, &[])).collect::<Result<_>>()?;
    wait_reporting(&agg, 3.0).await?;
    let all: Vec<&Node> = nodes.iter().collect();

    nodes[1].fake.set_mode(Mode::Garbage);
    eventually(Duration::from_secs(10), || async {
        let page = agg.metrics().await?;
        let g = sample(&page, "cni_metrics_nodes", &[("scrape_status", "garbage")]);
        Ok(if g == Some(1.0) { Ok(()) } else { Err(format!("garbage nodes {g:?}")) })
    })
    .await?;
    // The healthy nodes move on; the garbled node keeps its last good state (stale, not dropped).
    let healthy = [&nodes[0], &nodes[2]];
    step_all(&healthy, 4).await;
    let t = truth(&all);
    assert_exact(&agg, &all, t.add, t.del).await?;
    let page = agg.metrics().await?;
    assert_eq!(sample(&page, "cni_metrics_nodes_reporting", &[]), Some(2.0));
    assert!(sample(&page, "cni_metrics_scrape_errors_total", &[("status", "garbage")]).unwrap_or(0.0) >= 1.0);

    // Healthy again: its increments made meanwhile arrive, nothing lost or doubled.
    nodes[1].fake.with_sim(|s| s.step());
    nodes[1].fake.set_mode(Mode::Normal);
    step_all(&all, 2).await;
    let t = truth(&all);
    assert_exact(&agg, &all, t.add, t.del).await?;
    wait_reporting(&agg, 3.0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_clear() -> Result<()> {
    let dir = scratch_dir("startup")?;
    let mut bad = Launch::host("cni-metrics-agent", "agent-bad-interval", &dir)?.args(["--interval", "0", "--node-name", "x"]).start()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bad.kill();
    assert!(bad.stderr().contains("must be positive"), "{}", bad.stderr());
    let mut bad = Launch::host("cni-metrics-aggregator", "agg-bad-switch", &dir)?.args(["--prometheus", "ture"]).start()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bad.kill();
    assert!(bad.stderr().contains("is not one of yes/true/no/false"), "{}", bad.stderr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_claiming_one_node_do_not_double_it() -> Result<()> {
    let dir = scratch_dir("twins")?;
    let nodes = fakes(&[PageStyle::Modern, PageStyle::PrefixDelegation], 50).await?;
    let agg = Aggregator::start(&dir, "aggregator", &[])?;
    let first = start_agent(&dir, "twin", &nodes[0].fake.url(), &agg.grpc, &[])?;
    wait_reporting(&agg, 1.0).await?;
    let second = Launch::host("cni-metrics-agent", "twin-2", &dir)?
        .args(["--ipamd-url", &nodes[1].fake.url(), "--aggregator", &format!("http://{}", agg.grpc), "--node-name", "twin"])
        .args(["--interval", "200ms", "--imds", "false", "--introspection-url", "", "--http-listen", "", "--log-format", "json"])
        .start()?;
    second.wait_log("already reported by another live agent", Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let page = agg.metrics().await?;
    assert!(sample(&page, "cni_metrics_reports_rejected_total", &[("reason", "duplicate_node")]).unwrap_or(0.0) >= 1.0, "{page}");
    let want = nodes[0].fake.with_sim(|s| s.assigned as f64);
    assert_eq!(sample(&page, "awscni_assigned_ip_addresses", &[]), Some(want), "the node is the first agent's, counted once");
    drop(first);
    Ok(())
}
