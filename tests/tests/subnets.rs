//! Subnet capacity (`--subnet-metrics`) end to end: moto's EC2 (a VPC, subnets in two AZs, ENIs that
//! really lower `AvailableIpAddressCount`) behind the test emulator, fake ipamds whose introspection names
//! those subnets, real agents and a real aggregator. What `/metrics` and CloudWatch (read back from moto)
//! show per subnet equals what `DescribeSubnets` returns and what the nodes hold; new ENIs show up within a
//! refresh; a subnet tagged for the VPC CNI's discovery appears before any node uses it; throttling is
//! retried; access denied keeps the last values, marked stale, logged once, and heals.

use std::time::Duration;

use anyhow::{Context, Result};
use cni_metrics_e2e::*;
use cni_metrics_testkit::sim::PageStyle;
use serde_json::json;

async fn create(emu: &Emulator, params: &[(&str, &str)], id_tag: &str) -> Result<String> {
    let xml = emu.ec2(params).await?;
    Ok(xml_field(&xml, id_tag).with_context(|| format!("{id_tag} in {xml}"))?.to_owned())
}

/// EC2's AvailableIpAddressCount of a subnet, asked directly.
async fn available(emu: &Emulator, subnet: &str) -> Result<f64> {
    let xml = emu.ec2(&[("Action", "DescribeSubnets"), ("SubnetId.1", subnet)]).await?;
    Ok(xml_field(&xml, "availableIpAddressCount").context("availableIpAddressCount")?.parse()?)
}

/// What a node holds in its subnet by its introspection page: pod addresses plus one primary per ENI.
fn held(f: &cni_metrics_testkit::FakeIpamd) -> Result<f64> {
    let page: serde_json::Value = serde_json::from_str(&f.with_sim(|s| s.render_enis()))?;
    let clock = cni_metrics_agent::introspect::Cooldown::now(Duration::from_secs(30));
    let usage = cni_metrics_agent::introspect::parse_enis(&page, &clock).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(usage.iter().map(|u| u.total_ips + f64::from(u.enis)).sum())
}

fn subnet_sample(page: &str, metric: &str, subnet: &str, az: &str) -> Option<f64> {
    sample(page, &format!("cni_metrics_subnet_{metric}"), &[("subnet_id", subnet), ("availability_zone", az)])
}

/// The aggregator's per-subnet numbers equal EC2's and the nodes' (nodes 0 and 1 in `a`, node 2 in `b`).
async fn check(
    emu: &Emulator,
    agg: &Aggregator,
    ipamds: &[cni_metrics_testkit::FakeIpamd],
    [a, b, tagged]: [&String; 3],
) -> Result<std::result::Result<(), String>> {
    let page = agg.metrics().await?;
    let held_a = held(&ipamds[0])? + held(&ipamds[1])?;
    let held_b = held(&ipamds[2])?;
    let (ea, eb, et) = (available(emu, a).await?, available(emu, b).await?, available(emu, tagged).await?);
    let got = [
        subnet_sample(&page, "available_ip_addresses", a, "us-east-1a"),
        subnet_sample(&page, "available_ip_addresses", b, "us-east-1b"),
        subnet_sample(&page, "available_ip_addresses", tagged, "us-east-1b"),
        subnet_sample(&page, "usable_ip_addresses", a, "us-east-1a"),
        subnet_sample(&page, "usable_ip_addresses", tagged, "us-east-1b"),
        subnet_sample(&page, "cluster_ip_addresses", a, "us-east-1a"),
        subnet_sample(&page, "cluster_ip_addresses", b, "us-east-1b"),
        subnet_sample(&page, "cluster_ip_addresses", tagged, "us-east-1b"),
        subnet_sample(&page, "other_ip_addresses", a, "us-east-1a"),
    ];
    let want = [ea, eb, et, 251.0, 11.0, held_a, held_b, 0.0, (251.0 - ea - held_a).max(0.0)].map(Some);
    Ok(if got == want { Ok(()) } else { Err(format!("subnet numbers {got:?}, EC2 and the nodes say {want:?}")) })
}

#[tokio::test(flavor = "multi_thread")]
async fn subnet_capacity_from_ec2_joined_with_the_cluster() -> Result<()> {
    let emu = Emulator::start()?;
    let vpc = create(&emu, &[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")], "vpcId").await?;
    let subnet = |cidr: &'static str, az: &'static str| {
        let vpc = vpc.clone();
        let emu = &emu;
        async move {
            create(emu, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", cidr), ("AvailabilityZone", az)], "subnetId").await
        }
    };
    let a = subnet("10.0.1.0/24", "us-east-1a").await?;
    let b = subnet("10.0.2.0/24", "us-east-1b").await?;
    let tagged = subnet("10.0.3.0/28", "us-east-1b").await?;
    let untagged_unused = subnet("10.0.4.0/24", "us-east-1a").await?;
    emu.ec2(&[("Action", "CreateTags"), ("ResourceId.1", &tagged), ("Tag.1.Key", "kubernetes.io/role/cni"), ("Tag.1.Value", "1")]).await?;
    // Something else in subnet A (a load balancer, say): 1 + 9 addresses.
    emu.ec2(&[("Action", "CreateNetworkInterface"), ("SubnetId", &a), ("SecondaryPrivateIpAddressCount", "9")]).await?;

    let dir = scratch_dir("subnets")?;
    let agg = Aggregator::start_with(
        Aggregator::launch(&dir, "aggregator")?
            .args([
                "--cluster-id",
                "e2e",
                "--cloudwatch",
                "true",
                "--subnet-metrics",
                "true",
                "--subnet-discovery",
                "true",
                "--subnet-refresh",
                "1s",
                "--publish-interval",
                "1s",
            ])
            .envs(&[("AWS_ENDPOINT_URL", Some(emu.url().as_str()))]),
    )?;
    // Two nodes in subnet A, one in B.
    let mut ipamds = Vec::new();
    let mut agents = Vec::new();
    for (i, s) in [&a, &a, &b].into_iter().enumerate() {
        let f = fake_ipamd(PageStyle::Modern, 90 + i as u64, 3).await?;
        f.with_sim(|sim| sim.subnet = Some(s.clone()));
        agents.push(start_agent(&dir, &format!("node-{i}"), &f.url(), &agg.grpc, &[])?);
        ipamds.push(f);
    }

    eventually(Duration::from_secs(30), || check(&emu, &agg, &ipamds, [&a, &b, &tagged])).await?;
    let page = agg.metrics().await?;
    assert!(promtool_check(&page)?, "the page with subnet metrics parses");
    assert!(!page.contains(&untagged_unused), "an untagged subnet no node uses is not ours");
    assert_eq!(sample(&page, "cni_metrics_subnet_stale", &[]), Some(0.0));

    // More ENIs in subnet A: within a refresh the numbers follow.
    let before = available(&emu, &a).await?;
    emu.ec2(&[("Action", "CreateNetworkInterface"), ("SubnetId", &a), ("SecondaryPrivateIpAddressCount", "19")]).await?;
    let after = available(&emu, &a).await?;
    assert!(after < before, "moto's AvailableIpAddressCount falls: {before} -> {after}");
    eventually(Duration::from_secs(10), || check(&emu, &agg, &ipamds, [&a, &b, &tagged])).await?;

    // CloudWatch, read back from moto: per subnet (CLUSTER_ID + SubnetId), per AZ and for the cluster.
    eventually(Duration::from_secs(20), || async {
        let per_subnet = emu.datapoints_with("subnetAvailableIPAddresses", &[("CLUSTER_ID", "e2e"), ("SubnetId", &a)]).await?;
        let cluster = emu.datapoints_with("subnetAvailableIPAddresses", &[("CLUSTER_ID", "e2e")]).await?;
        let by_az = emu.datapoints_with("subnetAvailableIPAddresses", &[("CLUSTER_ID", "e2e"), ("AvailabilityZone", "us-east-1b")]).await?;
        let total = after + available(&emu, &b).await? + available(&emu, &tagged).await?;
        let az_b = available(&emu, &b).await? + available(&emu, &tagged).await?;
        let last = |d: &[(f64, f64, f64)]| d.last().map(|p| p.2);
        let got = (last(&per_subnet), last(&cluster), last(&by_az));
        Ok(if got == (Some(after), Some(total), Some(az_b)) {
            Ok(())
        } else {
            Err(format!("CloudWatch {got:?}, EC2 {:?}", (after, total, az_b)))
        })
    })
    .await?;

    // `watch` shows them, worst first.
    let out = std::process::Command::new(bin_dir()?.join("cni-metrics-aggregator"))
        .args(["watch", "--once", "--aggregator", &format!("http://{}", agg.grpc)])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SUBNETS (worst first): ") && table.contains(&a) && table.contains(&tagged), "{table}");

    // Throttling: two throttled calls, retried within the refresh; the values stay current.
    emu.control(
        "ec2_faults",
        json!({"faults": [{"status": 503, "code": "RequestLimitExceeded"}, {"status": 503, "code": "RequestLimitExceeded"}]}),
    )
    .await?;
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let throttled = sample(&page, "cni_metrics_subnet_describe_calls_total", &[("result", "throttled")]).unwrap_or(0.0);
        let stale = sample(&page, "cni_metrics_subnet_stale", &[]);
        Ok(if throttled >= 2.0 && stale == Some(0.0) { Ok(()) } else { Err(format!("throttled {throttled}, stale {stale:?}")) })
    })
    .await?;

    // Access denied: the last values stay, marked stale; logged once; the aggregator stays ready.
    emu.control(
        "ec2_outage",
        json!({"status": 403, "code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation."}),
    )
    .await?;
    eventually(Duration::from_secs(20), || async {
        let page = agg.metrics().await?;
        let denied = sample(&page, "cni_metrics_subnet_describe_calls_total", &[("result", "denied")]).unwrap_or(0.0);
        let kept = subnet_sample(&page, "available_ip_addresses", &a, "us-east-1a");
        let stale = sample(&page, "cni_metrics_subnet_stale", &[]);
        Ok(if denied >= 3.0 && stale == Some(1.0) && kept == Some(after) {
            Ok(())
        } else {
            Err(format!("denied {denied}, stale {stale:?}, kept {kept:?}"))
        })
    })
    .await?;
    let log = agg.proc.stderr() + &agg.proc.stdout();
    assert_eq!(log.matches("EC2 refuses DescribeSubnets").count(), 1, "logged once: {log}");
    assert!(log.contains("ec2:DescribeSubnets"), "the log names the permission");
    assert_eq!(agg.readyz().await?.0, 200, "subnet metrics are extra: still ready");
    emu.control("ec2_outage", json!({})).await?;
    eventually(Duration::from_secs(20), || async {
        Ok(if sample(&agg.metrics().await?, "cni_metrics_subnet_stale", &[]) == Some(0.0) { Ok(()) } else { Err("still stale".into()) })
    })
    .await?;
    assert!((agg.proc.stderr() + &agg.proc.stdout()).contains("DescribeSubnets is allowed again"));
    drop(agents);
    Ok(())
}
