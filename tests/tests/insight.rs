//! Derived capacity metrics, the Consumer gRPC service and `watch`, end to end: real agent and
//! aggregator processes, fake ipamds, numbers checked against the simulators' truth.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::*;
use cni_metrics_proto::v1::consumer_client::ConsumerClient;
use cni_metrics_proto::v1::ingest_client::IngestClient;
use cni_metrics_proto::v1::{AgentMessage, FamilyType, MetricKind, SubscribeRequest};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::{FakeIpamd, Mode};
use prost::Message as _;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Three simulated nodes (one pushed close to its IP limit) and a hand-written page with impossible
/// values (assigned 20 > total 12, as upstream users saw under prefix delegation).
async fn nodes() -> Result<(Vec<FakeIpamd>, FakeIpamd)> {
    let mut sims = Vec::new();
    for (i, style) in [PageStyle::Modern, PageStyle::PrefixDelegation, PageStyle::Legacy2019].into_iter().enumerate() {
        let mut sim = SimIpamd::new(style, 900 + i as u64, now() - 1.0);
        for _ in 0..5 {
            sim.step();
        }
        if i == 2 {
            sim.assigned = sim.ip_max() - 2; // headroom 2 < 5: low on IPs
            sim.fit_capacity();
        }
        // Pods just left: their addresses are in ipamd's IP cooldown (as far as free slots go).
        sim.cooling = 2 + i as u64;
        sims.push(FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    let odd = FakeIpamd::start(SimIpamd::new(PageStyle::Modern, 1, now()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    odd.set_mode(Mode::Page(format!(
        "process_start_time_seconds {}\nawscni_assigned_ip_addresses 20\nawscni_total_ip_addresses 12\nawscni_ip_max 29\n",
        now() - 10.0
    )));
    Ok((sims, odd))
}

struct Truth {
    available: f64,
    headroom: f64,
    low: f64,
    assigned: f64,
    total: f64,
    max: f64,
}

fn truth(sims: &[FakeIpamd]) -> Truth {
    // The odd node: available clamps to 0, headroom 29 - 20 = 9, counted in the ratios as it is.
    let mut t = Truth { available: 0.0, headroom: 9.0, low: 0.0, assigned: 20.0, total: 12.0, max: 29.0 };
    for f in sims {
        f.with_sim(|s| {
            let (a, tot, m) = (s.assigned as f64, s.total_ips() as f64, s.ip_max() as f64);
            t.available += (tot - a).max(0.0);
            t.headroom += (m - a).max(0.0);
            t.low += f64::from(u8::from(m - a < 5.0));
            t.assigned += a;
            t.total += tot;
            t.max += m;
        });
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_capacity_metrics_match_node_truth_and_watch_shows_them() -> Result<()> {
    let dir = scratch_dir("insight")?;
    let (sims, odd) = nodes().await?;
    let agg = Aggregator::start(&dir, "aggregator", &["--subscribe-interval", "200ms", "--breakdown", "az,instance_type,subnet,node"])?;
    let mut all: Vec<&FakeIpamd> = sims.iter().collect();
    all.push(&odd);
    // Nodes 1 and 3 in eu-west-1a, nodes 2 and 4 in eu-west-1b.
    let azs = ["eu-west-1a", "eu-west-1b", "eu-west-1a", "eu-west-1b"];
    let _agents: Vec<Proc> = all
        .iter()
        .enumerate()
        .map(|(i, f)| {
            start_agent(
                &dir,
                &format!("node-{}", i + 1),
                &f.url(),
                &agg.grpc,
                &["--availability-zone", azs[i], "--instance-type", "m5.large"],
            )
        })
        .collect::<Result<_>>()?;
    let t = truth(&sims);
    eventually(Duration::from_secs(20), || async {
        let p = agg.metrics().await?;
        let got = (
            sample(&p, "cni_metrics_available_ip_addresses", &[]),
            sample(&p, "cni_metrics_ip_headroom", &[]),
            sample(&p, "cni_metrics_nodes_low_on_ips", &[]),
            sample(&p, "cni_metrics_capacity_anomalies", &[]),
            sample(&p, "cni_metrics_nodes_reporting", &[]),
        );
        let want = (Some(t.available), Some(t.headroom), Some(t.low), Some(1.0), Some(4.0));
        Ok(if got == want { Ok(()) } else { Err(format!("(available, headroom, low, anomalies, reporting) got {got:?} want {want:?}")) })
    })
    .await?;
    ensure!(t.low >= 1.0, "the scenario has a node low on IPs");
    let p = agg.metrics().await?;
    let ratio = sample(&p, "cni_metrics_ip_utilization_ratio", &[("basis", "total")]).context("ratio")?;
    ensure!((ratio - t.assigned / t.total).abs() < 1e-12, "utilization {ratio} vs {}", t.assigned / t.total);
    let ratio = sample(&p, "cni_metrics_ip_utilization_ratio", &[("basis", "max")]).context("ratio")?;
    ensure!((ratio - t.assigned / t.max).abs() < 1e-12);

    // Breakdown by AZ: per-node numbers summed per zone, in their own families.
    let available = |f: &FakeIpamd| f.with_sim(|s| (s.total_ips() as f64 - s.assigned as f64).max(0.0));
    let az_a = available(&sims[0]) + available(&sims[2]);
    let got = sample(&p, "cni_metrics_available_ip_addresses_by_availability_zone", &[("availability_zone", "eu-west-1a")]);
    ensure!(got == Some(az_a), "eu-west-1a available {got:?} want {az_a}");
    let got = sample(&p, "cni_metrics_nodes_by_instance_type", &[("instance_type", "m5.large")]);
    ensure!(got == Some(4.0), "nodes by instance type {got:?}");
    let got = sample(&p, "cni_metrics_ip_headroom_by_node", &[("node", "node-3")]);
    ensure!(
        got == Some(2.0) && sample(&p, "cni_metrics_nodes_low_on_ips_by_node", &[("node", "node-3")]) == Some(1.0),
        "node-3 by node {got:?}"
    );

    // Standard gRPC health on the same port.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.grpc))?.connect().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["cni_metrics.v1.Ingest", "cni_metrics.v1.Consumer"] {
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await?.into_inner();
        ensure!(r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}: {r:?}");
    }
    let by_az: f64 = ["eu-west-1a", "eu-west-1b"]
        .iter()
        .filter_map(|az| sample(&p, "cni_metrics_ip_headroom_by_availability_zone", &[("availability_zone", az)]))
        .sum();
    ensure!(by_az == t.headroom, "zones add up to the cluster: {by_az} vs {}", t.headroom);

    // Breakdown by subnet (ipamd introspection): per subnet, IPs held and free over the nodes in it.
    let mut by_subnet: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for f in &all {
        f.with_sim(|s| {
            let e = by_subnet.entry(s.subnet_id()).or_default();
            e.0 += s.total_ips() as f64;
            e.1 += (s.total_ips() as f64 - s.assigned as f64).max(0.0);
        });
    }
    eventually(Duration::from_secs(10), || async {
        let p = agg.metrics().await?;
        for (subnet, (total, available)) in &by_subnet {
            let got = (
                sample(&p, "cni_metrics_total_ip_addresses_by_subnet_id", &[("subnet_id", subnet)]),
                sample(&p, "cni_metrics_available_ip_addresses_by_subnet_id", &[("subnet_id", subnet)]),
            );
            if got != (Some(*total), Some(*available)) {
                return Ok(Err(format!("{subnet}: got {got:?} want {:?}", (total, available))));
            }
        }
        Ok(Ok(()))
    })
    .await?;

    // Free addresses in ipamd's IP cooldown (introspection): the cluster, by zone, by subnet, exactly.
    let cooling = |f: &FakeIpamd| f.with_sim(|s| s.cooling_ips() as f64);
    let cluster_cooling: f64 = all.iter().map(|f| cooling(f)).sum();
    ensure!(cluster_cooling >= 2.0, "the scenario has addresses in cooldown");
    let zone_a_cooling = cooling(&sims[0]) + cooling(&sims[2]);
    let mut cooling_by_subnet: std::collections::BTreeMap<String, f64> = Default::default();
    for f in &all {
        *cooling_by_subnet.entry(f.with_sim(|s| s.subnet_id())).or_default() += cooling(f);
    }
    eventually(Duration::from_secs(10), || async {
        let p = agg.metrics().await?;
        let got = (
            sample(&p, "cni_metrics_cooldown_ips", &[]),
            sample(&p, "cni_metrics_cooldown_ips_by_availability_zone", &[("availability_zone", "eu-west-1a")]),
        );
        if got != (Some(cluster_cooling), Some(zone_a_cooling)) {
            return Ok(Err(format!("cooldown (cluster, eu-west-1a) got {got:?} want {:?}", (cluster_cooling, zone_a_cooling))));
        }
        for (subnet, want) in &cooling_by_subnet {
            let got = sample(&p, "cni_metrics_cooldown_ips_by_subnet_id", &[("subnet_id", subnet)]);
            if got != Some(*want) {
                return Ok(Err(format!("{subnet} cooldown got {got:?} want {want}")));
            }
        }
        Ok(Ok(()))
    })
    .await?;

    // watch --once: one table, worst node first.
    let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator"))
        .args(["watch", "--aggregator", &format!("http://{}", agg.grpc), "--once"])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "watch --once failed: {}", String::from_utf8_lossy(&out.stderr));
    println!("watch --once sample:\n{table}");
    ensure!(table.starts_with("cluster e2e "), "{table}");
    ensure!(table.contains(&format!("available {}  headroom {}", t.available, t.headroom)), "{table}");
    ensure!(table.contains(&format!("WARM POOL  idle {}  of which in cooldown {cluster_cooling} ", t.available)), "{table}");
    let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("NODE ")).skip(1).take_while(|l| !l.is_empty()).collect();
    ensure!(rows.first().is_some_and(|r| r.starts_with("node-3 ") && r.trim_end().ends_with("yes")), "worst first: {rows:?}");
    // --json: the same numbers, machine-readable.
    let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator"))
        .args(["watch", "--aggregator", &format!("http://{}", agg.grpc), "--once", "--json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("watch --json output")?;
    ensure!(v["available_ips"].as_f64() == Some(t.available) && v["nodes_low_on_ips"].as_f64() == Some(t.low), "{v}");
    ensure!(v["nodes"].as_array().map(Vec::len) == Some(4));
    ensure!(v["cooldown_ips"].as_f64() == Some(cluster_cooling), "cooldown in --json: {}", v["cooldown_ips"]);
    Ok(())
}

/// An IPv6 node (introspection with a /80 prefix; ipamd's total counts it as 2^48 addresses) next to an
/// IPv4 node low on IPs: the sums keep both, the IPv4 numbers only the IPv4 node, the IPv6 node is never
/// low, and `watch` says how many nodes it leaves out and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_node_is_summed_but_kept_out_of_ipv4_capacity() -> Result<()> {
    let dir = scratch_dir("insight-ipv6")?;
    let mut v4 = SimIpamd::new(PageStyle::Modern, 31, now() - 1.0);
    v4.assigned = v4.ip_max() - 2; // headroom 2 < 5: low on IPs
    v4.fit_capacity();
    let mut v6 = SimIpamd::new(PageStyle::Modern, 32, now() - 1.0);
    v6.ipv6 = true;
    v6.assigned = v6.ip_max(); // full to ipamd's IPv4 limit: would be "low" if the limit meant anything
    v6.fit_capacity();
    let (a4, t4, m4) = (v4.assigned as f64, v4.total_ips() as f64, v4.ip_max() as f64);
    let (a6, t6, m6) = (v6.assigned as f64, v6.total_ips() as f64, v6.ip_max() as f64);
    ensure!(t6 == 2f64.powi(48) && a6 > 0.0, "the IPv6 simulator: total {t6}, assigned {a6}");
    let fakes = [
        FakeIpamd::start(v4, SocketAddr::from(([127, 0, 0, 1], 0))).await?,
        FakeIpamd::start(v6, SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    ];
    let agg = Aggregator::start(&dir, "aggregator", &["--subscribe-interval", "200ms"])?;
    let _agents: Vec<Proc> = ["node-v4", "node-v6"]
        .iter()
        .zip(&fakes)
        .map(|(name, f)| start_agent(&dir, name, &f.url(), &agg.grpc, &[]))
        .collect::<Result<_>>()?;
    eventually(Duration::from_secs(20), || async {
        let p = agg.metrics().await?;
        let got = [
            sample(&p, "cni_metrics_ipv6_nodes", &[]),
            sample(&p, "cni_metrics_nodes_low_on_ips", &[]),
            sample(&p, "cni_metrics_available_ip_addresses", &[]),
            sample(&p, "cni_metrics_ip_headroom", &[]),
            sample(&p, "cni_metrics_ip_utilization_ratio", &[("basis", "total")]),
            sample(&p, "cni_metrics_ip_utilization_ratio", &[("basis", "max")]),
            sample(&p, "awscni_assigned_ip_addresses", &[]),
            sample(&p, "awscni_total_ip_addresses", &[]),
            sample(&p, "awscni_ip_max", &[]),
        ];
        let want = [1.0, 1.0, t4 - a4, m4 - a4, a4 / t4, a4 / m4, a4 + a6, t4 + t6, m4 + m6].map(Some);
        Ok(if got == want { Ok(()) } else { Err(format!("got {got:?} want {want:?}")) })
    })
    .await?;
    let watch = |json: bool| -> Result<String> {
        let mut args = vec!["watch".to_owned(), "--aggregator".to_owned(), format!("http://{}", agg.grpc), "--once".to_owned()];
        if json {
            args.push("--json".to_owned());
        }
        let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator")).args(&args).output()?;
        ensure!(out.status.success(), "watch failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let table = watch(false)?;
    println!("watch --once with an IPv6 node:\n{table}");
    ensure!(table.contains("low on IPs 1,") && table.contains("\nIPv6 nodes 1: in assigned/total/max, not in available"), "{table}");
    ensure!(table.contains("(an IPv6 node runs out of max pods, not addresses)"), "{table}");
    let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("NODE ")).skip(1).take_while(|l| !l.is_empty()).collect();
    ensure!(rows.len() == 1 && rows[0].starts_with("node-v4 "), "only the IPv4 node has headroom to rank: {rows:?}");
    let v: serde_json::Value = serde_json::from_str(&watch(true)?).context("watch --json")?;
    let node = |name: &str| v["nodes"].as_array().and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned()).unwrap_or_default();
    ensure!(v["nodes_ipv6"] == 1 && node("node-v6")["ipv6"] == true && node("node-v6")["low_on_ips"] == false, "{v}");
    ensure!(node("node-v6")["ip_headroom"] == -1.0 && node("node-v4")["ipv6"] == false, "{v}");
    Ok(())
}

/// An aggregator (subscriptions every 100 ms) and synthetic nodes of these names and assigned IPs, all
/// on one connection (allowed more streams than an agent needs).
async fn synthetic_cluster(test: &str, nodes: impl Iterator<Item = (String, f64)>) -> Result<(Aggregator, String, Vec<SyntheticNode>)> {
    let dir = scratch_dir(test)?;
    let agg = Aggregator::start(&dir, "aggregator", &["--subscribe-interval", "100ms", "--max-streams-per-connection", "5000"])?;
    let url = format!("http://{}", agg.grpc);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
    let mut joined = Vec::new();
    for (name, assigned) in nodes {
        joined.push(synthetic_node(channel.clone(), name, assigned).await?);
    }
    Ok((agg, url, joined))
}

/// The IP limit of every synthetic node.
const SYNTHETIC_MAX: f64 = 30.0;

/// A synthetic node speaking the Ingest protocol directly (many nodes without many processes).
struct SyntheticNode {
    tx: tokio::sync::mpsc::Sender<AgentMessage>,
    seq: u64,
    _reader: tokio::task::JoinHandle<()>,
}

async fn synthetic_node(channel: tonic::transport::Channel, name: String, assigned: f64) -> Result<SyntheticNode> {
    use cni_metrics_proto::v1::{agent_message::Body, Hello, Report, SeriesDef};
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = Hello { node_name: name, run_id: 1, interval_ms: 60_000, ..Hello::default() };
    tx.send(AgentMessage { body: Some(Body::Hello(hello)) }).await?;
    let def = |id: u32, name: &str| SeriesDef {
        id,
        family: name.into(),
        name: name.into(),
        kind: MetricKind::Gauge as i32,
        family_type: FamilyType::Gauge as i32,
        labels: vec![],
        committed_total: 0.0,
    };
    // ip_max fixed at SYNTHETIC_MAX: headroom = SYNTHETIC_MAX - assigned.
    let defs = vec![def(1, "awscni_assigned_ip_addresses"), def(2, "awscni_ip_max")];
    let snapshot = Report { seq: 1, snapshot: true, defs, ids: vec![1, 2], values: vec![assigned, SYNTHETIC_MAX], ..Report::default() };
    tx.send(AgentMessage { body: Some(Body::Report(snapshot)) }).await?;
    let mut responses = IngestClient::new(channel).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    // Read what the aggregator sends, as an agent does.
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = responses.message().await {} });
    Ok(SyntheticNode { tx, seq: 1, _reader: reader })
}

impl SyntheticNode {
    async fn set(&mut self, assigned: f64) -> Result<()> {
        use cni_metrics_proto::v1::{agent_message::Body, Report};
        self.seq += 1;
        let r = Report { seq: self.seq, ids: vec![1], values: vec![assigned], ..Report::default() };
        self.tx.send(AgentMessage { body: Some(Body::Report(r)) }).await?;
        Ok(())
    }

    async fn goodbye(&self) -> Result<()> {
        use cni_metrics_proto::v1::{agent_message::Body, Goodbye};
        self.tx.send(AgentMessage { body: Some(Body::Goodbye(Goodbye { reason: "test".into() })) }).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_dropped_without_slowing_anyone() -> Result<()> {
    // 200 nodes: every update with node details is tens of KB, so transport buffers fill quickly.
    let (agg, url, mut nodes) =
        synthetic_cluster("subscribe", (0..200).map(|i| (format!("ip-10-0-{i}-1.eu-west-1.compute.internal"), 3.0))).await?;
    // The slow consumer also has small HTTP/2 windows, like a peer on a slow link, so the transport holds
    // little and the aggregator's own bounded buffer is what fills.
    let slow_channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let mut slow =
        ConsumerClient::new(slow_channel).subscribe(SubscribeRequest { min_interval_ms: 100, ..Default::default() }).await?.into_inner();
    let first = nodes.first().map(|_| "ip-10-0-0-1.eu-west-1.compute.internal".to_owned()).unwrap_or_default();
    let mut fast = ConsumerClient::connect(url.clone())
        .await?
        .subscribe(SubscribeRequest { nodes: vec![first.clone()], min_interval_ms: 100, cluster_only: false, changes: false })
        .await?
        .into_inner();
    // Something changes all the time; the slow subscriber reads nothing.
    let mut versions = Vec::new();
    let mut applied = 0u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut k = 0usize;
    while std::time::Instant::now() < deadline {
        let n = nodes.len();
        nodes[k % n].set((k % 50) as f64).await?;
        applied += 1;
        k += 1;
        if let Ok(Ok(Some(u))) = tokio::time::timeout(Duration::from_millis(20), fast.message()).await {
            ensure!(u.nodes.iter().all(|n| n.name == first), "node filter");
            versions.push(u.version);
        }
    }
    ensure!(versions.len() >= 20, "the fast subscriber kept getting updates: {}", versions.len());
    ensure!(versions.windows(2).all(|w| w[0] < w[1]), "versions increase: {versions:?}");
    // The slow one: whatever the transport buffered, then RESOURCE_EXHAUSTED.
    let mut status = None;
    let mut buffered = 0;
    let read_until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < read_until {
        match tokio::time::timeout(Duration::from_secs(5), slow.message()).await {
            Ok(Ok(Some(_))) => buffered += 1,
            Ok(Err(s)) => {
                status = Some(s.code());
                break;
            }
            Ok(Ok(None)) | Err(_) => break,
        }
    }
    ensure!(status == Some(tonic::Code::ResourceExhausted), "slow subscriber status: {status:?} after {buffered} buffered updates");
    agg.proc.wait_log("subscriber not reading; dropped", Duration::from_secs(1))?;
    // Ingestion went on meanwhile: every report was applied.
    let reports = sample(&agg.metrics().await?, "cni_metrics_reports_received_total", &[]).unwrap_or(0.0);
    ensure!(reports >= f64::from(applied) + 200.0 - 5.0, "reports applied while a subscriber was stuck: {reports} of {}", applied + 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_streams_are_refused_and_others_unaffected() -> Result<()> {
    use cni_metrics_proto::v1::{agent_message::Body, Hello, Report, SeriesDef};
    let dir = scratch_dir("hostile")?;
    let agg = Aggregator::start(&dir, "aggregator", &["--max-message-bytes", "65536"])?;
    let url = format!("http://{}", agg.grpc);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
    let mut good = synthetic_node(channel.clone(), "good".into(), 5.0).await?;

    // An oversized report (about 1 MB against a 64 KiB limit).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        body: Some(Body::Hello(Hello { node_name: "big".into(), run_id: 9, interval_ms: 60_000, ..Hello::default() })),
    })
    .await?;
    let defs: Vec<SeriesDef> = (0..20_000)
        .map(|i| SeriesDef {
            id: i,
            family: "awscni_ipamd_error_count".into(),
            name: "awscni_ipamd_error_count".into(),
            kind: MetricKind::Counter as i32,
            family_type: FamilyType::Counter as i32,
            labels: vec![cni_metrics_proto::v1::Label { name: "fn".into(), value: format!("f{i:08}") }],
            committed_total: 0.0,
        })
        .collect();
    tx.send(AgentMessage { body: Some(Body::Report(Report { seq: 1, snapshot: true, defs, ..Report::default() })) }).await?;
    let mut big = IngestClient::new(channel.clone()).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut ended_with_error = false;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), big.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(_)) | Ok(Ok(None)) => {
                ended_with_error = true;
                break;
            }
            Err(_) => break,
        }
    }
    ensure!(ended_with_error, "the oversized stream is closed");
    drop(tx);

    // A stream that does not start with a hello.
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(AgentMessage { body: Some(Body::Report(Report { seq: 1, snapshot: true, ..Report::default() })) }).await?;
    let refused = IngestClient::new(channel.clone()).stream(tokio_stream::wrappers::ReceiverStream::new(rx2)).await;
    ensure!(refused.as_ref().err().map(|s| s.code()) == Some(tonic::Code::InvalidArgument), "no hello: {:?}", refused.err());

    // The good node is untouched and keeps reporting.
    good.set(7.0).await?;
    eventually(Duration::from_secs(10), || async {
        let p = agg.metrics().await?;
        let got = (
            sample(&p, "awscni_assigned_ip_addresses", &[]),
            sample(&p, "cni_metrics_reports_rejected_total", &[("reason", "oversized_message")]),
            sample(&p, "cni_metrics_reports_rejected_total", &[("reason", "no_hello")]),
        );
        Ok(if got == (Some(7.0), Some(1.0), Some(1.0)) { Ok(()) } else { Err(format!("(assigned, oversized, no_hello) {got:?}")) })
    })
    .await?;
    Ok(())
}

/// Send `msgs` on a new stream; the gRPC code it ends with (None: still open after 3 s, or ended cleanly).
async fn stream_outcome(channel: tonic::transport::Channel, msgs: Vec<AgentMessage>) -> Result<Option<tonic::Code>> {
    let (tx, rx) = tokio::sync::mpsc::channel(msgs.len().max(1));
    for m in msgs {
        tx.send(m).await?;
    }
    let mut inbound = match IngestClient::new(channel).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Some(status.code())),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => return Ok(Some(status.code())),
            Ok(Ok(None)) | Err(_) => return Ok(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_refused_whole_and_metrics_still_parse() -> Result<()> {
    use cni_metrics_proto::v1::{agent_message::Body, Hello, Label, Report, SeriesDef};
    let dir = scratch_dir("hostile-strings")?;
    let agg = Aggregator::start(&dir, "aggregator", &[])?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.grpc))?.connect().await?;
    let mut good = synthetic_node(channel.clone(), "good".into(), 5.0).await?;
    let hello = |name: &str| Hello { node_name: name.into(), run_id: 7, interval_ms: 60_000, ..Hello::default() };
    let msg = |b: Body| AgentMessage { body: Some(b) };
    let def = |family: &str, name: &str, label: (&str, &str)| SeriesDef {
        id: 1,
        family: family.into(),
        name: name.into(),
        kind: MetricKind::Gauge as i32,
        family_type: FamilyType::Gauge as i32,
        labels: vec![Label { name: label.0.into(), value: label.1.into() }],
        committed_total: 0.0,
    };
    let snapshot = |d: SeriesDef, detail: &str| Report {
        seq: 1,
        snapshot: true,
        defs: vec![d],
        ids: vec![1],
        values: vec![3.0],
        status_detail: detail.into(),
        ..Report::default()
    };
    let plain = def("awscni_assigned_ip_addresses", "awscni_assigned_ip_addresses", ("eni", "eni-1"));
    // (what is tried, the messages, the refusal reason counted)
    let cases: Vec<(&str, Vec<AgentMessage>, &str)> = vec![
        ("a node name with a newline", vec![msg(Body::Hello(hello("evil\nnode")))], "bad_node_name"),
        ("an upper-case node name", vec![msg(Body::Hello(hello("Evil")))], "bad_node_name"),
        (
            "a zone that closes the label",
            vec![msg(Body::Hello(Hello { availability_zone: "eu-west-1a\"}".into(), ..hello("zone") }))],
            "bad_hello_field",
        ),
        (
            "the issue's series: a family with a newline and a brace, a label name with a quote",
            vec![
                msg(Body::Hello(hello("evil-series"))),
                msg(Body::Report(snapshot(
                    def("awscni_total_ip_addresses\nbroken{", "awscni_total_ip_addresses\nbroken{", ("a\"b\nc", "v")),
                    "",
                ))),
            ],
            "bad_def",
        ),
        (
            "a family outside awscni_",
            vec![msg(Body::Hello(hello("foreign"))), msg(Body::Report(snapshot(def("node_cpu", "node_cpu", ("a", "b")), "")))],
            "bad_def",
        ),
        (
            "the reserved cluster_id label",
            vec![
                msg(Body::Hello(hello("spoof"))),
                msg(Body::Report(snapshot(def("awscni_ip_max", "awscni_ip_max", ("cluster_id", "other")), ""))),
            ],
            "bad_def",
        ),
        (
            "terminal escapes in the status detail",
            vec![msg(Body::Hello(hello("escape"))), msg(Body::Report(snapshot(plain.clone(), "ok\u{1b}[2J")))],
            "bad_report_field",
        ),
    ];
    for (what, msgs, _) in &cases {
        let code = stream_outcome(channel.clone(), msgs.clone()).await?;
        ensure!(code == Some(tonic::Code::InvalidArgument), "{what}: ended with {code:?}, want INVALID_ARGUMENT");
    }
    // Any UTF-8 in a label value is fine: escaped on output.
    let odd = def("awscni_assigned_ip_addresses", "awscni_assigned_ip_addresses", ("eni", "eni-\"}\n\\x"));
    let accepted =
        stream_outcome(channel.clone(), vec![msg(Body::Hello(hello("odd-value"))), msg(Body::Report(snapshot(odd, "")))]).await?;
    ensure!(accepted.is_none(), "a label value with quotes, braces and a newline is accepted: {accepted:?}");

    good.set(7.0).await?;
    eventually(Duration::from_secs(10), || async {
        let assigned = sample(&agg.metrics().await?, "awscni_assigned_ip_addresses", &[]);
        Ok(if assigned == Some(7.0) { Ok(()) } else { Err(format!("good node's assigned {assigned:?}")) })
    })
    .await?;
    let page = agg.metrics().await?;
    for reason in ["bad_node_name", "bad_hello_field", "bad_def", "bad_report_field"] {
        let want = cases.iter().filter(|c| c.2 == reason).count() as f64;
        let got = sample(&page, "cni_metrics_reports_rejected_total", &[("reason", reason)]);
        ensure!(got == Some(want), "{reason}: counted {got:?}, want {want}");
    }
    ensure!(!page.contains("broken{") && !page.contains("node=\"Evil\""), "nothing refused reached the page");
    ensure!(page.contains(r#"eni="eni-\"}\n\\x"} 3"#), "the label value is escaped on output: {page}");
    let checked = promtool_check(&page)?;
    eprintln!(
        "hostile strings: {} cases refused and counted; /metrics parses ({})",
        cases.len(),
        if checked { "promtool" } else { "own parser" }
    );
    Ok(())
}

/// A node with two network cards (VPC CNI ≥ v1.20: each card's datastore sets the page's global
/// gauges, so the page shows one card): its totals come from introspection's per-card sums, and the agent
/// shows what the page said and the correction.
#[tokio::test(flavor = "multi_thread")]
async fn a_multi_card_node_reports_its_totals_from_introspection() -> Result<()> {
    let dir = scratch_dir("multi-card")?;
    let f = fake_ipamd(PageStyle::Modern, 77, 2).await?;
    f.with_sim(|s| {
        s.network_cards = 2;
        s.enis = 3;
    });
    let (truth_total, truth_assigned, page) = f.with_sim(|s| (s.total_ips() as f64, s.assigned as f64, s.page_totals()));
    ensure!(page.0 as f64 != truth_total && page.2 == 1, "the page shows one card: {page:?}, node total {truth_total}");
    let agg = Aggregator::start(&dir, "aggregator", &[])?;
    let agent = start_agent(&dir, "node-1", &f.url(), &agg.grpc, &[])?;
    let line = agent.wait_log("agent HTTP endpoint", Duration::from_secs(10))?;
    let agent_http = json_field(&line, "http").context("agent http")?;
    eventually(Duration::from_secs(20), || async {
        let p = agg.metrics().await?;
        let got = (
            sample(&p, "awscni_total_ip_addresses", &[]),
            sample(&p, "awscni_assigned_ip_addresses", &[]),
            sample(&p, "awscni_eni_allocated", &[]),
        );
        let want = (Some(truth_total), Some(truth_assigned), Some(3.0));
        Ok(if got == want { Ok(()) } else { Err(format!("(total, assigned, ENIs) = {got:?}, node {want:?}")) })
    })
    .await?;
    let own = reqwest::get(format!("http://{agent_http}/metrics")).await?.text().await?;
    let agent_sample = |name: &str, labels: &[(&str, &str)]| {
        let parsed = cni_metrics_agent::parse::parse(&own);
        parsed
            .samples
            .iter()
            .find(|s| s.name == name && s.labels.len() == labels.len() + 1 && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
    };
    assert_eq!(agent_sample("cni_metrics_agent_network_cards", &[]), Some(2.0), "{own}");
    assert_eq!(agent_sample("cni_metrics_agent_ipamd_page_value", &[("metric", "awscni_total_ip_addresses")]), Some(page.0 as f64));
    assert_eq!(
        agent_sample("cni_metrics_agent_multi_card_correction", &[("metric", "awscni_total_ip_addresses")]),
        Some(truth_total - page.0 as f64)
    );
    assert!(promtool_check(&own)?, "the agent's page parses");
    Ok(())
}

/// A node name of 200 characters, as long names make the biggest answers.
fn long_name(i: usize) -> String {
    let name = format!("ip-10-{}-{}-1.{}.{}.compute.internal", i / 250, i % 250, "a".repeat(60), "b".repeat(60 + (i % 3)));
    format!("{name}.{}", "c".repeat(200usize.saturating_sub(name.len() + 1).max(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_nodes_page_and_stream_as_changes() -> Result<()> {
    use cni_metrics_proto::v1::{GetClusterRequest, ListNodesRequest, NodeOrder, NodeView};
    use std::collections::BTreeMap;
    const NODES: usize = 4_000;
    // Headroom 2 .. 30: node 28 (and every 29th after it) is the worst.
    let (agg, url, mut nodes) = synthetic_cluster("consumer-scale", (0..NODES).map(|i| (long_name(i), (i % 29) as f64))).await?;
    let mut client = ConsumerClient::connect(url.clone()).await?;
    eventually(Duration::from_secs(30), || {
        let mut c = client.clone();
        async move {
            let v = c.get_cluster(GetClusterRequest {}).await?.into_inner();
            Ok(if v.nodes_known as usize == NODES { Ok(()) } else { Err(format!("{} nodes known", v.nodes_known)) })
        }
    })
    .await?;

    // ListNodes by name: pages under 1 MiB, every node once.
    let (mut listed, mut pages, mut r) = (Vec::new(), 0, ListNodesRequest::default());
    loop {
        let page = client.list_nodes(r.clone()).await?.into_inner();
        ensure!(page.encoded_len() <= 1 << 20, "a page of {} bytes", page.encoded_len());
        ensure!(page.total_matching as usize == NODES, "total {}", page.total_matching);
        pages += 1;
        listed.extend(page.nodes);
        if page.next_page_token.is_empty() {
            break;
        }
        r.page_token = page.next_page_token;
    }
    ensure!(pages >= 2, "4,000 nodes of 200-character names take more than one page");
    let mut names: Vec<&str> = listed.iter().map(|n| n.name.as_str()).collect();
    ensure!(names.windows(2).all(|w| w[0] < w[1]), "by name, no duplicates");
    names.dedup();
    ensure!(names.len() == NODES, "{} nodes listed", names.len());

    // The worst ten without the rest.
    let worst = client
        .list_nodes(ListNodesRequest { order: NodeOrder::IpHeadroom as i32, page_size: 10, ..Default::default() })
        .await?
        .into_inner();
    ensure!(
        worst.nodes.len() == 10 && worst.nodes.iter().all(|n| n.ip_headroom == 2.0),
        "worst: {:?}",
        worst.nodes.iter().map(|n| n.ip_headroom).collect::<Vec<_>>()
    );
    let bad = client.list_nodes(ListNodesRequest { page_token: "forged".into(), ..Default::default() }).await;
    ensure!(bad.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::InvalidArgument), "forged token: {bad:?}");

    // watch --once: the worst first, without downloading every node.
    let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator"))
        .args(["watch", "--aggregator", &url, "--once", "--top", "3"])
        .output()?;
    ensure!(out.status.success(), "watch --once failed: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("NODE ")).skip(1).take_while(|l| !l.is_empty()).collect();
    ensure!(rows.len() == 3 && rows.iter().all(|r| r.contains(" 2 ")), "worst three: {table}");

    // A change subscriber that reads nothing, on small HTTP/2 windows: cut off, nobody else slowed.
    let slow_channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let mut slow = ConsumerClient::new(slow_channel)
        .subscribe(SubscribeRequest { changes: true, min_interval_ms: 100, ..Default::default() })
        .await?
        .into_inner();
    let slow_since = tokio::time::Instant::now();

    // Subscribe with changes: the picture in pages, then only what changed.
    let mut stream = client.subscribe(SubscribeRequest { changes: true, min_interval_ms: 100, ..Default::default() }).await?.into_inner();
    let mut held: BTreeMap<String, NodeView> = BTreeMap::new();
    let mut first = true;
    loop {
        let u = tokio::time::timeout(Duration::from_secs(10), stream.message()).await?.context("the picture")?.context("stream ended")?;
        ensure!(u.encoded_len() <= (1 << 20) + 64 * 1024, "an update of {} bytes", u.encoded_len());
        ensure!(u.reset == first, "reset on the first update only");
        first = false;
        held.extend(u.nodes.into_iter().map(|n| (n.name.clone(), n)));
        if !u.more {
            ensure!(u.cluster.is_some_and(|c| c.nodes_known as usize == NODES), "the cluster view ends the picture");
            break;
        }
    }
    ensure!(held.len() == NODES, "the picture has {} nodes", held.len());

    // Five nodes change, one leaves.
    for (k, node) in nodes.iter_mut().enumerate().take(5) {
        node.set(29.0 - k as f64).await.context("a change")?;
    }
    nodes[5].goodbye().await.context("a goodbye")?;
    let gone = long_name(5);
    let mut entries_after_picture = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = (0..5).all(|k| held.get(&long_name(k)).is_some_and(|n| n.ip_headroom == SYNTHETIC_MAX - (29.0 - k as f64)))
            && !held.contains_key(&gone);
        if done {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "changes did not arrive");
        let Ok(m) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await else { continue };
        let u = m?.context("stream ended")?;
        ensure!(!u.reset, "no new picture");
        entries_after_picture += u.nodes.len() + u.removed_nodes.len();
        for name in &u.removed_nodes {
            held.remove(name);
        }
        held.extend(u.nodes.into_iter().map(|n| (n.name.clone(), n)));
    }
    ensure!(entries_after_picture <= 6 + 5, "only the changes came: {entries_after_picture} entries");
    // What the subscriber holds is what ListNodes says.
    let mut all = Vec::new();
    let mut r = ListNodesRequest::default();
    loop {
        let page = client.list_nodes(r.clone()).await?.into_inner();
        all.extend(page.nodes);
        if page.next_page_token.is_empty() {
            break;
        }
        r.page_token = page.next_page_token;
    }
    let truth: Vec<(String, f64)> = all.into_iter().map(|n| (n.name, n.ip_headroom)).collect();
    let mine: Vec<(String, f64)> = held.into_values().map(|n| (n.name, n.ip_headroom)).collect();
    ensure!(truth == mine, "the subscriber's picture differs from ListNodes ({} vs {} nodes)", mine.len(), truth.len());
    // The aggregator gives a subscriber 10 s to take an update; changes keep coming meanwhile.
    let mut k = 0;
    while tokio::time::Instant::now() < slow_since + Duration::from_secs(12) {
        nodes[100 + k % 50].set((k % 20) as f64).await?;
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut status = None;
    let read_until = std::time::Instant::now() + Duration::from_secs(30);
    while status.is_none() && std::time::Instant::now() < read_until {
        match tokio::time::timeout(Duration::from_secs(15), slow.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Err(s)) => status = Some(s.code()),
            Ok(Ok(None)) | Err(_) => break,
        }
    }
    ensure!(status == Some(tonic::Code::ResourceExhausted), "the stuck change subscriber: {status:?}");
    agg.proc.wait_log("subscriber dropped", Duration::from_secs(1))?;
    Ok(())
}
