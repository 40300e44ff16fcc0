//! The EC2 APIs ipamd calls while it keeps its pool, and a counter of them per API. Each counts once
//! per logical call, as `awscni_ec2api_req_count{fn}` does (SDK retries are not counted).

use std::fmt;

/// An EC2 API of ipamd's pool management; [`Ec2Api::name`] is its `fn` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ec2Api {
    AssignPrivateIpAddresses,
    UnassignPrivateIpAddresses,
    DescribeSubnets,
    CreateNetworkInterface,
    DescribeInstances,
    AttachNetworkInterface,
    ModifyNetworkInterfaceAttribute,
    DescribeNetworkInterfaces,
    DetachNetworkInterface,
    DeleteNetworkInterface,
}

impl Ec2Api {
    pub const ALL: [Ec2Api; 10] = [
        Ec2Api::AssignPrivateIpAddresses,
        Ec2Api::UnassignPrivateIpAddresses,
        Ec2Api::DescribeSubnets,
        Ec2Api::CreateNetworkInterface,
        Ec2Api::DescribeInstances,
        Ec2Api::AttachNetworkInterface,
        Ec2Api::ModifyNetworkInterfaceAttribute,
        Ec2Api::DescribeNetworkInterfaces,
        Ec2Api::DetachNetworkInterface,
        Ec2Api::DeleteNetworkInterface,
    ];

    /// The API's name, as ipamd's `awscni_ec2api_req_count` labels it.
    pub fn name(self) -> &'static str {
        match self {
            Ec2Api::AssignPrivateIpAddresses => "AssignPrivateIpAddresses",
            Ec2Api::UnassignPrivateIpAddresses => "UnassignPrivateIpAddresses",
            Ec2Api::DescribeSubnets => "DescribeSubnets",
            Ec2Api::CreateNetworkInterface => "CreateNetworkInterface",
            Ec2Api::DescribeInstances => "DescribeInstances",
            Ec2Api::AttachNetworkInterface => "AttachNetworkInterface",
            Ec2Api::ModifyNetworkInterfaceAttribute => "ModifyNetworkInterfaceAttribute",
            Ec2Api::DescribeNetworkInterfaces => "DescribeNetworkInterfaces",
            Ec2Api::DetachNetworkInterface => "DetachNetworkInterface",
            Ec2Api::DeleteNetworkInterface => "DeleteNetworkInterface",
        }
    }

    /// The API a `fn` label names, if it is one of the pool's.
    pub fn from_name(name: &str) -> Option<Ec2Api> {
        Ec2Api::ALL.into_iter().find(|api| api.name() == name)
    }
}

impl fmt::Display for Ec2Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Calls per API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    counts: [u64; 10],
}

impl Calls {
    pub fn add(&mut self, api: Ec2Api, n: u64) {
        self.counts[api as usize] += n;
    }

    pub fn get(&self, api: Ec2Api) -> u64 {
        self.counts[api as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The APIs called at least once, with their counts, in [`Ec2Api::ALL`] order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Ec2Api, u64)> + '_ {
        Ec2Api::ALL.into_iter().map(|api| (api, self.get(api))).filter(|(_, n)| *n > 0)
    }

    /// Adds another count to this one.
    pub fn merge(&mut self, other: &Calls) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
    }
}
