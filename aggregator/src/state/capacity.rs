//! Derived capacity per node, the numbers operators asked upstream for (free IPs per node, headroom before ENIs run out): IPs free for
//! pods now (`total − assigned`), headroom as ENIs attach (`max − assigned`), and whether the node is low
//! on IPs. Computed per node first, then summed, so one node's surplus never hides another's shortage.
//! Impossible values (assigned > total, assigned > max, negative totals; upstream #2041, #2085) are
//! clamped to 0 for the sums and flag the node as anomalous.
//!
//! An IPv6 node (its ENIs hold IPv6 prefixes, or its total is beyond any IPv4 node: ipamd counts a /80
//! as 2^48 addresses) has no address limit worth the name: its pods are bounded by max pods. It keeps
//! its place in the sums of assigned/total/max, but it has no IPs free, headroom, utilization or "low on
//! IPs" (they would say nothing), and it is counted as an IPv6 node instead.

/// Which capacity gauge a series is (unlabelled ipamd gauges only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapRole {
    Assigned,
    Total,
    Max,
}

impl CapRole {
    pub fn of(name: &str, unlabelled: bool) -> Option<Self> {
        if !unlabelled {
            return None;
        }
        match name {
            "awscni_assigned_ip_addresses" => Some(CapRole::Assigned),
            "awscni_total_ip_addresses" => Some(CapRole::Total),
            "awscni_ip_max" => Some(CapRole::Max),
            _ => None,
        }
    }
}

/// The node's latest capacity gauges (`None` until reported, or when withdrawn).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Capacity {
    pub assigned: Option<f64>,
    pub total: Option<f64>,
    pub max: Option<f64>,
    /// The node's introspection lists IPv6 prefixes.
    pub ipv6_prefixes: bool,
    /// Free addresses in ipamd's IP cooldown, from introspection (`None`: unknown).
    pub cooldown: Option<f64>,
}

/// More addresses than an IPv4 node can hold (a whole IPv4 space): the total counts IPv6 /80 prefixes.
const IPV4_SPACE: f64 = 4_294_967_296.0;

impl Capacity {
    pub fn set(&mut self, role: CapRole, v: Option<f64>) {
        match role {
            CapRole::Assigned => self.assigned = v,
            CapRole::Total => self.total = v,
            CapRole::Max => self.max = v,
        }
    }

    /// An IPv6 node: by its introspection, or by a total no IPv4 node reaches (introspection off).
    pub fn is_ipv6(&self) -> bool {
        self.ipv6_prefixes || self.total.is_some_and(|t| t >= IPV4_SPACE)
    }

    /// The node's derived numbers; `low_threshold` is the headroom below which a node is low on IPs.
    pub fn derive(&self, low_threshold: f64) -> NodeCapacity {
        let mut anomalous = [self.assigned, self.total, self.max].iter().flatten().any(|v| *v < 0.0);
        if self.is_ipv6() {
            return NodeCapacity { ipv6: true, anomalous, ..NodeCapacity::default() };
        }
        let free = |cap: Option<f64>, anomalous: &mut bool| -> Option<f64> {
            let (a, c) = (self.assigned?, cap?);
            if a > c {
                *anomalous = true;
            }
            Some((c - a).max(0.0))
        };
        let available = free(self.total, &mut anomalous);
        let headroom = free(self.max, &mut anomalous);
        let pair = |cap: Option<f64>| Some((self.assigned?, cap?));
        NodeCapacity {
            available,
            headroom,
            low: headroom.is_some_and(|h| h < low_threshold),
            anomalous,
            assigned_total: pair(self.total),
            assigned_max: pair(self.max),
            ipv6: false,
            cooldown: self.cooldown,
        }
    }
}

/// One node's derived capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCapacity {
    pub available: Option<f64>,
    pub headroom: Option<f64>,
    pub low: bool,
    pub anomalous: bool,
    /// (assigned, total) and (assigned, max) when both are known: the utilization ratios' terms.
    pub assigned_total: Option<(f64, f64)>,
    pub assigned_max: Option<(f64, f64)>,
    /// An IPv6 node: none of the above but `anomalous` applies.
    pub ipv6: bool,
    /// Free IPv4 addresses in ipamd's cooldown: part of `available`, which pods cannot have yet.
    pub cooldown: Option<f64>,
}

/// Sums over live nodes, maintained incrementally.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CapacityTotals {
    pub available: f64,
    pub headroom: f64,
    /// Nodes that contribute to `available` / `headroom`.
    pub with_available: u32,
    pub with_headroom: u32,
    pub low_nodes: u32,
    pub anomalous_nodes: u32,
    /// IPv6 nodes: in none of the IPv4 numbers here.
    pub ipv6_nodes: u32,
    /// Σ assigned and Σ total over nodes that report both; likewise for max.
    pub util_total: (f64, f64),
    pub util_max: (f64, f64),
    /// Σ cooldown over the nodes that report it, and how many do.
    pub cooldown: f64,
    pub with_cooldown: u32,
}

impl CapacityTotals {
    /// Σ assigned / Σ total (`basis = "total"`) and Σ assigned / Σ max (`basis = "max"`).
    pub fn utilization(&self) -> (Option<f64>, Option<f64>) {
        let ratio = |(a, c): (f64, f64)| (c > 0.0).then(|| a / c);
        (ratio(self.util_total), ratio(self.util_max))
    }

    pub fn add(&mut self, c: &NodeCapacity) {
        self.apply(c, 1.0);
    }

    pub fn sub(&mut self, c: &NodeCapacity) {
        self.apply(c, -1.0);
    }

    fn apply(&mut self, c: &NodeCapacity, sign: f64) {
        let step = |n: &mut u32, on: bool| {
            if on {
                *n = if sign > 0.0 { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        if let Some(a) = c.available {
            self.available += sign * a;
        }
        if let Some(h) = c.headroom {
            self.headroom += sign * h;
        }
        if let Some(x) = c.cooldown {
            self.cooldown += sign * x;
        }
        step(&mut self.with_cooldown, c.cooldown.is_some());
        if self.with_cooldown == 0 {
            self.cooldown = 0.0;
        }
        for (acc, term) in [(&mut self.util_total, c.assigned_total), (&mut self.util_max, c.assigned_max)] {
            if let Some((a, b)) = term {
                acc.0 += sign * a;
                acc.1 += sign * b;
            }
        }
        step(&mut self.with_available, c.available.is_some());
        step(&mut self.with_headroom, c.headroom.is_some());
        step(&mut self.low_nodes, c.low);
        step(&mut self.anomalous_nodes, c.anomalous);
        step(&mut self.ipv6_nodes, c.ipv6);
        if self.with_available == 0 {
            self.available = 0.0;
        }
        if self.with_headroom == 0 {
            self.headroom = 0.0;
            self.util_max = (0.0, 0.0);
        }
        if self.with_available == 0 {
            self.util_total = (0.0, 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_table() {
        let cap = |a: Option<f64>, t: Option<f64>, m: Option<f64>| Capacity {
            assigned: a,
            total: t,
            max: m,
            ipv6_prefixes: false,
            cooldown: None,
        };
        let v6 = |a: Option<f64>, t: Option<f64>, m: Option<f64>| Capacity {
            assigned: a,
            total: t,
            max: m,
            ipv6_prefixes: true,
            cooldown: None,
        };
        let nc = |available: Option<f64>, headroom: Option<f64>, low: bool, anomalous: bool| NodeCapacity {
            available,
            headroom,
            low,
            anomalous,
            ..NodeCapacity::default()
        };
        let ipv6 = |anomalous: bool| NodeCapacity { ipv6: true, anomalous, ..NodeCapacity::default() };
        // ipamd on an IPv6 node: one /80 is 2^48 addresses in the total, max keeps IPv4 prefix limits.
        let slash80 = 281_474_976_710_656.0;
        let cases = [
            ("healthy", cap(Some(10.0), Some(18.0), Some(58.0)), nc(Some(8.0), Some(48.0), false, false)),
            ("low: headroom 3 < 5", cap(Some(55.0), Some(58.0), Some(58.0)), nc(Some(3.0), Some(3.0), true, false)),
            ("full node is low", cap(Some(58.0), Some(58.0), Some(58.0)), nc(Some(0.0), Some(0.0), true, false)),
            ("assigned > total (#2085) clamps and flags", cap(Some(20.0), Some(12.0), Some(58.0)), nc(Some(0.0), Some(38.0), false, true)),
            ("negative total under PD (#2041)", cap(Some(2.0), Some(-16.0), Some(58.0)), nc(Some(0.0), Some(56.0), false, true)),
            ("nothing known yet", cap(None, Some(18.0), None), nc(None, None, false, false)),
            ("IPv6 by introspection: no IPv4 numbers, never low", v6(Some(110.0), Some(slash80), Some(110.0)), ipv6(false)),
            ("IPv6 by introspection before any gauge", v6(None, None, None), ipv6(false)),
            ("IPv6 by its total alone (introspection off)", cap(Some(30.0), Some(slash80), Some(29.0)), ipv6(false)),
            (
                "a total just below the IPv4 space is IPv4",
                cap(Some(1.0), Some(IPV4_SPACE - 1.0), Some(2.0)),
                nc(Some(IPV4_SPACE - 2.0), Some(1.0), true, false),
            ),
            ("IPv6 with a negative gauge is still anomalous", v6(Some(-1.0), Some(slash80), Some(110.0)), ipv6(true)),
        ];
        for (what, c, want) in cases {
            let got = c.derive(5.0);
            assert_eq!(NodeCapacity { assigned_total: None, assigned_max: None, ..got }, want, "{what}");
        }
        let got = cap(Some(10.0), Some(20.0), Some(40.0)).derive(5.0);
        assert_eq!((got.assigned_total, got.assigned_max), (Some((10.0, 20.0)), Some((10.0, 40.0))));
    }

    #[test]
    fn totals_add_and_sub_back_to_zero() {
        let mut t = CapacityTotals::default();
        let a =
            Capacity { assigned: Some(10.0), total: Some(18.0), max: Some(58.0), ipv6_prefixes: false, cooldown: Some(3.0) }.derive(5.0);
        let b = Capacity { assigned: Some(60.0), total: Some(58.0), max: Some(63.0), ipv6_prefixes: false, cooldown: None }.derive(5.0);
        // An IPv6 node full to its max: in no IPv4 number, not low.
        let c = Capacity { assigned: Some(110.0), total: Some(2f64.powi(48)), max: Some(110.0), ipv6_prefixes: true, cooldown: Some(9.0) }
            .derive(5.0);
        t.add(&a);
        t.add(&b);
        t.add(&c);
        assert_eq!((t.available, t.headroom, t.low_nodes, t.anomalous_nodes, t.with_headroom, t.ipv6_nodes), (8.0, 51.0, 1, 1, 2, 1));
        assert_eq!(t.utilization(), (Some(70.0 / 76.0), Some(70.0 / 121.0)));
        // Cooling addresses: only IPv4 nodes that report them.
        assert_eq!((t.cooldown, t.with_cooldown), (3.0, 1));
        t.sub(&a);
        t.sub(&b);
        t.sub(&c);
        assert_eq!(t, CapacityTotals::default());
    }
}
