//! When will a subnet run out? The exhaustion forecast, as pure logic.
//!
//! Each refresh adds a sample (time, free addresses or free /28s) per subnet and per AZ. The forecast is
//! the least-squares line through the samples of the trailing window (`--forecast-window`, 6 h by
//! default): when it falls, the time until zero is the last value over the rate of fall. It is published
//! only with enough evidence: at least [`MIN_SAMPLES`] samples spanning at least a quarter of the window
//! (90 min by default); a flat or rising trend publishes nothing, and the result is never infinite or NaN.
//! Samples live in memory, at most [`MAX_SAMPLES`] per series, so after an aggregator restart the forecast
//! is absent until the window has enough samples again.

use std::collections::{BTreeMap, VecDeque};

cni_metrics_proto::label_enum! {
    /// What runs out: the `resource` label of `cni_metrics_subnet_exhaustion_seconds`.
    pub enum Resource {
        Addresses => "addresses",
        Prefixes => "prefixes",
    }
}

/// Fewest samples for a forecast.
pub const MIN_SAMPLES: usize = 6;
/// Most samples kept per series (6 h at one a 30 s refresh); the oldest go first.
pub const MAX_SAMPLES: usize = 720;

/// What a series is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Subnet(String),
    Az(String),
}

/// The time until zero at the trend of `samples` (seconds, value), or `None` without a falling trend or
/// enough samples spanning `min_span` seconds.
pub fn seconds_to_zero(samples: &VecDeque<(f64, f64)>, min_span: f64) -> Option<f64> {
    let n = samples.len();
    let (first, last) = (samples.front()?, samples.back()?);
    if n < MIN_SAMPLES || last.0 - first.0 < min_span {
        return None;
    }
    // Least squares around the means (times relative to the first sample keep the sums small).
    let nf = n as f64;
    let mean_t = samples.iter().map(|(t, _)| t - first.0).sum::<f64>() / nf;
    let mean_v = samples.iter().map(|(_, v)| v).sum::<f64>() / nf;
    let (mut stv, mut stt) = (0.0, 0.0);
    for (t, v) in samples {
        let dt = t - first.0 - mean_t;
        stv += dt * (v - mean_v);
        stt += dt * dt;
    }
    let slope = stv / stt;
    if !(slope.is_finite() && slope < 0.0) {
        return None;
    }
    let left = last.1.max(0.0);
    let secs = left / -slope;
    secs.is_finite().then_some(secs)
}

/// The bounded sample series of every subnet and AZ, per resource.
#[derive(Debug, Default)]
pub struct Forecasts {
    series: BTreeMap<(Resource, Scope), VecDeque<(f64, f64)>>,
}

impl Forecasts {
    /// One refresh's values of `resource` at `t` (Unix seconds), keeping `window` seconds. Series of this
    /// resource that are not in `values` (a subnet gone) are dropped.
    pub fn record(&mut self, resource: Resource, t: f64, values: &[(Scope, f64)], window: f64) {
        self.series.retain(|(r, scope), _| *r != resource || values.iter().any(|(s, _)| s == scope));
        for (scope, v) in values {
            let s = self.series.entry((resource, scope.clone())).or_default();
            if s.back().is_some_and(|(last, _)| *last >= t) {
                continue; // time did not move forward: keep the series monotonic
            }
            s.push_back((t, *v));
            while s.front().is_some_and(|(old, _)| *old < t - window) || s.len() > MAX_SAMPLES {
                s.pop_front();
            }
        }
    }

    /// Every forecast there is: (resource, scope, seconds until zero).
    pub fn forecasts(&self, window: f64) -> Vec<(Resource, &Scope, f64)> {
        self.series.iter().filter_map(|((r, scope), s)| Some((*r, scope, seconds_to_zero(s, window / 4.0)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: impl IntoIterator<Item = (f64, f64)>) -> VecDeque<(f64, f64)> {
        points.into_iter().collect()
    }

    #[test]
    fn time_to_zero_table() {
        let hour = 3600.0;
        // 1,000 free, losing 100 an hour, sampled every 5 minutes for 2 hours: 800 left, 8 h to go.
        let draining = series((0..=24).map(|k| (f64::from(k) * 300.0, 1000.0 - f64::from(k) * 300.0 * 100.0 / hour)));
        let got = seconds_to_zero(&draining, 1.5 * hour);
        assert!(got.is_some_and(|s| (s - 8.0 * hour).abs() < 1.0), "{got:?}");
        // Noisy but falling (±5 around the line): within 5 % of 8 h.
        let noisy = series(draining.iter().enumerate().map(|(i, (t, v))| (*t, v + if i % 2 == 0 { 5.0 } else { -5.0 })));
        let got = seconds_to_zero(&noisy, 1.5 * hour);
        assert!(got.is_some_and(|s| (s / (8.0 * hour) - 1.0).abs() < 0.05), "{got:?}");
        for (what, s, span) in [
            ("flat", series((0..24).map(|k| (f64::from(k) * 300.0, 500.0))), 1.5 * hour),
            ("rising", series((0..24).map(|k| (f64::from(k) * 300.0, 500.0 + f64::from(k)))), 1.5 * hour),
            ("too few samples", series((0..5).map(|k| (f64::from(k) * 1800.0, 500.0 - f64::from(k)))), 1.5 * hour),
            ("too short a span", series((0..24).map(|k| (f64::from(k) * 60.0, 500.0 - f64::from(k)))), 1.5 * hour),
            ("one instant", series((0..24).map(|_| (100.0, 5.0))), 0.0),
            ("empty", series([]), 0.0),
        ] {
            assert_eq!(seconds_to_zero(&s, span), None, "{what}");
        }
        // Already out: zero, not negative.
        let out = series((0..10).map(|k| (f64::from(k) * 600.0, 50.0 - f64::from(k) * 10.0)));
        assert_eq!(seconds_to_zero(&out, 0.0), Some(0.0));
    }

    #[test]
    fn series_are_bounded_and_follow_the_subnets() {
        let mut f = Forecasts::default();
        let a = Scope::Subnet("subnet-a".into());
        let b = Scope::Subnet("subnet-b".into());
        for k in 0..2000 {
            let t = f64::from(k) * 10.0;
            f.record(Resource::Addresses, t, &[(a.clone(), 5000.0 - t / 10.0), (b.clone(), 100.0)], 6.0 * 3600.0);
        }
        f.record(Resource::Prefixes, 0.0, &[(a.clone(), 10.0)], 6.0 * 3600.0);
        let len = |f: &Forecasts, r, s: &Scope| f.series.get(&(r, s.clone())).map(VecDeque::len);
        assert_eq!(len(&f, Resource::Addresses, &a), Some(MAX_SAMPLES), "bounded");
        // A sample at the same time is not added twice.
        f.record(Resource::Addresses, 19_990.0, &[(a.clone(), 0.0)], 6.0 * 3600.0);
        assert_eq!(len(&f, Resource::Addresses, &a), Some(MAX_SAMPLES));
        // 3,001 left at 1 per 10 s: 30,010 s; subnet b flat: none.
        let got = f.forecasts(4.0 * 7190.0 / 2.0);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!((got[0].2 - 30_010.0).abs() < 1.0, "{got:?}");
        // subnet-b is gone: its series goes, the other resource's stay.
        f.record(Resource::Addresses, 20_000.0, &[(a.clone(), 3000.0)], 6.0 * 3600.0);
        assert_eq!(len(&f, Resource::Addresses, &b), None);
        assert_eq!(len(&f, Resource::Prefixes, &a), Some(1));
    }
}
