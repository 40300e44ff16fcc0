//! Per-subnet usage from ipamd's introspection endpoint (`http://127.0.0.1:61679/v1/enis`), the
//! breakdown asked for since 2019 (upstream #757, #3619). ipamd's JSON changed shape over time, so the
//! reader is tolerant: a map keyed by network card index (`{"0": {"TotalIPs", "AssignedIPs", "ENIs":
//! {...}}}`, from mid-2025) or the ENI set directly (older); `SubnetID` per ENI exists from v1.22
//! (2026-02). ENIs without a subnet id are skipped. Each card's totals are read too: since VPC CNI v1.20
//! every card's datastore sets the page's global gauges, so on multi-card instances only introspection
//! has the node's totals ([`crate::multicard`]). Parsing is pure; the fetch is bounded in time and size.

use std::collections::BTreeMap;
use std::time::Duration;

use cni_metrics_proto::v1::{Ipv4Block, SubnetUsage};
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntrospectError {
    #[error("introspection unavailable: {0}")]
    Unavailable(String),
    #[error("introspection answered HTTP {0}")]
    Http(u16),
    #[error("introspection page larger than {0} bytes")]
    TooLarge(usize),
    #[error("introspection JSON not understood: {0}")]
    Shape(String),
}

/// The ENI sets of the page, whatever its shape.
fn eni_sets(v: &Value) -> Result<Vec<&serde_json::Map<String, Value>>, IntrospectError> {
    let obj = v.as_object().ok_or_else(|| IntrospectError::Shape("not an object".into()))?;
    if let Some(enis) = obj.get("ENIs").and_then(Value::as_object) {
        return Ok(vec![enis]);
    }
    let mut out = Vec::new();
    for (card, inner) in obj {
        if card.parse::<u32>().is_err() {
            continue;
        }
        if let Some(enis) = inner.get("ENIs").and_then(Value::as_object) {
            out.push(enis);
        }
    }
    if out.is_empty() && !obj.is_empty() {
        return Err(IntrospectError::Shape("no ENIs object".into()));
    }
    Ok(out)
}

/// An address is assigned when its `IPAMKey` is set. ipamd v1.23 blanks `containerID` and `ifName` on
/// this page, so `networkName` counts as much as `containerID` (a free address has all three empty).
fn assigned(addr: &Value) -> bool {
    let Some(key) = addr.as_object().and_then(|a| a.iter().find(|(k, _)| k.eq_ignore_ascii_case("IPAMKey"))).map(|(_, v)| v) else {
        return false;
    };
    let set = |name: &str| {
        key.as_object()
            .and_then(|k| k.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .and_then(|(_, v)| v.as_str())
            .is_some_and(|c| !c.is_empty())
    };
    set("networkName") || set("containerID")
}

/// When the page is read and how long ipamd keeps a freed address from pods (IP_COOLDOWN_PERIOD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    pub now_unix_ms: i64,
    pub period_ms: i64,
}

impl Cooldown {
    /// This clock's time, with ipamd's `period` (IP_COOLDOWN_PERIOD).
    pub fn now(period: Duration) -> Cooldown {
        Cooldown { now_unix_ms: cni_metrics_proto::clock::unix_ms_now(), period_ms: i64::try_from(period.as_millis()).unwrap_or(i64::MAX) }
    }

    /// A free address unassigned within the period (ipamd's `inCoolingPeriod`: `now - UnassignedTime <=
    /// period`). Unreadable times are not cooling; Go's zero time (never unassigned) is far past any period.
    fn cooling(&self, addr: &Value) -> bool {
        if assigned(addr) {
            return false;
        }
        let Some(t) = addr.get("UnassignedTime").and_then(Value::as_str).and_then(cni_metrics_proto::clock::parse_rfc3339) else {
            return false;
        };
        let age = self.now_unix_ms.saturating_sub(t);
        // A time ahead of this clock (skew) is taken as just now.
        age <= self.period_ms
    }
}

/// One `AvailableIPv4Cidrs` entry: its addresses (1, or 2^(32 − length) for a prefix), those assigned
/// and the free ones still cooling (at most its free addresses, whatever the page lists).
fn cidr_usage(cidr: &str, info: &Value, cooldown: &Cooldown) -> (f64, f64, f64) {
    let is_prefix = info.get("IsPrefix").and_then(Value::as_bool).unwrap_or(false);
    let size = if is_prefix {
        let bits: u32 = cidr.rsplit('/').next().and_then(|b| b.parse().ok()).filter(|b| *b <= 32).unwrap_or(28);
        f64::from(1u32 << (32 - bits).min(16))
    } else {
        1.0
    };
    let addresses = info.get("IPAddresses").and_then(Value::as_object);
    let count = |f: &dyn Fn(&Value) -> bool| addresses.map_or(0, |a| a.values().filter(|x| f(x)).count()) as f64;
    let assigned = count(&assigned);
    let cooling = count(&|x| cooldown.cooling(x)).min((size - assigned).max(0.0));
    (size, assigned, cooling)
}

/// One network card's datastore: pod addresses, assigned, cooling, ENIs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CardTotals {
    pub total_ips: f64,
    pub assigned_ips: f64,
    pub enis: u32,
    /// Free addresses in their cooldown, over the card's ENIs (IPv4).
    pub cooldown_ips: f64,
}

/// What the introspection page says: per network card (one entry on pages without cards) and per
/// subnet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Introspection {
    pub cards: Vec<CardTotals>,
    pub subnets: Vec<SubnetUsage>,
}

impl Introspection {
    /// The node's free addresses in their cooldown, over every card.
    pub fn cooldown_ips(&self) -> f64 {
        self.cards.iter().map(|c| c.cooldown_ips).sum()
    }
}

/// Read the page: each card's `TotalIPs` / `AssignedIPs` (else summed from its ENIs), ENI count and
/// cooling addresses, and the per-subnet usage.
pub fn parse(v: &Value, cooldown: &Cooldown) -> Result<Introspection, IntrospectError> {
    let subnets = parse_enis(v, cooldown)?;
    let obj = v.as_object().ok_or_else(|| IntrospectError::Shape("not an object".into()))?;
    let card = |c: &serde_json::Map<String, Value>| {
        let enis = c.get("ENIs").and_then(Value::as_object);
        let n = |k: &str| c.get(k).and_then(Value::as_f64).filter(|x| x.is_finite() && *x >= 0.0);
        let cidrs = enis
            .into_iter()
            .flat_map(|e| e.values())
            .filter_map(|eni| eni.get("AvailableIPv4Cidrs").and_then(Value::as_object))
            .flat_map(|m| m.iter());
        CardTotals {
            total_ips: n("TotalIPs").unwrap_or(0.0),
            assigned_ips: n("AssignedIPs").unwrap_or(0.0),
            enis: enis.map_or(0, |e| u32::try_from(e.len()).unwrap_or(u32::MAX)),
            cooldown_ips: cidrs.map(|(cidr, info)| cidr_usage(cidr, info, cooldown).2).sum(),
        }
    };
    let cards = if obj.contains_key("ENIs") {
        vec![card(obj)]
    } else {
        let mut by_index: Vec<(u32, CardTotals)> =
            obj.iter().filter_map(|(k, c)| Some((k.parse::<u32>().ok()?, card(c.as_object()?)))).collect();
        by_index.sort_by_key(|(i, _)| *i);
        by_index.into_iter().map(|(_, c)| c).collect()
    };
    Ok(Introspection { cards, subnets })
}

/// Most blocks one node reports (an instance holds at most a few hundred addresses or prefixes).
pub const MAX_BLOCKS: usize = 4096;

/// One subnet's usage while the page is read.
#[derive(Default)]
struct Tally {
    total: f64,
    assigned: f64,
    cooldown: f64,
    enis: u32,
    blocks: Vec<Ipv4Block>,
    ipv6_prefixes: u32,
}

/// An IPv4 CIDR key of `AvailableIPv4Cidrs` as an aligned block; anything else (IPv6, garbage) is skipped.
fn block(cidr: &str) -> Option<Ipv4Block> {
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let address = u32::from(addr.trim().parse::<std::net::Ipv4Addr>().ok()?);
    let prefix_len: u32 = len.trim().parse().ok().filter(|l| (16..=32).contains(l))?;
    let mask = u32::MAX.checked_shl(32 - prefix_len).unwrap_or(0);
    (address & !mask == 0).then_some(Ipv4Block { address, prefix_len })
}

/// Sum the page's ENIs per subnet, sorted by subnet id, with the IPv4 blocks they hold (at most
/// [`MAX_BLOCKS`] in all) and their IPv6 prefixes.
pub fn parse_enis(v: &Value, cooldown: &Cooldown) -> Result<Vec<SubnetUsage>, IntrospectError> {
    let mut by_subnet: BTreeMap<String, Tally> = BTreeMap::new();
    let mut blocks_left = MAX_BLOCKS;
    for enis in eni_sets(v)? {
        for eni in enis.values() {
            let Some(subnet) = eni.get("SubnetID").and_then(Value::as_str).filter(|s| !s.is_empty()) else { continue };
            let v4 = eni.get("AvailableIPv4Cidrs").and_then(Value::as_object);
            let v6 = eni.get("AvailableIPv6Cidrs").and_then(Value::as_object).filter(|m| !m.is_empty());
            if v4.is_none() && v6.is_none() {
                continue;
            }
            let entry = by_subnet.entry(subnet.to_owned()).or_default();
            entry.enis += 1;
            entry.ipv6_prefixes += v6.map_or(0, |m| u32::try_from(m.len()).unwrap_or(u32::MAX));
            for (cidr, info) in v4.into_iter().flatten() {
                let (size, assigned, cooling) = cidr_usage(cidr, info, cooldown);
                entry.total += size;
                entry.assigned += assigned;
                entry.cooldown += cooling;
                if let Some(b) = block(cidr).filter(|_| blocks_left > 0) {
                    blocks_left -= 1;
                    entry.blocks.push(b);
                }
            }
        }
    }
    Ok(by_subnet
        .into_iter()
        .map(|(subnet_id, t)| {
            let mut blocks = t.blocks;
            blocks.sort_by_key(|b| (b.address, b.prefix_len));
            blocks.dedup();
            SubnetUsage {
                subnet_id,
                total_ips: t.total,
                assigned_ips: t.assigned,
                enis: t.enis,
                blocks,
                ipv6_prefixes: t.ipv6_prefixes,
                continued: false,
                cooldown_ips: t.cooldown,
            }
        })
        .collect())
}

/// Fetch and parse the endpoint.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    max_bytes: usize,
    timeout: Duration,
    cooldown_period: Duration,
) -> Result<Introspection, IntrospectError> {
    let unavailable = |e: reqwest::Error| IntrospectError::Unavailable(e.to_string());
    let mut resp = client.get(url).timeout(timeout).send().await.map_err(unavailable)?;
    if !resp.status().is_success() {
        return Err(IntrospectError::Http(resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(IntrospectError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| IntrospectError::Shape(e.to_string()))?;
    parse(&v, &Cooldown::now(cooldown_period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-12-07T12:00:00Z, ipamd's default cooldown.
    const CLOCK: Cooldown = Cooldown { now_unix_ms: 1_796_644_800_000, period_ms: 30_000 };

    fn eni(subnet: Option<&str>, prefix: bool) -> Value {
        // ipamd v1.23 blanks containerID and ifName on this page: networkName alone marks the address used.
        let used = json!({"Address": "10.0.1.5", "IPAMKey": {"networkName": "aws-cni", "containerID": "", "ifName": ""}});
        let free = json!({"Address": "10.0.1.6", "IPAMKey": {"networkName": "", "containerID": "", "ifName": ""}});
        let cidrs = if prefix {
            json!({"10.0.1.0/28": {"IsPrefix": true, "IPAddresses": {"10.0.1.5": used, "10.0.1.6": free}}})
        } else {
            json!({"10.0.1.5/32": {"IsPrefix": false, "IPAddresses": {"10.0.1.5": used}}, "10.0.1.6/32": {"IsPrefix": false, "IPAddresses": {}}})
        };
        let mut e = json!({"ID": "eni-1", "AvailableIPv4Cidrs": cidrs});
        if let Some(s) = subnet {
            e["SubnetID"] = json!(s);
        }
        e
    }

    #[test]
    fn shapes_table() {
        let usage =
            |s: &str, t: f64, a: f64| SubnetUsage { subnet_id: s.into(), total_ips: t, assigned_ips: a, enis: 1, ..Default::default() };
        // The blocks are checked in `blocks_and_ipv6`.
        let parse_enis =
            |v: &Value| parse_enis(v, &CLOCK).map(|u| u.into_iter().map(|s| SubnetUsage { blocks: Vec::new(), ..s }).collect::<Vec<_>>());
        let cases = [
            (
                "by network card, secondary IPs",
                json!({"0": {"TotalIPs": 2, "AssignedIPs": 1, "ENIs": {"eni-1": eni(Some("subnet-a"), false)}}}),
                vec![usage("subnet-a", 2.0, 1.0)],
            ),
            (
                "two cards, prefix delegation",
                json!({"0": {"ENIs": {"eni-1": eni(Some("subnet-a"), true)}}, "1": {"ENIs": {"eni-2": eni(Some("subnet-b"), true)}}}),
                vec![usage("subnet-a", 16.0, 1.0), usage("subnet-b", 16.0, 1.0)],
            ),
            (
                "older: ENI set directly",
                json!({"TotalIPs": 2, "AssignedIPs": 1, "ENIs": {"eni-1": eni(Some("subnet-a"), false)}}),
                vec![usage("subnet-a", 2.0, 1.0)],
            ),
            ("before v1.22: no subnet ids", json!({"ENIs": {"eni-1": eni(None, false)}}), vec![]),
            ("empty", json!({}), vec![]),
        ];
        for (what, page, want) in cases {
            assert_eq!(parse_enis(&page), Ok(want), "{what}");
        }
        assert!(parse_enis(&json!([1, 2])).is_err());
        // Cards: their own totals, in index order; a page without cards is one.
        let two = json!({"1": {"TotalIPs": 4, "AssignedIPs": 3, "ENIs": {"eni-2": eni(Some("subnet-b"), false), "eni-3": eni(Some("subnet-b"), false)}},
                         "0": {"TotalIPs": 2, "AssignedIPs": 1, "ENIs": {"eni-1": eni(Some("subnet-a"), false)}}});
        let cards = parse(&two, &CLOCK).map(|i| i.cards);
        let card = |t: f64, a: f64, e: u32| CardTotals { total_ips: t, assigned_ips: a, enis: e, cooldown_ips: 0.0 };
        assert_eq!(cards, Ok(vec![card(2.0, 1.0, 1), card(4.0, 3.0, 2)]));
        let old = json!({"TotalIPs": 2, "AssignedIPs": 1, "ENIs": {"eni-1": eni(Some("subnet-a"), false)}});
        assert_eq!(parse(&old, &CLOCK).map(|i| i.cards), Ok(vec![card(2.0, 1.0, 1)]));
        assert!(parse_enis(&json!({"weird": true})).is_err());
    }

    #[test]
    fn blocks_and_ipv6() {
        let block = |a: &str, l: u32| Ipv4Block {
            address: u32::from(a.parse::<std::net::Ipv4Addr>().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
            prefix_len: l,
        };
        // Prefixes and addresses of two ENIs in one subnet, one listed twice; garbage and unaligned keys skipped.
        let page = json!({"0": {"ENIs": {
            "eni-1": {"SubnetID": "subnet-a", "AvailableIPv4Cidrs": {
                "10.0.1.32/28": {"IsPrefix": true}, "10.0.1.16/28": {"IsPrefix": true}, "10.0.1.17/28": {"IsPrefix": true}}},
            "eni-2": {"SubnetID": "subnet-a", "AvailableIPv4Cidrs": {"10.0.1.32/28": {"IsPrefix": true}, "10.0.1.5/32": {}, "nonsense": {}}},
            "eni-3": {"SubnetID": "subnet-6", "AvailableIPv4Cidrs": {}, "AvailableIPv6Cidrs": {"2600:1f18:1:2:3::/80": {"IsPrefix": true}}}}}});
        let got =
            parse_enis(&page, &CLOCK).map(|u| u.into_iter().map(|s| (s.subnet_id, s.blocks, s.ipv6_prefixes, s.enis)).collect::<Vec<_>>());
        let want = vec![
            ("subnet-6".to_owned(), vec![], 1, 1),
            ("subnet-a".to_owned(), vec![block("10.0.1.5", 32), block("10.0.1.16", 28), block("10.0.1.32", 28)], 0, 2),
        ];
        assert_eq!(got, Ok(want));
    }

    #[test]
    fn cooling_addresses_are_free_ones_unassigned_within_the_period() {
        let addr = |used: bool, unassigned: &str| {
            let key = if used {
                json!({"networkName": "aws-cni", "containerID": "", "ifName": ""})
            } else {
                json!({"networkName": "", "containerID": "", "ifName": ""})
            };
            json!({"Address": "10.0.1.1", "IPAMKey": key, "UnassignedTime": unassigned})
        };
        let page = json!({"0": {"TotalIPs": 16, "AssignedIPs": 1, "ENIs": {"eni-1": {"ID": "eni-1", "SubnetID": "subnet-a", "AvailableIPv4Cidrs": {
        "10.0.1.0/28": {"IsPrefix": true, "IPAddresses": {
            "10.0.1.1": addr(true, "2026-12-07T11:59:00Z"),
            "10.0.1.2": addr(false, "2026-12-07T11:59:50.5Z"),
            "10.0.1.3": addr(false, "2026-12-07T11:59:30Z"),
            "10.0.1.4": addr(false, "2026-12-07T11:59:29.999Z"),
            "10.0.1.5": addr(false, "0001-01-01T00:00:00Z"),
            "10.0.1.6": addr(false, "yesterday"),
            "10.0.1.7": addr(false, "2026-12-07T12:00:05Z")
        }}}}}}});
        // Cooling: 10 s ago, exactly 30 s ago (ipamd's `<=`), and a time just ahead of this clock (skew).
        let got = parse(&page, &CLOCK).map(|i| (i.cooldown_ips(), i.subnets.iter().map(|s| s.cooldown_ips).collect::<Vec<_>>()));
        assert_eq!(got, Ok((3.0, vec![3.0])));
        let longer = Cooldown { period_ms: 60_000, ..CLOCK };
        assert_eq!(parse(&page, &longer).map(|i| i.cooldown_ips()), Ok(4.0));
    }
}
