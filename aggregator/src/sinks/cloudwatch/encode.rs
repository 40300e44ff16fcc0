//! The pure encoder: a publish window becomes queued datums (each with its window's timestamp; NaN/±Inf
//! skipped and counted; the allow-list applied), and a queue becomes batches within CloudWatch's limits
//! (≤ 1000 datums, ≤ 1 MB estimated with a safety margin).

use std::sync::Arc;

use super::config::{CloudWatchConfig, DIMENSION, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES};
use crate::state::{Unit, Window};

/// Bytes kept free under the request limit for the envelope and estimation error.
const SIZE_MARGIN: usize = 16 * 1024;
/// Conservative per-datum overhead beyond its strings (field names, value, timestamp, unit, framing).
const DATUM_OVERHEAD: usize = 160;

/// One datum waiting for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub window_end_ms: i64,
    pub cluster_id: Arc<str>,
    pub metric_name: &'static str,
    pub value: f64,
    pub unit: Unit,
    /// A breakdown dimension besides CLUSTER_ID.
    pub dimension: Option<(&'static str, Arc<str>)>,
}

/// Turn a window into queued datums; returns them and the number skipped as non-finite.
pub fn encode_window(w: &Window, cfg: &CloudWatchConfig) -> (Vec<Queued>, u64, u64) {
    let cluster: Arc<str> = Arc::from(w.cluster_id.as_str());
    let mut skipped = 0;
    let mut filtered = 0;
    let mut out = Vec::with_capacity(w.datums.len());
    for d in &w.datums {
        if cfg.allow_list.as_ref().is_some_and(|a| !a.contains(d.metric_name)) {
            filtered += 1;
            continue;
        }
        if !d.value.is_finite() {
            skipped += 1;
            continue;
        }
        out.push(Queued {
            window_end_ms: w.end_unix_ms,
            cluster_id: cluster.clone(),
            metric_name: d.metric_name,
            value: d.value,
            unit: d.unit,
            dimension: d.dimension.as_ref().map(|(n, v)| (*n, Arc::from(v.as_str()))),
        });
    }
    (out, skipped, filtered)
}

/// Estimated encoded size of one datum.
pub fn datum_size(q: &Queued) -> usize {
    let extra = q.dimension.as_ref().map_or(0, |(n, v)| n.len() + v.len() + 32);
    q.metric_name.len() + DIMENSION.len() + q.cluster_id.len() + q.unit.as_str().len() + DATUM_OVERHEAD + extra
}

/// How many datums from the front of `queue` make the next request (≥ 1 when the queue is not empty).
pub fn next_batch_len<'a>(queue: impl IntoIterator<Item = &'a Queued>, namespace: &str) -> usize {
    let mut bytes = namespace.len() + 64;
    let mut n = 0;
    for q in queue {
        let s = datum_size(q);
        if n == MAX_DATUMS_PER_REQUEST || (n > 0 && bytes + s > MAX_REQUEST_BYTES - SIZE_MARGIN) {
            break;
        }
        bytes += s;
        n += 1;
    }
    n
}

/// Split datums into request-sized batches (pure; used by tests and by the sender through
/// [`next_batch_len`]).
pub fn batches(datums: &[Queued], namespace: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < datums.len() {
        let n = next_batch_len(&datums[i..], namespace);
        out.push(i..i + n);
        i += n;
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::state::Datum;

    pub(in crate::sinks::cloudwatch) fn window(n: usize, end: i64) -> Window {
        Window {
            cluster_id: "prod".into(),
            region_hint: None,
            end_unix_ms: end,
            nodes: 1,
            datums: (0..n)
                .map(|i| Datum {
                    metric_name: if i % 2 == 0 { "addReqCount" } else { "assignIPAddresses" },
                    value: i as f64,
                    unit: Unit::Count,
                    dimension: None,
                })
                .collect(),
        }
    }

    #[test]
    fn encode_skips_nonfinite_and_filters() {
        let mut w = window(4, 7);
        w.datums[1].value = f64::NAN;
        w.datums[2].value = f64::INFINITY;
        let (q, skipped, filtered) = encode_window(&w, &CloudWatchConfig::default());
        assert_eq!((q.len(), skipped, filtered), (2, 2, 0));
        assert!(q.iter().all(|d| d.window_end_ms == 7 && &*d.cluster_id == "prod"));
        let cfg = CloudWatchConfig { allow_list: Some(["addReqCount".to_owned()].into()), ..CloudWatchConfig::default() };
        let (q, _, filtered) = encode_window(&window(4, 7), &cfg);
        assert_eq!((q.len(), filtered), (2, 2));
    }

    #[test]
    fn batches_respect_count_and_size() {
        let (q, _, _) = encode_window(&window(2500, 1), &CloudWatchConfig::default());
        let b = batches(&q, "Kubernetes");
        assert_eq!(b.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        // Long names: the byte limit splits first.
        let long: &'static str = Box::leak("m".repeat(250).into_boxed_str());
        let big: Vec<Queued> = (0..3000)
            .map(|i| Queued {
                window_end_ms: 0,
                cluster_id: Arc::from("c".repeat(1024)),
                metric_name: long,
                value: i as f64,
                unit: Unit::Count,
                dimension: None,
            })
            .collect();
        let b = batches(&big, "Kubernetes");
        assert!(b.len() > 3);
        for r in &b {
            let bytes: usize = big[r.clone()].iter().map(datum_size).sum();
            assert!(bytes <= MAX_REQUEST_BYTES - SIZE_MARGIN && r.len() <= MAX_DATUMS_PER_REQUEST, "{r:?}: {bytes}");
        }
        assert_eq!(b.iter().map(|r| r.len()).sum::<usize>(), 3000);
    }
}
