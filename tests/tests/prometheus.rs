//! A real Prometheus server (Debian's `prometheus`, as `.ci/run` installs it) scrapes a real aggregator
//! and a real agent the way the `deploy/overlays/prometheus` ServiceMonitor and PodMonitor declare: the
//! rendered monitors are translated into scrape jobs (ports resolved through the Service and the pod
//! specs, path, relabelings, the operator's target labels), only the intervals compressed 30× so the test
//! takes seconds. PromQL over what Prometheus stored must give the simulators' truth: cluster gauges, a
//! counter's growth over the test, and the capacity ratios.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use serde_json::{json, Value};

/// The monitors' intervals are divided by this.
const COMPRESS: f64 = 30.0;

/// `30s` → seconds.
fn seconds(d: &Value, default: f64) -> Result<f64> {
    let Some(s) = d.as_str() else { return Ok(default) };
    Ok(cni_metrics_proto::duration::parse_positive(s)?.as_secs_f64())
}

/// The operator's RelabelConfig (camelCase) as Prometheus' relabel_config (snake_case).
fn relabelings(v: &Value) -> Value {
    let snake = |k: &str| {
        let mut out = String::new();
        for c in k.chars() {
            if c.is_ascii_uppercase() {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    };
    Value::Array(
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| Value::Object(r.as_object().into_iter().flatten().map(|(k, v)| (snake(k), v.clone())).collect()))
            .collect(),
    )
}

/// The container port named `name` in a pod spec.
fn container_port(pod: &Value, name: &str) -> Option<u64> {
    pod["containers"].as_array()?.iter().flat_map(|c| c["ports"].as_array().into_iter().flatten()).find(|p| p["name"] == name)?
        ["containerPort"]
        .as_u64()
}

struct Target {
    job: String,
    port: u64,
    endpoint: Value,
    labels: Value,
}

/// The scrape targets the ServiceMonitor and PodMonitor of the prometheus overlay select.
fn targets(docs: &[Value]) -> Result<Vec<Target>> {
    let find = |kind: &str, name: &str| {
        docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).with_context(|| format!("{kind}/{name}"))
    };
    let sm = find("ServiceMonitor", "cni-metrics-aggregator")?;
    let svc = find("Service", "cni-metrics-aggregator")?;
    let dep = find("Deployment", "cni-metrics-aggregator")?;
    let pm = find("PodMonitor", "cni-metrics-agent")?;
    let ds = find("DaemonSet", "cni-metrics-agent")?;
    let labels_match =
        |selector: &Value, labels: &Value| selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels[k] == *v);
    ensure!(labels_match(&sm["spec"]["selector"], &svc["metadata"]["labels"]), "the ServiceMonitor selects the Service");
    ensure!(labels_match(&pm["spec"]["selector"], &ds["spec"]["template"]["metadata"]["labels"]), "the PodMonitor selects the agents");
    let mut out = Vec::new();
    for (i, ep) in sm["spec"]["endpoints"].as_array().into_iter().flatten().enumerate() {
        let svc_port = svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["name"] == ep["port"]).context("service port")?;
        let port = match &svc_port["targetPort"] {
            Value::String(name) => container_port(&dep["spec"]["template"]["spec"], name).context("aggregator container port")?,
            v => v.as_u64().context("targetPort")?,
        };
        out.push(Target {
            job: format!("serviceMonitor/kube-system/cni-metrics-aggregator/{i}"),
            port,
            endpoint: ep.clone(),
            // What the operator attaches to a ServiceMonitor's targets.
            labels: json!({"job": "cni-metrics-aggregator", "namespace": "kube-system", "service": "cni-metrics-aggregator",
                           "endpoint": ep["port"], "pod": "cni-metrics-aggregator-0", "container": "aggregator"}),
        });
    }
    for (i, ep) in pm["spec"]["podMetricsEndpoints"].as_array().into_iter().flatten().enumerate() {
        let port =
            container_port(&ds["spec"]["template"]["spec"], ep["port"].as_str().unwrap_or_default()).context("agent container port")?;
        out.push(Target {
            job: format!("podMonitor/kube-system/cni-metrics-agent/{i}"),
            port,
            endpoint: ep.clone(),
            labels: json!({"job": "kube-system/cni-metrics-agent", "namespace": "kube-system", "pod": "cni-metrics-agent-x1",
                           "container": "agent", "endpoint": ep["port"]}),
        });
    }
    Ok(out)
}

/// The Prometheus configuration for `targets`, the aggregator on `agg_ip` and the agent on `agent_ip`.
fn prometheus_config(targets: &[Target], agg_ip: &str, agent_ip: &str) -> Result<Value> {
    let mut jobs = Vec::new();
    for t in targets {
        let interval = seconds(&t.endpoint["interval"], 30.0)? / COMPRESS;
        let timeout = (seconds(&t.endpoint["scrapeTimeout"], 10.0)? / COMPRESS).min(interval);
        let ip = if t.job.starts_with("service") { agg_ip } else { agent_ip };
        jobs.push(json!({
            "job_name": t.job,
            "scrape_interval": format!("{}ms", (interval * 1000.0) as u64),
            "scrape_timeout": format!("{}ms", (timeout * 1000.0) as u64),
            "metrics_path": t.endpoint["path"].as_str().unwrap_or("/metrics"),
            "honor_labels": t.endpoint["honorLabels"].as_bool().unwrap_or(false),
            "static_configs": [{"targets": [format!("{ip}:{}", t.port)], "labels": t.labels}],
            "relabel_configs": relabelings(&t.endpoint["relabelings"]),
            "metric_relabel_configs": relabelings(&t.endpoint["metricRelabelings"]),
        }));
    }
    Ok(json!({"global": {"evaluation_interval": "1s"}, "scrape_configs": jobs}))
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, config: &Value) -> Result<Option<Self>> {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(config)?)?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn();
        match child {
            Ok(child) => Ok(Some(Self { child, url: format!("http://127.0.0.1:{port}") })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
                eprintln!("NOTE: prometheus not installed (apt-get install prometheus); test skipped");
                Ok(None)
            }
            Err(e) => bail!("cannot start prometheus (Debian package prometheus): {e}"),
        }
    }

    /// One instant query's values, by the given label (or "" for a single unlabelled result).
    async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let body: Value = serde_json::from_str(&reqwest::get(format!("{}/api/v1/query?query={encoded}", self.url)).await?.text().await?)?;
        ensure!(body["status"] == "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let v = r["value"][1].as_str().context("value")?.parse::<f64>()?;
                Ok((r["metric"].clone(), v))
            })
            .collect()
    }

    async fn one(&self, promql: &str) -> Result<f64> {
        let r = self.query(promql).await?;
        ensure!(r.len() == 1, "{promql}: {} results: {r:?}", r.len());
        Ok(r[0].1)
    }
}

const CLUSTER: &str = r#"{job="cni-metrics-aggregator",cluster_id="e2e"}"#;

/// The cluster's nodes, add requests and assigned IPs, as stored in Prometheus, equal the truth.
async fn settled(prom: &Prometheus, add: f64, assigned: f64) -> Result<std::result::Result<(), String>> {
    let got = (
        prom.one(&format!("cni_metrics_nodes_reporting{CLUSTER}")).await?,
        prom.one(&format!("awscni_add_ip_req_count{CLUSTER}")).await?,
        prom.one(&format!("awscni_assigned_ip_addresses{CLUSTER}")).await?,
    );
    let want = (3.0, add, assigned);
    Ok(if got == want { Ok(()) } else { Err(format!("(nodes, add requests, assigned) = {got:?}, truth {want:?}")) })
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_over_a_real_prometheus_gives_the_truth() -> Result<()> {
    let (_, docs, _) = render_overlay("prometheus")?;
    let targets = targets(&docs)?;
    ensure!(targets.len() == 2, "one aggregator endpoint, one agent endpoint");
    let dir = scratch_dir("prometheus")?;
    // The manifests' ports, on loopback addresses of their own.
    let (agg_ip, agent_ip) = ("127.0.0.2", "127.0.0.3");
    let agg_port = targets[0].port;
    let agent_port = targets[1].port;
    let agg_http = format!("{agg_ip}:{agg_port}");
    let agg = Aggregator::start(&dir, "aggregator", &["--http-listen", &agg_http])?;

    let mut ipamds = Vec::new();
    let mut agents = Vec::new();
    for (i, style) in [PageStyle::Modern, PageStyle::PrefixDelegation, PageStyle::Modern].into_iter().enumerate() {
        let f = fake_ipamd(style, 70 + i as u64, 3).await?;
        // The first agent serves its /metrics on the PodMonitor's port; the others on free ports.
        let http = if i == 0 { format!("{agent_ip}:{agent_port}") } else { "127.0.0.1:0".to_owned() };
        agents.push(start_agent(&dir, &format!("node-{i}"), &f.url(), &agg.grpc, &["--http-listen", &http])?);
        ipamds.push(f);
    }
    let Some(prom) = Prometheus::start(&dir, &prometheus_config(&targets, agg_ip, agent_ip)?)? else { return Ok(()) };

    let truth = |f: fn(&SimIpamd) -> u64| -> f64 { ipamds.iter().map(|i| i.with_sim(|s| f(s))).sum::<u64>() as f64 };
    let cluster = CLUSTER;
    let add0 = truth(|s| s.lifetime.add_ip_req);
    eventually(Duration::from_secs(30), || settled(&prom, add0, truth(|s| s.assigned))).await?;
    // Both monitors' targets are up, with the operator's labels (the agent's job scrapes less often: its
    // first scrape may still be due).
    eventually(Duration::from_secs(20), || async {
        let agg_up = prom.query(r#"up{job="cni-metrics-aggregator",namespace="kube-system",endpoint="http-metrics"}"#).await?;
        let agent_up = prom.query(r#"up{job="kube-system/cni-metrics-agent"}"#).await?;
        let scrapes = prom.query(r#"cni_metrics_agent_scrapes_total{node="node-0"}"#).await?;
        let v = |r: &[(Value, f64)]| r.first().map(|x| x.1);
        let got = (v(&agg_up), v(&agent_up), v(&scrapes).is_some_and(|s| s > 0.0));
        Ok(if got == (Some(1.0), Some(1.0), true) {
            Ok(())
        } else {
            Err(format!("(aggregator up, agent up, agent metrics stored) = {got:?}"))
        })
    })
    .await?;

    // Pods come and go on every node; counters grow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for f in &ipamds {
        f.with_sim(|s| {
            for _ in 0..5 {
                s.step();
            }
        });
    }
    let add1 = truth(|s| s.lifetime.add_ip_req);
    ensure!(add1 > add0, "the simulators added pods");
    eventually(Duration::from_secs(30), || settled(&prom, add1, truth(|s| s.assigned))).await?;
    // The growth over the test: exact from the stored samples, and increase() (which extrapolates to the
    // window's edges) at least that and within one scrape interval's share of it.
    let range = "[5m]";
    let grown = prom
        .one(&format!("max_over_time(awscni_add_ip_req_count{cluster}{range}) - min_over_time(awscni_add_ip_req_count{cluster}{range})"))
        .await?;
    ensure!(grown == add1 - add0, "stored growth {grown}, truth {}", add1 - add0);
    let inc = prom.one(&format!("increase(awscni_add_ip_req_count{cluster}{range})")).await?;
    ensure!(inc >= grown - 1e-9 && inc <= grown * 1.5 + 1.0, "increase() = {inc}, exact growth {grown}");

    // Capacity ratios: ours equal PromQL over ours, and the truth.
    let (assigned, max, total) = (truth(|s| s.assigned), truth(SimIpamd::ip_max), truth(SimIpamd::total_ips));
    let ratio_max = prom.one(r#"cni_metrics_ip_utilization_ratio{job="cni-metrics-aggregator",cluster_id="e2e",basis="max"}"#).await?;
    let ratio_total = prom.one(r#"cni_metrics_ip_utilization_ratio{job="cni-metrics-aggregator",cluster_id="e2e",basis="total"}"#).await?;
    let promql_ratio = prom.one(&format!("awscni_assigned_ip_addresses{cluster} / awscni_ip_max{cluster}")).await?;
    ensure!(
        (ratio_max - assigned / max).abs() < 1e-9 && (promql_ratio - ratio_max).abs() < 1e-9,
        "utilization of max: {ratio_max}, PromQL {promql_ratio}, truth {}",
        assigned / max
    );
    ensure!((ratio_total - assigned / total).abs() < 1e-9, "utilization of total: {ratio_total}, truth {}", assigned / total);
    let headroom = prom.one(&format!("cni_metrics_ip_headroom{cluster}")).await?;
    ensure!(headroom == max - assigned, "headroom {headroom}, truth {}", max - assigned);
    // The alert expressions evaluate over the stored series (no node is low: the alert's query is empty).
    let low = prom.query(&format!("cni_metrics_nodes_low_on_ips{cluster} > 0")).await?;
    let truth_low = ipamds.iter().filter(|i| i.with_sim(|s| s.ip_max() - s.assigned < 5)).count();
    ensure!(low.len() == usize::from(truth_low > 0), "low-on-IPs alert query: {low:?}, truth {truth_low} nodes");
    drop(agents);
    Ok(())
}
