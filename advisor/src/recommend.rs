//! Choosing settings: the grid of candidates ([`grid`]) and the rule that picks one ([`recommend`]):
//! the candidate that holds the fewest addresses with no more pod IP waits than the current settings
//! and an EC2 call rate, over the whole cluster, under the budget. EC2 throttles per account and Region
//! with token buckets that refill at a fixed rate (the EC2 API Reference, "Request throttling"): the
//! budget is a share of those refill rates, mutating calls (Assign/Unassign, Create/Attach/Detach/Delete,
//! Modify) and describe calls apart, because everything else in the account draws on the same buckets.

use std::fmt;

use crate::calls::{Calls, Ec2Api};
use crate::settings::Settings;

/// EC2 calls per second the cluster's ipamds may spend, cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub mutating_per_second: f64,
    pub describe_per_second: f64,
}

impl Budget {
    /// A fifth of EC2's documented refill rates (mutating actions 5 tokens/s, non-mutating 20 tokens/s):
    /// the rest stays for everything else in the account.
    pub const DEFAULT: Budget = Budget { mutating_per_second: 1.0, describe_per_second: 4.0 };
}

/// Whether an API draws on the mutating bucket.
pub fn mutating(api: Ec2Api) -> bool {
    !matches!(api, Ec2Api::DescribeSubnets | Ec2Api::DescribeInstances | Ec2Api::DescribeNetworkInterfaces)
}

/// What one candidate's replays add up to over the nodes that answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluated {
    pub settings: Settings,
    /// Σ over nodes of each node's mean addresses held.
    pub ips_held_mean: f64,
    /// Σ over nodes of each node's peak.
    pub ips_held_peak: f64,
    pub calls: Calls,
    pub pod_ip_waits: u64,
    /// The history's span (the same for every candidate).
    pub seconds: f64,
}

impl Evaluated {
    /// Mutating and describe calls per second.
    pub fn rates(&self) -> (f64, f64) {
        let secs = self.seconds.max(1.0);
        let (mut m, mut d) = (0u64, 0u64);
        for (api, n) in self.calls.nonzero() {
            if mutating(api) {
                m += n;
            } else {
                d += n;
            }
        }
        (m as f64 / secs, d as f64 / secs)
    }
}

/// The candidates: WARM_IP_TARGET × MINIMUM_IP_TARGET (unset included); WARM_ENI_TARGET 0–2 when both are
/// unset (secondary-IP mode), WARM_PREFIX_TARGET 0–2 (prefix mode); the current settings first. Other
/// settings (mode, MAX_ENI, cooldown) stay as they are.
pub fn grid(current: &Settings) -> Vec<Settings> {
    let mut out = vec![current.clone()];
    let base =
        Settings { warm_eni_target: None, warm_ip_target: None, minimum_ip_target: None, warm_prefix_target: None, ..current.clone() };
    let mut push = |s: Settings| {
        if !out.iter().any(|o| same_targets(o, &s)) {
            out.push(s);
        }
    };
    for warm in [0, 1, 2] {
        if current.prefix_delegation {
            push(Settings { warm_prefix_target: Some(warm), ..base.clone() });
        } else {
            push(Settings { warm_eni_target: Some(warm), ..base.clone() });
        }
    }
    for wit in [None, Some(1), Some(2), Some(4), Some(8), Some(16)] {
        for mit in [None, Some(8), Some(16), Some(32)] {
            if wit.is_some() || mit.is_some() {
                push(Settings { warm_ip_target: wit, minimum_ip_target: mit, ..base.clone() });
            }
        }
    }
    out
}

/// The same targets as ipamd reads them (unset WARM_ENI_TARGET is 1, unset others 0).
fn same_targets(a: &Settings, b: &Settings) -> bool {
    let key = |s: &Settings| (s.warm_eni(), s.warm_ip(), s.minimum_ip(), s.warm_prefix(), s.prefix_delegation);
    key(a) == key(b)
}

/// The choice and why, in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// Index into the candidates; None: keep the current settings.
    pub choice: Option<usize>,
    pub why: String,
}

/// Picks among `candidates` (evaluated on the same nodes and history as `current`).
pub fn recommend(current: &Evaluated, candidates: &[Evaluated], budget: Budget) -> Recommendation {
    let (cur_m, cur_d) = current.rates();
    // A budget the current settings already exceed cannot be asked of a candidate: no worse than today.
    let (max_m, max_d) = (budget.mutating_per_second.max(cur_m), budget.describe_per_second.max(cur_d));
    let eligible = |e: &Evaluated| {
        let (m, d) = e.rates();
        e.pod_ip_waits <= current.pod_ip_waits && m <= max_m && d <= max_d
    };
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, e)| eligible(e) && !same_targets(&e.settings, &current.settings))
        .filter(|(_, e)| e.ips_held_mean < current.ips_held_mean)
        .min_by(|(_, a), (_, b)| a.ips_held_mean.total_cmp(&b.ips_held_mean).then(a.calls.total().cmp(&b.calls.total())));
    let Some((i, e)) = best else {
        let why = format!(
            "keep {}: no other setting holds fewer addresses without more pod IP waits ({}) or EC2 calls over the budget \
             ({} mutating, {} describe per second)",
            current.settings,
            current.pod_ip_waits,
            PerSecond(max_m),
            PerSecond(max_d)
        );
        return Recommendation { choice: None, why };
    };
    let (m, d) = e.rates();
    let saved = 1.0 - e.ips_held_mean / current.ips_held_mean.max(f64::MIN_POSITIVE);
    let why = format!(
        "{} holds {:.0} % fewer addresses than {} (mean {:.0} instead of {:.0}, peak {:.0}) with {} pod IP waits \
         (today {}); EC2 calls {} mutating and {} describe per second (today {} and {}; budget {} and {})",
        e.settings,
        saved * 100.0,
        current.settings,
        e.ips_held_mean,
        current.ips_held_mean,
        e.ips_held_peak,
        e.pod_ip_waits,
        current.pod_ip_waits,
        PerSecond(m),
        PerSecond(d),
        PerSecond(cur_m),
        PerSecond(cur_d),
        PerSecond(max_m),
        PerSecond(max_d)
    );
    Recommendation { choice: Some(i), why }
}

/// A rate for people: two decimals under 1, one under 10, none above.
struct PerSecond(f64);

impl fmt::Display for PerSecond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x == 0.0 {
            f.write_str("0")
        } else if x >= 10.0 {
            write!(f, "{x:.0}")
        } else if x >= 1.0 {
            write!(f, "{x:.1}")
        } else {
            write!(f, "{:.2}", x)
        }
    }
}

#[cfg(test)]
mod tests;
