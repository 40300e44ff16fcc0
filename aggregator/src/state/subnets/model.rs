//! Subnet capacity as pure logic: EC2's facts about a subnet ([`SubnetFacts`], from `DescribeSubnets`)
//! joined with what the cluster's nodes hold in it ([`ClusterUse`], from their agents' introspection)
//! into one [`SubnetRow`] per subnet, plus the per-AZ and cluster sums and the subnets low on addresses.
//!
//! Per subnet: usable = CIDR size − the 5 addresses AWS reserves; available = EC2's
//! `AvailableIpAddressCount`; held by the cluster = the pod addresses of its nodes' ENIs plus one primary
//! address per ENI; held by others = usable − available − held by the cluster (other clusters, load
//! balancers, interface endpoints, instances outside the cluster), clamped at 0: a negative value means
//! the numbers were read at different moments (ENIs attached between the scrape and the EC2 call) and
//! is counted.

use std::collections::BTreeMap;

/// What EC2 says about one subnet.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetFacts {
    pub subnet_id: String,
    pub availability_zone: String,
    pub vpc_id: String,
    pub cidr: String,
    pub available: u64,
}

/// What the cluster's nodes hold in one subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClusterUse {
    pub nodes: u32,
    /// Pod addresses (secondary IPs, prefixes × size) of the nodes' ENIs.
    pub pod_addresses: f64,
    pub assigned: f64,
    pub enis: u32,
}

/// When a subnet counts as low on addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LowThreshold {
    /// Available below this share of usable (`10%`).
    Percent(f64),
    /// Available below this count (`50`).
    Absolute(u64),
}

impl LowThreshold {
    /// `10%` or `50`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?}: a percentage (10%) or a count of addresses (50)"))?;
            if !(v > 0.0 && v < 100.0) {
                return Err(format!("{s:?}: the percentage must be between 0 and 100"));
            }
            return Ok(Self::Percent(v));
        }
        t.parse::<u64>().map(Self::Absolute).map_err(|_| format!("{s:?}: a percentage (10%) or a count of addresses (50)"))
    }

    pub fn is_low(&self, available: f64, usable: f64) -> bool {
        match *self {
            Self::Percent(p) => available < usable * p / 100.0,
            Self::Absolute(n) => available < n as f64,
        }
    }
}

/// The addresses of an IPv4 CIDR that instances may use: its size minus the 5 AWS reserves
/// (network, VPC router, DNS, future use, broadcast). `None` for something that is not a CIDR.
pub fn usable_addresses(cidr: &str) -> Option<u64> {
    let (addr, bits) = cidr.split_once('/')?;
    addr.parse::<std::net::Ipv4Addr>().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    Some((1u64 << (32 - bits)).saturating_sub(5))
}

/// One subnet's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetRow {
    pub subnet_id: String,
    pub availability_zone: String,
    pub usable: f64,
    pub available: f64,
    pub held_by_cluster: f64,
    pub assigned_to_pods: f64,
    pub held_by_others: f64,
    pub nodes: u32,
    pub low: bool,
}

/// Every subnet of the cluster, worst first, and the sums.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubnetReport {
    pub rows: Vec<SubnetRow>,
    /// Per AZ: available addresses and subnets low on them.
    pub by_az: BTreeMap<String, (f64, u32)>,
    pub available: f64,
    pub low: u32,
    /// Subnets whose usable − available − held came out negative (clamped to 0).
    pub negative_others: u32,
}

/// Join EC2's facts with the cluster's use. Subnets the cluster uses that EC2 did not describe are
/// left out (their facts are unknown); described subnets no node uses yet (tag discovery) are rows
/// with nothing held.
pub fn join(facts: &BTreeMap<String, SubnetFacts>, usage: &BTreeMap<String, ClusterUse>, threshold: LowThreshold) -> SubnetReport {
    let mut r = SubnetReport::default();
    for f in facts.values() {
        let Some(usable) = usable_addresses(&f.cidr) else { continue };
        let usable = usable as f64;
        let u = usage.get(&f.subnet_id).copied().unwrap_or_default();
        let available = f.available as f64;
        let held = u.pod_addresses + f64::from(u.enis);
        let others = usable - available - held;
        if others < 0.0 {
            r.negative_others += 1;
        }
        let low = threshold.is_low(available, usable);
        let az = r.by_az.entry(f.availability_zone.clone()).or_default();
        az.0 += available;
        az.1 += u32::from(low);
        r.available += available;
        r.low += u32::from(low);
        r.rows.push(SubnetRow {
            subnet_id: f.subnet_id.clone(),
            availability_zone: f.availability_zone.clone(),
            usable,
            available,
            held_by_cluster: held,
            assigned_to_pods: u.assigned,
            held_by_others: others.max(0.0),
            nodes: u.nodes,
            low,
        });
    }
    // Worst first: the smallest share of usable addresses still available.
    r.rows.sort_by(|a, b| {
        let share = |x: &SubnetRow| if x.usable > 0.0 { x.available / x.usable } else { 0.0 };
        share(a).total_cmp(&share(b)).then_with(|| a.subnet_id.cmp(&b.subnet_id))
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: &str, az: &str, cidr: &str, available: u64) -> (String, SubnetFacts) {
        (
            id.into(),
            SubnetFacts { subnet_id: id.into(), availability_zone: az.into(), vpc_id: "vpc-1".into(), cidr: cidr.into(), available },
        )
    }

    #[test]
    fn usable_addresses_table() {
        for (cidr, want) in [("10.0.0.0/24", Some(251)), ("10.0.0.0/16", Some(65_531)), ("10.0.1.0/28", Some(11)), ("10.0.0.0/32", Some(0))]
        {
            assert_eq!(usable_addresses(cidr), want, "{cidr}");
        }
        for bad in ["", "10.0.0.0", "10.0.0.0/33", "fd00::/64", "x/24"] {
            assert_eq!(usable_addresses(bad), None, "{bad}");
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(LowThreshold::parse("10%"), Ok(LowThreshold::Percent(10.0)));
        assert_eq!(LowThreshold::parse(" 50 "), Ok(LowThreshold::Absolute(50)));
        for bad in ["", "0%", "100%", "-5", "ten", "5.5"] {
            assert!(LowThreshold::parse(bad).is_err(), "{bad}");
        }
        assert!(LowThreshold::Percent(10.0).is_low(25.0, 251.0));
        assert!(!LowThreshold::Percent(10.0).is_low(26.0, 251.0));
        assert!(LowThreshold::Absolute(50).is_low(49.0, 65_531.0));
    }

    #[test]
    fn joins_ec2_with_the_cluster() {
        let f: BTreeMap<_, _> = [
            facts("subnet-a", "eu-west-1a", "10.0.1.0/24", 200),
            facts("subnet-b", "eu-west-1b", "10.0.2.0/24", 20),
            // tagged for the cluster, no node yet
            facts("subnet-c", "eu-west-1b", "10.0.3.0/28", 11),
            // read at different moments: EC2 already counts an ENI the agent has not reported
            facts("subnet-d", "eu-west-1a", "10.0.4.0/28", 0),
        ]
        .into_iter()
        .collect();
        let u: BTreeMap<_, _> = [
            ("subnet-a".to_owned(), ClusterUse { nodes: 2, pod_addresses: 30.0, assigned: 12.0, enis: 3 }),
            ("subnet-b".to_owned(), ClusterUse { nodes: 1, pod_addresses: 200.0, assigned: 150.0, enis: 4 }),
            ("subnet-d".to_owned(), ClusterUse { nodes: 1, pod_addresses: 12.0, assigned: 1.0, enis: 1 }),
            // not described by EC2 (another account, or deleted): left out
            ("subnet-z".to_owned(), ClusterUse { nodes: 1, pod_addresses: 5.0, assigned: 1.0, enis: 1 }),
        ]
        .into_iter()
        .collect();
        let r = join(&f, &u, LowThreshold::Percent(10.0));
        let ids: Vec<&str> = r.rows.iter().map(|r| r.subnet_id.as_str()).collect();
        assert_eq!(ids, ["subnet-d", "subnet-b", "subnet-a", "subnet-c"], "worst first");
        let a = r.rows.iter().find(|r| r.subnet_id == "subnet-a").cloned();
        assert_eq!(
            a,
            Some(SubnetRow {
                subnet_id: "subnet-a".into(),
                availability_zone: "eu-west-1a".into(),
                usable: 251.0,
                available: 200.0,
                held_by_cluster: 33.0,
                assigned_to_pods: 12.0,
                held_by_others: 18.0,
                nodes: 2,
                low: false,
            })
        );
        let b = r.rows.iter().find(|r| r.subnet_id == "subnet-b").map(|r| (r.held_by_others, r.low));
        assert_eq!(b, Some((27.0, true)), "251 - 20 - 204, and 20 < 25.1");
        let c = r.rows.iter().find(|r| r.subnet_id == "subnet-c").map(|r| (r.held_by_cluster, r.held_by_others, r.low));
        assert_eq!(c, Some((0.0, 0.0, false)), "discovered, unused: all usable still available");
        let d = r.rows.iter().find(|r| r.subnet_id == "subnet-d").map(|r| r.held_by_others);
        assert_eq!((d, r.negative_others), (Some(0.0), 1), "11 - 0 - 13 clamps to 0, counted");
        assert_eq!((r.available, r.low), (231.0, 2));
        assert_eq!(r.by_az.get("eu-west-1a"), Some(&(200.0, 1)));
        assert_eq!(r.by_az.get("eu-west-1b"), Some(&(31.0, 1)));
    }
}
