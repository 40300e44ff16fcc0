//! The shapes of the strings agent and aggregator exchange: Prometheus metric and label names, a
//! Kubernetes node name, and the node facts (AWS shapes: zone, region, instance type and id, cluster
//! name, subnet id, agent version). The aggregator refuses a message with a string out of shape; the
//! agent checks its own before sending, so an honest agent is never refused.

/// Longest sample or label name.
pub const MAX_NAME: usize = 200;

/// A node fact carried as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    AgentVersion,
    AvailabilityZone,
    Region,
    InstanceType,
    InstanceId,
    ClusterName,
    SubnetId,
}

impl Fact {
    /// The field's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Fact::AgentVersion => "agent_version",
            Fact::AvailabilityZone => "availability_zone",
            Fact::Region => "region",
            Fact::InstanceType => "instance_type",
            Fact::InstanceId => "instance_id",
            Fact::ClusterName => "cluster_name",
            Fact::SubnetId => "subnet_id",
        }
    }

    /// Longest value.
    fn max_len(self) -> usize {
        match self {
            Fact::AgentVersion => 64,
            Fact::ClusterName => 100,
            _ => 32,
        }
    }

    fn allows(self, c: char) -> bool {
        match self {
            Fact::AgentVersion => c.is_ascii_alphanumeric() || ".+-_".contains(c),
            Fact::InstanceType => lower_dash(c) || c == '.',
            Fact::ClusterName => c.is_ascii_alphanumeric() || c == '-' || c == '_',
            Fact::AvailabilityZone | Fact::Region | Fact::InstanceId | Fact::SubnetId => lower_dash(c),
        }
    }
}

/// Whether `value` has the shape of `fact` (empty means unknown and is allowed).
pub fn fact_ok(fact: Fact, value: &str) -> bool {
    value.len() <= fact.max_len() && value.chars().all(|c| fact.allows(c))
}

fn lower_dash(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, bounded.
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, bounded, without the reserved `__` prefix.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_NAME
        && !s.starts_with("__")
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Kubernetes node name: a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, each label
/// starting and ending alphanumeric, at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty() && label.starts_with(alnum) && label.ends_with(alnum) && label.chars().all(|c| alnum(c) || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["ip-10-0-1-2.eu-west-1.compute.internal", "node-0", "a", "i-0abc123def4567890"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in ["", "Node-0", "-a", "a-", "a..b", ".a", "a_b", "a b", "we\"ird", "a\nb", long.as_str()] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn names_and_facts() {
        assert!(is_metric_name("awscni_ip_max") && is_metric_name("a:b_c") && !is_metric_name("1a") && !is_metric_name("a-b"));
        assert!(is_label_name("eni") && !is_label_name("__x") && !is_label_name("a.b") && !is_label_name(""));
        assert!(fact_ok(Fact::InstanceType, "m5.large") && !fact_ok(Fact::Region, "EU-WEST-1") && fact_ok(Fact::Region, ""));
        assert!(!fact_ok(Fact::SubnetId, &"s".repeat(33)));
    }
}
