//! The model against its oracles: upstream's two doc tables (docs/eni-and-ip-target.md and
//! docs/prefix-and-ip-target.md, with the corrections docs/advisor.md explains), the pool cases of
//! `pkg/ipamd/ipamd_test.go`, and the timers and EC2 calls of each action.

use super::*;

fn t3_small() -> Limits {
    Limits { eni_limit: 3, ipv4_per_eni: 4, max_pods: 110 }
}

fn p3dn() -> Limits {
    Limits { eni_limit: 15, ipv4_per_eni: 50, max_pods: 1000 }
}

fn settings(pd: bool, warm: Option<u32>, wit: Option<u32>, mit: Option<u32>) -> Settings {
    let mut s = Settings { prefix_delegation: pd, warm_ip_target: wit, minimum_ip_target: mit, ..Settings::default() };
    if pd {
        s.warm_prefix_target = warm;
    } else {
        s.warm_eni_target = warm;
    }
    s
}

/// Runs the pool manager for 200 s (40 ticks): past every timer of the model.
fn settle(pool: &mut Pool, now: &mut u64) {
    for _ in 0..40 {
        *now += TICK_MS;
        pool.tick(*now);
    }
}

/// The doc tables' procedure: from a fresh node, pods added one at a time, the pool settling between.
fn grow(settings: Settings, limits: Limits, pods: u32) -> (Pool, u64) {
    let mut pool = Pool::new(settings, limits);
    let mut now = 0;
    settle(&mut pool, &mut now);
    for _ in 0..pods {
        let mut tries = 0;
        while !pool.assign_pod(now) {
            now += TICK_MS;
            pool.tick(now);
            tries += 1;
            assert!(tries < 100, "a pod never got an address: {:?}", pool.layout());
        }
        settle(&mut pool, &mut now);
    }
    (pool, now)
}

#[test]
fn secondary_ip_table_of_the_docs() {
    // (instance, WET, WIT, MIT, pods) -> (ENIs, secondary IPs, unused IPs, IPs per ENI)
    type Row = (&'static str, Option<u32>, Option<u32>, Option<u32>, u32, u32, u32, u32, &'static [u32]);
    let rows: &[Row] = &[
        ("t3.small", Some(1), None, None, 0, 1, 3, 3, &[3]),
        ("t3.small", Some(1), None, None, 5, 3, 9, 4, &[3, 3, 3]),
        ("t3.small", Some(1), None, None, 9, 3, 9, 0, &[3, 3, 3]),
        ("t3.small", None, Some(1), Some(1), 0, 1, 1, 1, &[1]),
        ("t3.small", None, Some(1), Some(1), 5, 2, 6, 1, &[3, 3]),
        ("t3.small", None, Some(1), Some(1), 9, 3, 9, 0, &[3, 3, 3]),
        // The doc says "2,3": the primary fills first.
        ("t3.small", None, Some(2), Some(5), 0, 2, 5, 5, &[3, 2]),
        ("t3.small", None, Some(2), Some(5), 5, 3, 7, 2, &[3, 3, 1]),
        ("t3.small", None, Some(2), Some(5), 9, 3, 9, 0, &[3, 3, 3]),
        ("p3dn.24xlarge", Some(1), None, None, 0, 1, 49, 49, &[49]),
        ("p3dn.24xlarge", Some(1), None, None, 3, 2, 98, 95, &[49, 49]),
        ("p3dn.24xlarge", Some(1), None, None, 95, 3, 147, 52, &[49, 49, 49]),
        ("p3dn.24xlarge", None, Some(5), Some(10), 0, 1, 10, 10, &[10]),
        ("p3dn.24xlarge", None, Some(5), Some(10), 7, 1, 12, 5, &[12]),
        ("p3dn.24xlarge", None, Some(5), Some(10), 15, 1, 20, 5, &[20]),
        ("p3dn.24xlarge", None, Some(5), Some(10), 45, 2, 50, 5, &[49, 1]),
    ];
    for &(instance, wet, wit, mit, pods, enis, ips, unused, per_eni) in rows {
        let limits = if instance == "t3.small" { t3_small() } else { p3dn() };
        let (pool, now) = grow(settings(false, wet, wit, mit), limits, pods);
        let s = pool.stats(now);
        let layout: Vec<u32> = pool.layout().iter().map(|(c, _)| *c).collect();
        let row = format!("{instance} WET {wet:?} WIT {wit:?} MIT {mit:?} pods {pods}");
        assert_eq!((s.enis, s.total, s.available(), layout.as_slice()), (enis, ips, unused, per_eni), "{row}");
    }
}

#[test]
fn prefix_table_of_the_docs() {
    // (instance, WPT, WIT, MIT, pods) -> (ENIs, prefixes, unused prefixes, prefixes per ENI, unused IPs)
    type Row = (&'static str, Option<u32>, Option<u32>, Option<u32>, u32, u32, u32, u32, &'static [u32], u32);
    let rows: &[Row] = &[
        ("t3.small", Some(1), None, None, 0, 1, 1, 1, &[1], 16),
        ("t3.small", Some(1), None, None, 5, 1, 2, 1, &[2], 27),
        ("t3.small", Some(1), None, None, 16, 1, 2, 1, &[2], 16),
        ("t3.small", Some(1), None, None, 17, 1, 3, 1, &[3], 31),
        ("t3.small", Some(1), None, None, 58, 2, 5, 1, &[3, 2], 22),
        ("t3.small", None, Some(1), Some(1), 0, 1, 1, 1, &[1], 16),
        ("t3.small", None, Some(1), Some(1), 5, 1, 1, 0, &[1], 11),
        ("t3.small", None, Some(1), Some(1), 17, 1, 2, 0, &[2], 15),
        ("t3.small", None, Some(1), Some(1), 58, 2, 4, 0, &[3, 1], 6),
        // The doc's row is inconsistent (1 prefix / 16 unused vs "0,0" and 2 per ENI); the code holds
        // ceil(max(7, 20 - 0) / 16) = 2 prefixes.
        ("t3.small", None, Some(7), Some(20), 0, 1, 2, 2, &[2], 32),
        ("t3.small", None, Some(7), Some(20), 5, 1, 2, 1, &[2], 27),
        ("t3.small", None, Some(7), Some(20), 17, 1, 2, 0, &[2], 15),
        ("t3.small", None, Some(7), Some(20), 58, 2, 5, 1, &[3, 2], 22),
        // The doc's p3dn rows with 2 or 3 ENIs: a new ENI comes only when no ENI has a free prefix slot
        // (49 here), so one ENI holds them all; prefixes and unused IPs agree with the doc.
        ("p3dn.24xlarge", Some(1), None, None, 0, 1, 1, 1, &[1], 16),
        ("p3dn.24xlarge", Some(1), None, None, 3, 1, 2, 1, &[2], 29),
        ("p3dn.24xlarge", Some(1), None, None, 95, 1, 7, 1, &[7], 17),
        ("p3dn.24xlarge", None, Some(5), Some(10), 0, 1, 1, 1, &[1], 16),
        ("p3dn.24xlarge", None, Some(5), Some(10), 7, 1, 1, 0, &[1], 9),
        ("p3dn.24xlarge", None, Some(5), Some(10), 15, 1, 2, 1, &[2], 17),
        ("p3dn.24xlarge", None, Some(5), Some(10), 45, 1, 4, 1, &[4], 19),
    ];
    for &(instance, wpt, wit, mit, pods, enis, prefixes, unused_prefixes, per_eni, unused_ips) in rows {
        let limits = if instance == "t3.small" { t3_small() } else { p3dn() };
        let (pool, now) = grow(settings(true, wpt, wit, mit), limits, pods);
        let s = pool.stats(now);
        let layout: Vec<u32> = pool.layout().iter().map(|(c, _)| *c).collect();
        let row = format!("{instance} WPT {wpt:?} WIT {wit:?} MIT {mit:?} pods {pods}");
        assert_eq!(
            (s.enis, s.total_prefixes, s.free_prefixes, layout.as_slice(), s.available()),
            (enis, prefixes, unused_prefixes, per_eni, unused_ips),
            "{row}"
        );
    }
}

/// A pool as `ipamd_test.go` builds its datastore: one ENI with `cidrs` addresses or prefixes, `assigned`
/// of them (addresses) in use; `max_per_eni` addresses or prefixes per ENI.
fn datastore(s: Settings, max_per_eni: u32, max_eni: u32, max_pods: u32, cidrs: u32, assigned: u32) -> (Pool, Stats) {
    let limits = Limits { eni_limit: max_eni, ipv4_per_eni: max_per_eni + 1, max_pods };
    let pool = Pool::with_layout(s, limits, &[(cidrs, assigned)], 0);
    let stats = pool.stats(0);
    (pool, stats)
}

#[test]
fn pool_too_low_cases_of_ipamd_test() {
    // TestIPAMContext_nodeIPPoolTooLow: (maxIPsPerENI, maxENI, WET, WIT, IPs held, IPs used, maxPods) -> low
    let cases = [
        (14, 4, 1, 0, 0, 0, 500, true),
        (14, 4, 0, 0, 0, 0, 500, true),
        (14, 4, 0, 3, 0, 0, 500, true),
        (3, 4, 1, 1, 3, 0, 500, false),
        (3, 4, 1, 0, 3, 1, 500, true),
        (3, 4, 0, 0, 3, 1, 500, false),
        (3, 4, 1, 0, 3, 3, 500, true),
        (3, 4, 0, 0, 3, 3, 500, true),
        (3, 4, 0, 5, 3, 3, 3, false),
    ];
    for (per_eni, max_eni, wet, wit, held, used, max_pods, low) in cases {
        let (pool, s) = datastore(settings(false, Some(wet), Some(wit), None), per_eni, max_eni, max_pods, held, used);
        assert_eq!(pool.is_low(&s), low, "{per_eni} {max_eni} WET {wet} WIT {wit} {used}/{held} maxPods {max_pods}");
    }
    // TestIPAMContext_nodePrefixPoolTooLow: (WPT, prefixes held, pods, maxPods) -> low; 16 prefixes per ENI.
    let cases = [
        (1, 0, 0, 500, true),
        (0, 0, 0, 500, true),
        (1, 1, 0, 500, false),
        (1, 1, 1, 500, true),
        (0, 1, 1, 500, false),
        (1, 1, 3, 500, true),
        (0, 1, 3, 500, false),
        (1, 1, 3, 4, false),
    ];
    for (wpt, prefixes, pods, max_pods, low) in cases {
        let (pool, s) = datastore(settings(true, Some(wpt), None, None), 16, 4, max_pods, prefixes, pods);
        assert_eq!(pool.is_low(&s), low, "WPT {wpt} prefixes {prefixes} pods {pods} maxPods {max_pods}");
    }
}

#[test]
fn warm_ip_target_state_cases_of_ipamd_test() {
    // TestGetWarmIPTargetState, WIT 5: IPs held -> (short, over)
    for (held, short, over) in [(0, 5, 0), (2, 3, 0), (5, 0, 0)] {
        let (pool, s) = datastore(settings(false, Some(1), Some(5), None), 14, 4, 500, held, 0);
        assert_eq!(pool.targets(&s), Some(Targets { short, over }), "{held} IPs");
    }
    // Its prefix variant: prefixes held -> (short, over) in prefixes.
    for (held, short, over) in [(0, 1, 0), (2, 0, 1), (1, 0, 0)] {
        let limits = Limits { eni_limit: 4, ipv4_per_eni: 17, max_pods: 500 };
        let s = settings(true, None, Some(5), None);
        let pool = Pool::with_layout(s, limits, &[(held, 0)], 0);
        assert_eq!(pool.targets(&pool.stats(0)), Some(Targets { short, over }), "{held} prefixes");
    }
}

#[test]
fn each_action_counts_the_ec2_calls_ipamd_makes() {
    // A fresh t3.small with WET 1: one Assign fills the primary; the first pod asks for a new ENI.
    let mut pool = Pool::new(settings(false, Some(1), None, None), t3_small());
    pool.tick(TICK_MS);
    assert_eq!(pool.calls().total(), 1);
    assert_eq!(pool.calls().get(Ec2Api::AssignPrivateIpAddresses), 1);
    assert!(pool.assign_pod(TICK_MS));
    pool.tick(2 * TICK_MS);
    let want = [
        (Ec2Api::AssignPrivateIpAddresses, 1),
        (Ec2Api::DescribeSubnets, 2),
        (Ec2Api::CreateNetworkInterface, 1),
        (Ec2Api::DescribeInstances, 1),
        (Ec2Api::AttachNetworkInterface, 1),
        (Ec2Api::ModifyNetworkInterfaceAttribute, 1),
    ];
    assert_eq!(pool.calls().nonzero().collect::<Vec<_>>(), want);

    // Without subnet discovery, one DescribeSubnets per new ENI.
    let mut s = settings(false, Some(1), None, None);
    s.subnet_discovery = false;
    let mut pool = Pool::with_layout(s, t3_small(), &[(3, 1)], 0);
    pool.tick(TICK_MS);
    assert_eq!(pool.calls().get(Ec2Api::DescribeSubnets), 1);

    // Freeing an ENI: describe, detach, delete; releasing addresses: one Unassign per ENI touched.
    let mut pool = Pool::with_layout(settings(false, None, Some(1), None), t3_small(), &[(3, 3), (3, 0), (2, 0)], 0);
    pool.tick(MIN_ENI_LIFE_MS);
    // 5 available, WIT 1: 4 over, taken from the last ENI (2) then the middle one (2): two ENIs touched.
    assert_eq!(pool.calls().get(Ec2Api::UnassignPrivateIpAddresses), 2, "{:?}", pool.calls());
    assert_eq!(pool.layout(), vec![(3, 3), (1, 0)], "the emptied last ENI is freed in the same tick");
    assert_eq!(pool.calls().get(Ec2Api::DeleteNetworkInterface), 1, "{:?}", pool.calls());
    assert_eq!(pool.calls().get(Ec2Api::DetachNetworkInterface), 1);
    assert_eq!(pool.calls().get(Ec2Api::DescribeNetworkInterfaces), 1);
}

#[test]
fn a_freed_address_cools_before_a_pod_can_have_it() {
    // One address, taken and given back: the next pod waits out IP_COOLDOWN_PERIOD (30 s).
    let mut pool = Pool::with_layout(settings(false, None, None, Some(1)), Limits { max_pods: 1, ..t3_small() }, &[(1, 1)], 0);
    assert!(pool.release_pod(1_000));
    assert_eq!(pool.stats(1_000).cooldown, 1);
    assert!(!pool.assign_pod(31_000), "the address is still cooling at 30 s");
    assert_eq!(pool.pod_ip_waits(), 1);
    assert!(pool.assign_pod(31_001));
    assert_eq!(pool.stats(31_001).cooldown, 0);
}

#[test]
fn decreases_are_30_s_apart_and_enis_live_a_minute() {
    // WIT 1 on a t3.small holding 3 + 3 free addresses: one decrease, then none for 30 s.
    let mut pool = Pool::with_layout(settings(false, None, Some(1), None), t3_small(), &[(3, 0), (3, 0)], 0);
    pool.tick(10_000);
    let after_first = pool.stats(10_000).total;
    assert_eq!(after_first, 1, "WIT 1 keeps one free address: {:?}", pool.layout());
    // The second ENI went empty at once, but it is younger than a minute: kept.
    assert_eq!(pool.stats(10_000).enis, 2);
    pool.tick(59_999);
    assert_eq!(pool.stats(59_999).enis, 2);
    pool.tick(60_000);
    assert_eq!(pool.stats(60_000).enis, 1, "a minute old and empty: freed");
    // The decrease gap: a second over-target state within 30 s of the first decrease waits.
    let mut pool = Pool::with_layout(settings(false, None, Some(1), None), t3_small(), &[(3, 0)], 0);
    pool.tick(0);
    assert_eq!(pool.stats(0).total, 1, "first decrease");
    assert!(pool.assign_pod(1_000));
    pool.tick(5_000);
    assert_eq!(pool.stats(5_000).total, 2, "WIT 1 grows back by one");
    assert!(pool.release_pod(6_000));
    pool.tick(10_000);
    pool.tick(29_999);
    assert_eq!(pool.stats(29_999).total, 2, "over target, but within 30 s of the last decrease");
    pool.tick(30_000);
    assert_eq!(pool.stats(30_000).total, 1, "30 s after the last decrease");
}

#[test]
fn warm_eni_mode_never_releases_single_addresses() {
    // WET 1 on a t3.small: three ENIs filled, pods gone; whole ENIs go, single IPs never do.
    let mut pool = Pool::with_layout(settings(false, Some(1), None, None), t3_small(), &[(3, 0), (3, 0), (2, 0)], 0);
    let mut now = 0;
    settle(&mut pool, &mut now);
    assert_eq!(pool.calls().get(Ec2Api::UnassignPrivateIpAddresses), 0);
    // available >= (WET + 1) * 3 frees ENIs down to the primary and one more at most.
    assert_eq!(pool.layout(), vec![(3, 0)], "{:?}", pool.layout());
}

#[test]
fn minimum_ip_target_alone_never_grows_past_it() {
    // MIT 5, WIT unset: the pool holds 5 addresses and pods past them wait (upstream's README).
    let (mut pool, mut now) = grow(settings(false, None, None, Some(5)), t3_small(), 5);
    assert_eq!(pool.stats(now).total, 5);
    assert!(!pool.assign_pod(now));
    settle(&mut pool, &mut now);
    assert!(!pool.assign_pod(now), "MIT alone grew the pool: {:?}", pool.layout());
}

#[test]
fn max_eni_caps_the_enis() {
    let mut s = settings(false, Some(1), None, None);
    s.max_eni = Some(2);
    let (pool, now) = grow(s, t3_small(), 5);
    assert_eq!(pool.stats(now).enis, 2);
}
