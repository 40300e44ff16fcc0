//! CloudWatch end-to-end: real agent and aggregator processes publishing through the real
//! aws-sdk-cloudwatch to moto (behind the CBOR⇄JSON translator of `tests/support/cw_emulator.py`).
//! Values are read back from moto and compared with the simulators' truth; request limits are checked
//! on the translator's record of every request.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::FakeIpamd;
use serde_json::json;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// New nodes (ipamd started just now): every counter increment counts, truth = lifetime values.
async fn fresh_nodes(n: usize, seed: u64) -> Result<Vec<FakeIpamd>> {
    let mut out = Vec::new();
    for i in 0..n {
        let style = [PageStyle::Modern, PageStyle::PrefixDelegation, PageStyle::GaugeTyped][i % 3];
        let sim = SimIpamd::new(style, seed + i as u64, now() - 1.0);
        out.push(FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    Ok(out)
}

fn truth_add(nodes: &[FakeIpamd]) -> f64 {
    nodes.iter().map(|n| n.with_sim(|s| s.lifetime.add_ip_req) as f64).sum()
}

fn truth_assigned(nodes: &[FakeIpamd]) -> f64 {
    nodes.iter().map(|n| n.with_sim(|s| s.assigned) as f64).sum()
}

async fn step(nodes: &[FakeIpamd], times: usize, pause: Duration) {
    for _ in 0..times {
        for n in nodes {
            n.with_sim(|s| s.step());
        }
        tokio::time::sleep(pause).await;
    }
}

fn agents(dir: &std::path::Path, nodes: &[FakeIpamd], grpc: &str, extra: &[&str]) -> Result<Vec<Proc>> {
    nodes.iter().enumerate().map(|(i, n)| start_agent(dir, &format!("node-{}", i + 1), &n.url(), grpc, extra)).collect()
}

/// An aggregator publishing to the emulator.
fn cw_aggregator(dir: &std::path::Path, emu: &Emulator, name: &str, extra: &[&str], env: &[(&str, Option<&str>)]) -> Result<Aggregator> {
    let url = emu.url();
    let mut e: Vec<(&str, Option<&str>)> = vec![("AWS_ENDPOINT_URL", Some(url.as_str()))];
    e.extend_from_slice(env);
    let mut args = vec!["--cloudwatch", "true"];
    args.extend_from_slice(extra);
    Aggregator::start_with(Aggregator::launch(dir, name)?.args(args).envs(&e))
}

/// Sum of every datapoint of `metric` in moto.
async fn cw_sum(emu: &Emulator, metric: &str) -> Result<f64> {
    Ok(emu.datapoints(metric, "e2e").await?.iter().map(|d| d.1).sum())
}

async fn wait_backlog_empty(agg: &Aggregator) -> Result<()> {
    eventually(Duration::from_secs(30), || async {
        let page = agg.metrics().await?;
        let b = sample(&page, "cni_metrics_cloudwatch_backlog_datums", &[]);
        Ok(if b == Some(0.0) { Ok(()) } else { Err(format!("backlog datums {b:?}")) })
    })
    .await
}

/// Check every recorded PutMetricData against CloudWatch's limits.
async fn assert_limits(emu: &Emulator) -> Result<usize> {
    let puts: Vec<_> = emu.requests().await?.into_iter().filter(|r| r["op"] == "PutMetricData").collect();
    for r in &puts {
        ensure!(r["datums"].as_u64().unwrap_or(0) <= 1000, "over 1000 datums: {r}");
        ensure!(r["decoded_bytes"].as_u64().unwrap_or(0) <= 1_000_000, "over 1 MB: {r}");
        ensure!(r["max_dimensions"].as_u64().unwrap_or(0) <= 30, "over 30 dimensions: {r}");
    }
    Ok(puts.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_in_names_dimension_and_exact_values_in_cloudwatch() -> Result<()> {
    let dir = scratch_dir("cw-exact")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(3, 100).await?;
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "500ms"], &[])?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 6, Duration::from_millis(300)).await;
    let (add, assigned) = (truth_add(&nodes), truth_assigned(&nodes));
    // Let the last increments reach a window, and the windows reach moto.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_backlog_empty(&agg).await?;

    let listed = emu.moto("ListMetrics", json!({"Namespace": "Kubernetes"})).await?;
    let metrics = listed["Metrics"].as_array().cloned().unwrap_or_default();
    let names: std::collections::BTreeSet<String> = metrics.iter().filter_map(|m| m["MetricName"].as_str().map(str::to_owned)).collect();
    for name in [
        "assignIPAddresses",
        "totalIPAddresses",
        "totalIPv4Prefixes",
        "totalAssignedIPv4sPerCidr",
        "eniAllocated",
        "eniMaxAvailable",
        "maxIPAddresses",
        "awsAPILatency",
        "awsAPIErr",
        "ipamdActionInProgress",
        "addReqCount",
        "delReqCount",
        "ec2ApiReqCount",
        "forceRemoveENI",
        "forceRemoveIPs",
        "noAvailableIPAddresses",
        "availableIPAddresses",
        "ipHeadroom",
        "ipUtilization",
        "ipCapacityUtilization",
        "nodesLowOnIPs",
    ] {
        ensure!(names.contains(name), "{name} missing from ListMetrics: {names:?}");
    }
    for m in &metrics {
        ensure!(m["Dimensions"] == json!([{"Name": "CLUSTER_ID", "Value": "e2e"}]), "dimension: {m}");
    }
    ensure!(cw_sum(&emu, "addReqCount").await? == add, "addReqCount sum {} != truth {add}", cw_sum(&emu, "addReqCount").await?);
    let last = emu.datapoints("assignIPAddresses", "e2e").await?.last().map(|d| d.2);
    ensure!(last == Some(assigned), "assignIPAddresses latest {last:?} != truth {assigned}");
    let n = assert_limits(&emu).await?;
    ensure!(n >= 2, "several windows published");
    // One request per window (about 20 datums each), not upstream's batches of 20.
    let puts = emu.accepted_puts().await?;
    ensure!(puts.iter().all(|p| p["timestamps"].as_array().map_or(0, |t| t.len()) >= 1), "timestamps set");
    let page = agg.metrics().await?;
    ensure!(sample(&page, "cni_metrics_cloudwatch_requests_total", &[("result", "ok")]).unwrap_or(0.0) >= 2.0);
    ensure!(agg.readyz().await?.0 == 200);
    agg.proc.wait_log("CloudWatch sink ready", Duration::from_secs(1))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_then_success_without_loss_or_duplicate() -> Result<()> {
    let dir = scratch_dir("cw-throttle")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(2, 200).await?;
    emu.control(
        "faults",
        json!({"faults": [{"status": 400, "code": "Throttling"}, {"status": 503, "code": "ServiceUnavailable"}, {"status": 400, "code": "ThrottlingException"}]}),
    )
    .await?;
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "400ms"], &[])?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 5, Duration::from_millis(300)).await;
    let add = truth_add(&nodes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_backlog_empty(&agg).await?;
    let faults = emu.requests().await?.iter().filter(|r| !r["fault"].is_null()).count();
    ensure!(faults == 3, "three injected faults consumed, got {faults}");
    ensure!(cw_sum(&emu, "addReqCount").await? == add, "no loss, no duplicate");
    let page = agg.metrics().await?;
    ensure!(sample(&page, "cni_metrics_cloudwatch_retries_total", &[]) == Some(3.0), "{page}");
    ensure!(sample(&page, "cni_metrics_cloudwatch_errors_total", &[("error_type", "throttling")]) == Some(2.0));
    ensure!(sample(&page, "cni_metrics_cloudwatch_errors_total", &[("error_type", "server")]) == Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_then_backlog_published_with_original_timestamps_in_split_requests() -> Result<()> {
    let dir = scratch_dir("cw-outage")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(2, 300).await?;
    emu.control("outage", json!({"status": 503, "code": "ServiceUnavailable"})).await?;
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "100ms"], &[])?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    // About 20 datums per window, 10 windows a second: > 1000 datums queue up during the outage.
    eventually(Duration::from_secs(30), || async {
        for n in &nodes {
            n.with_sim(|s| s.step());
        }
        let b = sample(&agg.metrics().await?, "cni_metrics_cloudwatch_backlog_datums", &[]).unwrap_or(0.0);
        Ok(if b > 1200.0 { Ok(()) } else { Err(format!("backlog {b}")) })
    })
    .await?;
    let add = truth_add(&nodes);
    let outage_end = now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    emu.control("outage", json!({})).await?;
    wait_backlog_empty(&agg).await?;
    let puts = emu.accepted_puts().await?;
    let first = puts.first().cloned().unwrap_or_default();
    ensure!(first["datums"] == json!(1000), "the backlog goes out in full 1000-datum requests: {first}");
    let ts = first["timestamps"].as_array().cloned().unwrap_or_default();
    ensure!(ts.len() > 10, "one request carries many original window timestamps: {}", ts.len());
    ensure!(ts.iter().all(|t| t.as_f64().unwrap_or(f64::MAX) < outage_end), "timestamps are the windows', not the send time");
    assert_limits(&emu).await?;
    ensure!(cw_sum(&emu, "addReqCount").await? == add, "nothing lost across the outage");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameter_is_not_retried_and_only_the_bad_datum_is_dropped() -> Result<()> {
    let dir = scratch_dir("cw-invalid")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(1, 400).await?;
    emu.control("reject", json!({"metric": "delReqCount"})).await?;
    // Each window's rejected request is bisected (about 10 requests): a 1 s window leaves room for that
    // on a loaded machine.
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "1s"], &[])?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 4, Duration::from_millis(300)).await;
    let add = truth_add(&nodes);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_backlog_empty(&agg).await?;
    let page = agg.metrics().await?;
    let rejected = sample(&page, "cni_metrics_cloudwatch_datums_total", &[("outcome", "rejected")]).unwrap_or(0.0);
    let windows = sample(&page, "cni_metrics_publish_windows_total", &[]).unwrap_or(0.0);
    ensure!(rejected >= 1.0 && rejected <= windows, "one delReqCount datum rejected per window: {rejected} / {windows}");
    ensure!(sample(&page, "cni_metrics_cloudwatch_retries_total", &[]) == Some(0.0), "rejections are not retried");
    ensure!(cw_sum(&emu, "addReqCount").await? == add, "the good datums of the same requests landed");
    ensure!(emu.datapoints("delReqCount", "e2e").await?.is_empty());
    agg.proc.wait_log("CloudWatch rejected a datum", Duration::from_secs(1))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_and_permission_errors_hold_every_window_until_fixed() -> Result<()> {
    // An IRSA annotation missing at install, an expired token, a skewed clock: CloudWatch refuses every
    // request for many windows, then accepts. Nothing is dropped: every window arrives later with its own
    // timestamp, /readyz says what to fix meanwhile.
    let dir = scratch_dir("cw-heal")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(2, 500).await?;
    let agg = cw_aggregator(
        &dir,
        &emu,
        "aggregator",
        &["--cluster-id", "e2e", "--publish-interval", "200ms", "--cloudwatch-auth-retry-max", "400ms"],
        &[],
    )?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 2, Duration::from_millis(300)).await;
    wait_backlog_empty(&agg).await?;
    for (status, code, kind, readyz_says) in [
        (403, "AccessDenied", "access_denied", "cloudwatch:PutMetricData"),
        (400, "ExpiredTokenException", "expired_credentials", "expired"),
        (400, "RequestExpired", "clock_skew", "clock"),
    ] {
        let before = emu.requests().await?.len();
        emu.control("outage", json!({"status": status, "code": code})).await?;
        let outage_start = now();
        step(&nodes, 8, Duration::from_millis(250)).await;
        let (ready, body) = agg.readyz().await?;
        ensure!(ready == 503 && body.contains(kind) && body.contains(readyz_says), "{code}: /readyz {ready} {body}");
        let page = agg.metrics().await?;
        ensure!(sample(&page, "cni_metrics_cloudwatch_backlog_windows", &[]).unwrap_or(0.0) >= 5.0, "{code}: windows held\n{page}");
        ensure!(
            sample(&page, "cni_metrics_cloudwatch_datums_total", &[("outcome", "rejected")]).unwrap_or(0.0) == 0.0,
            "{code}: nothing dropped"
        );
        ensure!(
            sample(&page, "cni_metrics_cloudwatch_errors_total", &[("error_type", kind)]).unwrap_or(0.0) >= 2.0,
            "{code}: counted as {kind}"
        );
        let outage_end = now();
        emu.control("outage", json!({})).await?;
        wait_backlog_empty(&agg).await?;
        let requests = emu.requests().await?;
        let refused = requests[before..].iter().filter(|r| r["fault"] == json!(code)).count();
        ensure!(refused >= 2, "{code}: retried while refused ({refused} requests)");
        // Every window of the outage went out later with its own timestamp.
        let late: std::collections::BTreeSet<String> = requests[before..]
            .iter()
            .filter(|r| r["op"] == "PutMetricData" && r["fault"].is_null())
            .flat_map(|r| r["timestamps"].as_array().cloned().unwrap_or_default())
            .filter(|t| t.as_f64().is_some_and(|t| t > outage_start && t < outage_end))
            .map(|t| t.to_string())
            .collect();
        ensure!(late.len() >= 5, "{code}: {} outage windows delivered with their own timestamps", late.len());
        agg.proc.wait_log("CloudWatch accepts requests again", Duration::from_secs(2))?;
    }
    ensure!(agg.readyz().await?.0 == 200, "ready again");
    ensure!(cw_sum(&emu, "addReqCount").await? == truth_add(&nodes), "sums equal the truth");
    let page = agg.metrics().await?;
    ensure!(sample(&page, "cni_metrics_cloudwatch_datums_total", &[("outcome", "rejected")]).unwrap_or(0.0) == 0.0, "nothing rejected");
    let log = agg.proc.stderr();
    ensure!(log.matches("windows are held in the backlog").count() == 3, "logged once per state change:\n{log}");
    Ok(())
}

/// Publish a little with no static keys and the credential settings `creds`; returns the start-up
/// self-check log line and the PutMetricData requests moto accepted.
async fn publish_with_credentials(
    dir: &std::path::Path,
    emu: &Emulator,
    seed: u64,
    creds: &[(&str, Option<&str>)],
) -> Result<(String, Vec<serde_json::Value>)> {
    let nodes = fresh_nodes(1, seed).await?;
    let mut env = vec![("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)];
    env.extend_from_slice(creds);
    let agg = cw_aggregator(dir, emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "300ms"], &env)?;
    let _agents = agents(dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 2, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    wait_backlog_empty(&agg).await?;
    let line = agg.proc.wait_log("CloudWatch sink ready", Duration::from_secs(1))?;
    Ok((line, emu.accepted_puts().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irsa_web_identity_through_moto_sts() -> Result<()> {
    let dir = scratch_dir("cw-irsa")?;
    let emu = Emulator::start()?;
    let token = dir.join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")?;
    let token = token.to_string_lossy().into_owned();
    let (line, puts) = publish_with_credentials(
        &dir,
        &emu,
        500,
        &[
            ("AWS_ROLE_ARN", Some("arn:aws:iam::123456789012:role/cni-metrics")),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", Some(token.as_str())),
            ("AWS_ROLE_SESSION_NAME", Some("cni-metrics-aggregator")),
        ],
    )
    .await?;
    ensure!(line.contains("WebIdentityToken"), "credential source logged: {line}");
    let reqs = emu.requests().await?;
    ensure!(reqs.iter().any(|r| r["action"] == "AssumeRoleWithWebIdentity"), "STS call went through moto");
    ensure!(
        !puts.is_empty() && puts.iter().all(|p| p["access_key"] != "testing" && p["access_key"] != ""),
        "signed with the assumed role's key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_from_the_agents_else_from_instance_metadata() -> Result<()> {
    let dir = scratch_dir("cw-region")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(1, 600).await?;
    // Agents report a region; AWS_REGION is unset.
    let agg = cw_aggregator(&dir, &emu, "agg-agents", &["--cluster-id", "e2e", "--publish-interval", "300ms"], &[("AWS_REGION", None)])?;
    let _a = agents(&dir, &nodes, &agg.grpc, &["--region", "eu-north-1"])?;
    let line = agg.proc.wait_log("CloudWatch sink ready", Duration::from_secs(10))?;
    ensure!(line.contains("eu-north-1"), "region from agents: {line}");

    // Nobody reports one: the SDK chain asks instance metadata (a fake IMDS on loopback).
    let imds = fake_imds("ap-southeast-2").await?;
    let imds_url = format!("http://{imds}");
    let agg2 = cw_aggregator(
        &dir,
        &emu,
        "agg-imds",
        &["--cluster-id", "e2e", "--publish-interval", "300ms"],
        &[("AWS_REGION", None), ("AWS_EC2_METADATA_DISABLED", None), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(imds_url.as_str()))],
    )?;
    let _b = agents(&dir, &nodes, &agg2.grpc, &[])?;
    let line = agg2.proc.wait_log("CloudWatch sink ready", Duration::from_secs(10))?;
    ensure!(line.contains("ap-southeast-2"), "region from IMDS: {line}");
    Ok(())
}

/// A fake EC2 instance metadata service (IMDSv2) on loopback answering the region.
async fn fake_imds(region: &'static str) -> Result<SocketAddr> {
    use axum::routing::{get, put};
    let app = axum::Router::new()
        .route("/latest/api/token", put(|| async { ([("x-aws-ec2-metadata-token-ttl-seconds", "21600")], "fake-imds-token") }))
        .route("/latest/meta-data/placement/region", get(move || async move { region }))
        .route("/latest/dynamic/instance-identity/document", get(move || async move { format!("{{\"region\": \"{region}\"}}") }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_id_is_never_invented() -> Result<()> {
    let dir = scratch_dir("cw-noid")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(1, 700).await?;
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--publish-interval", "300ms"], &[])?;
    let mut a = agents(&dir, &nodes, &agg.grpc, &[])?;
    let line = agg.proc.wait_log("CloudWatch sink cannot publish", Duration::from_secs(10))?;
    ensure!(line.contains("Set AWS_CLUSTER_ID"), "says what to set: {line}");
    let (code, body) = agg.readyz().await?;
    ensure!(code == 503 && body.contains("no cluster id"), "{code} {body}");
    ensure!(emu.accepted_puts().await?.is_empty(), "nothing published without a cluster id");
    // An agent that knows the cluster name unblocks the sink; the held windows go out under it.
    for p in &mut a {
        p.kill();
    }
    let _b = agents(&dir, &nodes, &agg.grpc, &["--cluster-name", "from-agents"])?;
    eventually(Duration::from_secs(20), || async {
        let n = emu.datapoints("assignIPAddresses", "from-agents").await?.len();
        Ok(if n > 0 { Ok(()) } else { Err("no datapoints under the agents' cluster name".into()) })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_last_window() -> Result<()> {
    let dir = scratch_dir("cw-sigterm")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(2, 800).await?;
    // A window far longer than the test: only the shutdown flush can publish.
    let mut agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "1h"], &[])?;
    let _agents = agents(&dir, &nodes, &agg.grpc, &[])?;
    step(&nodes, 4, Duration::from_millis(300)).await;
    let add = truth_add(&nodes);
    tokio::time::sleep(Duration::from_millis(600)).await;
    ensure!(emu.accepted_puts().await?.is_empty());
    ensure!(agg.proc.terminate(Duration::from_secs(15))?, "aggregator exits on SIGTERM");
    ensure!(cw_sum(&emu, "addReqCount").await? == add, "final window delivered at shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdown_by_az_adds_a_dimension_set() -> Result<()> {
    let dir = scratch_dir("cw-breakdown")?;
    let emu = Emulator::start()?;
    let nodes = fresh_nodes(3, 900).await?;
    let agg = cw_aggregator(&dir, &emu, "aggregator", &["--cluster-id", "e2e", "--publish-interval", "300ms", "--breakdown", "az"], &[])?;
    let azs = ["eu-west-1a", "eu-west-1b", "eu-west-1a"];
    let _agents: Vec<Proc> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| start_agent(&dir, &format!("node-{}", i + 1), &n.url(), &agg.grpc, &["--availability-zone", azs[i]]))
        .collect::<Result<_>>()?;
    let want_a = nodes[0].with_sim(|s| s.assigned as f64) + nodes[2].with_sim(|s| s.assigned as f64);
    eventually(Duration::from_secs(20), || async {
        let v = emu
            .moto(
                "GetMetricStatistics",
                json!({
                    "Namespace": "Kubernetes", "MetricName": "assignIPAddresses",
                    "Dimensions": [{"Name": "CLUSTER_ID", "Value": "e2e"}, {"Name": "AvailabilityZone", "Value": "eu-west-1a"}],
                    "StartTime": now() - 600.0, "EndTime": now() + 600.0, "Period": 1, "Statistics": ["Maximum"],
                }),
            )
            .await?;
        let max = v["Datapoints"].as_array().and_then(|d| d.iter().filter_map(|p| p["Maximum"].as_f64()).reduce(f64::max));
        Ok(if max == Some(want_a) { Ok(()) } else { Err(format!("eu-west-1a assignIPAddresses {max:?}, want {want_a}")) })
    })
    .await?;
    let listed = emu.moto("ListMetrics", json!({"Namespace": "Kubernetes", "MetricName": "availableIPAddresses"})).await?;
    // Distinct dimension sets: moto lists a metric with two dimensions once per datum (its
    // `are_dimensions_same` compares every pair of dimensions), so a second window repeats the zones.
    let sets: std::collections::BTreeSet<String> =
        listed["Metrics"].as_array().map(|m| m.iter().map(|x| x["Dimensions"].to_string()).collect()).unwrap_or_default();
    ensure!(sets.len() == 3, "cluster + 2 zones: {listed}");
    assert_limits(&emu).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_pod_identity_credentials_endpoint() -> Result<()> {
    use axum::routing::get;
    let dir = scratch_dir("cw-pod-identity")?;
    let emu = Emulator::start()?;
    // The EKS Pod Identity agent's role: a container credentials endpoint on loopback, with a token.
    let app = axum::Router::new().route(
        "/v1/credentials",
        get(|headers: axum::http::HeaderMap| async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("pod-identity-token") {
                return (axum::http::StatusCode::UNAUTHORIZED, String::new());
            }
            let body =
                r#"{"AccessKeyId":"ASIAPODIDENTITYTEST","SecretAccessKey":"secret","Token":"session","Expiration":"2099-01-01T00:00:00Z"}"#;
            (axum::http::StatusCode::OK, body.to_owned())
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let creds_url = format!("http://{}/v1/credentials", l.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let token = dir.join("pod-identity-token");
    std::fs::write(&token, "pod-identity-token")?;
    let token = token.to_string_lossy().into_owned();
    let (line, puts) = publish_with_credentials(
        &dir,
        &emu,
        1000,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", Some(creds_url.as_str())),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", Some(token.as_str())),
        ],
    )
    .await?;
    ensure!(line.contains("EcsContainer"), "credential source logged: {line}");
    ensure!(!puts.is_empty() && puts.iter().all(|p| p["access_key"] == "ASIAPODIDENTITYTEST"), "signed with the Pod Identity key");
    Ok(())
}
