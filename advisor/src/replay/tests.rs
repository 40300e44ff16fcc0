//! The replay against the pool it replays: a simulated ipamd (the same model, pods arriving and leaving
//! at random moments) is sampled as the agent samples ipamd, and replaying its own settings on that
//! history must come back to what it held.

use super::*;
use crate::calls::Ec2Api;

#[test]
fn churn_agrees_with_the_change_of_assigned_addresses() {
    // (adds, dels, net) -> (adds, dels)
    let cases = [
        ((3, 1, 2), (3, 1)),
        ((0, 0, 2), (2, 0)),
        ((5, 5, 2), (7, 5)),
        ((1, 4, -3), (1, 4)),
        ((0, 0, -2), (0, 2)),
        ((6, 2, -1), (6, 7)),
        ((4, 4, 0), (4, 4)),
    ];
    for ((adds, dels, net), want) in cases {
        assert_eq!(churn(adds, dels, net), want, "adds {adds} dels {dels} net {net}");
        let (a, d) = churn(adds, dels, net);
        assert_eq!(i64::from(a) - i64::from(d), net);
    }
}

#[test]
fn observed_figures_are_time_weighted_and_skip_the_baseline() {
    let s = |at_ms, held, waits, ec2_calls| Sample { at_ms, held, waits, ec2_calls, ..Sample::default() };
    let history = [s(0, 10, 9, 9), s(30_000, 20, 1, 2), s(90_000, 20, 0, 3)];
    let o = observe(&history);
    // 10 for 30 s, 20 for 60 s.
    assert!((o.ips_held_mean - 50.0 / 3.0).abs() < 1e-9, "{}", o.ips_held_mean);
    assert_eq!((o.seconds, o.ec2_calls, o.pod_ip_waits), (90, 5, 1));
    assert_eq!(observe(&[]), Observed::default());
}

/// A tiny deterministic generator (no dependency): xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A simulated node over `minutes`: pods arrive and leave at random seconds around `mean_pods`, the pool
/// kept by `settings`; sampled every 30 s as the agent does.
pub(crate) fn simulated_history(settings: &Settings, limits: Limits, seed: u64, mean_pods: u32, minutes: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    let mut pool = Pool::new(settings.clone(), limits);
    let mut now = 0;
    let mut pods = 0u32;
    // Warm up to the mean.
    while pods < mean_pods {
        if pool.assign_pod(now) {
            pods += 1;
        } else {
            now += TICK_MS;
            pool.tick(now);
        }
    }
    for _ in 0..40 {
        now += TICK_MS;
        pool.tick(now);
    }
    let sample = |pool: &Pool, now: u64, pods: u32, adds: u32, dels: u32, waits: u64, calls: u64| Sample {
        at_ms: now,
        assigned: pods,
        held: pool.stats(now).total,
        adds,
        dels,
        waits: (pool.pod_ip_waits() - waits) as u32,
        ec2_calls: (pool.calls().total() - calls) as u32,
    };
    let mut history = vec![sample(&pool, now, pods, 0, 0, pool.pod_ip_waits(), pool.calls().total())];
    let (mut adds, mut dels, mut waits, mut calls) = (0, 0, pool.pod_ip_waits(), pool.calls().total());
    let mut wanting = 0u32;
    for second in 1..=minutes * 60 {
        let t = now + second * 1000;
        if t % TICK_MS == 0 {
            pool.tick(t);
        }
        while wanting > 0 && pool.assign_pod(t) {
            wanting -= 1;
            pods += 1;
        }
        // A pod event about every 4 s, drifting back to the mean.
        if rng.below(4) == 0 {
            let grow = rng.below(2 * u64::from(mean_pods) + 1) >= u64::from(pods + wanting);
            if grow {
                adds += 1;
                if pool.assign_pod(t) {
                    pods += 1;
                } else {
                    wanting += 1;
                }
            } else if pods > 0 {
                dels += 1;
                pool.release_pod(t);
                pods -= 1;
            }
        }
        if second % 30 == 0 {
            history.push(sample(&pool, t, pods, adds, dels, waits, calls));
            (adds, dels, waits, calls) = (0, 0, pool.pod_ip_waits(), pool.calls().total());
        }
    }
    history
}

#[test]
fn replaying_a_nodes_own_settings_comes_back_to_what_it_held() {
    let t3_large = Limits { eni_limit: 3, ipv4_per_eni: 12, max_pods: 35 };
    let m5_4xlarge = Limits { eni_limit: 8, ipv4_per_eni: 30, max_pods: 234 };
    let mut pd = Settings { prefix_delegation: true, warm_prefix_target: Some(1), ..Settings::default() };
    pd.apply("").unwrap();
    let cases: Vec<(&str, Settings, Limits, u32)> = vec![
        ("WET 1", Settings::default(), t3_large, 12),
        ("WET 1, big", Settings::default(), m5_4xlarge, 60),
        ("WIT 2", Settings { warm_ip_target: Some(2), ..Settings::default() }, t3_large, 12),
        ("WIT 3 MIT 10", Settings { warm_ip_target: Some(3), minimum_ip_target: Some(10), ..Settings::default() }, m5_4xlarge, 40),
        ("WPT 1", pd, Limits { max_pods: 110, ..m5_4xlarge }, 50),
    ];
    for (name, settings, limits, mean) in cases {
        for seed in [7, 1234, 99_991] {
            let history = simulated_history(&settings, limits, seed, mean, 120);
            let observed = observe(&history);
            let replayed = replay(&settings, limits, &history).expect("two samples or more");
            let error = (replayed.ips_held_mean - observed.ips_held_mean).abs() / observed.ips_held_mean;
            assert!(
                error <= 0.10,
                "{name}, seed {seed}: replay held {:.1}, the node {:.1} ({:.1} % off)",
                replayed.ips_held_mean,
                observed.ips_held_mean,
                error * 100.0
            );
            assert_eq!(replayed.seconds, 120 * 60);
            // The figures docs/advisor.md quotes: cargo test -p cni-metrics-advisor replaying -- --nocapture
            println!(
                "{name}, seed {seed}: replay {:.1}, node {:.1}, {:.1} % off",
                replayed.ips_held_mean,
                observed.ips_held_mean,
                error * 100.0
            );
        }
    }
}

#[test]
fn warm_ip_targets_hold_fewer_addresses_than_a_warm_eni_and_cost_calls() {
    let limits = Limits { eni_limit: 4, ipv4_per_eni: 15, max_pods: 58 };
    let history = simulated_history(&Settings::default(), limits, 42, 20, 180);
    let wet = replay(&Settings::default(), limits, &history).unwrap();
    let wit = replay(&Settings { warm_ip_target: Some(2), ..Settings::default() }, limits, &history).unwrap();
    assert!(wit.ips_held_mean < wet.ips_held_mean * 0.8, "WIT 2 {:.1}, WET 1 {:.1}", wit.ips_held_mean, wet.ips_held_mean);
    assert!(wit.calls.get(Ec2Api::AssignPrivateIpAddresses) > wet.calls.get(Ec2Api::AssignPrivateIpAddresses));
    assert!(wit.calls.get(Ec2Api::UnassignPrivateIpAddresses) > 0, "WIT releases addresses");
    assert_eq!(wet.calls.get(Ec2Api::UnassignPrivateIpAddresses), 0, "WET never releases single addresses");
    assert!(replay(&Settings::default(), limits, &history[..1]).is_none(), "one sample is no history");
}
