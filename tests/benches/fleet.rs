//! `cargo bench -p cni-metrics-e2e --bench fleet`: one real aggregator process (release build) and a fleet
//! of simulated agents in `cni-metrics-fleet` processes, each agent on its own HTTP/2 connection, the
//! processes spread over 127.0.0.x. For each fleet size (`FLEET_SIZES`, default 1000,5000,10000,19000;
//! this machine allows 20,000 open files per process) it prints one row: the aggregator's RSS and RSS per
//! agent, its CPU per report and per second at the fleet's report rate, report→ack p50/p99 (measured by
//! the agents), the `/metrics` render time and the longest wait for the state lock while rendering, and
//! after a SIGKILL and restart of the aggregator (a reconnect storm) the time until every node reports
//! again, the CPU that took and how many streams were refused.
//!
//! `FLEET_INTERVAL` (default 5s) is every agent's report interval: 19,000 agents at 5 s send what 100,000
//! nodes send at 26 s, so CPU per report measured here scales to 100,000 nodes at 30 s. `FLEET_ARGS` adds
//! aggregator flags; `FLEET_AGGREGATOR` runs another build of the aggregator (an absolute path).
//! `FLEET_TLS=1` runs every connection with mutual TLS (certificates made by `openssl` per run), to see
//! what mTLS adds per agent. `FLEET_WHOLE=1` has the agents send their snapshots whole, as agents before
//! reports in parts did (the aggregator's buffers then grow to a snapshot). Each row also has the last window close's state-lock hold and how long its
//! commit took to reach every stream.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cni_metrics_e2e::fleet::{latency_quantile, LATENCY_BUCKETS};
use cni_metrics_e2e::{json_field, proc_stat, sample, scratch_dir, Launch, Proc};

const PER_PROCESS: u64 = 5_000;

/// One generator process; its stdout is a JSON line per second.
struct Generator {
    child: Child,
    out: PathBuf,
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default, Clone)]
struct Counts {
    welcomed: u64,
    open: u64,
    refused: u64,
    acked: u64,
    hist: Vec<u64>,
}

impl Generator {
    fn last(&self) -> Counts {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let Some(line) = text.lines().rev().find(|l| l.ends_with('}')) else { return Counts::default() };
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Counts {
            welcomed: n("welcomed"),
            open: n("open"),
            refused: n("refused"),
            acked: n("acked"),
            hist: v.get("hist").and_then(|h| h.as_array()).map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect()).unwrap_or_default(),
        }
    }
}

fn total(gens: &[Generator]) -> Counts {
    let mut t = Counts { hist: vec![0; LATENCY_BUCKETS], ..Counts::default() };
    for g in gens {
        let c = g.last();
        t.welcomed += c.welcomed;
        t.open += c.open;
        t.refused += c.refused;
        t.acked += c.acked;
        for (a, b) in t.hist.iter_mut().zip(c.hist) {
            *a += b;
        }
    }
    t
}

fn start_aggregator(dir: &Path, name: &str, grpc: &str, extra: &[String]) -> Result<(Proc, String)> {
    let mut args: Vec<String> =
        ["--cluster-id", "e2e", "--grpc-listen", grpc, "--http-listen", "127.0.0.1:0", "--stdout", "true", "--log-format", "json"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    // Defaults of the bench unless FLEET_ARGS sets them.
    for (flag, value) in [("--publish-interval", "10s"), ("--breakdown", "az,instance_type")] {
        if !extra.iter().any(|e| e == flag) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    args.extend(extra.iter().cloned());
    let env = [("AWS_ACCESS_KEY_ID", Some("testing")), ("AWS_SECRET_ACCESS_KEY", Some("testing")), ("AWS_REGION", Some("us-east-1"))];
    // FLEET_AGGREGATOR: another build of the aggregator (an absolute path), e.g. to measure before a change.
    let bin = std::env::var("FLEET_AGGREGATOR").unwrap_or_else(|_| "cni-metrics-aggregator".to_owned());
    let proc = Launch::host(&bin, name, dir)?.args(args).envs(&env).start()?;
    let line = proc.wait_log("aggregator starting", Duration::from_secs(20))?;
    let http = json_field(&line, "http").context("http address in log")?;
    Ok((proc, http))
}

async fn metric(http: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = reqwest::get(format!("http://{http}/metrics")).await.ok()?.text().await.ok()?;
    sample(&page, name, labels)
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what}: not within {timeout:?}")
}

struct Row {
    agents: u64,
    rss_mib: f64,
    per_agent_kib: f64,
    cpu_us_per_report: f64,
    cores: f64,
    reports_per_s: f64,
    p50: f64,
    p99: f64,
    render_ms: f64,
    lock_wait_ms: f64,
    close_ms: f64,
    fanout_ms: f64,
    relearn_s: f64,
    relearn_cpu_s: f64,
    refused: u64,
}

async fn run(n: u64, interval: &str, extra: &[String], tls: bool) -> Result<Row> {
    let dir = scratch_dir(&format!("fleet-{n}"))?;
    let port = cni_metrics_e2e::free_port()?;
    let grpc = format!("127.0.0.1:{port}");
    let mut extra = extra.to_vec();
    let mut gen_args = Vec::new();
    if std::env::var("FLEET_WHOLE").is_ok_and(|v| v == "1") {
        gen_args.push("--whole-reports".to_owned());
    }
    if tls {
        use cni_metrics_e2e::pki::{ca, leaf};
        ca(&dir, "ca")?;
        leaf(&dir, "ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")?;
        leaf(&dir, "ca", "agent", "subjectAltName=DNS:fleet\nextendedKeyUsage=clientAuth\n")?;
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        extra.extend(["--tls-cert", &p("server.crt"), "--tls-key", &p("server.key"), "--tls-client-ca", &p("ca.crt")].map(str::to_owned));
        gen_args.extend(["--tls-dir".to_owned(), dir.to_string_lossy().into_owned()]);
    }
    let extra = &extra[..];
    let (mut agg, http) = start_aggregator(&dir, "aggregator", &grpc, extra)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (base_rss, _) = proc_stat(agg.pid());
    let fleet = env!("CARGO_BIN_EXE_cni-metrics-fleet");
    let ramp = format!("{}ms", (n * 1000 / 1500).max(1000));
    let mut gens = Vec::new();
    let procs = n.div_ceil(PER_PROCESS);
    for p in 0..procs {
        let first = p * PER_PROCESS;
        let count = PER_PROCESS.min(n - first);
        let out = dir.join(format!("fleet-{p}.jsonl"));
        let child = Command::new(fleet)
            .args(["--aggregator", &grpc, "--agents", &count.to_string(), "--first", &first.to_string()])
            .args(["--source", &format!("127.0.0.{}", 10 + p), "--interval", interval, "--ramp", &ramp])
            .args(&gen_args)
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("start cni-metrics-fleet")?;
        gens.push(Generator { child, out });
    }
    let nf = n as f64;
    wait_until("every agent welcomed and reporting", Duration::from_secs(180), async || {
        total(&gens).open == n && metric(&http, "cni_metrics_nodes_reporting", &[]).await == Some(nf)
    })
    .await?;
    // Settle: two intervals.
    let iv = cni_metrics_proto::duration::parse_positive(interval)?;
    tokio::time::sleep(iv * 2).await;

    // Steady state.
    let window = Duration::from_secs(20).max(iv * 3);
    let c0 = total(&gens);
    let (_, cpu0) = proc_stat(agg.pid());
    tokio::time::sleep(window).await;
    let c1 = total(&gens);
    let (rss, cpu1) = proc_stat(agg.pid());
    let reports = (c1.acked - c0.acked) as f64;
    let cpu = cpu1 - cpu0;

    // /metrics: render time, and the longest wait for the state lock meanwhile (read at the next render).
    let mut render = Vec::new();
    let mut waits = Vec::new();
    let _ = metric(&http, "cni_metrics_state_lock_wait_max_seconds", &[]).await;
    for _ in 0..5 {
        let t = Instant::now();
        let page = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
        render.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(w) = sample(&page, "cni_metrics_state_lock_wait_max_seconds", &[]) {
            waits.push(w * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    render.sort_by(f64::total_cmp);
    // The last window close: its lock hold, and how long its commit took to reach every stream.
    let close_ms = metric(&http, "cni_metrics_window_close_lock_seconds", &[]).await.map_or(f64::NAN, |s| s * 1e3);
    let fanout_ms = metric(&http, "cni_metrics_commit_fanout_seconds", &[]).await.map_or(f64::NAN, |s| s * 1e3);
    let lock_wait_ms = waits.iter().skip(1).copied().fold(f64::NAN, f64::max);

    // Reconnect storm: SIGKILL, restart on the same port, time until every node reports again.
    agg.kill();
    let refused0 = total(&gens).refused;
    let (agg2, http2) = start_aggregator(&dir, "aggregator-2", &grpc, extra)?;
    let t0 = Instant::now();
    let (_, cpu_r0) = proc_stat(agg2.pid());
    let relearn = wait_until("every node re-learned after the restart", Duration::from_secs(180), async || {
        metric(&http2, "cni_metrics_nodes_reporting", &[]).await == Some(nf)
    })
    .await
    .map_or(f64::NAN, |_| t0.elapsed().as_secs_f64());
    let (_, cpu_r1) = proc_stat(agg2.pid());
    let refused = total(&gens).refused - refused0;
    drop(gens);
    Ok(Row {
        agents: n,
        rss_mib: rss as f64 / 1024.0,
        per_agent_kib: (rss.saturating_sub(base_rss)) as f64 / nf,
        cpu_us_per_report: cpu / reports * 1e6,
        cores: cpu / window.as_secs_f64(),
        reports_per_s: reports / window.as_secs_f64(),
        p50: latency_quantile(&c0.hist, &c1.hist, 0.5),
        p99: latency_quantile(&c0.hist, &c1.hist, 0.99),
        render_ms: render.get(render.len() / 2).copied().unwrap_or(f64::NAN),
        lock_wait_ms,
        close_ms,
        fanout_ms,
        relearn_s: relearn,
        relearn_cpu_s: cpu_r1 - cpu_r0,
        refused,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let sizes: Vec<u64> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "1000,5000,10000,19000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().context("FLEET_SIZES: comma-separated agent counts"))
        .collect::<Result<_>>()?;
    let interval = std::env::var("FLEET_INTERVAL").unwrap_or_else(|_| "5s".to_owned());
    let extra: Vec<String> = std::env::var("FLEET_ARGS").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    let tls = std::env::var("FLEET_TLS").is_ok_and(|v| v == "1");
    // Build the aggregator (release, like this bench) before the first row.
    cni_metrics_e2e::bin_dir()?;
    println!(
        "fleet bench: every agent reports every {interval}{}; aggregator flags: {}",
        if tls { ", mutual TLS" } else { "" },
        if extra.is_empty() { "(defaults)".to_owned() } else { extra.join(" ") }
    );
    println!(
        "{:>7} {:>9} {:>10} {:>10} {:>7} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "agents",
        "RSS MiB",
        "KiB/agent",
        "µs/report",
        "cores",
        "reports/s",
        "ack p50",
        "ack p99",
        "/metrics",
        "lock wait",
        "close lock",
        "fan-out",
        "re-learn",
        "storm CPU",
        "refused"
    );
    for n in sizes {
        let r = run(n, &interval, &extra, tls).await?;
        println!(
            "{:>7} {:>9.1} {:>10.1} {:>10.1} {:>7.3} {:>9.0} {:>6.1}ms {:>6.1}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.1}s {:>8.1}s {:>8}",
            r.agents,
            r.rss_mib,
            r.per_agent_kib,
            r.cpu_us_per_report,
            r.cores,
            r.reports_per_s,
            r.p50,
            r.p99,
            r.render_ms,
            r.lock_wait_ms,
            r.close_ms,
            r.fanout_ms,
            r.relearn_s,
            r.relearn_cpu_s,
            r.refused
        );
    }
    Ok(())
}
