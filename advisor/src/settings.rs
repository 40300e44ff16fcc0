//! What ipamd's pool manager is configured with: the warm targets and the other aws-node settings it
//! reads ([`Settings`], parsed from `NAME=value` pairs as aws-node's environment spells them), and the
//! instance's limits ([`Limits`]).

use std::fmt;

use thiserror::Error;

/// A setting the advisor cannot use, named.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{0:?} is not NAME=value")]
    NotAPair(String),
    #[error("{0} is not an ipamd setting the advisor knows (known: {known})", known = KNOWN.join(", "))]
    Unknown(String),
    #[error("{name}={value}: {expected}")]
    BadValue { name: String, value: String, expected: &'static str },
}

const KNOWN: [&str; 9] = [
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
    "MINIMUM_IP_TARGET",
    "WARM_PREFIX_TARGET",
    "ENABLE_PREFIX_DELEGATION",
    "MAX_ENI",
    "IP_COOLDOWN_PERIOD",
    "ENABLE_SUBNET_DISCOVERY",
    "MAX_PODS",
];

/// ipamd's pool settings. `None` is unset: ipamd's default applies (WARM_ENI_TARGET 1, the others 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub warm_eni_target: Option<u32>,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub warm_prefix_target: Option<u32>,
    pub prefix_delegation: bool,
    pub max_eni: Option<u32>,
    /// IP_COOLDOWN_PERIOD, seconds (default 30).
    pub cooldown_secs: u32,
    /// ENABLE_SUBNET_DISCOVERY (default true): a new ENI then costs two DescribeSubnets calls, else one.
    pub subnet_discovery: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            warm_eni_target: None,
            warm_ip_target: None,
            minimum_ip_target: None,
            warm_prefix_target: None,
            prefix_delegation: false,
            max_eni: None,
            cooldown_secs: 30,
            subnet_discovery: true,
        }
    }
}

fn number(name: &str, value: &str) -> Result<u32, SettingsError> {
    value.trim().parse().map_err(|_| SettingsError::BadValue {
        name: name.into(),
        value: value.into(),
        expected: "a whole number, 0 or more",
    })
}

fn boolean(name: &str, value: &str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SettingsError::BadValue { name: name.into(), value: value.into(), expected: "true or false" }),
    }
}

impl Settings {
    /// WARM_ENI_TARGET as ipamd uses it: 1 when unset.
    pub fn warm_eni(&self) -> u32 {
        self.warm_eni_target.unwrap_or(1)
    }

    pub fn warm_ip(&self) -> u32 {
        self.warm_ip_target.unwrap_or(0)
    }

    pub fn minimum_ip(&self) -> u32 {
        self.minimum_ip_target.unwrap_or(0)
    }

    pub fn warm_prefix(&self) -> u32 {
        self.warm_prefix_target.unwrap_or(0)
    }

    /// ipamd's `warmIPTargetsDefined`: either IP target non-zero, and WARM_ENI_TARGET is then ignored.
    pub fn ip_targets_defined(&self) -> bool {
        self.warm_ip() != 0 || self.minimum_ip() != 0
    }

    /// Applies `NAME=value` pairs, comma-separated, as aws-node's environment spells them (blank: no
    /// change; an empty value unsets a target). `MAX_PODS` is not a setting: it is returned apart.
    pub fn apply(&mut self, pairs: &str) -> Result<Option<u32>, SettingsError> {
        let mut max_pods = None;
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').ok_or_else(|| SettingsError::NotAPair(pair.into()))?;
            let (name, value) = (name.trim(), value.trim());
            let target = |v: &str| if v.is_empty() { Ok(None) } else { number(name, v).map(Some) };
            match name {
                "WARM_ENI_TARGET" => self.warm_eni_target = target(value)?,
                "WARM_IP_TARGET" => self.warm_ip_target = target(value)?,
                "MINIMUM_IP_TARGET" => self.minimum_ip_target = target(value)?,
                "WARM_PREFIX_TARGET" => self.warm_prefix_target = target(value)?,
                "MAX_ENI" => self.max_eni = target(value)?,
                "ENABLE_PREFIX_DELEGATION" => self.prefix_delegation = boolean(name, value)?,
                "ENABLE_SUBNET_DISCOVERY" => self.subnet_discovery = boolean(name, value)?,
                "IP_COOLDOWN_PERIOD" => self.cooldown_secs = number(name, value)?,
                "MAX_PODS" => max_pods = Some(number(name, value)?),
                _ => return Err(SettingsError::Unknown(name.into())),
            }
        }
        Ok(max_pods)
    }
}

impl fmt::Display for Settings {
    /// The targets as aws-node's env would set them, unset ones left out (`WARM_ENI_TARGET=1` when none is set).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut show = |name: &str, v: Option<u32>| {
            if let Some(v) = v {
                parts.push(format!("{name}={v}"));
            }
        };
        if self.prefix_delegation {
            show("WARM_PREFIX_TARGET", self.warm_prefix_target);
        } else if !self.ip_targets_defined() {
            show("WARM_ENI_TARGET", Some(self.warm_eni()));
        }
        show("WARM_IP_TARGET", self.warm_ip_target.filter(|v| *v != 0));
        show("MINIMUM_IP_TARGET", self.minimum_ip_target.filter(|v| *v != 0));
        if parts.is_empty() {
            parts.push("WARM_PREFIX_TARGET=0".into());
        }
        f.write_str(&parts.join(" "))
    }
}

/// One instance's limits, as ipamd knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// ENIs the instance can attach (ENILimit).
    pub eni_limit: u32,
    /// IPv4 addresses per ENI, the primary included (IPv4Limit).
    pub ipv4_per_eni: u32,
    /// The node's pod capacity: the pool never grows for more.
    pub max_pods: u32,
}

impl Limits {
    /// CIDR slots of one ENI: its addresses but the primary one (IPv4Limit - 1), each a /32 or a /28.
    pub fn slots(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_as_aws_node_spells_them() {
        let mut s = Settings::default();
        let max_pods = s.apply(" MINIMUM_IP_TARGET=10, WARM_PREFIX_TARGET=1,ENABLE_PREFIX_DELEGATION=TRUE,MAX_PODS=110 ").unwrap();
        assert_eq!(max_pods, Some(110));
        assert_eq!((s.minimum_ip(), s.warm_prefix(), s.prefix_delegation), (10, 1, true));
        assert_eq!(s.warm_eni(), 1, "WARM_ENI_TARGET unset is 1");
        assert!(s.ip_targets_defined());
        s.apply("MINIMUM_IP_TARGET=,IP_COOLDOWN_PERIOD=45").unwrap();
        assert_eq!((s.minimum_ip_target, s.cooldown_secs), (None, 45), "an empty value unsets");
        assert_eq!(s.apply("").unwrap(), None);
    }

    #[test]
    fn bad_pairs_are_refused_by_name() {
        let mut s = Settings::default();
        let cases = [
            ("WARM_IP_TARGET", "not NAME=value"),
            ("WARM_IP_TARGET=-1", "WARM_IP_TARGET=-1: a whole number"),
            ("WARM_IP_TARGET=two", "WARM_IP_TARGET=two: a whole number"),
            ("ENABLE_PREFIX_DELEGATION=yes", "true or false"),
            ("WARM_POOL=1", "WARM_POOL is not an ipamd setting"),
        ];
        for (input, want) in cases {
            let err = s.apply(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        assert_eq!(s, Settings::default(), "a refused list changes nothing it did not get to");
    }

    #[test]
    fn settings_print_as_aws_node_env() {
        let mut s = Settings::default();
        assert_eq!(s.to_string(), "WARM_ENI_TARGET=1");
        s.apply("WARM_IP_TARGET=5,MINIMUM_IP_TARGET=10").unwrap();
        assert_eq!(s.to_string(), "WARM_IP_TARGET=5 MINIMUM_IP_TARGET=10");
        let mut pd = Settings { prefix_delegation: true, ..Settings::default() };
        pd.apply("WARM_PREFIX_TARGET=1").unwrap();
        assert_eq!(pd.to_string(), "WARM_PREFIX_TARGET=1");
    }
}
