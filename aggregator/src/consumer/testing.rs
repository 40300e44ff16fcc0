//! Test helpers: a cluster state with nodes of given headroom, zone and scrape status, joined through
//! the state's public hello and report, as an agent would.

use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{FamilyType, Hello, MetricKind, Report, ScrapeStatus, SeriesDef};

use crate::state::{ClusterState, StateConfig};

pub fn state() -> ClusterState {
    ClusterState::new(StateConfig { cluster_id: "test".into(), ..StateConfig::default() })
}

fn gauge(id: u32, name: &str) -> SeriesDef {
    SeriesDef {
        id,
        family: name.into(),
        name: name.into(),
        kind: MetricKind::Gauge as i32,
        family_type: FamilyType::Gauge as i32,
        ..SeriesDef::default()
    }
}

/// A node with `assigned` of `max` IPs (headroom `max - assigned`) in `zone`; returns its session.
pub fn join(st: &mut ClusterState, name: &str, zone: &str, assigned: f64, max: f64, now: Instant) -> u64 {
    let hello = Hello {
        node_name: name.into(),
        run_id: 1,
        interval_ms: 1000,
        availability_zone: zone.into(),
        instance_type: "m5.large".into(),
        ..Hello::default()
    };
    let session = st.hello(&hello, now).map(|w| w.session).unwrap_or_default();
    let defs = vec![gauge(1, "awscni_assigned_ip_addresses"), gauge(2, "awscni_total_ip_addresses"), gauge(3, "awscni_ip_max")];
    let r = Report { seq: 1, snapshot: true, defs, ids: vec![1, 2, 3], values: vec![assigned, max, max], ..Report::default() };
    assert!(st.report(name, session, &r, now).is_ok(), "snapshot of {name}");
    session
}

/// A report of `name` at `seq` with a new assigned count and status.
pub fn set(st: &mut ClusterState, name: &str, session: u64, seq: u64, assigned: f64, status: ScrapeStatus, now: Instant) {
    let r = Report { seq, status: status as i32, ids: vec![1], values: vec![assigned], ..Report::default() };
    assert!(st.report(name, session, &r, now).is_ok(), "report of {name}");
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
