//! End-to-end: real agent and aggregator processes over real gRPC on loopback, each node's ipamd a
//! `cni-metrics-fake-ipamd` process serving the pages of four ipamd generations (a [`Cluster`]). Every
//! assertion compares the aggregator's numbers with the truth kept by the simulators.

use std::time::Duration;

use anyhow::Result;
use cni_metrics_e2e::cluster::{Cluster, Totals};
use cni_metrics_e2e::*;

const NOTHING_LOST: Totals = (0.0, 0.0, 0.0);
const STEP: Duration = Duration::from_millis(250);
const EXACT: Duration = Duration::from_secs(15);

/// A cluster of new nodes with these page styles (their ipamds started 2 s ago: counted from zero), each
/// with 3 intervals of history, and an aggregator with `agg_extra`; no agents yet.
fn cluster(test: &str, styles: &[&str], agg_extra: &[&str]) -> Result<Cluster> {
    let mut c = Cluster::new(test, 0, false)?;
    for style in styles {
        let i = c.add_node_with(style, 2.0)?;
        c.ipamd(i, "step 3")?;
    }
    c.agg_extra = agg_extra.iter().map(|a| (*a).to_owned()).collect();
    c.start_aggregator()?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_cluster_sums_across_page_styles_and_an_ipamd_restart() -> Result<()> {
    let mut c = Cluster::new("exact", 0, false)?;
    // An old 2019-style ipamd (started a day ago: its counters are a baseline), then new nodes.
    for (style, age) in [("legacy", 86_400.0), ("modern", 2.0), ("pd", 2.0), ("gauge", 2.0)] {
        let i = c.add_node_with(style, age)?;
        c.ipamd(i, "step 3")?; // history before the agent starts
    }
    let baseline = c.node_truth(0)?;
    c.agg_extra = vec!["--publish-interval".into(), "500ms".into()];
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(4).await?;
    let all = [0, 1, 2, 3];
    c.wait_page_exact(&all, baseline, EXACT).await?;
    let t0 = c.truth()?;

    // Each agent serves its own self-metrics and readiness.
    let m = c.agent_page(1).await?;
    let value = |m: &str, name: &str| cni_metrics_agent::parse::parse(m).samples.iter().find(|s| s.name == name).map(|s| s.value);
    assert!(value(&m, "cni_metrics_agent_scrapes_total").unwrap_or(0.0) >= 1.0, "{m}");
    // Every usable scrape is a sample of the node's pool history (the warm-pool advisor's input).
    let samples = value(&m, "cni_metrics_agent_advisor_history_samples").unwrap_or(0.0);
    assert!(samples >= 1.0, "{m}");
    // Both pages parse in Prometheus itself, four ipamd generations' series included.
    promtool_check(&m)?;
    promtool_check(&c.metrics().await?)?;

    c.step_all(4, STEP).await?;
    // ipamd on node 1 restarts: its page's counters drop to zero and grow again.
    c.ipamd(1, "restart")?;
    c.step_all(4, STEP).await?;
    let t = c.truth()?;
    assert!(t.0 > t0.0, "the simulation moved");
    let later = value(&c.agent_page(1).await?, "cni_metrics_agent_advisor_history_samples").unwrap_or(0.0);
    assert!(later > samples, "the history grows with scrapes: {samples} then {later}");
    c.wait_page_exact(&all, baseline, EXACT).await?;

    // The old ipamd's latency summary has quantiles: the cluster series is their max, not a sum.
    let page = c.metrics().await?;
    let q = sample(&page, "awscni_aws_api_latency_ms", &[("api", "GetMetadata"), ("error", "false"), ("quantile", "0.99")]);
    let old_page = c.ipamd_page(0).await?;
    let node0_p99 = cni_metrics_agent::parse::parse(&old_page)
        .samples
        .iter()
        .find(|x| x.name == "awscni_aws_api_latency_ms" && x.label("api") == Some("GetMetadata") && x.label("quantile") == Some("0.99"))
        .map(|x| x.value);
    assert_eq!(q, node0_p99);

    // The stdout sink's windows add up to the same counter truth (every increment in exactly one window;
    // not every page generation has the EC2 counters, so addReqCount).
    let want = c.truth()?.0 - baseline.0;
    eventually(EXACT, || async {
        let got = c.published().0;
        Ok(if got == want { Ok(()) } else { Err(format!("stdout sink addReqCount {got}, truth {want}")) })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.published().0, want, "an overshoot in a later window");
    let out = c.aggregator()?.stdout();
    assert!(out.contains("cluster_id=e2e metric=assignIPAddresses value="), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_removes_at_once_and_ttl_expires_a_silent_node() -> Result<()> {
    let mut c = cluster("leave", &["modern", "modern", "pd"], &["--node-ttl", "4s"])?;
    c.start_agents()?;
    c.wait_reporting(3).await?;
    c.step_all(3, STEP).await?;
    c.wait_page_exact(&[0, 1, 2], NOTHING_LOST, EXACT).await?;

    // SIGTERM: the agent says goodbye; its gauges leave well before any TTL.
    let started = std::time::Instant::now();
    assert!(c.agent(0)?.terminate(Duration::from_secs(5))?, "agent exits on SIGTERM");
    c.wait_page_exact(&[1, 2], NOTHING_LOST, EXACT).await?;
    assert!(started.elapsed() < Duration::from_secs(3), "goodbye took {:?}", started.elapsed());
    let page = c.metrics().await?;
    assert_eq!(sample(&page, "cni_metrics_node_goodbyes_total", &[]), Some(1.0));
    assert_eq!(sample(&page, "cni_metrics_nodes_expired_total", &[]), Some(0.0), "removed by the goodbye, not the TTL");

    // SIGKILL: no goodbye; the node stays until its 4 s TTL, then leaves. Counters never go back.
    c.agent(1)?.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.wait_page_exact(&[1, 2], NOTHING_LOST, EXACT).await?;
    assert_eq!(sample(&c.metrics().await?, "cni_metrics_nodes_expired_total", &[]), Some(0.0), "kept until its TTL");
    c.wait_page_exact(&[2], NOTHING_LOST, EXACT).await?;
    assert_eq!(sample(&c.metrics().await?, "cni_metrics_nodes_expired_total", &[]), Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_page_on_one_node_while_the_others_stay_exact() -> Result<()> {
    let mut c = cluster("garbage", &["modern", "legacy", "pd"], &[])?;
    c.start_agents()?;
    c.wait_reporting(3).await?;

    c.ipamd(1, "mode garbage")?;
    eventually(Duration::from_secs(10), || async {
        let page = c.metrics().await?;
        let g = sample(&page, "cni_metrics_nodes", &[("scrape_status", "garbage")]);
        Ok(if g == Some(1.0) { Ok(()) } else { Err(format!("garbage nodes {g:?}")) })
    })
    .await?;
    // The healthy nodes move on; the garbled node keeps its last good state (stale, not dropped).
    c.step(&[0, 2], 4, STEP).await?;
    c.wait_page_exact(&[0, 1, 2], NOTHING_LOST, EXACT).await?;
    let page = c.metrics().await?;
    assert_eq!(sample(&page, "cni_metrics_nodes_reporting", &[]), Some(2.0));
    assert!(sample(&page, "cni_metrics_scrape_errors_total", &[("status", "garbage")]).unwrap_or(0.0) >= 1.0);

    // Healthy again: its increments made meanwhile arrive, nothing lost or doubled.
    c.ipamd(1, "step 1")?;
    c.ipamd(1, "mode normal")?;
    c.step_all(2, STEP).await?;
    c.wait_page_exact(&[0, 1, 2], NOTHING_LOST, EXACT).await?;
    c.wait_reporting(3).await?;
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
    let mut c = cluster("twins", &["modern", "pd"], &[])?;
    c.start_agent(0)?;
    c.wait_reporting(1).await?;
    // A second agent claims node 0 while reading node 1's ipamd.
    let twin = c.nodes[0].name.clone();
    let second = Launch::host("cni-metrics-agent", "twin-2", &c.dir)?
        .args(["--ipamd-url", c.ipamd_url(1), "--aggregator", &format!("http://{}", c.aggregator_address()), "--node-name", &twin])
        .args(["--interval", "200ms", "--imds", "false", "--introspection-url", "", "--http-listen", "", "--log-format", "json"])
        .start()?;
    second.wait_log("already reported by another live agent", Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let page = c.metrics().await?;
    assert!(sample(&page, "cni_metrics_reports_rejected_total", &[("reason", "duplicate_node")]).unwrap_or(0.0) >= 1.0, "{page}");
    let want = c.node_gauges(0)?.0;
    assert_eq!(sample(&page, "awscni_assigned_ip_addresses", &[]), Some(want), "the node is the first agent's, counted once");
    Ok(())
}
