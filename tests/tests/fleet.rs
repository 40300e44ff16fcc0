//! The fleet load generator against a real aggregator, small: every simulated agent is welcomed, its
//! reports are acknowledged, and the aggregator knows each node by its EKS-style name with the
//! template's series, so the fleet bench (`cargo bench -p cni-metrics-e2e --bench fleet`) measures
//! what it says.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use cni_metrics_e2e::{eventually, sample, scratch_dir, Aggregator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_is_welcomed_acknowledged_and_counted() -> Result<()> {
    let dir = scratch_dir("fleet")?;
    let agg = Aggregator::start(&dir, "aggregator", &["--publish-interval", "1s"])?;
    let out = dir.join("fleet.jsonl");
    let mut fleet = Command::new(env!("CARGO_BIN_EXE_cni-metrics-fleet"))
        .args(["--aggregator", &agg.grpc, "--agents", "40", "--first", "1000", "--interval", "500ms", "--ramp", "500ms"])
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("start cni-metrics-fleet")?;
    let result = eventually(Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let last: serde_json::Value = text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
        let n = |k: &str| last.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let page = agg.metrics().await?;
        let reporting = sample(&page, "cni_metrics_nodes_reporting", &[]);
        let lat: u64 = last.get("hist").and_then(|h| h.as_array()).map_or(0, |a| a.iter().filter_map(|x| x.as_u64()).sum());
        let ok = n("open") == 40 && n("refused") == 0 && n("acked") >= 120 && lat == n("acked") && reporting == Some(40.0);
        let state = format!("open {} refused {} acked {} latencies {lat} reporting {reporting:?}", n("open"), n("refused"), n("acked"));
        Ok(if ok { Ok(()) } else { Err(state) })
    })
    .await;
    let _ = fleet.kill();
    let _ = fleet.wait();
    result?;
    let log = agg.proc.stderr();
    assert!(log.contains("ip-10-0-3-232.us-west-2.compute.internal"), "agent 1000's EKS-style name");
    // Every node sent the template's snapshot: the ipamd families reach the cluster sums.
    let page = agg.metrics().await?;
    assert!(sample(&page, "awscni_assigned_ip_addresses", &[]).is_some_and(|v| v > 0.0));
    Ok(())
}
