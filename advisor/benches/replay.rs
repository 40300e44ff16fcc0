//! What the advisor's replay costs an agent: one node's history over a window (30 s samples, pods
//! coming and going), every candidate of the grid replayed on it. Prints a table; `cargo bench -p
//! cni-metrics-advisor`. The agent replays once per evaluation (`--advisor-interval`, 15 min).

use std::time::Instant;

use cni_metrics_advisor::{grid, replay, Limits, Sample, Settings};

/// A day-like history: `samples` 30 s samples around `pods` pods, `churn` adds and dels per sample.
fn history(samples: u64, pods: u32, churn: u32) -> Vec<Sample> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut assigned = pods;
    (0..samples)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let adds = (x % u64::from(churn + 1)) as u32;
            let dels = ((x >> 8) % u64::from(churn + 1)) as u32;
            let dels = dels.min(assigned + adds);
            // Drift back towards the mean.
            let (adds, dels) = if assigned > pods + 5 {
                (adds / 2, dels)
            } else if assigned + 5 < pods {
                (adds, dels / 2)
            } else {
                (adds, dels)
            };
            assigned = assigned + adds - dels.min(assigned + adds);
            Sample { at_ms: i * 30_000, assigned, held: 0, adds, dels, waits: 0, ec2_calls: 0 }
        })
        .collect()
}

fn main() {
    println!(
        "{:<34} {:>8} {:>10} {:>12} {:>14}",
        "node (limits, pods, churn/30 s)", "samples", "candidates", "replay all", "per candidate"
    );
    let cases = [
        ("m5.large 3x10, 20 pods, 2", Limits { eni_limit: 3, ipv4_per_eni: 10, max_pods: 29 }, 20, 2, false),
        ("m5.4xlarge 8x30, 100 pods, 4", Limits { eni_limit: 8, ipv4_per_eni: 30, max_pods: 234 }, 100, 4, false),
        ("m5.4xlarge PD, 110 pods, 4", Limits { eni_limit: 8, ipv4_per_eni: 30, max_pods: 250 }, 110, 4, true),
    ];
    for (name, limits, pods, churn, pd) in cases {
        let h = history(2880, pods, churn);
        let current = Settings { prefix_delegation: pd, warm_prefix_target: pd.then_some(1), ..Settings::default() };
        let candidates = grid(&current);
        let started = Instant::now();
        let mut held = 0.0;
        for c in &candidates {
            held += replay(c, limits, &h).map_or(0.0, |o| o.ips_held_mean);
        }
        let took = started.elapsed();
        assert!(held > 0.0);
        println!(
            "{:<34} {:>8} {:>10} {:>10.0} ms {:>11.1} ms",
            name,
            h.len(),
            candidates.len(),
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0 / candidates.len() as f64
        );
    }
}
