//! `cargo bench -p cni-metrics-agent`: CPU per scrape of a realistic ipamd page (parse, delta, report
//! encode) and wire size of reports. Prints a table; targets from the design: ≤ 200 µs per scrape,
//! ≤ 128 bytes for an idle report on the wire.

use std::hint::black_box;
use std::time::Instant;

use cni_metrics_agent::delta::{DeltaConfig, DeltaEngine};
use cni_metrics_agent::parse::parse;
use cni_metrics_agent::report::{delta_report, snapshot_report, Pending, ScrapeFacts};
use cni_metrics_proto::v1::{agent_message, AgentMessage};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
use prost::Message;

const START: f64 = 1_763_700_000.0;

fn facts() -> ScrapeFacts {
    ScrapeFacts::ok(1_763_800_000_000, START)
}

fn wire_len(r: cni_metrics_proto::v1::Report) -> usize {
    // + 5 bytes gRPC length prefix + 9 bytes HTTP/2 DATA frame header.
    AgentMessage { body: Some(agent_message::Body::Report(r)) }.encoded_len() + 14
}

/// Median and p99 of `f` over `n` runs, in microseconds.
fn measure(n: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut t: Vec<f64> = (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[n / 2], t[n * 99 / 100])
}

fn main() {
    println!(
        "{:<22} {:>8} {:>7} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "page", "bytes", "series", "parse p50", "scrape p50", "scrape p99", "idle report", "busy report"
    );
    for style in PageStyle::ALL {
        let mut sim = SimIpamd::new(style, 42, START);
        for _ in 0..40 {
            sim.step();
        }
        // 200 successive pages of a busy node, rendered up front.
        let pages: Vec<String> = (0..200)
            .map(|_| {
                sim.step();
                sim.render()
            })
            .collect();
        let bytes = pages[0].len();
        let (parse_p50, _) = measure(2000, |i| {
            black_box(parse(black_box(&pages[i % pages.len()])));
        });

        let mut engine = DeltaEngine::new(DeltaConfig::default());
        let mut pending = Pending::default();
        pending.absorb(&engine.observe(&parse(&pages[0]), START + 10.0));
        let series = engine.live_ids().len();
        let _snapshot = snapshot_report(&engine, &cni_metrics_agent::commit::CommitLog::new(10), 1, &facts());
        pending.clear();
        let mut seq = 1;
        let mut buf = Vec::with_capacity(4096);
        // One full scrape: parse + delta + build + encode the report.
        let (p50, p99) = measure(2000, |i| {
            let page = parse(&pages[i % pages.len()]);
            pending.absorb(&engine.observe(&page, START + 20.0 + i as f64));
            seq += 1;
            let r = delta_report(&engine, &pending, seq, &facts());
            buf.clear();
            AgentMessage { body: Some(agent_message::Body::Report(r)) }.encode(&mut buf).ok();
            pending.clear();
            black_box(&buf);
        });

        // Idle: the same page twice.
        let mut idle_engine = DeltaEngine::new(DeltaConfig::default());
        let mut p = Pending::default();
        idle_engine.observe(&parse(&pages[0]), START + 10.0);
        p.absorb(&idle_engine.observe(&parse(&pages[0]), START + 40.0));
        let idle = wire_len(delta_report(&idle_engine, &p, 1_000_000, &facts()));
        // Busy: two successive pages of a busy node.
        p.clear();
        p.absorb(&idle_engine.observe(&parse(&pages[1]), START + 70.0));
        let busy = wire_len(delta_report(&idle_engine, &p, 1_000_001, &facts()));
        println!(
            "{:<22} {:>8} {:>7} {:>10.1}µs {:>10.1}µs {:>10.1}µs {:>10} B {:>10} B",
            format!("{style:?}"),
            bytes,
            series,
            parse_p50,
            p50,
            p99,
            idle,
            busy
        );
    }
}
