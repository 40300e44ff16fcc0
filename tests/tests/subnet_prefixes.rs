//! Free /28 prefixes (`--subnet-prefixes`) end to end: moto's EC2 holds a VPC with subnets in two AZs, an
//! ENI whose secondary addresses fragment one subnet (one address in every other /28), explicit and
//! prefix CIDR reservations in the other; fake ipamds in prefix-delegation mode list /28 prefixes in those
//! subnets; real agents and a real aggregator count. What `/metrics` and CloudWatch show equals a count
//! made here, independently, over what moto and the simulators hold; a new ENI shows within a refresh;
//! throttling is retried; access denied keeps the counts, marked stale, logged once, and heals.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::PageStyle;
use serde_json::json;

async fn create(emu: &Emulator, params: &[(&str, &str)], id_tag: &str) -> Result<String> {
    let xml = emu.ec2(params).await?;
    Ok(xml_field(&xml, id_tag).with_context(|| format!("{id_tag} in {xml}"))?.to_owned())
}

fn ip(s: &str) -> Result<u32> {
    Ok(u32::from(s.trim().parse::<std::net::Ipv4Addr>().with_context(|| format!("address {s:?}"))?))
}

/// `a.b.c.d/n` as (first, last).
fn range(cidr: &str) -> Result<(u32, u32)> {
    let (a, n) = cidr.split_once('/').context("a CIDR")?;
    let n: u32 = n.parse()?;
    let first = ip(a)?;
    Ok((first, first + ((1u64 << (32 - n)) - 1) as u32))
}

/// Every value of `<tag>` in the XML.
fn xml_all<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    xml.split(&open).skip(1).filter_map(|rest| rest.split(&format!("</{tag}>")).next()).collect()
}

/// What moto and the simulators hold in one subnet: used addresses, explicit and prefix reservations.
struct Truth {
    used: BTreeSet<u32>,
    explicit: Vec<(u32, u32)>,
    prefix: Vec<(u32, u32)>,
}

async fn truth(emu: &Emulator, subnet: &str, node_prefixes: &[&str]) -> Result<Truth> {
    let enis = emu.ec2(&[("Action", "DescribeNetworkInterfaces"), ("Filter.1.Name", "subnet-id"), ("Filter.1.Value.1", subnet)]).await?;
    let mut used = BTreeSet::new();
    for a in xml_all(&enis, "privateIpAddress") {
        used.insert(ip(a)?);
    }
    for p in node_prefixes {
        let (lo, hi) = range(p)?;
        used.extend(lo..=hi);
    }
    let res = emu.ec2(&[("Action", "GetSubnetCidrReservations"), ("SubnetId", subnet)]).await?;
    let (mut explicit, mut prefix) = (Vec::new(), Vec::new());
    for item in res.split("<item>").skip(1) {
        let (Some(cidr), Some(kind)) = (xml_field(item, "cidr"), xml_field(item, "reservationType")) else { continue };
        if kind == "explicit" {
            explicit.push(range(cidr)?)
        } else {
            prefix.push(range(cidr)?)
        }
    }
    Ok(Truth { used, explicit, prefix })
}

/// The free /28s of a subnet counted address by address: (free, free inside prefix reservations).
fn count_by_hand(cidr: &str, t: &Truth) -> Result<(u32, u32)> {
    let (first, last) = range(cidr)?;
    let aws_reserved = |a: u32| a < first + 4 || a == last;
    let inside = |a: u32, rs: &[(u32, u32)]| rs.iter().any(|(lo, hi)| (*lo..=*hi).contains(&a));
    let (mut free, mut reserved) = (0, 0);
    for block in (first..=last).step_by(16) {
        let addrs = block..block + 16;
        if addrs.clone().all(|a| !aws_reserved(a) && !t.used.contains(&a) && !inside(a, &t.explicit)) {
            free += 1;
            reserved += u32::from(addrs.clone().all(|a| inside(a, &t.prefix)));
        }
    }
    Ok((free, reserved))
}

fn prefix_sample(page: &str, metric: &str, subnet: &str, az: &str) -> Option<f64> {
    sample(page, &format!("cni_metrics_subnet_{metric}"), &[("subnet_id", subnet), ("availability_zone", az)])
}

const A_PREFIXES: [&str; 2] = ["10.0.1.16/28", "10.0.1.48/28"];
const B_PREFIXES: [&str; 2] = ["10.0.2.16/28", "10.0.2.64/28"];

/// The aggregator's counts equal the hand count over moto and the simulators.
async fn check(emu: &Emulator, agg: &Aggregator, a: &str, b: &str) -> Result<std::result::Result<(), String>> {
    let page = agg.metrics().await?;
    let (ta, tb) = (truth(emu, a, &A_PREFIXES).await?, truth(emu, b, &B_PREFIXES).await?);
    let (fa, ra) = count_by_hand("10.0.1.0/24", &ta)?;
    let (fb, rb) = count_by_hand("10.0.2.0/24", &tb)?;
    let got = [
        prefix_sample(&page, "free_prefixes", a, "us-east-1a"),
        prefix_sample(&page, "free_reserved_prefixes", a, "us-east-1a"),
        prefix_sample(&page, "free_prefixes", b, "us-east-1b"),
        prefix_sample(&page, "free_reserved_prefixes", b, "us-east-1b"),
        sample(&page, "cni_metrics_az_free_prefixes", &[("availability_zone", "us-east-1b")]),
    ];
    let want = [fa, ra, fb, rb, fb].map(|v| Some(f64::from(v)));
    Ok(if got == want { Ok(()) } else { Err(format!("free prefixes {got:?}, counted by hand {want:?}")) })
}

#[tokio::test(flavor = "multi_thread")]
async fn free_prefixes_match_a_count_over_ec2_and_the_nodes() -> Result<()> {
    let emu = Emulator::start()?;
    let vpc = create(&emu, &[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")], "vpcId").await?;
    let subnet = |cidr: &str, az: &str| {
        let (vpc, cidr, az) = (vpc.clone(), cidr.to_owned(), az.to_owned());
        let emu = &emu;
        async move {
            create(emu, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", &cidr), ("AvailabilityZone", &az)], "subnetId").await
        }
    };
    let a = subnet("10.0.1.0/24", "us-east-1a").await?;
    let b = subnet("10.0.2.0/24", "us-east-1b").await?;
    // Subnet A fragmented by another ENI: one address in every other /28 (blocks 0, 2, ..., 14).
    let spread: Vec<String> = (0..16).step_by(2).map(|k| format!("10.0.1.{}", k * 16 + 5)).collect();
    let mut params = vec![("Action".to_owned(), "CreateNetworkInterface".to_owned()), ("SubnetId".to_owned(), a.clone())];
    for (i, addr) in spread.iter().enumerate() {
        params.push((format!("PrivateIpAddresses.{}.PrivateIpAddress", i + 1), addr.clone()));
        params.push((format!("PrivateIpAddresses.{}.Primary", i + 1), (i == 0).to_string()));
    }
    let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    emu.ec2(&borrowed).await?;
    // Subnet B: the upper half explicitly reserved, a /26 reserved for prefixes (one /28 of it a node's).
    for (cidr, kind) in [("10.0.2.128/25", "explicit"), ("10.0.2.64/26", "prefix")] {
        emu.ec2(&[("Action", "CreateSubnetCidrReservation"), ("SubnetId", &b), ("Cidr", cidr), ("ReservationType", kind)]).await?;
    }

    let dir = scratch_dir("subnet-prefixes")?;
    let agg = Aggregator::start_with(
        Aggregator::launch(&dir, "aggregator")?
            .args([
                "--cluster-id",
                "e2e",
                "--cloudwatch",
                "true",
                "--subnet-metrics",
                "true",
                "--subnet-refresh",
                "1s",
                "--subnet-prefixes-refresh",
                "1s",
                "--subnet-low-prefixes",
                "8",
                "--publish-interval",
                "1s",
            ])
            .envs(&[("AWS_ENDPOINT_URL", Some(emu.url().as_str()))]),
    )?;
    // One node per subnet, prefix delegation, its /28s in the subnet (auto mode: they turn counting on).
    let mut ipamds = Vec::new();
    let mut agents = Vec::new();
    for (i, (s, prefixes)) in [(&a, A_PREFIXES), (&b, B_PREFIXES)].into_iter().enumerate() {
        let f = fake_ipamd(PageStyle::PrefixDelegation, 40 + i as u64, 0).await?;
        f.with_sim(|sim| {
            sim.subnet = Some(s.clone());
            sim.enis = 1;
            sim.prefixes = prefixes.len() as u64;
            sim.assigned = sim.assigned.min(16);
            sim.prefix_cidrs = prefixes.iter().map(|p| (*p).to_owned()).collect();
        });
        agents.push(start_agent(&dir, &format!("node-{i}"), &f.url(), &agg.grpc, &[])?);
        ipamds.push(f);
    }

    eventually(Duration::from_secs(40), || check(&emu, &agg, &a, &b)).await?;
    let page = agg.metrics().await?;
    promtool_check(&page).context("the page with prefix metrics")?;
    // A: 16 blocks - 8 fragmented - 2 of the node - block 15 (the broadcast address) = 5, low (< 8).
    assert_eq!(prefix_sample(&page, "free_prefixes", &a, "us-east-1a"), Some(5.0));
    assert_eq!(prefix_sample(&page, "low_on_prefixes", &a, "us-east-1a"), Some(1.0));
    assert_eq!(prefix_sample(&page, "largest_free_block_prefix_length", &a, "us-east-1a"), Some(28.0), "fragmented: only /28s");
    // B: blocks 2..7 free but 4 (the node's) = 5 of which 5, 6, 7 in the prefix reservation.
    assert_eq!(prefix_sample(&page, "free_reserved_prefixes", &b, "us-east-1b"), Some(3.0));
    assert_eq!(sample(&page, "cni_metrics_subnets_low_on_prefixes", &[]), Some(2.0));
    assert_eq!(sample(&page, "cni_metrics_subnet_prefixes_stale", &[]), Some(0.0));

    // A new ENI in A takes an address in a free /28: the count follows within a refresh.
    emu.ec2(&[
        ("Action", "CreateNetworkInterface"),
        ("SubnetId", &a),
        ("PrivateIpAddresses.1.PrivateIpAddress", "10.0.1.85"),
        ("PrivateIpAddresses.1.Primary", "true"),
    ])
    .await?;
    eventually(Duration::from_secs(10), || async {
        let page = agg.metrics().await?;
        let got = prefix_sample(&page, "free_prefixes", &a, "us-east-1a");
        Ok(if got == Some(4.0) { Ok(()) } else { Err(format!("free /28s in A {got:?}, want 4")) })
    })
    .await?;
    eventually(Duration::from_secs(10), || check(&emu, &agg, &a, &b)).await?;

    // watch: subnet A's row shows its free /28s and that it is low on them; --json the same numbers.
    let watch = |json: bool| -> Result<String> {
        let url = format!("http://{}", agg.grpc);
        let mut args = vec!["watch", "--once", "--aggregator", url.as_str()];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator")).args(&args).output()?;
        anyhow::ensure!(out.status.success(), "watch failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let table = watch(false)?;
    println!("watch --once:\n{table}");
    let row = table.lines().find(|l| l.starts_with(a.as_str())).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(7..).map(<[&str]>::to_vec), Some(vec!["4", "/28"]), "subnet A: 4 free /28s, low on them: {table}");
    let v: serde_json::Value = serde_json::from_str(&watch(true)?)?;
    let json_a = v["subnets"].as_array().and_then(|s| s.iter().find(|x| x["subnet_id"] == a.as_str()).cloned()).unwrap_or_default();
    assert_eq!((json_a["free_prefixes"].as_f64(), json_a["low_on_prefixes"].as_bool()), (Some(4.0), Some(true)), "{v}");
    assert_eq!(json_a["largest_free_block_prefix_length"].as_f64(), Some(28.0), "{v}");

    // CloudWatch, read back from moto: per subnet and for the cluster.
    eventually(Duration::from_secs(20), || async {
        let per_subnet = emu.datapoints_with("subnetFreePrefixes", &[("CLUSTER_ID", "e2e"), ("SubnetId", &a)]).await?;
        let low = emu.datapoints_with("subnetsLowOnPrefixes", &[("CLUSTER_ID", "e2e")]).await?;
        let last = |d: &[(f64, f64, f64)]| d.last().map(|p| p.2);
        let got = (last(&per_subnet), last(&low));
        Ok(if got == (Some(4.0), Some(2.0)) { Ok(()) } else { Err(format!("CloudWatch {got:?}")) })
    })
    .await?;

    // Throttling: two throttled DescribeNetworkInterfaces, retried; the counts stay current.
    let throttle = json!({"status": 503, "code": "RequestLimitExceeded", "action": "DescribeNetworkInterfaces"});
    emu.control("ec2_faults", json!({"faults": [throttle.clone(), throttle]})).await?;
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let throttled = sample(&page, "cni_metrics_subnet_prefix_calls_total", &[("result", "throttled")]).unwrap_or(0.0);
        let stale = sample(&page, "cni_metrics_subnet_prefixes_stale", &[]);
        Ok(if throttled >= 2.0 && stale == Some(0.0) { Ok(()) } else { Err(format!("throttled {throttled}, stale {stale:?}")) })
    })
    .await?;

    // Access denied on the reservations: the counts stay, marked stale; logged once; still ready.
    emu.control(
        "ec2_outage",
        json!({"status": 403, "code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation.", "actions": ["GetSubnetCidrReservations"]}),
    )
    .await?;
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let denied = sample(&page, "cni_metrics_subnet_prefix_calls_total", &[("result", "denied")]).unwrap_or(0.0);
        let kept = prefix_sample(&page, "free_prefixes", &a, "us-east-1a");
        let stale = sample(&page, "cni_metrics_subnet_prefixes_stale", &[]);
        Ok(if denied >= 3.0 && stale == Some(1.0) && kept == Some(4.0) {
            Ok(())
        } else {
            Err(format!("denied {denied}, stale {stale:?}, kept {kept:?}"))
        })
    })
    .await?;
    let log = agg.proc.stderr() + &agg.proc.stdout();
    assert_eq!(log.matches("EC2 refuses GetSubnetCidrReservations").count(), 1, "logged once: {log}");
    assert!(log.contains("ec2:GetSubnetCidrReservations"), "the log names the permission");
    assert_eq!(agg.readyz().await?.0, 200, "prefix counts are extra: still ready");
    assert_eq!(sample(&agg.metrics().await?, "cni_metrics_subnet_stale", &[]), Some(0.0), "subnet metrics unaffected");
    emu.control("ec2_outage", json!({})).await?;
    eventually(Duration::from_secs(20), || async {
        let stale = sample(&agg.metrics().await?, "cni_metrics_subnet_prefixes_stale", &[]);
        Ok(if stale == Some(0.0) { Ok(()) } else { Err("still stale".into()) })
    })
    .await?;
    assert!((agg.proc.stderr() + &agg.proc.stdout()).contains("is allowed again; free prefix counts are current"));
    drop(agents);
    Ok(())
}
