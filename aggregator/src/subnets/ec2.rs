//! The EC2 side: `DescribeSubnets` (the only call, paginated), by subnet id (a `subnet-id` filter, so a
//! deleted subnet is simply absent instead of failing the call) and, with discovery, by the VPC CNI's
//! subnet-discovery tags in the VPCs the cluster's subnets are in. Errors are classified with the same
//! table as CloudWatch's ([`classify`](crate::sinks::cloudwatch::retry::classify)).

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

use super::model::SubnetFacts;
use crate::sinks::cloudwatch::retry::{classify, Retry};

/// Values per filter in one call (EC2 accepts up to 200).
const FILTER_VALUES: usize = 200;

/// The tag keys the VPC CNI's subnet discovery uses: any subnet with the first, or tagged for this
/// cluster with the second.
pub const ROLE_TAG: &str = "kubernetes.io/role/cni";
pub fn cluster_tag(cluster: &str) -> String {
    format!("cni.networking.k8s.aws/cluster/{cluster}")
}

/// A failed DescribeSubnets, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Ec2Error {
    pub retry: Retry,
    /// Bounded: the classification label (`throttling`, `access_denied`, `network`, …).
    pub kind: &'static str,
    pub message: String,
}

fn error<E>(e: &aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> Ec2Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ec2::error::SdkError;
    let (status, code, message) = match e {
        SdkError::ServiceError(s) => {
            (Some(s.raw().status().as_u16()), s.err().code().map(str::to_owned), s.err().message().unwrap_or("").to_owned())
        }
        SdkError::ResponseError(r) => (Some(r.raw().status().as_u16()), None, "unreadable response".to_owned()),
        other => (None, None, aws_sdk_ec2::error::DisplayErrorContext(other).to_string()),
    };
    let (retry, kind) = classify(status, code.as_deref());
    let code = code.unwrap_or_else(|| status.map_or_else(|| "no response".to_owned(), |s| format!("HTTP {s}")));
    Ec2Error { retry, kind, message: format!("DescribeSubnets: {code}: {message}") }
}

/// The EC2 client.
pub struct Ec2 {
    client: Client,
}

impl Ec2 {
    /// From the SDK's default chain (as the CloudWatch sink), retries off (ours are in the refresher).
    pub async fn new(region: Option<String>) -> Self {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).operation_attempt_timeout(Duration::from_secs(15)).build(),
        );
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        Self { client: Client::new(&loader.load().await) }
    }

    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<SubnetFacts>, Ec2Error> {
        let mut out = Vec::new();
        let mut pages = self.client.describe_subnets().set_filters(Some(filters)).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| error(&e))?;
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
    pub async fn by_id(&self, ids: &[String]) -> Result<Vec<SubnetFacts>, Ec2Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let f = Filter::builder().name("subnet-id").set_values(Some(chunk.to_vec())).build();
            out.extend(self.describe(vec![f]).await?);
        }
        Ok(out)
    }

    /// The subnets in `vpcs` tagged for the VPC CNI's subnet discovery (for `cluster`, or for any).
    pub async fn discovered(&self, vpcs: &[String], cluster: &str) -> Result<Vec<SubnetFacts>, Ec2Error> {
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
