//! The demo: [`run_demo`] starts N fake ipamds (real HTTP servers over simulated nodes, from the
//! `cni-metrics-testkit` crate), one real agent per fake node and a real aggregator over loopback gRPC,
//! then redraws a live view with the cluster totals next to the truth computed from the simulators. No
//! AWS, no cluster. Built only with the default `demo` feature.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cni_metrics_agent::{AgentConfig, AgentStats};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use cni_metrics_testkit::{FakeIpamd, Mode};
use tokio::net::TcpListener;

use crate::config::{AggregatorConfig, DemoConfig};
use crate::server::{serve, Handles};
use crate::shared::lock;
use crate::sinks::stdout::encode_lines;
use crate::sinks::{BoxFuture, Sink, SinkError};
use crate::state::{status_label, ClusterState, Window};

/// Keeps the last published lines for the view.
#[derive(Default)]
struct ViewSink {
    last: Mutex<String>,
}

impl Sink for ViewSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn publish<'a>(&'a self, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = encode_lines(window);
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

/// Per-node facts the view shows next to the aggregator's numbers.
pub struct NodeTruth {
    pub name: String,
    pub style: PageStyle,
    pub assigned: u64,
    pub total: u64,
    pub max: u64,
    /// add_ip_req increments since the agent's baseline.
    pub add_requests: u64,
}

/// The live view as text (pure, so it is unit-tested).
pub fn render_view(st: &ClusterState, truth: &[NodeTruth], last_publish: &str, events: &[String], header: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ =
        writeln!(s, "{:<8} {:<20} {:<9} {:>9} {:>6} {:>5} {:>8}", "NODE", "IPAMD PAGE", "SCRAPE", "ASSIGNED", "TOTAL", "MAX", "ADD REQ");
    for t in truth {
        let status = st.node(&t.name).map_or("absent", |n| status_label(n.status));
        let _ = writeln!(
            s,
            "{:<8} {:<20} {:<9} {:>9} {:>6} {:>5} {:>8}",
            t.name,
            style_name(t.style),
            status,
            t.assigned,
            t.total,
            t.max,
            t.add_requests
        );
    }
    let v = |n: &str| st.value(n, &[]).map_or_else(|| "-".to_owned(), |v| format!("{v}"));
    let sum = |f: fn(&NodeTruth) -> u64| truth.iter().map(f).sum::<u64>();
    let _ = writeln!(s, "\n{:<34} {:>12} {:>12}", "CLUSTER (aggregator vs truth)", "AGGREGATOR", "TRUTH");
    for (label, name, t) in [
        ("IPs assigned", "awscni_assigned_ip_addresses", sum(|t| t.assigned)),
        ("IPs total", "awscni_total_ip_addresses", sum(|t| t.total)),
        ("IPs max", "awscni_ip_max", sum(|t| t.max)),
        ("add IP requests since start", "awscni_add_ip_req_count", sum(|t| t.add_requests)),
    ] {
        let _ = writeln!(s, "{label:<34} {:>12} {t:>12}", v(name));
    }
    let _ = writeln!(s, "\nLast publish (stdout sink):");
    for line in last_publish.lines() {
        let _ = writeln!(s, "  {line}");
    }
    if !events.is_empty() {
        let _ = writeln!(s, "\nEvents:");
        for e in events.iter().rev().take(6).rev() {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

/// Run the demo until `shutdown` (or `--duration`).
pub async fn run_demo(cfg: DemoConfig, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
    let now = cni_metrics_proto::clock::unix_ms_now() as f64 / 1000.0;
    let n = cfg.nodes.clamp(1, 64);
    let mut fakes = Vec::with_capacity(n);
    for i in 0..n {
        let style = PageStyle::ALL[i % PageStyle::ALL.len()];
        // Node 1 runs an ipamd started a day ago (its counters are a baseline); the others are new nodes.
        let start = if i == 0 { now - 86_400.0 } else { now - 5.0 };
        let sim = SimIpamd::new(style, cfg.seed + i as u64, start);
        fakes.push(FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    let baselines: Vec<u64> =
        fakes.iter().enumerate().map(|(i, f)| if i == 0 { f.with_sim(|s| s.lifetime.add_ip_req) } else { 0 }).collect();

    let mut agg_cfg = AggregatorConfig::for_test("demo");
    agg_cfg.publish_interval = cfg.publish_interval;
    agg_cfg.breakdown = vec![crate::state::Dim::Az, crate::state::Dim::Subnet];
    // The default gRPC port when free, so `cni-metrics-aggregator watch` finds the demo without flags.
    let grpc = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 61690))).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(agg_cfg.grpc_listen).await?,
    };
    let http = match TcpListener::bind(cfg.http_listen).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let handles = Handles::new(&agg_cfg);
    let view_sink = Arc::new(ViewSink::default());
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
        acfg.introspection_url = f.enis_url();
        agents.push(tokio::spawn(cni_metrics_agent::run(acfg, Arc::new(AgentStats::default()), None, stopped())));
    }

    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let header = format!(
        "cni-metrics demo: {n} simulated nodes -> agents -> aggregator (gRPC {grpc_addr})\n\
         Prometheus: http://{http_addr}/metrics   live view: cni-metrics-aggregator watch --aggregator http://{grpc_addr}\n\
         interval {:?}, publish window {:?}   Ctrl-C to stop",
        cfg.interval, cfg.publish_interval
    );
    let mut events: Vec<String> = Vec::new();
    // Half an interval out of phase with the agents' scrapes, so every step is scraped before the view.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval / 2, cfg.interval);
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut started = false;
    tokio::pin!(shutdown);
    let mut step = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let truth: Vec<NodeTruth> = fakes
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.with_sim(|s| NodeTruth {
                    name: format!("node-{}", i + 1),
                    style: s.style,
                    assigned: s.assigned,
                    total: s.total_ips(),
                    max: s.ip_max(),
                    add_requests: s.lifetime.add_ip_req - baselines[i],
                })
            })
            .collect();
        let last = view_sink.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let view = render_view(&lock(&handles.state), &truth, &last, &events, &header);
        if tty {
            print!("\x1b[2J\x1b[H{view}");
        } else {
            println!("{view}");
        }
        // Let the simulation move only once every agent has taken its first look.
        if !started {
            let ready = lock(&handles.state).nodes().filter(|n| n.status == cni_metrics_proto::v1::ScrapeStatus::Ok).count() == n;
            if ready {
                started = true;
                events.push("all agents connected; nodes start scheduling pods".into());
            }
        } else {
            step += 1;
            for f in &fakes {
                f.with_sim(|s| s.step());
            }
            if step == 8 && n >= 2 {
                let t = cni_metrics_proto::clock::unix_ms_now() as f64 / 1000.0;
                fakes[1].with_sim(|s| s.restart(t));
                events.push(format!("step {step}: ipamd on node-2 restarted (its counters reset; the agent folds the reset in)"));
            }
            if step == 12 && n >= 3 {
                fakes[2].set_mode(Mode::Garbage);
                events.push(format!("step {step}: node-3's ipamd serves garbage (node keeps its last good state)"));
            }
            if step == 16 && n >= 3 {
                fakes[2].set_mode(Mode::Normal);
                events.push(format!("step {step}: node-3's ipamd is healthy again"));
            }
        }
    }
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    agg.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;

    #[test]
    fn view_shows_nodes_cluster_and_publish() {
        let st = ClusterState::new(StateConfig::default());
        let truth = vec![NodeTruth { name: "node-1".into(), style: PageStyle::Modern, assigned: 3, total: 9, max: 27, add_requests: 5 }];
        let v = render_view(&st, &truth, "t cluster_id=demo metric=addReqCount value=5 unit=Count\n", &["e1".into()], "HEADER");
        assert!(v.starts_with("HEADER\n"));
        assert!(v.contains("node-1   v1.23"), "{v}");
        assert!(v.contains("absent"), "{v}");
        assert!(v.contains("add IP requests since start"), "{v}");
        assert!(v.contains("  t cluster_id=demo metric=addReqCount value=5 unit=Count"), "{v}");
        assert!(v.contains("Events:\n  e1"), "{v}");
    }
}
