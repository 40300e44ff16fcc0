//! The node's recent history for the warm-pool advisor: at every usable scrape, the addresses assigned
//! and held and how much ipamd's counters moved since the previous scrape (CNI ADDs and DELs, failed
//! ADDs, EC2 calls), kept over `--advisor-window` (24 h by default) in bounded memory: one 32-byte
//! sample per scrape, at most [`MAX_SAMPLES`]. The advisor replays candidate settings on it
//! (`cni_metrics_advisor::replay`). Pure: the caller passes the parsed page and the time.

use std::collections::VecDeque;
use std::time::Duration;

use cni_metrics_advisor::Sample;

use crate::parse::Page;

/// Most samples kept, whatever the window and interval (a day of 10 s scrapes).
pub const MAX_SAMPLES: usize = 8640;

/// What one page says about the pool: gauges, and counters as running totals summed over their labels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolReading {
    pub assigned: f64,
    pub held: f64,
    pub adds: f64,
    pub dels: f64,
    pub waits: f64,
    pub ec2_calls: f64,
}

impl PoolReading {
    /// The reading of a page (after the multi-card correction); None without the two pool gauges.
    pub fn from_page(page: &Page<'_>) -> Option<PoolReading> {
        let gauge = |name: &str| page.samples.iter().find(|s| s.name == name && s.labels.is_empty()).map(|s| s.value);
        let total = |name: &str| page.samples.iter().filter(|s| s.name == name).map(|s| s.value).filter(|v| v.is_finite()).sum();
        let reading = PoolReading {
            assigned: gauge("awscni_assigned_ip_addresses")?,
            held: gauge("awscni_total_ip_addresses")?,
            adds: total("awscni_add_ip_req_count"),
            dels: total("awscni_del_ip_req_count"),
            waits: total("awscni_no_available_ip_addresses"),
            ec2_calls: total("awscni_ec2api_req_count"),
        };
        (reading.assigned.is_finite() && reading.held.is_finite()).then_some(reading)
    }
}

/// A count for a sample: finite, not negative, at most u32::MAX.
fn count(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 {
        x.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// How far a counter moved: the difference, or the whole value after a reset (ipamd restarted).
fn moved(now: f64, before: f64) -> f64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// The samples of the window.
#[derive(Clone, Debug)]
pub struct History {
    window_ms: u64,
    samples: VecDeque<Sample>,
    last: Option<PoolReading>,
}

impl History {
    pub fn new(window: Duration) -> History {
        History { window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX), samples: VecDeque::new(), last: None }
    }

    /// Records a usable scrape at `at_ms` (Unix ms); a time before the last sample's starts the history
    /// again (the clock stepped back).
    pub fn record(&mut self, at_ms: i64, r: PoolReading) {
        let at = u64::try_from(at_ms).unwrap_or(0);
        if self.samples.back().is_some_and(|s| s.at_ms > at) {
            self.samples.clear();
            self.last = None;
        }
        let before = self.last.unwrap_or(r);
        // A counter the page could not give keeps its last value: nothing moved, nothing is lost.
        let keep = |now: f64, then: f64| if now.is_finite() { now } else { then };
        let r = PoolReading {
            adds: keep(r.adds, before.adds),
            dels: keep(r.dels, before.dels),
            waits: keep(r.waits, before.waits),
            ec2_calls: keep(r.ec2_calls, before.ec2_calls),
            ..r
        };
        self.samples.push_back(Sample {
            at_ms: at,
            assigned: count(r.assigned),
            held: count(r.held),
            adds: count(moved(r.adds, before.adds)),
            dels: count(moved(r.dels, before.dels)),
            waits: count(moved(r.waits, before.waits)),
            ec2_calls: count(moved(r.ec2_calls, before.ec2_calls)),
        });
        self.last = Some(r);
        while self.samples.len() > MAX_SAMPLES || self.samples.front().is_some_and(|s| at - s.at_ms > self.window_ms) {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first (the first one's increments are not counted by a replay).
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The span the samples cover, in seconds.
    pub fn span_seconds(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => (b.at_ms - a.at_ms) / 1000,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    const PAGE: &str = "\
# TYPE awscni_assigned_ip_addresses gauge
awscni_assigned_ip_addresses 12
# TYPE awscni_total_ip_addresses gauge
awscni_total_ip_addresses 29
# TYPE awscni_add_ip_req_count counter
awscni_add_ip_req_count 40
# TYPE awscni_del_ip_req_count counter
awscni_del_ip_req_count{reason=\"PodDeleted\"} 25
awscni_del_ip_req_count{reason=\"SetupNSFailed\"} 3
# TYPE awscni_ec2api_req_count counter
awscni_ec2api_req_count{fn=\"AssignPrivateIpAddresses\"} 4
awscni_ec2api_req_count{fn=\"CreateNetworkInterface\"} 1
";

    #[test]
    fn a_page_reads_as_gauges_and_counter_totals() {
        let r = PoolReading::from_page(&parse(PAGE));
        let want = PoolReading { assigned: 12.0, held: 29.0, adds: 40.0, dels: 28.0, waits: 0.0, ec2_calls: 5.0 };
        assert_eq!(r, Some(want));
        assert_eq!(PoolReading::from_page(&parse("awscni_add_ip_req_count 4\n")), None, "no pool gauges: no reading");
    }

    fn reading(assigned: f64, adds: f64, dels: f64, ec2: f64) -> PoolReading {
        PoolReading { assigned, held: assigned + 5.0, adds, dels, waits: 0.0, ec2_calls: ec2 }
    }

    #[test]
    fn samples_carry_increments_and_survive_resets() {
        let mut h = History::new(Duration::from_secs(3600));
        h.record(1_000, reading(10.0, 100.0, 90.0, 7.0));
        h.record(31_000, reading(12.0, 104.0, 92.0, 9.0));
        // ipamd restarted: its counters start again from 0.
        h.record(61_000, reading(11.0, 3.0, 2.0, 1.0));
        let s = h.samples();
        let moved: Vec<(u32, u32, u32, u32)> = s.iter().map(|s| (s.assigned, s.adds, s.dels, s.ec2_calls)).collect();
        assert_eq!(moved, vec![(10, 0, 0, 0), (12, 4, 2, 2), (11, 3, 2, 1)]);
        assert_eq!(h.span_seconds(), 60);
    }

    #[test]
    fn the_window_and_the_cap_bound_the_memory() {
        let mut h = History::new(Duration::from_secs(300));
        for i in 0..100 {
            h.record(i * 30_000, reading(1.0, i as f64, 0.0, 0.0));
        }
        // 300 s of 30 s samples: 11 samples (both ends).
        assert_eq!(h.len(), 11);
        assert_eq!(h.span_seconds(), 300);
        let mut h = History::new(Duration::from_secs(365 * 24 * 3600));
        for i in 0..(MAX_SAMPLES as i64 + 500) {
            h.record(i * 1_000, reading(1.0, 0.0, 0.0, 0.0));
        }
        assert_eq!(h.len(), MAX_SAMPLES);
    }

    #[test]
    fn garbage_values_count_nothing_and_a_clock_step_back_starts_again() {
        let mut h = History::new(Duration::from_secs(3600));
        h.record(10_000, reading(5.0, 10.0, 0.0, 0.0));
        h.record(20_000, PoolReading { adds: f64::NAN, held: -4.0, ..reading(5.0, 0.0, 0.0, 0.0) });
        assert_eq!((h.samples()[1].adds, h.samples()[1].held), (0, 0));
        h.record(30_000, reading(5.0, 12.0, 0.0, 0.0));
        assert_eq!(h.samples()[2].adds, 2, "after an unreadable counter, only what moved since the last good one");
        h.record(5_000, reading(5.0, 10.0, 0.0, 0.0));
        assert_eq!(h.len(), 1, "the clock went back: a new history");
    }
}
