//! The demo: [`run_demo`] starts N fake ipamds (real HTTP servers over simulated nodes, from the
//! `cni-metrics-testkit` crate), one real agent per fake node and a real aggregator over loopback gRPC,
//! then redraws a live view with the cluster totals next to the truth computed from the simulators. No
//! AWS, no cluster. Built only with the default `demo` feature.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cni_metrics_agent::{AgentConfig, AgentStats};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::{FakeIpamd, Mode};
use tokio::net::TcpListener;

use crate::config::{LogArgs, ServerConfig};
use crate::server::{serve, Handles};
use crate::sinks::stdout::encode_lines;
use crate::sinks::{BoxFuture, Sink, SinkError};
use crate::state::{status_label, ClusterState, Window};
use cni_metrics_proto::clock::rfc3339;
use cni_metrics_proto::duration::parse_positive;

/// `demo`'s flags (its own only).
#[derive(Clone, Debug, clap::Args)]
pub struct DemoConfig {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Scrape interval of the simulated agents (and step of the simulated ipamds).
    #[arg(long, default_value = "1s", value_parser = parse_positive)]
    pub interval: Duration,
    /// Publish window of the demo aggregator.
    #[arg(long = "demo-publish-interval", alias = "publish-interval", default_value = "5s", value_parser = parse_positive)]
    pub publish_interval: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = parse_positive)]
    pub duration: Option<Duration>,
    /// HTTP address of the demo aggregator's /metrics (a free port is taken when busy).
    #[arg(long = "demo-http-listen", alias = "http-listen", default_value = "127.0.0.1:61681")]
    pub http_listen: SocketAddr,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Append every published datum to this file (the live view shows a summary of the last window).
    #[arg(long)]
    pub datums_log: Option<std::path::PathBuf>,
    /// Write the logs here (default on a terminal: cni-metrics-demo.log in the temporary directory;
    /// otherwise stderr).
    #[arg(long)]
    pub log_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The last published window, in short, for the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublishSummary {
    pub end_unix_ms: i64,
    pub datums: usize,
    /// A few cluster-wide datums (no dimension): CloudWatch name and value.
    pub key: Vec<(String, f64)>,
}

/// The CloudWatch names the summary line shows.
const KEY_DATUMS: &[&str] = &["assignIPAddresses", "totalIPAddresses", "maxIPAddresses", "addReqCount"];

impl PublishSummary {
    fn of(w: &Window) -> Self {
        let key = KEY_DATUMS
            .iter()
            .filter_map(|k| w.datums.iter().find(|d| d.metric_name == *k && d.dimension.is_none()).map(|d| ((*k).to_owned(), d.value)))
            .collect();
        Self { end_unix_ms: w.end_unix_ms, datums: w.datums.len(), key }
    }
}

/// Keeps a summary of the last published window for the view; with `--datums-log`, appends every
/// datum as the stdout sink prints it.
struct ViewSink {
    last: Mutex<Option<PublishSummary>>,
    log: Option<std::path::PathBuf>,
}

impl Sink for ViewSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn publish<'a>(&'a self, _seq: u64, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(PublishSummary::of(window));
            if let Some(path) = &self.log {
                use std::io::Write as _;
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(encode_lines(window).as_bytes()));
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the datums log");
                }
            }
            Ok(())
        })
    }
}

fn style_name(s: PageStyle) -> &'static str {
    match s {
        PageStyle::Legacy2019 => "2019 (quantiles)",
        PageStyle::GaugeTyped => "v1.16 (gauge-typed)",
        PageStyle::Modern => "v1.23",
        PageStyle::PrefixDelegation => "v1.23 prefix-deleg.",
    }
}

/// One node as the view shows it: its ipamd's truth as of the last page it served the agent (a node
/// serving garbage keeps its last good state, as the aggregator does).
pub struct NodeTruth {
    pub name: String,
    pub style: PageStyle,
    pub assigned: u64,
    pub total: u64,
    pub max: u64,
    /// add_ip_req increments since the agent's baseline.
    pub add_requests: u64,
}

/// The view fits a terminal of this many columns and rows.
pub const VIEW_COLUMNS: usize = 100;
pub const VIEW_ROWS: usize = 30;
/// Node rows shown; the rest are summed but not listed.
const NODE_ROWS: usize = 6;
/// Events shown (the latest).
const EVENT_ROWS: usize = 4;

/// What the live view shows.
pub struct ViewInput<'a> {
    pub header: &'a [String],
    pub truth: &'a [NodeTruth],
    pub publish: Option<&'a PublishSummary>,
    pub events: &'a [String],
}

/// The live view as text (pure, so it is unit-tested): at most [`VIEW_ROWS`] lines of at most
/// [`VIEW_COLUMNS`] characters.
pub fn render_view(st: &ClusterState, v: &ViewInput<'_>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for h in v.header {
        let _ = writeln!(s, "{h}");
    }
    let _ =
        writeln!(s, "\n{:<8} {:<20} {:<10} {:>9} {:>6} {:>5} {:>8}", "NODE", "IPAMD PAGE", "SCRAPE", "ASSIGNED", "TOTAL", "MAX", "ADD REQ");
    let status = |t: &NodeTruth| st.node(&t.name).map_or("absent", |n| status_label(n.status()));
    for t in v.truth.iter().take(NODE_ROWS) {
        let _ = writeln!(
            s,
            "{:<8} {:<20} {:<10} {:>9} {:>6} {:>5} {:>8}",
            t.name,
            style_name(t.style),
            status(t),
            t.assigned,
            t.total,
            t.max,
            t.add_requests
        );
    }
    if v.truth.len() > NODE_ROWS {
        let _ = writeln!(s, "... and {} more nodes (the sums below cover all)", v.truth.len() - NODE_ROWS);
    }
    let sum = |f: fn(&NodeTruth) -> u64| v.truth.iter().map(f).sum::<u64>() as f64;
    let absent: Vec<&str> = v.truth.iter().filter(|t| st.node(&t.name).is_none()).map(|t| t.name.as_str()).collect();
    let why = if absent.is_empty() {
        "differs: a scrape was in flight; settles at the next interval".to_owned()
    } else {
        format!("differs: {} not reporting yet", absent.join(", "))
    };
    let _ = writeln!(s, "\n{:<34} {:>10} {:>10}", "CLUSTER (aggregator vs truth)", "AGGREGATOR", "TRUTH");
    for (label, name, truth) in [
        ("IPs assigned", "awscni_assigned_ip_addresses", sum(|t| t.assigned)),
        ("IPs allocated (total)", "awscni_total_ip_addresses", sum(|t| t.total)),
        ("IPs max", "awscni_ip_max", sum(|t| t.max)),
        ("add IP requests since start", "awscni_add_ip_req_count", sum(|t| t.add_requests)),
    ] {
        let got = st.live_value(name, &[]);
        let shown = got.map_or_else(|| "-".to_owned(), |g| format!("{g}"));
        let verdict = if got == Some(truth) { "same" } else { why.as_str() };
        let _ = writeln!(s, "{label:<34} {shown:>10} {truth:>10}  {verdict}");
    }
    let published = st.value("awscni_add_ip_req_count", &[]).map_or_else(|| "-".to_owned(), |p| format!("{p}"));
    let _ = writeln!(s, "  truth: what each ipamd last served its agent; a node serving garbage keeps its last good state");
    let _ = writeln!(s, "  counters: reports applied so far; published to the sinks at window close: {published}");
    let ipv6 = st.capacity().ipv6_nodes;
    if ipv6 > 0 {
        let _ = writeln!(s, "  IPv6 nodes {ipv6}: in these sums; they run out of max pods, not addresses (no free IPs or headroom)");
    }
    match v.publish {
        Some(p) => {
            let key: Vec<String> = p.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let time = rfc3339(p.end_unix_ms);
            let _ = writeln!(
                s,
                "\nLAST PUBLISH: window ending {} UTC, {} datums, values as of its end:",
                time.get(11..19).unwrap_or(&time),
                p.datums
            );
            let _ = writeln!(s, "  {}", key.join("  "));
        }
        None => {
            let _ = writeln!(s, "\nLAST PUBLISH: none yet (the first window closes soon)");
        }
    }
    let _ = writeln!(s, "\nEVENTS");
    // The IPv6 line takes an event's row: the view keeps its height.
    let shown = v.events.len().min(EVENT_ROWS - usize::from(ipv6 > 0));
    for e in &v.events[v.events.len() - shown..] {
        let _ = writeln!(s, "  {e}");
    }
    if v.events.is_empty() {
        let _ = writeln!(s, "  waiting for every agent's first scrape");
    }
    fit(&s)
}

/// Cut every line to [`VIEW_COLUMNS`] characters (`...` marks a cut).
fn fit(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        if line.chars().count() > VIEW_COLUMNS {
            out.extend(line.chars().take(VIEW_COLUMNS - 3));
            out.push_str("...");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Run the demo until `shutdown` (or `--duration`).
pub async fn run_demo(cfg: DemoConfig, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
    let n = cfg.nodes.clamp(1, 64);
    let (fakes, baselines) = start_fakes(&cfg, n).await?;
    let mut agg_cfg = ServerConfig::for_test("demo");
    agg_cfg.publish.publish_interval = cfg.publish_interval;
    agg_cfg.state.breakdown = vec![crate::state::Dim::Az, crate::state::Dim::Subnet];
    let (grpc, http) = bind(&cfg, &agg_cfg).await?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let handles = Handles::new(&agg_cfg);
    let view_sink = Arc::new(ViewSink { last: Mutex::new(None), log: cfg.datums_log.clone() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let agg = tokio::spawn(serve(agg_cfg, grpc, http, vec![view_sink.clone() as Arc<dyn Sink>], handles.clone(), stopped()));
    let mut agents = Vec::new();
    for (i, f) in fakes.iter().enumerate() {
        let mut acfg = AgentConfig::for_test(&f.url(), &format!("http://{grpc_addr}"), &format!("node-{}", i + 1), cfg.interval);
        acfg.availability_zone = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][i % 3].to_owned();
        acfg.instance_type = ["m5.large", "c5.xlarge", "m6i.2xlarge"][i % 3].to_owned();
        acfg.introspection_url = cni_metrics_proto::flags::NonBlank::new(Some(f.enis_url()));
        agents.push(tokio::spawn(cni_metrics_agent::run(acfg, Arc::new(AgentStats::default()), None, stopped())));
    }
    let header = header_lines(&cfg, n, grpc_addr, http_addr);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut script = Script::default();
    // Half an interval out of phase with the agents' scrapes, so every step is scraped before the view.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval / 2, cfg.interval);
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let truth = truth_of(&fakes, &baselines);
        let last = view_sink.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let input = ViewInput { header: &header, truth: &truth, publish: last.as_ref(), events: &script.events };
        let view = handles.state.read(|st| render_view(st, &input));
        if tty {
            print!("\x1b[2J\x1b[H{view}");
        } else {
            println!("{view}");
        }
        let reporting = handles.state.read(|st| st.nodes().filter(|n| n.status() == cni_metrics_proto::v1::ScrapeStatus::Ok).count());
        script.advance(&fakes, reporting == n);
    }
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    agg.await??;
    Ok(())
}

/// One fake ipamd per node, of the four page generations in turn; returns them and each node's
/// add-request baseline (node 1 runs an ipamd started a day ago: its counters are a baseline; the others
/// are new nodes).
async fn start_fakes(cfg: &DemoConfig, n: usize) -> anyhow::Result<(Vec<FakeIpamd>, Vec<u64>)> {
    let now = cni_metrics_proto::clock::unix_ms_now() as f64 / 1000.0;
    let mut fakes = Vec::with_capacity(n);
    for i in 0..n {
        let style = PageStyle::ALL[i % PageStyle::ALL.len()];
        let start = if i == 0 { now - 86_400.0 } else { now - 5.0 };
        let sim = SimIpamd::new(style, cfg.seed + i as u64, start);
        fakes.push(FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    let baselines = fakes.iter().enumerate().map(|(i, f)| if i == 0 { f.with_sim(|s| s.lifetime.add_ip_req) } else { 0 }).collect();
    Ok((fakes, baselines))
}

/// The gRPC listener on the default port when free (so `cni-metrics-aggregator watch` finds the demo
/// without flags), the HTTP one on `--demo-http-listen` when free; else any port.
async fn bind(cfg: &DemoConfig, agg_cfg: &ServerConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 61690))).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(agg_cfg.listen.grpc_listen).await?,
    };
    let http = match TcpListener::bind(cfg.http_listen).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    Ok((grpc, http))
}

/// The view's first lines: what runs, where to look, where the logs go.
fn header_lines(cfg: &DemoConfig, n: usize, grpc_addr: SocketAddr, http_addr: SocketAddr) -> [String; 4] {
    let watch = if grpc_addr.port() == 61690 {
        "cni-metrics-aggregator watch".to_owned()
    } else {
        format!("cni-metrics-aggregator watch --aggregator http://{grpc_addr}")
    };
    [
        format!(
            "cni-metrics demo: {n} simulated nodes -> {n} agents -> aggregator; scrape every {}, publish every {}",
            cni_metrics_proto::duration::format(cfg.interval),
            cni_metrics_proto::duration::format(cfg.publish_interval)
        ),
        format!("Prometheus: http://{http_addr}/metrics   gRPC: {grpc_addr}   Ctrl-C stops"),
        format!("another view of it: {watch}"),
        format!(
            "logs: {}   every datum: {}",
            cfg.log_file.as_ref().map_or_else(|| "stderr".to_owned(), |p| p.display().to_string()),
            cfg.datums_log.as_ref().map_or_else(|| "--datums-log FILE".to_owned(), |p| p.display().to_string()),
        ),
    ]
}

/// Each node's truth as its agent last read it (before its first scrape, the simulator as it is).
fn truth_of(fakes: &[FakeIpamd], baselines: &[u64]) -> Vec<NodeTruth> {
    fakes
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let truth = |s: &SimIpamd| NodeTruth {
                name: format!("node-{}", i + 1),
                style: s.style,
                assigned: s.assigned,
                total: s.total_ips(),
                max: s.ip_max(),
                add_requests: s.lifetime.add_ip_req.saturating_sub(baselines[i]),
            };
            f.last_served(truth).unwrap_or_else(|| f.with_sim(|s| truth(s)))
        })
        .collect()
}

/// What happens to the simulated nodes, step by step, and the events the view lists.
#[derive(Default)]
struct Script {
    started: bool,
    step: u64,
    events: Vec<String>,
}

impl Script {
    /// One tick: the simulation moves only once every agent has taken its first look (`all_reporting`).
    fn advance(&mut self, fakes: &[FakeIpamd], all_reporting: bool) {
        if !self.started {
            if all_reporting {
                self.started = true;
                self.events.push("all agents connected; nodes start scheduling pods".into());
            }
            return;
        }
        self.step += 1;
        let step = self.step;
        for f in fakes {
            f.with_sim(|s| s.step());
        }
        if step == 8 && fakes.len() >= 2 {
            let t = cni_metrics_proto::clock::unix_ms_now() as f64 / 1000.0;
            fakes[1].with_sim(|s| s.restart(t));
            self.events.push(format!("step {step}: ipamd on node-2 restarted (its counters reset; the agent folds the reset in)"));
        }
        if step == 12 && fakes.len() >= 3 {
            fakes[2].set_mode(Mode::Garbage);
            self.events.push(format!("step {step}: node-3's ipamd serves garbage (node keeps its last good state)"));
        }
        if step == 16 && fakes.len() >= 3 {
            fakes[2].set_mode(Mode::Normal);
            self.events.push(format!("step {step}: node-3's ipamd is healthy again"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;

    fn truth(n: usize) -> Vec<NodeTruth> {
        (0..n)
            .map(|i| NodeTruth {
                name: format!("node-{}", i + 1),
                style: PageStyle::Modern,
                assigned: 3,
                total: 9,
                max: 27,
                add_requests: 5,
            })
            .collect()
    }

    fn check_fits(v: &str) {
        assert!(v.lines().count() <= VIEW_ROWS, "{} lines:\n{v}", v.lines().count());
        assert!(v.lines().all(|l| l.chars().count() <= VIEW_COLUMNS), "a line is wider than {VIEW_COLUMNS}:\n{v}");
    }

    #[test]
    fn view_shows_nodes_cluster_and_publish_and_fits_100_by_30() {
        let st = ClusterState::new(StateConfig::default());
        let header = ["HEADER".to_owned(), "second".to_owned(), "third".to_owned(), "x".repeat(150)];
        let publish = PublishSummary { end_unix_ms: 0, datums: 18, key: vec![("assignIPAddresses".into(), 113.0)] };
        let events: Vec<String> = (1..=9).map(|i| format!("event {i} {}", "x".repeat(200))).collect();
        let t = truth(1);
        let v = render_view(&st, &ViewInput { header: &header, truth: &t, publish: Some(&publish), events: &events });
        assert!(v.starts_with("HEADER\n"));
        assert!(v.contains("node-1   v1.23"), "{v}");
        assert!(v.contains("absent"), "{v}");
        assert!(v.contains("add IP requests since start"), "{v}");
        assert!(v.contains("differs: node-1 not reporting yet"), "{v}");
        assert!(v.contains("LAST PUBLISH: window ending 00:00:00 UTC, 18 datums"), "{v}");
        assert!(v.contains("\n  assignIPAddresses=113\n"), "{v}");
        assert!(v.contains("  event 9 x") && !v.contains("event 5 "), "the latest four events: {v}");
        check_fits(&v);
        // 64 nodes: 6 rows listed, the rest summed.
        let t = truth(64);
        let v = render_view(&st, &ViewInput { header: &header, truth: &t, publish: Some(&publish), events: &events });
        assert!(v.contains("... and 58 more nodes"), "{v}");
        assert!(v.contains(&format!("{:>10}", 64 * 3)), "sums cover every node: {v}");
        assert!(!v.contains("IPv6"), "{v}");
        check_fits(&v);
        // An IPv6 node (its introspection lists a /80): the view says what its numbers mean.
        let mut st = ClusterState::new(StateConfig::default());
        let now = std::time::Instant::now();
        let hello = cni_metrics_proto::v1::Hello { node_name: "v6".into(), run_id: 1, interval_ms: 1000, ..Default::default() };
        let session = st.hello(&hello, now).map(|w| w.session).unwrap_or_default();
        let usage = cni_metrics_proto::v1::SubnetUsage { subnet_id: "subnet-1".into(), enis: 1, ipv6_prefixes: 1, ..Default::default() };
        let report =
            cni_metrics_proto::v1::Report { seq: 1, snapshot: true, subnets_changed: true, subnets: vec![usage], ..Default::default() };
        assert!(st.report("v6", session, &report, now).is_ok());
        let v = render_view(&st, &ViewInput { header: &header, truth: &t, publish: Some(&publish), events: &events });
        assert!(v.contains("\n  IPv6 nodes 1: in these sums; they run out of max pods, not addresses"), "{v}");
        assert!(v.contains("  event 9 x") && !v.contains("event 6 "), "the latest three events: {v}");
        check_fits(&v);
    }
}
