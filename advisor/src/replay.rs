//! Replaying settings on a node's own history. A [`Sample`] is what the agent reads at each scrape: the
//! pods' addresses, the addresses held, and the increments of ipamd's counters since the previous
//! sample (CNI ADDs and DELs, failed ADDs, EC2 calls). [`replay`] runs the pool model through the same
//! pod arrivals and departures, the churn the counters show spread evenly inside each interval, and
//! says what those settings would have held and cost; [`observe`] says what ipamd really held and
//! called, so the replay of the current settings can be checked against it (the backtest).

use crate::calls::Calls;
use crate::pool::{Pool, TICK_MS};
use crate::settings::{Limits, Settings};

/// One scrape of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    /// Addresses assigned to pods (`awscni_assigned_ip_addresses`).
    pub assigned: u32,
    /// Addresses held (`awscni_total_ip_addresses`).
    pub held: u32,
    /// Since the previous sample: CNI ADDs (`awscni_add_ip_req_count`) and DELs (`awscni_del_ip_req_count`).
    pub adds: u32,
    pub dels: u32,
    /// Since the previous sample: failed ADDs (`awscni_no_available_ip_addresses`).
    pub waits: u32,
    /// Since the previous sample: EC2 calls (`awscni_ec2api_req_count`, all APIs).
    pub ec2_calls: u32,
}

/// What a replay of some settings held and cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub seconds: u64,
    pub ips_held_mean: f64,
    pub ips_held_peak: u32,
    pub cooldown_mean: f64,
    pub calls: Calls,
    /// Pods that found no free, cooled address at once (each counted once, however long it waited).
    pub pod_ip_waits: u64,
}

/// What ipamd really held and did over the same history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub seconds: u64,
    /// The time-weighted mean of the addresses held.
    pub ips_held_mean: f64,
    pub ec2_calls: u64,
    /// Failed CNI ADDs (kubelet retries a pod's ADD, so one waiting pod can count several times).
    pub pod_ip_waits: u64,
}

/// The observed figures of a history (the first sample is the baseline: its increments are not counted).
pub fn observe(history: &[Sample]) -> Observed {
    let Some((first, rest)) = history.split_first() else { return Observed::default() };
    let (mut weighted, mut prev) = (0.0, first);
    for s in rest {
        weighted += f64::from(prev.held) * (s.at_ms - prev.at_ms) as f64;
        prev = s;
    }
    let span = prev.at_ms - first.at_ms;
    Observed {
        seconds: span / 1000,
        ips_held_mean: if span == 0 { f64::from(first.held) } else { weighted / span as f64 },
        ec2_calls: rest.iter().map(|s| u64::from(s.ec2_calls)).sum(),
        pod_ip_waits: rest.iter().map(|s| u64::from(s.waits)).sum(),
    }
}

/// The adds and dels of one interval, made to agree with the change of assigned addresses (a counter
/// can count an ADD that failed, or miss a pod the scrape did not see): the larger churn is kept.
fn churn(adds: u32, dels: u32, net: i64) -> (u32, u32) {
    let (adds, dels) = (i64::from(adds), i64::from(dels));
    if net >= 0 {
        let a = adds.max(dels + net);
        (a as u32, (a - net) as u32)
    } else {
        let d = dels.max(adds - net);
        ((d + net) as u32, d as u32)
    }
}

/// A replay in progress: the pool, the pods waiting for an address, and the tallies.
struct Run {
    pool: Pool,
    now: u64,
    next_tick: u64,
    pending: u32,
    waits: u64,
    ticks: u64,
    held_sum: u64,
    held_peak: u32,
    cooldown_sum: u64,
}

impl Run {
    /// A node warmed up to `assigned` pods with the settings, counts then cleared.
    fn warm(settings: &Settings, limits: Limits, assigned: u32) -> Run {
        let mut pool = Pool::new(settings.clone(), limits);
        let mut now = 0;
        let mut placed = 0;
        // Enough ticks to reach any pool the node's limits allow, and 200 s more to settle.
        for _ in 0..(assigned + 200) {
            while placed < assigned && pool.assign_pod(now) {
                placed += 1;
            }
            now += TICK_MS;
            pool.tick(now);
        }
        pool.reset_counts();
        Run {
            pool,
            now,
            next_tick: now + TICK_MS,
            pending: assigned - placed,
            waits: 0,
            ticks: 0,
            held_sum: 0,
            held_peak: 0,
            cooldown_sum: 0,
        }
    }

    /// Runs the pool manager's ticks up to `until`, retrying waiting pods after each.
    fn advance(&mut self, until: u64) {
        while self.next_tick <= until {
            self.now = self.next_tick;
            self.pool.tick(self.now);
            self.retry_pending();
            let s = self.pool.stats(self.now);
            self.ticks += 1;
            self.held_sum += u64::from(s.total);
            self.held_peak = self.held_peak.max(s.total);
            self.cooldown_sum += u64::from(s.cooldown);
            self.next_tick += TICK_MS;
        }
        self.now = self.now.max(until);
    }

    fn retry_pending(&mut self) {
        while self.pending > 0 && self.pool.assign_pod(self.now) {
            self.pending -= 1;
        }
    }

    fn add_pod(&mut self) {
        self.retry_pending();
        if self.pending > 0 || !self.pool.assign_pod(self.now) {
            self.pending += 1;
            self.waits += 1;
        }
    }

    fn remove_pod(&mut self) {
        // A pod that never got an address leaves without one.
        if self.pending > 0 {
            self.pending -= 1;
        } else {
            self.pool.release_pod(self.now);
        }
    }

    /// One interval's churn, spread evenly over it, adds and dels interleaved.
    fn interval(&mut self, from: u64, to: u64, adds: u32, dels: u32) {
        let n = u64::from(adds) + u64::from(dels);
        for k in 0..n {
            let at = from + (k + 1) * (to - from) / (n + 1);
            self.advance(at);
            let is_add = (k + 1) * u64::from(adds) / n > k * u64::from(adds) / n;
            if is_add {
                self.add_pod();
            } else {
                self.remove_pod();
            }
        }
        self.advance(to);
    }

    fn outcome(self, seconds: u64) -> Outcome {
        let ticks = self.ticks.max(1) as f64;
        Outcome {
            seconds,
            ips_held_mean: self.held_sum as f64 / ticks,
            ips_held_peak: self.held_peak,
            cooldown_mean: self.cooldown_sum as f64 / ticks,
            calls: self.pool.calls().clone(),
            pod_ip_waits: self.waits,
        }
    }
}

/// Replays `settings` on a node's history: None with fewer than two samples.
pub fn replay(settings: &Settings, limits: Limits, history: &[Sample]) -> Option<Outcome> {
    let (first, rest) = history.split_first()?;
    let last = rest.last()?;
    let mut run = Run::warm(settings, limits, first.assigned);
    let base = run.now;
    let mut prev = first;
    for s in rest {
        let (from, to) = (base + (prev.at_ms - first.at_ms), base + (s.at_ms - first.at_ms));
        let (adds, dels) = churn(s.adds, s.dels, i64::from(s.assigned) - i64::from(prev.assigned));
        run.interval(from, to, adds, dels);
        prev = s;
    }
    Some(run.outcome((last.at_ms - first.at_ms) / 1000))
}

#[cfg(test)]
pub(crate) mod tests;
