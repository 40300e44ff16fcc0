//! The EC2 side: `DescribeSubnets` (paginated), by subnet id (a `subnet-id` filter, so a deleted subnet
//! is simply absent instead of failing the call) and, with discovery, by the VPC CNI's subnet-discovery
//! tags in the VPCs the cluster's subnets are in. With `--subnet-prefixes`, the addresses in use
//! (`DescribeNetworkInterfaces` by `subnet-id`, 1,000 ENIs a page) and each subnet's CIDR reservations
//! (`GetSubnetCidrReservations`, one call a subnet); the SDK's answers become the pure model's blocks
//! ([`eni_blocks`], [`reservation`]). Errors are classified with the same table as CloudWatch's
//! ([`AwsError`]).

use std::time::Duration;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, NetworkInterface, SubnetCidrReservation, SubnetCidrReservationType};
use aws_sdk_ec2::Client;

use crate::aws::AwsError;
use crate::state::subnets::prefixes::{Block, Reservation, SpaceFacts};
use crate::state::SubnetFacts;

/// ENIs per DescribeNetworkInterfaces page (EC2's largest).
const ENI_PAGE: i32 = 1000;

/// Values per filter in one call (EC2 accepts up to 200).
const FILTER_VALUES: usize = 200;

/// The tag keys the VPC CNI's subnet discovery uses: any subnet with the first, or tagged for this
/// cluster with the second.
pub const ROLE_TAG: &str = "kubernetes.io/role/cni";
pub fn cluster_tag(cluster: &str) -> String {
    format!("cni.networking.k8s.aws/cluster/{cluster}")
}

/// The EC2 client.
pub struct Ec2 {
    client: Client,
}

impl Ec2 {
    /// From the SDK's default chain (as the CloudWatch sink), retries off (ours are in the refresher).
    pub async fn new(region: Option<String>) -> Self {
        Self { client: Client::new(&crate::aws::sdk_config(region, Duration::from_secs(15)).await) }
    }

    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<SubnetFacts>, AwsError> {
        let mut out = Vec::new();
        let mut pages = self.client.describe_subnets().set_filters(Some(filters)).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::of("DescribeSubnets", &e))?;
            for s in page.subnets() {
                let (Some(id), Some(cidr)) = (s.subnet_id(), s.cidr_block()) else { continue };
                out.push(SubnetFacts {
                    subnet_id: id.to_owned(),
                    availability_zone: s.availability_zone().unwrap_or_default().to_owned(),
                    vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
                    cidr: cidr.to_owned(),
                    available: u64::try_from(s.available_ip_address_count().unwrap_or(0)).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    /// The subnets with these ids (absent ones are left out).
    pub async fn by_id(&self, ids: &[String]) -> Result<Vec<SubnetFacts>, AwsError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let f = Filter::builder().name("subnet-id").set_values(Some(chunk.to_vec())).build();
            out.extend(self.describe(vec![f]).await?);
        }
        Ok(out)
    }

    /// The subnets in `vpcs` tagged for the VPC CNI's subnet discovery (for `cluster`, or for any).
    pub async fn discovered(&self, vpcs: &[String], cluster: &str) -> Result<Vec<SubnetFacts>, AwsError> {
        if vpcs.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = vec![ROLE_TAG.to_owned()];
        if !cluster.is_empty() {
            keys.push(cluster_tag(cluster));
        }
        let vpc = Filter::builder().name("vpc-id").set_values(Some(vpcs.to_vec())).build();
        let tag = Filter::builder().name("tag-key").set_values(Some(keys)).build();
        self.describe(vec![vpc, tag]).await
    }
}

impl Ec2 {
    /// Every IPv4 block ENIs hold in these subnets (primary and secondary addresses, prefixes), by subnet.
    pub async fn interfaces(&self, ids: &[String]) -> Result<BTreeMap<String, SpaceFacts>, AwsError> {
        let mut out: BTreeMap<String, SpaceFacts> = ids.iter().map(|id| (id.clone(), SpaceFacts::default())).collect();
        for chunk in ids.chunks(FILTER_VALUES) {
            let f = Filter::builder().name("subnet-id").set_values(Some(chunk.to_vec())).build();
            let mut pages = self.client.describe_network_interfaces().filters(f).max_results(ENI_PAGE).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| AwsError::of("DescribeNetworkInterfaces", &e))?;
                for eni in page.network_interfaces() {
                    let Some(facts) = eni.subnet_id().and_then(|s| out.get_mut(s)) else { continue };
                    eni_blocks(eni, facts);
                }
            }
        }
        Ok(out)
    }

    /// The subnet's IPv4 CIDR reservations.
    pub async fn reservations(&self, subnet_id: &str) -> Result<Vec<Reservation>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .get_subnet_cidr_reservations()
                .subnet_id(subnet_id)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| AwsError::of("GetSubnetCidrReservations", &e))?;
            out.extend(page.subnet_ipv4_cidr_reservations().iter().filter_map(reservation));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

/// One ENI's addresses and prefixes into its subnet's facts; what is not IPv4 is skipped, counted.
pub fn eni_blocks(eni: &NetworkInterface, facts: &mut SpaceFacts) {
    facts.enis += 1;
    let addresses = eni.private_ip_addresses().iter().filter_map(|a| a.private_ip_address());
    let prefixes = eni.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix());
    // The primary address is also the first of `private_ip_addresses`; listing it twice is harmless.
    for text in eni.private_ip_address().into_iter().chain(addresses).chain(prefixes) {
        match Block::parse(text) {
            Ok(b) => facts.used.push(b),
            Err(_) => facts.skipped += 1,
        }
    }
}

/// A reservation EC2 described; one without a CIDR or type, or not IPv4, is left out.
pub fn reservation(r: &SubnetCidrReservation) -> Option<Reservation> {
    let block = Block::parse(r.cidr()?).ok()?;
    match r.reservation_type()? {
        SubnetCidrReservationType::Explicit => Some(Reservation::Explicit(block)),
        SubnetCidrReservationType::Prefix => Some(Reservation::Prefix(block)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{Ipv4PrefixSpecification, NetworkInterfacePrivateIpAddress};

    use super::*;

    fn b(s: &str) -> Block {
        Block::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// An ENI as DescribeNetworkInterfaces answers for prefix delegation (moto leaves `Ipv4Prefixes` out).
    #[test]
    fn an_eni_with_prefixes() {
        let addr = |a: &str| NetworkInterfacePrivateIpAddress::builder().private_ip_address(a).primary(a.ends_with(".10")).build();
        let eni = NetworkInterface::builder()
            .network_interface_id("eni-0a1b2c3d4e5f00001")
            .subnet_id("subnet-a")
            .private_ip_address("10.0.1.10")
            .private_ip_addresses(addr("10.0.1.10"))
            .private_ip_addresses(addr("10.0.1.11"))
            .ipv4_prefixes(Ipv4PrefixSpecification::builder().ipv4_prefix("10.0.1.32/28").build())
            .ipv4_prefixes(Ipv4PrefixSpecification::builder().ipv4_prefix("10.0.1.48/28").build())
            .ipv6_address("2600:1f18::1")
            .build();
        let mut facts = SpaceFacts::default();
        eni_blocks(&eni, &mut facts);
        let ipv6_only = NetworkInterface::builder().subnet_id("subnet-a").private_ip_address("not-an-address").build();
        eni_blocks(&ipv6_only, &mut facts);
        assert_eq!(facts.used, [b("10.0.1.10"), b("10.0.1.10"), b("10.0.1.11"), b("10.0.1.32/28"), b("10.0.1.48/28")]);
        assert_eq!((facts.enis, facts.skipped), (2, 1));
    }

    #[test]
    fn reservations_by_type() {
        let r = |cidr: &str, t: SubnetCidrReservationType| SubnetCidrReservation::builder().cidr(cidr).reservation_type(t).build();
        assert_eq!(reservation(&r("10.0.1.64/26", SubnetCidrReservationType::Prefix)), Some(Reservation::Prefix(b("10.0.1.64/26"))));
        assert_eq!(reservation(&r("10.0.1.128/25", SubnetCidrReservationType::Explicit)), Some(Reservation::Explicit(b("10.0.1.128/25"))));
        assert_eq!(reservation(&r("2600:1f18::/64", SubnetCidrReservationType::Prefix)), None, "IPv6 ignored");
        assert_eq!(reservation(&SubnetCidrReservation::builder().cidr("10.0.1.0/28").build()), None, "no type");
    }
}
