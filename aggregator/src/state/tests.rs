//! Table tests of the aggregation rules.

use super::*;
use cni_metrics_proto::catalog;
use cni_metrics_proto::v1::{FamilyType, Label, MetricKind, SeriesDef};

fn hello(node: &str, run_id: u64) -> Hello {
    Hello { node_name: node.into(), run_id, interval_ms: 1000, ..Hello::default() }
}

fn def(id: u32, name: &str, kind: MetricKind, labels: &[(&str, &str)]) -> SeriesDef {
    let family = if catalog::family(name).is_some() {
        name
    } else {
        ["_sum", "_count", "_bucket"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
    };
    SeriesDef {
        id,
        family: family.into(),
        name: name.into(),
        kind: kind as i32,
        // As an agent sends it: the catalogue's type for a known family.
        family_type: catalog::family(family).map_or(FamilyType::Untyped, |f| f.family_type) as i32,
        labels: labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
        committed_total: 0.0,
    }
}

fn report(seq: u64, snapshot: bool, defs: Vec<SeriesDef>, upd: &[(u32, f64)], removed: &[u32]) -> Report {
    Report {
        seq,
        snapshot,
        defs,
        ids: upd.iter().map(|u| u.0).collect(),
        values: upd.iter().map(|u| u.1).collect(),
        removed: removed.to_vec(),
        ..Report::default()
    }
}

const ASSIGNED: &str = "awscni_assigned_ip_addresses";
const ADD: &str = "awscni_add_ip_req_count";

/// Register `node` with one gauge (id 1) and one counter (id 2) at the given values.
fn join(st: &mut ClusterState, node: &str, run: u64, gauge: f64, total: f64, now: Instant) -> u64 {
    let session = st.hello(&hello(node, run), now).expect("hello").session;
    let defs = vec![def(1, ASSIGNED, MetricKind::Gauge, &[]), def(2, ADD, MetricKind::Counter, &[])];
    st.report(node, session, &report(1, true, defs, &[(1, gauge), (2, total)], &[]), now).expect("snapshot");
    session
}

#[test]
fn gauges_sum_over_live_nodes_and_leave_on_goodbye_or_ttl() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s1 = join(&mut st, "n1", 1, 10.0, 0.0, t0);
    join(&mut st, "n2", 2, 20.0, 0.0, t0);
    join(&mut st, "n3", 3, 30.0, 0.0, t0);
    assert_eq!(st.value(ASSIGNED, &[]), Some(60.0));
    st.report("n1", s1, &report(2, false, vec![], &[(1, 15.0)], &[]), t0).expect("update");
    assert_eq!(st.value(ASSIGNED, &[]), Some(65.0));
    assert!(st.goodbye("n1", s1));
    assert_eq!(st.value(ASSIGNED, &[]), Some(50.0));
    // n2 keeps reporting, n3 goes silent past its TTL (3 × 1 s).
    let s2 = st.node("n2").map(|n| n.session()).unwrap_or_default();
    st.report("n2", s2, &report(2, false, vec![], &[], &[]), t0 + Duration::from_secs(3)).expect("heartbeat");
    let expired = st.expire(t0 + Duration::from_millis(3500));
    assert_eq!(expired.iter().map(|n| &**n).collect::<Vec<_>>(), vec!["n3"]);
    assert_eq!(st.value(ASSIGNED, &[]), Some(20.0));
    assert_eq!(st.stats().expired, 1);
    assert_eq!(st.stats().goodbyes, 1);
}

#[test]
fn counters_are_exact_sums_of_per_node_increments() {
    // Upstream issue #1073/#3844: three nodes at 20, 50, 30 then +10 each must publish the true 30.
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let mut sessions = Vec::new();
    for (i, base) in [20.0, 50.0, 30.0].into_iter().enumerate() {
        // Baselines: an agent that found an old ipamd sends running total 0.
        let _ = base;
        sessions.push(join(&mut st, &format!("n{i}"), i as u64 + 1, 1.0, 0.0, t0));
    }
    for (i, s) in sessions.iter().enumerate() {
        st.report(&format!("n{i}"), *s, &report(2, false, vec![], &[(2, 10.0)], &[]), t0).expect("inc");
    }
    assert_eq!(st.value(ADD, &[]), Some(0.0), "in the open window only");
    let w = st.take_window(1);
    assert_eq!(st.value(ADD, &[]), Some(30.0));
    assert_eq!(w.window.datums.iter().find(|d| d.metric_name == "addReqCount").map(|d| d.value), Some(30.0));
    // The window is drained; the monotonic total is not.
    let w = st.take_window(2);
    assert_eq!(w.window.datums.iter().find(|d| d.metric_name == "addReqCount").map(|d| d.value), Some(0.0));
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(30.0));
}

#[test]
fn replays_and_resent_snapshots_never_count_twice() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = join(&mut st, "n1", 7, 1.0, 5.0, t0);
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(5.0));
    st.report("n1", s, &report(2, false, vec![], &[(2, 8.0)], &[]), t0).expect("inc");
    // The same report again (lost ack, resend): ignored.
    let a = st.report("n1", s, &report(2, false, vec![], &[(2, 8.0)], &[]), t0).expect("dup");
    assert_eq!(a, Applied { ack: 2, fresh: false, recovered: None, committed: 0 });
    // Reconnect of the same run: the snapshot repeats the total 8 and adds 1.
    let s2 = st.hello(&hello("n1", 7), t0).expect("hello").session;
    let defs = vec![def(1, ASSIGNED, MetricKind::Gauge, &[]), def(2, ADD, MetricKind::Counter, &[])];
    st.report("n1", s2, &report(3, true, defs, &[(1, 1.0), (2, 9.0)], &[]), t0).expect("snapshot");
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(9.0));
    assert_eq!(st.value(ASSIGNED, &[]), Some(1.0), "gauge not doubled by the re-definition");
    // The old stream is stale now.
    assert_eq!(st.report("n1", s, &report(4, false, vec![], &[(2, 100.0)], &[]), t0), Err(IngestError::StaleSession(s)));
    // A new agent run starts a new baseline: its totals are increments since its own start. (Its old
    // stream has closed: a restarted agent's connection dies with it.)
    st.disconnected("n1", s2);
    join(&mut st, "n1", 8, 2.0, 4.0, t0);
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(13.0));
    assert_eq!(st.value(ASSIGNED, &[]), Some(2.0));
    assert_eq!(st.stats().agent_restarts, 1);
}

#[test]
fn snapshot_removes_unlisted_series_and_counter_totals_stay() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = join(&mut st, "n1", 1, 4.0, 6.0, t0);
    let s2 = st.hello(&hello("n1", 1), t0).expect("hello").session;
    let _ = s;
    st.report("n1", s2, &report(2, true, vec![def(2, ADD, MetricKind::Counter, &[])], &[(2, 6.0)], &[]), t0).expect("snap");
    assert_eq!(st.value(ASSIGNED, &[]), None);
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(6.0));
    assert_eq!(st.node("n1").map(|n| n.series_count()), Some(1));
}

#[test]
fn protocol_errors_table() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    assert_eq!(st.hello(&hello("", 1), t0), Err(IngestError::BadNodeName));
    assert_eq!(st.hello(&Hello { interval_ms: 0, ..hello("x", 1) }, t0), Err(IngestError::BadInterval));
    // Refused hellos are counted too.
    assert_eq!((st.stats().rejected.get(Refusal::BadNodeName), st.stats().rejected.get(Refusal::BadInterval)), (1, 1));
    let s = st.hello(&hello("n1", 1), t0).expect("hello").session;
    let cases: Vec<(Report, IngestError)> = vec![
        (report(1, false, vec![], &[], &[]), IngestError::SnapshotExpected),
        (Report { ids: vec![1], ..report(1, true, vec![], &[], &[]) }, IngestError::LengthMismatch { ids: 1, values: 0 }),
        (report(1, true, vec![def(1, "x", MetricKind::Unspecified, &[])], &[], &[]), IngestError::BadDef { id: 1, why: "unknown kind" }),
        (
            report(
                1,
                true,
                vec![def(1, "awscni_a", MetricKind::Gauge, &[])]
                    .into_iter()
                    .map(|mut d| {
                        d.family = "other".into();
                        d
                    })
                    .collect(),
                &[],
                &[],
            ),
            IngestError::BadDef { id: 1, why: "the family is not an awscni_ metric name" },
        ),
    ];
    for (r, want) in cases {
        assert_eq!(st.report("n1", s, &r, t0), Err(want.clone()), "{want}");
    }
    assert_eq!(st.report("ghost", 99, &report(1, true, vec![], &[], &[]), t0), Err(IngestError::StaleSession(99)));
    st.report("n1", s, &report(1, true, vec![def(1, ASSIGNED, MetricKind::Gauge, &[])], &[(1, 1.0)], &[]), t0).expect("ok");
    let redefine = report(2, false, vec![def(1, ADD, MetricKind::Gauge, &[])], &[], &[]);
    assert_eq!(st.report("n1", s, &redefine, t0), Err(IngestError::Redefined(1)));
    assert_eq!(st.stats().rejected.total(), 8, "6 reports and 2 hellos");
    // Unknown ids and non-finite values are counted, not applied.
    st.report("n1", s, &report(3, false, vec![], &[(42, 1.0), (1, f64::NAN)], &[]), t0).expect("ok");
    assert_eq!(st.stats().series_rejected.get(SeriesRefusal::UnknownId), 1);
    assert_eq!(st.stats().nonfinite_values, 1);
    assert_eq!(st.value(ASSIGNED, &[]), None, "NaN withdraws the node's gauge");
}

#[test]
fn label_folds_kinds_and_latency() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let per_eni = "awscni_assigned_ip_per_eni";
    let lat = "awscni_aws_api_latency_ms";
    for (node, run, q, enis) in [("a", 1, 120.0, ["eni-1", "eni-2"]), ("b", 2, 300.0, ["eni-3", "eni-4"])] {
        let s = st.hello(&hello(node, run), t0).expect("hello").session;
        let mut q99 = def(3, lat, MetricKind::Gauge, &[("api", "X"), ("quantile", "0.99")]);
        q99.family_type = FamilyType::Summary as i32;
        let defs = vec![
            def(1, per_eni, MetricKind::Gauge, &[("eni", enis[0])]),
            def(2, per_eni, MetricKind::Gauge, &[("eni", enis[1])]),
            q99,
            def(4, "awscni_aws_api_latency_ms_sum", MetricKind::Counter, &[("api", "X")]),
            def(5, "awscni_aws_api_latency_ms_count", MetricKind::Counter, &[("api", "X")]),
        ];
        st.report(node, s, &report(1, true, defs, &[(1, 3.0), (2, 4.0), (3, q), (4, 0.0), (5, 0.0)], &[]), t0).expect("snap");
    }
    assert_eq!(st.value(per_eni, &[]), Some(14.0), "eni label summed away across the cluster");
    assert_eq!(st.value(lat, &[("api", "X"), ("quantile", "0.99")]), Some(300.0), "quantiles fold by max");
    let w = st.take_window(0);
    let get = |n: &str| w.window.datums.iter().find(|d| d.metric_name == n).map(|d| (d.value, d.unit.as_str()));
    assert_eq!(get("awsAPILatency"), Some((300.0, "Milliseconds")));
    assert_eq!(get("assignedIPsPerENI"), Some((14.0, "Count")));
    // Without quantiles: the mean of the window's increments.
    st.goodbye("a", st.node("a").map(|n| n.session()).unwrap_or_default());
    let sb = st.node("b").map(|n| n.session()).unwrap_or_default();
    st.report("b", sb, &report(2, false, vec![], &[(4, 900.0), (5, 6.0)], &[3]), t0).expect("upd");
    let w = st.take_window(0);
    assert_eq!(w.window.datums.iter().find(|d| d.metric_name == "awsAPILatency").map(|d| d.value), Some(150.0));
    // A kind conflict on one cluster series is refused, not merged.
    let s = st.hello(&hello("c", 3), t0).expect("hello").session;
    st.report("c", s, &report(1, true, vec![def(1, ASSIGNED, MetricKind::Counter, &[])], &[(1, 1.0)], &[]), t0).expect("snap");
    st.report("b", sb, &report(3, false, vec![def(9, ASSIGNED, MetricKind::Gauge, &[])], &[(9, 1.0)], &[]), t0).expect("upd");
    assert_eq!(st.stats().series_rejected.get(SeriesRefusal::KindConflict), 1);
}

#[test]
fn prometheus_exposition() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig { cluster_id: "prod \"eu\"".into(), ..StateConfig::default() });
    let s = st.hello(&hello("n1", 1), t0).expect("hello").session;
    let defs = vec![
        def(1, ASSIGNED, MetricKind::Gauge, &[]),
        def(2, "awscni_del_ip_req_count", MetricKind::Counter, &[("reason", "Pod\\Deleted\n")]),
    ];
    st.report("n1", s, &report(1, true, defs, &[(1, 7.0), (2, 3.0)], &[]), t0).expect("snap");
    let mut out = String::new();
    st.take_window(0);
    st.render_prometheus(&mut out, t0);
    for want in [
        "# HELP awscni_assigned_ip_addresses The number of IP addresses assigned to pods\n# TYPE awscni_assigned_ip_addresses gauge\n",
        "awscni_assigned_ip_addresses{cluster_id=\"prod \\\"eu\\\"\"} 7\n",
        "# TYPE awscni_del_ip_req_count counter\n",
        "awscni_del_ip_req_count{cluster_id=\"prod \\\"eu\\\"\",reason=\"Pod\\\\Deleted\\n\"} 3\n",
        "cni_metrics_nodes_reporting{cluster_id=\"prod \\\"eu\\\"\"} 1\n",
        "cni_metrics_reports_received_total{cluster_id=\"prod \\\"eu\\\"\"} 1\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn a_run_first_seen_mid_way_counts_from_its_committed_totals() {
    // An aggregator that restarted meets an agent whose run already sent reports to the previous one,
    // which published (committed) a total of 480 of the 500.
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = st.hello(&hello("n1", 5), t0).expect("hello").session;
    let mut counter = def(2, ADD, MetricKind::Counter, &[]);
    counter.committed_total = 480.0;
    let defs = vec![def(1, ASSIGNED, MetricKind::Gauge, &[]), counter];
    let a = st.report("n1", s, &report(40, true, defs, &[(1, 3.0), (2, 500.0)], &[]), t0).expect("snapshot");
    assert_eq!(a.recovered, Some(20.0));
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(20.0), "only the 20 never published");
    assert_eq!(st.value(ASSIGNED, &[]), Some(3.0), "gauges are absolute");
    st.report("n1", s, &report(41, false, vec![], &[(2, 507.0)], &[]), t0).expect("inc");
    st.take_window(0);
    assert_eq!(st.value(ADD, &[]), Some(27.0));
    assert_eq!((st.stats().runs_recovered, st.stats().recovered_increments), (1, 20.0));
}

#[test]
fn counters_reach_prometheus_totals_when_their_window_closes_and_windows_carry_commit_marks() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = join(&mut st, "n1", 1, 1.0, 5.0, t0);
    assert_eq!(st.value(ADD, &[]), Some(0.0), "open window: not yet in the total");
    let w = st.take_window(1);
    assert_eq!(st.value(ADD, &[]), Some(5.0));
    assert_eq!(w.commits, vec![CommitMark { node: Arc::from("n1"), run_id: 1, seq: 1 }]);
    assert!(st.take_window(2).commits.is_empty(), "nothing new: no mark");
    st.report("n1", s, &report(2, false, vec![], &[(2, 9.0)], &[]), t0).expect("inc");
    let w = st.take_window(3);
    assert_eq!(w.commits.len(), 1);
    assert_eq!(st.committed_seq("n1", s), Some(0));
    let gen = st.commit_generation();
    assert_eq!(st.commit(&w.commits), 1);
    assert_eq!(st.committed_seq("n1", s), Some(2));
    assert!(st.commit_generation() > gen);
    assert_eq!(st.commit(&w.commits), 0, "a repeated commit changes nothing");
    // A mark of another run of the node (it restarted meanwhile) is ignored.
    assert_eq!(st.commit(&[CommitMark { node: Arc::from("n1"), run_id: 99, seq: 50 }]), 0);
}

#[test]
fn the_same_run_coming_back_after_expiry_continues_from_its_totals() {
    // A partition longer than the TTL: the node expires, then its agent (same run) reconnects.
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = join(&mut st, "n1", 7, 4.0, 10.0, t0);
    st.report("n1", s, &report(2, false, vec![], &[(2, 12.0)], &[]), t0).expect("inc");
    let w = st.take_window(1);
    assert_eq!(st.expire(t0 + Duration::from_secs(600)).len(), 1);
    assert_eq!(st.value(ASSIGNED, &[]), None, "its gauges left");
    assert_eq!(st.departed_count(), 1);
    // The window published while it was away commits into the departed record.
    assert_eq!(st.commit(&w.commits), 1);
    let back = st.hello(&hello("n1", 7), t0 + Duration::from_secs(601)).expect("hello");
    assert!(back.continued);
    assert_eq!(back.committed_seq, 2);
    assert!(back.resume.is_none());
    // Its snapshot (committed total 12 as the agent knows it, or a stale 10: either way) continues from
    // the kept total 12.
    let mut counter = def(2, ADD, MetricKind::Counter, &[]);
    counter.committed_total = 10.0;
    let defs = vec![def(1, ASSIGNED, MetricKind::Gauge, &[]), counter];
    st.report("n1", back.session, &report(3, true, defs, &[(1, 4.0), (2, 20.0)], &[]), t0).expect("snapshot");
    st.take_window(2);
    assert_eq!(st.value(ADD, &[]), Some(20.0), "10 + 2 + 8, none twice");
    assert_eq!(st.stats().runs_continued, 1);
    assert_eq!(st.departed_count(), 0);
}

#[test]
fn a_new_run_of_a_node_gets_the_previous_runs_raw_values_as_resume_point() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = st.hello(&hello("n1", 1), t0).expect("hello").session;
    let defs = vec![
        def(1, ASSIGNED, MetricKind::Gauge, &[]),
        def(2, ADD, MetricKind::Counter, &[]),
        def(3, "awscni_ipamd_error_count", MetricKind::Counter, &[("fn", "x")]),
    ];
    let mut r = report(1, true, defs, &[(1, 2.0), (2, 0.0), (3, 0.0)], &[]);
    r.counter_raws = vec![100.0, 7.0];
    r.ipamd_start_time_seconds = 1_700_000_000.0;
    st.report("n1", s, &r, t0).expect("snapshot");
    let mut r = report(2, false, vec![], &[(2, 5.0)], &[]);
    r.counter_raws = vec![105.0];
    st.report("n1", s, &r, t0).expect("inc");
    // Raw values must match the counters they describe.
    let mut bad = report(3, false, vec![], &[(1, 3.0), (2, 6.0)], &[]);
    bad.counter_raws = vec![1.0, 2.0];
    assert!(matches!(st.report("n1", s, &bad, t0), Err(IngestError::RawMismatch { counters: 1, raws: 2 })));
    // The agent restarts (goodbye, new run).
    assert!(st.goodbye("n1", s));
    let w = st.hello(&hello("n1", 2), t0).expect("hello");
    assert!(!w.continued);
    let resume = w.resume.expect("a resume point");
    assert_eq!(resume.ipamd_start_time, 1_700_000_000.0);
    let mut points: Vec<String> = resume.points.iter().map(|(k, raw)| format!("{} {:?} {raw}", k.name, k.labels)).collect();
    points.sort();
    assert_eq!(points, vec![format!("{ADD} [] 105"), "awscni_ipamd_error_count [(\"fn\", \"x\")] 7".to_owned()]);
    // Until the new run reports, the record stays (a run that dies at once must not lose it).
    st.expire(t0 + Duration::from_secs(600));
    assert!(st.hello(&hello("n1", 3), t0 + Duration::from_secs(601)).expect("hello").resume.is_some());
    assert_eq!(st.stats().runs_resumed, 2);
}

#[test]
fn baseline_flags_are_counted_once_per_run() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = st.hello(&hello("n1", 1), t0).expect("hello").session;
    let mut r = report(1, true, vec![def(2, ADD, MetricKind::Counter, &[])], &[(2, 4.0)], &[]);
    r.baseline_unknown = true;
    r.baseline_in_doubt = true;
    st.report("n1", s, &r, t0).expect("snapshot");
    let mut r = report(2, false, vec![], &[(2, 5.0)], &[]);
    r.baseline_in_doubt = true;
    st.report("n1", s, &r, t0).expect("delta");
    assert_eq!((st.stats().baseline_unknown_runs, st.stats().baseline_in_doubt_runs), (1, 1));
}

#[test]
fn departed_records_are_bounded() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig { max_departed: 2, ..StateConfig::default() });
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let s = join(&mut st, name, 1, 1.0, 0.0, t0 + Duration::from_secs(i as u64));
        st.goodbye(name, s);
    }
    assert_eq!((st.departed_count(), st.stats().departed_evicted), (2, 1));
    assert!(!st.hello(&hello("a", 2), t0).expect("hello").continued && st.stats().runs_resumed == 0, "the oldest went");
}

#[test]
fn cluster_id_and_region_from_agents_only_when_they_agree() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let mut h = hello("a", 1);
    h.cluster_name = "prod".into();
    h.region = "eu-west-1".into();
    st.hello(&h, t0).expect("hello");
    st.hello(&hello("b", 2), t0).expect("hello"); // knows nothing: does not disagree
    let w = st.take_window(0);
    assert_eq!((w.window.cluster_id.as_str(), w.window.region_hint.as_deref()), ("prod", Some("eu-west-1")));
    let mut h = hello("c", 3);
    h.cluster_name = "staging".into();
    st.hello(&h, t0).expect("hello");
    assert_eq!(st.take_window(0).window.cluster_id, "", "two clusters claimed: no id is invented");
    let mut st = ClusterState::new(StateConfig { cluster_id: "configured".into(), ..StateConfig::default() });
    st.hello(&h, t0).expect("hello");
    assert_eq!(st.take_window(0).window.cluster_id, "configured", "the flag wins");
}

#[test]
fn derived_capacity_per_node_then_summed() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    const TOTAL: &str = "awscni_total_ip_addresses";
    const MAX: &str = "awscni_ip_max";
    // (node, assigned, total, max): a healthy node, a nearly full one, one with assigned > total.
    for (i, (node, a, t, m)) in [("a", 10.0, 18.0, 58.0), ("b", 55.0, 58.0, 58.0), ("c", 20.0, 12.0, 58.0)].into_iter().enumerate() {
        let s = st.hello(&hello(node, i as u64 + 1), t0).expect("hello").session;
        let defs =
            vec![def(1, ASSIGNED, MetricKind::Gauge, &[]), def(2, TOTAL, MetricKind::Gauge, &[]), def(3, MAX, MetricKind::Gauge, &[])];
        st.report(node, s, &report(1, true, defs, &[(1, a), (2, t), (3, m)], &[]), t0).expect("snapshot");
    }
    let c = *st.capacity();
    // available: 8 + 3 + 0 (clamped); headroom: 48 + 3 + 38.
    assert_eq!((c.available, c.headroom, c.low_nodes, c.anomalous_nodes), (11.0, 89.0, 1, 1));
    assert_eq!(c.utilization(), (Some(85.0 / 88.0), Some(85.0 / 174.0)));
    assert_eq!(st.stats().capacity_anomalies, 1);
    let w = st.take_window(0);
    let get = |n: &str| w.window.datums.iter().find(|d| d.metric_name == n).map(|d| (d.value, d.unit.as_str()));
    assert_eq!(get("availableIPAddresses"), Some((11.0, "Count")));
    assert_eq!(get("ipHeadroom"), Some((89.0, "Count")));
    assert_eq!(get("nodesLowOnIPs"), Some((1.0, "Count")));
    assert_eq!(get("ipUtilization").map(|v| v.1), Some("Percent"));
    // Node b gets more IPs; node c leaves: sums follow without a full recomputation.
    let sb = st.node("b").map(|n| n.session()).unwrap_or_default();
    st.report("b", sb, &report(2, false, vec![], &[(3, 110.0)], &[]), t0).expect("update");
    st.goodbye("c", st.node("c").map(|n| n.session()).unwrap_or_default());
    let c = *st.capacity();
    assert_eq!((c.available, c.headroom, c.low_nodes, c.anomalous_nodes), (11.0, 103.0, 0, 0));
    let mut out = String::new();
    st.render_prometheus(&mut out, t0);
    for want in [
        "cni_metrics_available_ip_addresses{cluster_id=\"\"} 11\n",
        "cni_metrics_ip_headroom{cluster_id=\"\"} 103\n",
        "cni_metrics_ip_utilization_ratio{cluster_id=\"\",basis=\"total\"}",
        "cni_metrics_nodes_low_on_ips{cluster_id=\"\"} 0\n",
        "cni_metrics_nodes_stale{cluster_id=\"\"} 0\n",
        "cni_metrics_capacity_anomalies_total{cluster_id=\"\"} 1\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // Three seconds without a report (interval 1 s): both nodes are stale, still within their TTL.
    let mut out = String::new();
    st.render_prometheus(&mut out, t0 + Duration::from_secs(3));
    assert!(out.contains("cni_metrics_nodes_stale{cluster_id=\"\"} 2\n"), "{out}");
}

#[test]
fn ipv6_nodes_stay_in_the_sums_and_out_of_the_ipv4_capacity() {
    use cni_metrics_proto::v1::SubnetUsage;
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let defs = || {
        vec![
            def(1, ASSIGNED, MetricKind::Gauge, &[]),
            def(2, "awscni_total_ip_addresses", MetricKind::Gauge, &[]),
            def(3, "awscni_ip_max", MetricKind::Gauge, &[]),
        ]
    };
    let usage = |ipv6_prefixes: u32| SubnetUsage { subnet_id: "subnet-1".into(), enis: 1, ipv6_prefixes, ..SubnetUsage::default() };
    // An IPv4 node, an IPv6 node full to its max pods (ipamd: one /80 = 2^48 addresses, max keeps IPv4
    // limits), and a small node whose introspection says IPv6.
    let slash80 = 2f64.powi(48);
    let mut sessions = Vec::new();
    for (i, (node, a, t, m, v6)) in
        [("v4", 10.0, 18.0, 58.0, 0), ("v6-full", 110.0, slash80, 110.0, 1), ("v6-small", 3.0, 4.0, 4.0, 2)].into_iter().enumerate()
    {
        let s = st.hello(&hello(node, i as u64 + 1), t0).expect("hello").session;
        let mut r = report(1, true, defs(), &[(1, a), (2, t), (3, m)], &[]);
        r.subnets_changed = true;
        r.subnets = vec![usage(v6)];
        st.report(node, s, &r, t0).expect("snapshot");
        sessions.push(s);
    }
    let c = *st.capacity();
    assert_eq!((c.available, c.headroom, c.low_nodes, c.ipv6_nodes, c.with_headroom), (8.0, 48.0, 0, 2, 1));
    assert_eq!(c.utilization(), (Some(10.0 / 18.0), Some(10.0 / 58.0)), "IPv4 ratios over the IPv4 node only");
    assert_eq!(st.value(ASSIGNED, &[]), Some(123.0), "the sums keep every node");
    let view = st.node("v6-small").map(|n| *n.derived()).unwrap_or_default();
    assert!(view.ipv6 && !view.low && view.headroom.is_none(), "{view:?}");
    let mut out = String::new();
    st.render_prometheus(&mut out, t0);
    assert!(out.contains("cni_metrics_ipv6_nodes{cluster_id=\"\"} 2\n"), "{out}");
    assert!(out.contains("cni_metrics_nodes_low_on_ips{cluster_id=\"\"} 0\n"), "{out}");
    // The small node's ENIs lose their IPv6 prefixes: it is an IPv4 node again, and low (headroom 1 < 5).
    let mut r = report(2, false, vec![], &[], &[]);
    r.subnets_changed = true;
    r.subnets = vec![usage(0)];
    st.report("v6-small", sessions[2], &r, t0).expect("update");
    let c = *st.capacity();
    assert_eq!((c.available, c.headroom, c.low_nodes, c.ipv6_nodes), (9.0, 49.0, 1, 1));
    // The full IPv6 node leaves: nothing of it stays behind.
    st.goodbye("v6-full", sessions[1]);
    assert_eq!(st.capacity().ipv6_nodes, 0);
}

#[test]
fn a_second_agent_claiming_a_live_node_is_refused() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s1 = join(&mut st, "n1", 1, 5.0, 0.0, t0);
    assert_eq!(st.hello(&hello("n1", 2), t0), Err(IngestError::DuplicateNode("n1".into())));
    assert_eq!(st.stats().rejected.get(Refusal::DuplicateNode), 1);
    // The live agent is unaffected.
    st.report("n1", s1, &report(2, false, vec![], &[(1, 6.0)], &[]), t0).expect("still the node's stream");
    assert_eq!(st.value(ASSIGNED, &[]), Some(6.0));
    // Once the first agent is gone (stream closed, or silent for two intervals), a new run takes over.
    st.disconnected("n1", s1);
    assert!(st.hello(&hello("n1", 2), t0).is_ok());
    let mut st2 = ClusterState::new(StateConfig::default());
    join(&mut st2, "n1", 1, 5.0, 0.0, t0);
    assert!(st2.hello(&hello("n1", 2), t0 + Duration::from_secs(3)).is_ok(), "silent for > 2 intervals");
}

/// A keeping run (`Hello.keeps_position`) with counter id 2 at raw `raw`, total `total`.
fn keeping_report(seq: u64, snapshot: bool, total: f64, raw: f64) -> Report {
    let defs = if snapshot { vec![def(2, ADD, MetricKind::Counter, &[])] } else { vec![] };
    let mut r = report(seq, snapshot, defs, &[(2, total)], &[]);
    r.counter_raws = vec![raw];
    r.ipamd_start_time_seconds = 1_700_000_000.0;
    r
}

fn window_add(w: &ClosedWindow) -> f64 {
    w.window.datums.iter().filter(|d| d.metric_name == "addReqCount").map(|d| d.value).sum()
}

#[test]
fn a_keeping_run_is_published_only_while_its_stream_is_live() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let keeping = |run| Hello { keeps_position: true, ..hello("n1", run) };
    let s = st.hello(&keeping(1), t0).expect("hello").session;
    st.report("n1", s, &keeping_report(1, true, 0.0, 100.0), t0).expect("snapshot");
    st.report("n1", s, &keeping_report(2, false, 5.0, 105.0), t0).expect("inc");
    let w = st.take_window(1);
    assert_eq!((window_add(&w), w.commits.len()), (5.0, 1), "live: published and marked");
    st.report("n1", s, &keeping_report(3, false, 9.0, 109.0), t0).expect("inc");

    // The stream breaks (agent killed): the 4 not yet in a closed window are withheld.
    st.disconnected("n1", s);
    let w = st.take_window(2);
    assert_eq!((window_add(&w), w.commits.len()), (0.0, 0), "withheld: neither published nor marked");

    // The same run comes back: what it had withheld is published now, once.
    let back = st.hello(&keeping(1), t0).expect("hello");
    let w = st.take_window(3);
    assert_eq!((window_add(&w), w.commits.len()), (4.0, 1));
    assert_eq!(st.value(ADD, &[]), Some(9.0));

    // It is killed again after 3 more; a new run resumes from the published position (raw 109), so it
    // counts those 3 itself, and they are never published from the dead run.
    st.report("n1", back.session, &keeping_report(4, true, 12.0, 112.0), t0).expect("snapshot");
    st.disconnected("n1", back.session);
    let next = st.hello(&keeping(2), t0).expect("hello");
    let resume = next.resume.expect("a resume point");
    assert_eq!((resume.ipamd_start_time, resume.points.first().map(|p| p.1)), (1_700_000_000.0, Some(109.0)));
    assert_eq!(window_add(&st.take_window(4)), 0.0, "the dead run's 3 are not published");

    // The new run dies before any window with its increments closed: the record it resumed from stays.
    st.report("n1", next.session, &keeping_report(1, true, 3.0, 112.0), t0).expect("snapshot");
    st.disconnected("n1", next.session);
    let third = st.hello(&keeping(3), t0).expect("hello");
    assert_eq!(third.resume.and_then(|r| r.points.first().map(|p| p.1)), Some(109.0));
    st.report("n1", third.session, &keeping_report(1, true, 5.0, 114.0), t0).expect("snapshot");
    assert_eq!(window_add(&st.take_window(5)), 5.0, "109 → 114 counted once, by the run that is live");
    assert_eq!(st.value(ADD, &[]), Some(14.0), "5 + 4 + 5: the truth (raw 100 → 114)");
    assert_eq!(st.departed_count(), 0, "the record served its purpose once the new run was published");
}

#[test]
fn a_run_that_does_not_keep_its_position_is_published_as_before() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = st.hello(&hello("n1", 1), t0).expect("hello").session;
    st.report("n1", s, &keeping_report(1, true, 0.0, 100.0), t0).expect("snapshot");
    st.report("n1", s, &keeping_report(2, false, 5.0, 105.0), t0).expect("inc");
    st.disconnected("n1", s);
    assert_eq!(window_add(&st.take_window(1)), 5.0, "published although the stream is gone");
    let next = st.hello(&hello("n1", 2), t0).expect("hello");
    assert_eq!(next.resume.and_then(|r| r.points.first().map(|p| p.1)), Some(105.0), "resumed from the last applied raw");
}

#[test]
fn a_withheld_run_resumes_each_series_from_its_published_position() {
    let t0 = Instant::now();
    let mut st = ClusterState::new(StateConfig::default());
    let s = st.hello(&Hello { keeps_position: true, ..hello("n1", 1) }, t0).expect("hello").session;
    // A baseline snapshot (nothing to count), then a window: the position is raw 50.
    st.report("n1", s, &keeping_report(1, true, 0.0, 50.0), t0).expect("snapshot");
    st.take_window(1);
    // +2 on the known series, and a series born since (its whole 3 counts); then the agent dies.
    let mut r = keeping_report(2, false, 2.0, 52.0);
    r.defs = vec![def(3, "awscni_del_ip_req_count", MetricKind::Counter, &[])];
    r.ids.push(3);
    r.values.push(3.0);
    r.counter_raws.push(3.0);
    st.report("n1", s, &r, t0).expect("inc");
    st.disconnected("n1", s);
    assert_eq!(window_add(&st.take_window(2)), 0.0);
    let resume = st.hello(&Hello { keeps_position: true, ..hello("n1", 2) }, t0).expect("hello").resume.expect("resume");
    let points: Vec<(String, f64)> = resume.points.iter().map(|(k, raw)| (k.name.clone(), *raw)).collect();
    assert_eq!(points, vec![(ADD.to_owned(), 50.0)], "the published position; the new series has none (counted whole)");
}

#[test]
fn the_exhaustion_forecast_follows_a_draining_subnet_and_not_a_flat_one() {
    let mut st = ClusterState::new(StateConfig::default());
    st.enable_subnets(LowThreshold::Percent(10.0), std::time::Duration::from_secs(6 * 3600));
    let facts = |id: &str, az: &str, available: u64| SubnetFacts {
        subnet_id: id.into(),
        availability_zone: az.into(),
        vpc_id: "vpc-1".into(),
        cidr: "10.0.0.0/20".into(),
        available,
    };
    // Subnet a loses 10 addresses every 5 minutes (120 an hour); b stays flat. Two hours of refreshes.
    let t0 = 1_765_000_000_000_i64;
    let mut page = String::new();
    for k in 0..=24u64 {
        st.set_subnet_facts(vec![facts("subnet-a", "az-1", 1000 - 10 * k), facts("subnet-b", "az-2", 3000)], t0 + k as i64 * 300_000);
        if k == 4 {
            st.render_prometheus(&mut page, std::time::Instant::now());
            assert!(!page.contains("cni_metrics_subnet_exhaustion_seconds{"), "5 samples over 20 min are not enough:\n{page}");
        }
    }
    // 760 left at 120 an hour: 6 h 20 min.
    let want = 760.0 / 120.0 * 3600.0;
    let mut page = String::new();
    st.render_prometheus(&mut page, std::time::Instant::now());
    let got: Option<f64> = page
        .lines()
        .find(|l| l.starts_with("cni_metrics_subnet_exhaustion_seconds{") && l.contains("subnet-a") && l.contains("resource=\"addresses\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok());
    assert!(got.is_some_and(|s| (s - want).abs() < 1.0), "subnet-a: {got:?}, want {want}\n{page}");
    assert!(!page.lines().any(|l| l.contains("exhaustion_seconds") && l.contains("subnet-b")), "flat: no forecast\n{page}");
    assert!(page.lines().any(|l| l.starts_with("cni_metrics_az_exhaustion_seconds") && l.contains("az-1")), "{page}");
    let w = st.take_window(t0 + 25 * 300_000);
    let hours: Vec<f64> = w.window.datums.iter().filter(|d| d.metric_name == "subnetHoursToExhaustion").map(|d| d.value).collect();
    assert_eq!(hours.len(), 3, "subnet-a, az-1 and the cluster: {hours:?}");
    assert!(hours.iter().all(|h| (h - 760.0 / 120.0).abs() < 0.001), "{hours:?}");
}
