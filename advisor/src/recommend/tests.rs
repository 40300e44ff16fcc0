//! The grid and the choice: a table of cases, then the whole way from a node's history to a
//! recommendation.

use super::*;
use crate::replay::{replay, tests::simulated_history};
use crate::settings::Limits;

fn evaluated(settings: Settings, held: f64, waits: u64, mutating_calls: u64, describe_calls: u64) -> Evaluated {
    let mut calls = Calls::default();
    calls.add(Ec2Api::AssignPrivateIpAddresses, mutating_calls);
    calls.add(Ec2Api::DescribeSubnets, describe_calls);
    Evaluated { settings, ips_held_mean: held, ips_held_peak: held * 1.5, calls, pod_ip_waits: waits, seconds: 3600.0 }
}

fn wit(w: u32) -> Settings {
    Settings { warm_ip_target: Some(w), ..Settings::default() }
}

#[test]
fn the_grid_covers_each_mode_once_per_setting() {
    let sip = grid(&Settings::default());
    assert!(same_targets(&sip[0], &Settings::default()), "the current settings come first");
    // WET 0..2 (1 is the current), WIT x MIT without (unset, unset).
    assert_eq!(sip.len(), 3 + 6 * 4 - 1);
    for (i, a) in sip.iter().enumerate() {
        assert!(sip.iter().skip(i + 1).all(|b| !same_targets(a, b)), "{a} twice");
        assert!(!a.prefix_delegation);
    }
    let pd = grid(&Settings { prefix_delegation: true, warm_prefix_target: Some(1), ..Settings::default() });
    assert_eq!(pd.len(), 3 + 6 * 4 - 1);
    assert!(pd.iter().all(|s| s.prefix_delegation && s.warm_eni_target.is_none()));
}

#[test]
fn the_choice_holds_fewest_addresses_within_waits_and_budget() {
    let current = evaluated(Settings::default(), 1000.0, 4, 360, 720);
    let budget = Budget { mutating_per_second: 1.0, describe_per_second: 4.0 };
    // (what, candidates, the choice)
    let cases: Vec<(&str, Vec<Evaluated>, Option<usize>)> = vec![
        ("fewer addresses, same waits, within budget", vec![evaluated(wit(2), 400.0, 4, 1800, 720)], Some(0)),
        ("more pod IP waits than today", vec![evaluated(wit(1), 300.0, 5, 1800, 720)], None),
        ("mutating calls over the budget (1/s over an hour)", vec![evaluated(wit(1), 300.0, 0, 3601, 720)], None),
        ("describe calls over the budget", vec![evaluated(wit(1), 300.0, 0, 10, 14_401)], None),
        ("no fewer addresses", vec![evaluated(wit(8), 1000.0, 0, 10, 10)], None),
        (
            "the fewest of the eligible ones",
            vec![evaluated(wit(1), 200.0, 9, 10, 10), evaluated(wit(4), 600.0, 1, 10, 10), evaluated(wit(2), 500.0, 4, 10, 10)],
            Some(2),
        ),
        (
            "a tie on addresses goes to fewer calls",
            vec![evaluated(wit(2), 500.0, 0, 900, 10), evaluated(wit(4), 500.0, 0, 300, 10)],
            Some(1),
        ),
        ("the current settings are not a change", vec![evaluated(Settings::default(), 10.0, 0, 0, 0)], None),
    ];
    for (what, candidates, want) in cases {
        let r = recommend(&current, &candidates, budget);
        assert_eq!(r.choice, want, "{what}: {}", r.why);
        assert!(!r.why.is_empty());
    }
    // Over budget today: a candidate no worse than today is still allowed.
    let busy = evaluated(Settings::default(), 1000.0, 0, 7200, 10);
    let r = recommend(&busy, &[evaluated(wit(2), 500.0, 0, 7000, 10)], budget);
    assert_eq!(r.choice, Some(0), "{}", r.why);
}

#[test]
fn the_reason_says_what_changes_in_words() {
    let current = evaluated(Settings::default(), 1000.0, 4, 360, 720);
    let r = recommend(&current, &[evaluated(wit(2), 400.0, 4, 1800, 720)], Budget::DEFAULT);
    assert_eq!(
        r.why,
        "WARM_IP_TARGET=2 holds 60 % fewer addresses than WARM_ENI_TARGET=1 (mean 400 instead of 1000, peak 600) \
         with 4 pod IP waits (today 4); EC2 calls 0.50 mutating and 0.20 describe per second (today 0.10 and 0.20; \
         budget 1.0 and 4.0)"
    );
    let r = recommend(&current, &[], Budget::DEFAULT);
    assert!(r.why.starts_with("keep WARM_ENI_TARGET=1: no other setting"), "{}", r.why);
}

#[test]
fn from_a_nodes_history_to_a_recommendation() {
    // A t3.large-like node with WARM_ENI_TARGET=1 and churn: some IP target holds fewer addresses at no
    // more waits, and the choice is the fewest among those.
    let limits = Limits { eni_limit: 3, ipv4_per_eni: 12, max_pods: 35 };
    let current = Settings::default();
    let history = simulated_history(&current, limits, 77, 12, 120);
    let evaluate = |s: &Settings| {
        let o = replay(s, limits, &history).expect("a history");
        Evaluated {
            settings: s.clone(),
            ips_held_mean: o.ips_held_mean,
            ips_held_peak: f64::from(o.ips_held_peak),
            calls: o.calls,
            pod_ip_waits: o.pod_ip_waits,
            seconds: o.seconds as f64,
        }
    };
    let candidates: Vec<Evaluated> = grid(&current).iter().map(evaluate).collect();
    let today = &candidates[0];
    let r = recommend(today, &candidates, Budget::DEFAULT);
    let i = r.choice.expect("a warm ENI of 11 addresses is not the least a node with this churn can hold");
    let chosen = &candidates[i];
    println!("{}", r.why);
    assert!(chosen.ips_held_mean < today.ips_held_mean && chosen.pod_ip_waits <= today.pod_ip_waits, "{}", r.why);
    for c in &candidates {
        let (m, d) = c.rates();
        let within =
            m <= Budget::DEFAULT.mutating_per_second.max(today.rates().0) && d <= Budget::DEFAULT.describe_per_second.max(today.rates().1);
        if c.pod_ip_waits <= today.pod_ip_waits && within {
            assert!(c.ips_held_mean >= chosen.ips_held_mean, "{} holds fewer: {}", c.settings, r.why);
        }
    }
}
