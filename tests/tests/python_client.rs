//! A gRPC client we did not write: `examples/python/capacity.py` (grpcio, stubs generated from `proto/` by
//! grpcio-tools here, never committed) subscribes to a live aggregator fed by real agents and fake
//! ipamds; what it prints must equal the aggregator's `/metrics` and the simulators' truth.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::PageStyle;

/// Generate the stubs with grpcio-tools into a fresh directory.
fn generate_stubs(python: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let status = Command::new("bash")
        .arg(repo_root().join("examples/python/generate.sh"))
        .arg(out)
        .env("PYTHON", python)
        .status()
        .context("running examples/python/generate.sh")?;
    ensure!(status.success(), "generate.sh failed: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_prints_what_the_aggregator_exposes() -> Result<()> {
    // The example pins the same grpcio as the test environment installs.
    let pins = |p: &str| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(repo_root().join(p))?.lines().filter(|l| l.starts_with("grpcio")).map(str::to_owned).collect())
    };
    ensure!(pins("examples/python/requirements.txt")? == pins("tests/support/requirements.txt")?, "grpcio pins differ");
    let python = test_python()?;
    let dir = scratch_dir("python-client")?;
    let stubs = dir.join("stubs");
    generate_stubs(python, &stubs)?;

    let agg = Aggregator::start(&dir, "aggregator", &["--subscribe-interval", "100ms"])?;
    let mut ipamds = Vec::new();
    let mut agents = Vec::new();
    for (i, style) in [PageStyle::Modern, PageStyle::PrefixDelegation, PageStyle::Legacy2019].into_iter().enumerate() {
        let f = fake_ipamd(style, 40 + i as u64, 4).await?;
        agents.push(start_agent(&dir, &format!("node-{i}"), &f.url(), &agg.grpc, &[])?);
        ipamds.push(f);
    }
    let truth_assigned: u64 = ipamds.iter().map(|f| f.with_sim(|s| s.assigned)).sum();
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let got = (sample(&page, "cni_metrics_nodes_reporting", &[]), sample(&page, "awscni_assigned_ip_addresses", &[]));
        Ok(if got == (Some(3.0), Some(truth_assigned as f64)) { Ok(()) } else { Err(format!("(nodes, assigned) = {got:?}")) })
    })
    .await?;

    let run = |extra: &[&str]| -> Result<String> {
        let out = Command::new(python)
            .arg(repo_root().join("examples/python/capacity.py"))
            .args(["--aggregator", &agg.grpc, "--once", "--interval-ms", "100"])
            .args(extra)
            .env("CNI_METRICS_STUBS", &stubs)
            .output()?;
        ensure!(out.status.success(), "capacity.py failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let json: serde_json::Value = serde_json::from_str(run(&["--json"])?.trim())?;
    let page = agg.metrics().await?;
    let field = |k: &str| json[k].as_f64().with_context(|| format!("{k} in {json}"));
    for (key, metric, labels) in [
        ("nodes_reporting", "cni_metrics_nodes_reporting", vec![]),
        ("nodes_low_on_ips", "cni_metrics_nodes_low_on_ips", vec![]),
        ("assigned_ips", "awscni_assigned_ip_addresses", vec![]),
        ("total_ips", "awscni_total_ip_addresses", vec![]),
        ("max_ips", "awscni_ip_max", vec![]),
        ("available_ips", "cni_metrics_available_ip_addresses", vec![]),
        ("ip_headroom", "cni_metrics_ip_headroom", vec![]),
        ("utilization_max", "cni_metrics_ip_utilization_ratio", vec![("basis", "max")]),
        ("enis_allocated", "awscni_eni_allocated", vec![]),
        ("enis_max", "awscni_eni_max", vec![]),
    ] {
        let want = sample(&page, metric, &labels).with_context(|| format!("{metric} on /metrics"))?;
        let got = field(key)?;
        ensure!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{key}: the Python client says {got}, /metrics {metric} says {want}");
    }
    ensure!(json["cluster_id"] == "e2e", "cluster id: {json}");
    ensure!(field("assigned_ips")? == truth_assigned as f64, "assigned IPs equal the simulators' truth");
    // The human line, in words.
    let line = run(&[])?;
    ensure!(
        line.starts_with("cluster e2e: 3 of 3 nodes reporting; ") && line.contains(&format!("{truth_assigned} IPs assigned")),
        "{line}"
    );
    // An unreachable aggregator: a one-line error and a non-zero exit, no traceback.
    let out = Command::new(python)
        .arg(repo_root().join("examples/python/capacity.py"))
        .args(["--aggregator", &format!("127.0.0.1:{}", free_port()?), "--once"])
        .env("CNI_METRICS_STUBS", &stubs)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.starts_with("cannot read the aggregator at ") && !err.contains("Traceback"), "{err}");
    drop(agents);
    Ok(())
}
