//! Invariants under arbitrary input, shared by the fuzz targets (`fuzz/`, coverage-guided) and the
//! property tests (`tests/tests/properties.rs`, random and corpus inputs in `cargo test`). Each
//! function takes raw bytes and panics when an invariant breaks:
//!
//! - [`page_and_delta`]: an ipamd page parses without panic; the delta engine's counter totals stay
//!   finite and never negative; a page observed twice adds nothing.
//! - [`introspection`]: any JSON (or none) gives subnet usage or an error, never a panic.
//! - [`streams`]: any sequence of agent messages on several streams leaves `/metrics` parseable with
//!   no bad line, every cluster counter finite, non-negative and monotonic, and a replayed report
//!   changes no counter.
//! - [`flags`]: the duration and switch parsers accept or refuse any string without panic.

use std::time::{Duration, Instant};

use cni_metrics_agent::delta::{DeltaConfig, DeltaEngine};
use cni_metrics_aggregator::state::{ClusterState, StateConfig};
use cni_metrics_proto::catalog::FAMILIES;
use cni_metrics_proto::v1::{FamilyType, Hello, Label, MetricKind, Report, SeriesDef, SubnetUsage};

/// Reads structured values from fuzz bytes; past the end everything is zero.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Mostly small values, sometimes hostile ones (NaN, infinities, negatives, huge).
    pub fn f64(&mut self) -> f64 {
        match self.u8() % 8 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -f64::from(self.u8()),
            3 => f64::from(self.u32()) * 1e12,
            _ => f64::from(self.u8()),
        }
    }
    /// A short string: usually from `pool`, sometimes raw bytes (lossy UTF-8).
    pub fn text(&mut self, pool: &[&str]) -> String {
        let pick = self.u8();
        if pick < 200 && !pool.is_empty() {
            return pool[usize::from(pick) % pool.len()].to_owned();
        }
        let n = usize::from(self.u8() % 24);
        let raw: Vec<u8> = (0..n).map(|_| self.u8()).collect();
        String::from_utf8_lossy(&raw).into_owned()
    }
}

/// Parse a page and fold it into a delta engine twice (the second time from a later scrape).
pub fn page_and_delta(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let page = cni_metrics_agent::parse::parse(&text);
    assert!(page.first_errors.len() <= page.bad_lines as usize, "errors reported for lines that were not bad");
    let mut engine = DeltaEngine::new(DeltaConfig { initial_window: Duration::from_secs(300), max_series: 64 });
    let now = 1_800_000_000.0;
    engine.observe(&page, now);
    let totals = counter_totals(&engine);
    engine.observe(&page, now + 30.0);
    let again = counter_totals(&engine);
    assert_eq!(totals, again, "the same page observed twice added increments");
    for (id, v) in again {
        assert!(v.is_finite() && v >= 0.0, "counter {id} total {v}");
    }
}

fn counter_totals(e: &DeltaEngine) -> Vec<(u32, f64)> {
    e.live_ids()
        .into_iter()
        .filter(|id| e.info(*id).is_some_and(|i| i.kind == MetricKind::Counter))
        .filter_map(|id| Some((id, e.value(id)?)))
        .collect()
}

/// Read ipamd's introspection JSON: subnet usage or an error, never a panic; cooling addresses are a
/// finite count no larger than the addresses held.
pub fn introspection(data: &[u8]) {
    use cni_metrics_agent::introspect::{parse, Cooldown};
    // 2026-12-07T12:00:00Z, ipamd's default period.
    let clock = Cooldown { now_unix_ms: 1_796_644_800_000, period_ms: 30_000 };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(page) = parse(&v, &clock) {
            for u in &page.subnets {
                assert!(u.total_ips.is_finite() && u.assigned_ips.is_finite(), "non-finite subnet usage {u:?}");
                assert!(u.cooldown_ips >= 0.0 && u.cooldown_ips <= u.total_ips, "cooling beyond the subnet's addresses {u:?}");
            }
            assert!(page.cooldown_ips().is_finite() && page.cooldown_ips() >= 0.0, "cooling {}", page.cooldown_ips());
        }
    }
}

/// The flag parsers: durations, switches, blank-means-unset values and floors.
pub fn flags(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = cni_metrics_proto::duration::parse_positive(&s) {
        assert!(!d.is_zero(), "a positive duration parsed as zero from {s:?}");
        assert!(d <= cni_metrics_proto::duration::MAX, "a duration above the maximum accepted from {s:?}");
    }
    let _ = cni_metrics_proto::flags::parse_switch(&s);
    // Blank is unset and nothing else is; a floor holds for whatever parses.
    match cni_metrics_proto::flags::non_blank::<u64>(&s) {
        Ok(v) => assert_eq!(v.is_set(), !s.trim().is_empty(), "blank and set disagree for {s:?}"),
        Err(_) => assert!(!s.trim().is_empty(), "a blank value refused: {s:?}"),
    }
    if let Ok(v) = cni_metrics_proto::flags::at_least(1024usize, "1 KiB")(&s) {
        assert!(v >= 1024, "{v} accepted below its floor from {s:?}");
    }
}

const NODES: &[&str] = &["node-a", "node-b", "ip-10-0-0-1.ec2.internal", "Bad Node", ""];
const LABEL_NAMES: &[&str] = &["eni", "fn", "api", "error", "quantile", "status", "cluster_id", "__name__", "a\"b"];
const LABEL_VALUES: &[&str] = &["eni-1", "x\"}\n\\", "0.99", "", "true"];
const SUFFIXES: &[&str] = &["", "", "", "_sum", "_count", "_bucket", "\nbroken{"];

/// Apply an arbitrary sequence of agent messages on several streams to the aggregator's state.
pub fn streams(data: &[u8]) {
    streams_applied(data);
}

/// [`streams`], returning how many reports were applied (so tests can tell the input reached state).
pub fn streams_applied(data: &[u8]) -> usize {
    let mut applied = 0;
    let mut b = Bytes::new(data);
    let mut st = ClusterState::new(StateConfig { cluster_id: "fuzz".into(), max_series_per_node: 32, ..StateConfig::default() });
    let t0 = Instant::now();
    let mut now = t0;
    let mut sessions: Vec<Option<(String, u64)>> = vec![None; 4];
    let mut last_applied: Vec<Option<Report>> = vec![None; 4];
    let mut previous = cluster_counters(&st);
    let mut steps = 0;
    while !b.is_empty() && steps < 200 {
        steps += 1;
        let stream = usize::from(b.u8() % 4);
        match b.u8() % 8 {
            0 => {
                let h = Hello {
                    node_name: b.text(NODES),
                    run_id: u64::from(b.u8() % 3),
                    interval_ms: u64::from(b.u8()) * 100,
                    availability_zone: b.text(&["eu-west-1a", "eu-west-1b", ""]),
                    keeps_position: b.u8().is_multiple_of(2),
                    ..Hello::default()
                };
                if let Ok(w) = st.hello(&h, now) {
                    sessions[stream] = Some((h.node_name.clone(), w.session));
                    last_applied[stream] = None;
                }
            }
            1 | 2 => {
                let Some((node, session)) = sessions[stream].clone() else { continue };
                let r = report(&mut b);
                if st.report(&node, session, &r, now).is_ok_and(|a| a.fresh) {
                    applied += 1;
                    last_applied[stream] = Some(r);
                }
            }
            3 => {
                // Replay the stream's last applied report: no counter may move.
                let (Some((node, session)), Some(r)) = (sessions[stream].clone(), last_applied[stream].clone()) else { continue };
                let before = cluster_counters(&st);
                let _ = st.report(&node, session, &r, now);
                assert_eq!(before, cluster_counters(&st), "a replayed report changed a counter: {r:?}");
            }
            4 => {
                if let Some((node, session)) = sessions[stream].take() {
                    st.goodbye(&node, session);
                }
            }
            5 => {
                if let Some((node, session)) = sessions[stream].take() {
                    st.disconnected(&node, session);
                }
            }
            6 => {
                let w = st.take_window(1_800_000_000_000 + i64::from(steps) * 60_000);
                for d in &w.window.datums {
                    assert!(d.value.is_finite(), "a datum for CloudWatch is not finite: {d:?}");
                }
                st.commit(&w.commits);
            }
            _ => {
                now += Duration::from_secs(u64::from(b.u8()));
                st.expire(now);
            }
        }
        let counters = cluster_counters(&st);
        for (key, v) in &counters {
            assert!(v.is_finite() && *v >= 0.0, "cluster counter {key} = {v}");
            if let Some(p) = previous.iter().find(|(k, _)| k == key) {
                assert!(*v >= p.1, "cluster counter {key} went back from {} to {v}", p.1);
            }
        }
        previous = counters;
    }
    let mut page = String::new();
    st.render_prometheus(&mut page, now);
    let parsed = cni_metrics_agent::parse::parse(&page);
    assert_eq!(parsed.bad_lines, 0, "unparseable /metrics ({}):\n{page}", cni_metrics_agent::parse::describe(&parsed.first_errors));
    applied
}

fn report(b: &mut Bytes<'_>) -> Report {
    let snapshot = b.u8().is_multiple_of(3);
    let n_defs = usize::from(b.u8() % 4);
    let defs: Vec<SeriesDef> = (0..n_defs)
        .map(|_| {
            let spec = &FAMILIES[usize::from(b.u8()) % FAMILIES.len()];
            let suffix = SUFFIXES[usize::from(b.u8()) % SUFFIXES.len()];
            let labels = (0..b.u8() % 3).map(|_| Label { name: b.text(LABEL_NAMES), value: b.text(LABEL_VALUES) }).collect();
            SeriesDef {
                id: u32::from(b.u8() % 8),
                family: spec.name.to_owned(),
                name: format!("{}{suffix}", spec.name),
                kind: [MetricKind::Counter, MetricKind::Gauge, MetricKind::Unspecified][usize::from(b.u8() % 3)] as i32,
                family_type: if b.u8().is_multiple_of(4) { FamilyType::Untyped as i32 } else { spec.family_type as i32 },
                labels,
                committed_total: b.f64(),
            }
        })
        .collect();
    let n = usize::from(b.u8() % 5);
    let ids: Vec<u32> = (0..n).map(|_| u32::from(b.u8() % 8)).collect();
    let values: Vec<f64> = (0..n).map(|_| b.f64()).collect();
    let counter_raws: Vec<f64> =
        if b.u8().is_multiple_of(2) { Vec::new() } else { (0..usize::from(b.u8() % 5)).map(|_| b.f64()).collect() };
    let subnets = if b.u8().is_multiple_of(4) {
        let (total_ips, assigned_ips) = (b.f64(), b.f64());
        vec![SubnetUsage {
            subnet_id: b.text(&["subnet-0abc", "subnet-1"]),
            total_ips,
            assigned_ips,
            enis: u32::from(b.u8() % 4),
            // Some unaligned or too long: the aggregator refuses those reports whole.
            blocks: (0..b.u8() % 3)
                .map(|_| cni_metrics_proto::v1::Ipv4Block {
                    address: 0x0a00_0000 | (u32::from(b.u8()) << 4),
                    prefix_len: 24 + u32::from(b.u8() % 10),
                })
                .collect(),
            ipv6_prefixes: u32::from(b.u8() % 2),
            continued: false,
            cooldown_ips: if (total_ips - assigned_ips).is_finite() { (total_ips - assigned_ips).abs() } else { 0.0 },
        }]
    } else {
        Vec::new()
    };
    let cooldown_ips = values.first().copied().filter(|v| v.is_finite() && *v >= 0.0);
    Report {
        seq: u64::from(b.u8() % 16),
        snapshot,
        defs,
        ids,
        values,
        counter_raws,
        subnets_changed: !subnets.is_empty(),
        subnets,
        ipamd_start_time_seconds: 1_700_000_000.0 + f64::from(b.u8()),
        // From bytes already drawn (the committed corpus keeps its meaning): some reports carry a count.
        cooldown_ips,
        ..Report::default()
    }
}

/// Every cluster counter series: (name and labels, total).
fn cluster_counters(st: &ClusterState) -> Vec<(String, f64)> {
    st.aggregates()
        .filter(|(_, _, kind, _)| *kind == MetricKind::Counter)
        .map(|(name, labels, _, v)| (format!("{name}{labels:?}"), v))
        .collect()
}
