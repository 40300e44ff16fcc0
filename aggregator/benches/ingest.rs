//! `cargo bench -p cni-metrics-aggregator`: aggregator ingest of agent reports for many simulated nodes
//! (real report messages built by the agent's code from simulated ipamd pages), and the cost of a
//! publish window and a /metrics render. Prints a table. `BENCH_NODES` (20,000), `BENCH_STYLE=modern`
//! (only v1.23 secondary-IP pages), `BENCH_KEEPING=0`, `BENCH_BREAKDOWN=0`.

use std::hint::black_box;
use std::time::Instant;

use cni_metrics_agent::delta::{DeltaConfig, DeltaEngine};
use cni_metrics_agent::parse::parse;
use cni_metrics_agent::report::{delta_report, snapshot_report, Pending, ScrapeFacts};
use cni_metrics_aggregator::state::{ClusterState, StateConfig};
use cni_metrics_proto::v1::{Hello, Report};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};

const START: f64 = 1_763_700_000.0;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn facts() -> ScrapeFacts {
    ScrapeFacts::ok(0, START)
}

fn main() {
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    // Agents keep their position (the DaemonSet's default) unless BENCH_KEEPING=0.
    let keeps_position = std::env::var("BENCH_KEEPING").map_or(true, |v| v != "0");
    // A few distinct node shapes; each simulated node reuses one shape's reports (ids are per node).
    let mut shapes: Vec<(Report, Vec<Report>, Report)> = Vec::new();
    // BENCH_STYLE=modern: every node a v1.23 secondary-IP node (the fleet bench's shape); else all four.
    let styles: Vec<PageStyle> = match std::env::var("BENCH_STYLE").as_deref() {
        Ok("modern") => vec![PageStyle::Modern],
        _ => PageStyle::ALL.to_vec(),
    };
    for (i, style) in styles.iter().enumerate() {
        let mut sim = SimIpamd::new(*style, i as u64, START);
        let mut engine = DeltaEngine::new(DeltaConfig::default());
        engine.observe(&parse(&sim.render()), START + 10.0);
        let snap = snapshot_report(&engine, &cni_metrics_agent::commit::CommitLog::new(10), 1, &facts());
        let mut busy = Vec::new();
        for k in 0..8 {
            sim.step();
            let mut p = Pending::default();
            p.absorb(&engine.observe(&parse(&sim.render()), START + 20.0 + k as f64));
            busy.push(delta_report(&engine, &p, 2 + k, &facts()));
        }
        let idle = delta_report(&engine, &Pending::default(), 100, &facts());
        shapes.push((snap, busy, idle));
    }
    let before = rss_kib();
    // Breakdowns on (BENCH_BREAKDOWN=0: off), as the fleet bench and a production aggregator have them.
    let breakdown = if std::env::var("BENCH_BREAKDOWN").is_ok_and(|v| v == "0") {
        Vec::new()
    } else {
        vec![cni_metrics_aggregator::state::Dim::Az, cni_metrics_aggregator::state::Dim::InstanceType]
    };
    let mut st = ClusterState::new(StateConfig { cluster_id: "bench".into(), breakdown, ..StateConfig::default() });
    let now = Instant::now();
    let names: Vec<String> = (0..nodes).map(|i| format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250)).collect();
    let mut sessions = Vec::with_capacity(nodes);
    let t = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let h = Hello {
            node_name: name.clone(),
            run_id: i as u64 + 1,
            interval_ms: 30_000,
            keeps_position,
            availability_zone: format!("us-west-2{}", ['a', 'b', 'c'][i % 3]),
            instance_type: ["m5.large", "m6i.2xlarge", "c6g.4xlarge", "r5.xlarge"][i % 4].to_owned(),
            ..Hello::default()
        };
        let s = st.hello(&h, now).map(|w| w.session).unwrap_or_default();
        let _ = st.report(name, s, &shapes[i % shapes.len()].0, now);
        sessions.push(s);
    }
    let join = t.elapsed();
    let after = rss_kib();

    let t = Instant::now();
    for k in 0..8 {
        for (i, name) in names.iter().enumerate() {
            let r = &shapes[i % shapes.len()].1[k];
            black_box(st.report(name, sessions[i], r, now).ok());
        }
    }
    let busy = t.elapsed() / (8 * nodes as u32);
    let mut idle_r = shapes[0].2.clone();
    let t = Instant::now();
    for round in 0..5u64 {
        for (i, name) in names.iter().enumerate() {
            idle_r.seq = 100 + round;
            let mut r = shapes[i % shapes.len()].2.clone();
            r.seq = idle_r.seq;
            black_box(st.report(name, sessions[i], &r, now).ok());
        }
    }
    let idle = t.elapsed() / (5 * nodes as u32);
    let t = Instant::now();
    let w = st.take_window(0);
    let window = t.elapsed();
    // The next window, after one busy report per node: the steady state of a busy cluster (the first
    // window above also closes every node's join snapshot).
    for (i, name) in names.iter().enumerate() {
        let mut r = shapes[i % shapes.len()].1[7].clone();
        r.seq = 200;
        black_box(st.report(name, sessions[i], &r, now).ok());
    }
    let t = Instant::now();
    black_box(st.take_window(1));
    let window_steady = t.elapsed();
    // /metrics: the copy taken under the state lock, then the text written from it without the lock.
    let t = Instant::now();
    let view = st.metrics_view(now);
    let copy = t.elapsed();
    let mut out = String::new();
    let t = Instant::now();
    view.render(&mut out);
    let render = t.elapsed();
    // The expiry sweep (every 250 ms, under the lock): nobody expires here, every node is looked at.
    let t = Instant::now();
    black_box(st.expire(now));
    let sweep = t.elapsed();
    // The consumer API under the lock: watch's worst 15, a full ListNodes page, the notifier's change
    // scan with one node in a hundred changed, and what it built before (every node's view, each tick).
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    use cni_metrics_aggregator::consumer::{self, query::NodeQuery};
    use cni_metrics_proto::v1::{ListNodesRequest, NodeOrder};
    let worst = NodeQuery::from_request(&ListNodesRequest { order: NodeOrder::IpHeadroom as i32, page_size: 15, ..Default::default() })
        .unwrap_or_else(|_| NodeQuery::by_name(&[], None, 15));
    let full = NodeQuery::by_name(&[], None, 5_000);
    let list_worst = timed(&mut || drop(black_box(worst.page(&st, now))));
    let list_page = timed(&mut || drop(black_box(full.page(&st, now))));
    let picture = NodeQuery::by_name(&[], names.get(nodes / 2).cloned(), 1_000);
    let picture_page = timed(&mut || drop(black_box(picture.page(&st, now))));
    let _ = st.take_changes(now, now, false); // what the joins logged (more than the log keeps)
    for (i, name) in names.iter().enumerate().step_by(100) {
        let mut r = shapes[i % shapes.len()].0.clone();
        r.seq = 300;
        black_box(st.report(name, sessions[i], &r, now).ok());
    }
    let mut changed = 0;
    let scan = timed(&mut || {
        let log = st.take_changes(now, now, false).unwrap_or_default();
        changed = consumer::views_of(&st, &log.changed, now).len();
    });
    let cluster = timed(&mut || drop(black_box(consumer::cluster_view(&st, now, true))));
    let every_view = timed(&mut || drop(black_box(consumer::node_views(&st, now, &[]))));
    println!("{:<44} {:>14}", "measure", "value");
    println!("{:<44} {:>14}", "nodes", nodes);
    println!("{:<44} {:>14}", "agents keep their position", keeps_position);
    println!("{:<44} {:>12.1}µs", "join (hello + snapshot) per node", join.as_secs_f64() * 1e6 / nodes as f64);
    println!("{:<44} {:>12.2}µs", "busy report apply per node", busy.as_secs_f64() * 1e6);
    println!("{:<44} {:>12.2}µs", "idle report apply per node (clone incl.)", idle.as_secs_f64() * 1e6);
    println!("{:<44} {:>12.0}/s", "busy reports/s on one core", 1.0 / busy.as_secs_f64());
    println!("{:<44} {:>12.1}KiB", "state memory per node (RSS delta)", (after.saturating_sub(before)) as f64 / nodes as f64);
    println!("{:<44} {:>12.2}ms", "publish window (take_window), joins in it", window.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "publish window, every node busy", window_steady.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "/metrics copy under the lock", copy.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "/metrics text from the copy (no lock)", render.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "expiry sweep under the lock (every 250 ms)", sweep.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "ListNodes worst 15 by headroom (lock)", list_worst.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "ListNodes page of 5,000 by name (lock)", list_page.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "Subscribe picture page of 1,000 (lock)", picture_page.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "Subscribe tick: changed nodes (lock)", scan.as_secs_f64() * 1e3);
    println!("{:<44} {:>14}", "  nodes changed in it", changed);
    println!("{:<44} {:>12.2}ms", "Subscribe tick: every node's view (lock)", every_view.as_secs_f64() * 1e3);
    println!("{:<44} {:>12.2}ms", "cluster view (lock)", cluster.as_secs_f64() * 1e3);
    println!("{:<44} {:>14}", "/metrics bytes", out.len());
    println!("{:<44} {:>14}", "datums per window", w.window.datums.len());
    println!("{:<44} {:>12.0}/s", "needed for 100k nodes at 30 s", 100_000.0 / 30.0);
}
