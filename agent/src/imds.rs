//! Best-effort node facts from EC2 instance metadata (IMDSv2): availability zone, region, instance type
//! and id, and the `eks:cluster-name` instance tag (present only when instance metadata tags are on).
//! A hostNetwork pod reaches IMDS even where the hop limit blocks ordinary pods. Every lookup is bounded
//! in time; a missing fact stays empty and is never fatal. Facts given by flags win over IMDS.

use std::time::Duration;

/// What the agent tells the aggregator about its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub availability_zone: String,
    pub region: String,
    pub instance_type: String,
    pub instance_id: String,
    pub cluster_name: String,
}

impl NodeFacts {
    /// Fill every empty field from `other`.
    pub fn or(mut self, other: NodeFacts) -> NodeFacts {
        for (mine, theirs) in [
            (&mut self.availability_zone, other.availability_zone),
            (&mut self.region, other.region),
            (&mut self.instance_type, other.instance_type),
            (&mut self.instance_id, other.instance_id),
            (&mut self.cluster_name, other.cluster_name),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            }
        }
        self
    }

    /// Blank every fact without its AWS shape (an instance metadata answer the aggregator would refuse);
    /// returns the blanked fields' names.
    pub fn keep_in_shape(&mut self) -> Vec<&'static str> {
        use cni_metrics_proto::shapes::{fact_ok, Fact};
        let mut blanked = Vec::new();
        for (fact, value) in [
            (Fact::AvailabilityZone, &mut self.availability_zone),
            (Fact::Region, &mut self.region),
            (Fact::InstanceType, &mut self.instance_type),
            (Fact::InstanceId, &mut self.instance_id),
            (Fact::ClusterName, &mut self.cluster_name),
        ] {
            let trimmed = value.trim();
            if fact_ok(fact, trimmed) {
                *value = trimmed.to_owned();
            } else {
                value.clear();
                blanked.push(fact.name());
            }
        }
        blanked
    }

    pub fn complete(&self) -> bool {
        ![&self.availability_zone, &self.region, &self.instance_type, &self.instance_id, &self.cluster_name].iter().any(|f| f.is_empty())
    }
}

/// Read the facts from IMDS at `endpoint` (e.g. `http://169.254.169.254`), within `timeout` in total.
pub async fn lookup(endpoint: &str, timeout: Duration) -> NodeFacts {
    tokio::time::timeout(timeout, lookup_inner(endpoint.trim_end_matches('/'), timeout)).await.unwrap_or_default()
}

async fn lookup_inner(base: &str, timeout: Duration) -> NodeFacts {
    let Ok(client) = reqwest::Client::builder().timeout(timeout).no_proxy().build() else {
        return NodeFacts::default();
    };
    let token = match client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .and_then(|r| r.error_for_status())
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => {
            tracing::debug!(error = %e, "instance metadata unavailable");
            return NodeFacts::default();
        }
    };
    let get = |path: &'static str| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let resp = client
                .get(format!("{base}/latest/meta-data/{path}"))
                .header("X-aws-ec2-metadata-token", token)
                .send()
                .await
                .ok()?
                .error_for_status()
                .ok()?;
            let text = resp.text().await.ok()?;
            let text = text.trim();
            (!text.is_empty() && text.len() <= 256 && !text.contains('\n')).then(|| text.to_owned())
        }
    };
    let (az, region, itype, iid, cluster) = tokio::join!(
        get("placement/availability-zone"),
        get("placement/region"),
        get("instance-type"),
        get("instance-id"),
        get("tags/instance/eks:cluster-name"),
    );
    NodeFacts {
        availability_zone: az.unwrap_or_default(),
        region: region.unwrap_or_default(),
        instance_type: itype.unwrap_or_default(),
        instance_id: iid.unwrap_or_default(),
        cluster_name: cluster.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_imds() {
        let flags = NodeFacts { availability_zone: "eu-west-1a".into(), ..NodeFacts::default() };
        let imds = NodeFacts { availability_zone: "x".into(), region: "eu-west-1".into(), ..NodeFacts::default() };
        let f = flags.or(imds);
        assert_eq!((f.availability_zone.as_str(), f.region.as_str()), ("eu-west-1a", "eu-west-1"));
        assert!(!f.complete());
    }

    #[tokio::test]
    async fn unreachable_imds_is_empty_and_bounded() {
        let t = std::time::Instant::now();
        let l = std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr());
        let port = l.ok().and_then(|a| a.ok()).map_or(1, |a| a.port());
        // The listener is dropped: connection refused.
        let f = lookup(&format!("http://127.0.0.1:{port}"), Duration::from_millis(300)).await;
        assert_eq!(f, NodeFacts::default());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
