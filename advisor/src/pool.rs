//! One node's warm pool as ipamd v1.23.1 keeps it (`pkg/ipamd/ipamd.go`, `datastore/data_store.go`),
//! card 0, IPv4: ENIs holding /32 addresses (secondary-IP mode) or /28 prefixes (prefix delegation),
//! each address assigned to a pod or free, a freed one unusable for IP_COOLDOWN_PERIOD.
//!
//! [`Pool::tick`] is one run of ipamd's pool manager (every 5 s): with the statistics taken once before
//! any action, grow when the pool is too low, else shrink when too high and the last shrink is 30 s
//! past, then free at most one ENI (60 s old at least, nothing assigned or cooling). Every action counts
//! its EC2 calls. Pods come and go through [`Pool::assign_pod`] and [`Pool::release_pod`] ("pack"
//! placement, see the crate's documentation); a pod that finds no free, cooled address is a pod IP wait.
//!
//! Times are milliseconds on any monotonic clock the caller keeps.

use crate::calls::{Calls, Ec2Api};
use crate::settings::{Limits, Settings};

/// ipamd's `decreaseIPPoolInterval`.
pub const DECREASE_GAP_MS: u64 = 30_000;
/// ipamd's `minENILifeTime`.
pub const MIN_ENI_LIFE_MS: u64 = 60_000;
/// ipamd's `ipPoolMonitorInterval`.
pub const TICK_MS: u64 = 5_000;
/// Addresses in one /28 prefix.
const PREFIX_SIZE: u32 = 16;

#[derive(Clone, Debug)]
struct Address {
    assigned: bool,
    freed_at: Option<u64>,
}

#[derive(Clone, Debug)]
struct Cidr {
    addresses: Vec<Address>,
}

impl Cidr {
    fn new(size: u32) -> Cidr {
        Cidr { addresses: vec![Address { assigned: false, freed_at: None }; size as usize] }
    }

    fn assigned(&self) -> u32 {
        self.addresses.iter().filter(|a| a.assigned).count() as u32
    }
}

#[derive(Clone, Debug)]
struct Eni {
    created_at: u64,
    primary: bool,
    cidrs: Vec<Cidr>,
}

impl Eni {
    fn total(&self) -> u32 {
        self.cidrs.iter().map(|c| c.addresses.len() as u32).sum()
    }

    fn assigned(&self) -> u32 {
        self.cidrs.iter().map(Cidr::assigned).sum()
    }

    fn free_cidrs(&self) -> u32 {
        self.cidrs.iter().filter(|c| c.assigned() == 0).count() as u32
    }

    fn cooling(&self, now: u64, cooldown_ms: u64) -> bool {
        self.cidrs.iter().flat_map(|c| &c.addresses).any(|a| in_cooldown(a, now, cooldown_ms))
    }
}

fn in_cooldown(a: &Address, now: u64, cooldown_ms: u64) -> bool {
    !a.assigned && a.freed_at.is_some_and(|t| now.saturating_sub(t) <= cooldown_ms)
}

/// ipamd's pool statistics (`GetIPStats`), taken once per tick before any action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Addresses held (IPs, or 16 per prefix).
    pub total: u32,
    pub assigned: u32,
    /// Free addresses still in their cooldown: ipamd counts them as available, pods cannot have them.
    pub cooldown: u32,
    /// Prefixes with nothing assigned (prefix mode).
    pub free_prefixes: u32,
    /// Prefixes held (prefix mode).
    pub total_prefixes: u32,
    pub enis: u32,
}

impl Stats {
    /// ipamd's `AvailableAddresses`: cooling addresses included.
    pub fn available(&self) -> u32 {
        self.total - self.assigned
    }
}

/// What the IP targets ask for (`datastoreTargetState`): short and over, in addresses in secondary-IP
/// mode and in prefixes in prefix mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    pub short: u32,
    pub over: u32,
}

/// One node's pool and what keeping it has cost.
#[derive(Clone, Debug)]
pub struct Pool {
    settings: Settings,
    limits: Limits,
    enis: Vec<Eni>,
    last_decrease: Option<u64>,
    calls: Calls,
    pod_ip_waits: u64,
}

impl Pool {
    /// A node as ipamd starts it: the primary ENI, holding nothing yet.
    pub fn new(settings: Settings, limits: Limits) -> Pool {
        let primary = Eni { created_at: 0, primary: true, cidrs: Vec::new() };
        Pool { settings, limits, enis: vec![primary], last_decrease: None, calls: Calls::default(), pod_ip_waits: 0 }
    }

    /// A pool in a given state: per ENI (the primary first), its CIDRs and how many addresses are
    /// assigned (packed from the first CIDR), all created at `created_at`.
    pub fn with_layout(settings: Settings, limits: Limits, layout: &[(u32, u32)], created_at: u64) -> Pool {
        let mut pool = Pool::new(settings, limits);
        pool.enis.clear();
        for (i, &(cidrs, assigned)) in layout.iter().enumerate() {
            let mut eni = Eni { created_at, primary: i == 0, cidrs: (0..cidrs).map(|_| Cidr::new(pool.unit())).collect() };
            let mut left = assigned;
            for a in eni.cidrs.iter_mut().flat_map(|c| c.addresses.iter_mut()) {
                if left == 0 {
                    break;
                }
                a.assigned = true;
                left -= 1;
            }
            pool.enis.push(eni);
        }
        pool
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Requests for an address that found no free, cooled one (a pod retrying counts each time).
    pub fn pod_ip_waits(&self) -> u64 {
        self.pod_ip_waits
    }

    /// Forgets the calls and waits counted so far (after a warm-up), keeping the pool as it is.
    pub fn reset_counts(&mut self) {
        self.calls = Calls::default();
        self.pod_ip_waits = 0;
    }

    /// Per ENI, the primary first: CIDRs held and addresses assigned.
    pub fn layout(&self) -> Vec<(u32, u32)> {
        self.enis.iter().map(|e| (e.cidrs.len() as u32, e.assigned())).collect()
    }

    fn unit(&self) -> u32 {
        if self.settings.prefix_delegation {
            PREFIX_SIZE
        } else {
            1
        }
    }

    /// ipamd's `maxIPsPerENI`: slots × 16 in prefix mode.
    fn max_ips_per_eni(&self) -> u32 {
        self.limits.slots() * self.unit()
    }

    /// ipamd's `maxENI`: MAX_ENI when it is below the instance's limit.
    fn max_eni(&self) -> u32 {
        match self.settings.max_eni {
            Some(m) if m >= 1 && m < self.limits.eni_limit => m,
            _ => self.limits.eni_limit,
        }
    }

    fn cooldown_ms(&self) -> u64 {
        u64::from(self.settings.cooldown_secs) * 1000
    }

    pub fn stats(&self, now: u64) -> Stats {
        let cooldown_ms = self.cooldown_ms();
        let addresses = || self.enis.iter().flat_map(|e| &e.cidrs).flat_map(|c| &c.addresses);
        let pd = self.settings.prefix_delegation;
        Stats {
            total: addresses().count() as u32,
            assigned: addresses().filter(|a| a.assigned).count() as u32,
            cooldown: addresses().filter(|a| in_cooldown(a, now, cooldown_ms)).count() as u32,
            free_prefixes: if pd { self.enis.iter().map(Eni::free_cidrs).sum() } else { 0 },
            total_prefixes: if pd { self.enis.iter().map(|e| e.cidrs.len() as u32).sum() } else { 0 },
            enis: self.enis.len() as u32,
        }
    }

    /// ipamd's `datastoreTargetState`; None when neither IP target is set.
    pub fn targets(&self, s: &Stats) -> Option<Targets> {
        if !self.settings.ip_targets_defined() {
            return None;
        }
        let (wit, mit) = (i64::from(self.settings.warm_ip()), i64::from(self.settings.minimum_ip()));
        let (avail, total) = (i64::from(s.available()), i64::from(s.total));
        let short = (wit - avail).max(0).max(mit - total);
        let over = (avail - wit).max(0).min(total - mit).max(0);
        if !self.settings.prefix_delegation {
            return Some(Targets { short: short as u32, over: over as u32 });
        }
        let p = i64::from(PREFIX_SIZE);
        let div_ceil = |x: i64| (x + p - 1).div_euclid(p);
        let (free, held) = (i64::from(s.free_prefixes), i64::from(s.total_prefixes));
        let for_warm = div_ceil(i64::from(s.assigned) + wit);
        let for_min = div_ceil(mit);
        let over = free.min(held - for_warm).max(0).min(held - for_min).max(0);
        Some(Targets { short: div_ceil(short) as u32, over: over as u32 })
    }

    /// ipamd's `isDatastorePoolTooLow`.
    pub fn is_low(&self, s: &Stats) -> bool {
        if s.total >= self.limits.max_pods {
            return false;
        }
        if let Some(t) = self.targets(s) {
            return t.short > 0;
        }
        let (warm, unit) = if self.settings.prefix_delegation {
            (self.settings.warm_prefix(), PREFIX_SIZE)
        } else {
            (self.settings.warm_eni(), self.max_ips_per_eni())
        };
        s.available() < unit * warm || (warm == 0 && s.available() == 0)
    }

    /// ipamd's `isDatastorePoolTooHigh`.
    pub fn is_high(&self, s: &Stats) -> bool {
        match self.targets(s) {
            Some(t) => t.over > 0,
            None => self.settings.prefix_delegation && s.free_prefixes > self.settings.warm_prefix(),
        }
    }

    /// One run of the pool manager at `now`.
    pub fn tick(&mut self, now: u64) {
        let s = self.stats(now);
        if self.is_low(&s) {
            self.increase(&s, now);
        } else if self.is_high(&s) && self.last_decrease.is_none_or(|t| now.saturating_sub(t) >= DECREASE_GAP_MS) {
            self.decrease(&s);
            self.last_decrease = Some(now);
        }
        if self.should_remove_extra_enis(&s) {
            self.free_one_eni(now);
        }
    }

    /// ipamd's `increaseDatastorePool`: fill the first ENI with room, else attach a new one.
    fn increase(&mut self, s: &Stats, now: u64) {
        let targets = self.targets(s);
        let slots = self.limits.slots();
        let wanted = if self.settings.prefix_delegation {
            let short = targets.map_or(self.settings.warm_prefix().saturating_sub(s.free_prefixes), |t| t.short);
            short.max(1)
        } else {
            targets.map_or(self.max_ips_per_eni(), |t| t.short)
        };
        let unit = self.unit();
        if let Some(eni) = self.enis.iter_mut().find(|e| (e.cidrs.len() as u32) < slots) {
            let k = (slots - eni.cidrs.len() as u32).min(wanted);
            eni.cidrs.extend((0..k).map(|_| Cidr::new(unit)));
            self.calls.add(Ec2Api::AssignPrivateIpAddresses, 1);
            return;
        }
        let size = if self.settings.prefix_delegation { wanted.min(slots) } else { wanted.min(self.max_ips_per_eni()) };
        if size == 0 || self.enis.len() as u32 >= self.max_eni() {
            return;
        }
        self.enis.push(Eni { created_at: now, primary: false, cidrs: (0..size).map(|_| Cidr::new(unit)).collect() });
        let describe_subnets = if self.settings.subnet_discovery { 2 } else { 1 };
        self.calls.add(Ec2Api::DescribeSubnets, describe_subnets);
        for api in [
            Ec2Api::CreateNetworkInterface,
            Ec2Api::DescribeInstances,
            Ec2Api::AttachNetworkInterface,
            Ec2Api::ModifyNetworkInterfaceAttribute,
        ] {
            self.calls.add(api, 1);
        }
    }

    /// ipamd's `decreaseDatastorePool`: release CIDRs with nothing assigned (cooldown ignored), one
    /// Unassign call per ENI touched, the last ENIs first.
    fn decrease(&mut self, s: &Stats) {
        let mut over = match self.targets(s) {
            Some(t) => t.over,
            None => s.free_prefixes.saturating_sub(self.settings.warm_prefix()),
        };
        for eni in self.enis.iter_mut().rev() {
            if over == 0 {
                break;
            }
            let before = eni.cidrs.len();
            let mut released = 0;
            for i in (0..eni.cidrs.len()).rev() {
                if released < over && eni.cidrs[i].assigned() == 0 {
                    eni.cidrs.remove(i);
                    released += 1;
                }
            }
            if eni.cidrs.len() != before {
                self.calls.add(Ec2Api::UnassignPrivateIpAddresses, 1);
                over -= released;
            }
        }
    }

    /// ipamd's `shouldRemoveExtraENIs`, on the tick's statistics.
    fn should_remove_extra_enis(&self, s: &Stats) -> bool {
        if self.settings.ip_targets_defined() {
            return true;
        }
        let pd = self.settings.prefix_delegation;
        let warm = if pd { self.settings.warm_prefix() } else { self.settings.warm_eni() } + 1;
        s.available() >= warm * self.max_ips_per_eni() || (pd && self.enis.iter().any(|e| !e.primary && e.assigned() == 0))
    }

    /// ipamd's `tryFreeENI` / `getDeletableENI`: at most one ENI, the last deletable one.
    fn free_one_eni(&mut self, now: u64) {
        let Some(i) = (0..self.enis.len()).rev().find(|&i| self.deletable(i, now)) else { return };
        self.enis.remove(i);
        for api in [Ec2Api::DescribeNetworkInterfaces, Ec2Api::DetachNetworkInterface, Ec2Api::DeleteNetworkInterface] {
            self.calls.add(api, 1);
        }
    }

    fn deletable(&self, i: usize, now: u64) -> bool {
        let eni = &self.enis[i];
        if eni.primary || now.saturating_sub(eni.created_at) < MIN_ENI_LIFE_MS || eni.assigned() > 0 || eni.cooling(now, self.cooldown_ms())
        {
            return false;
        }
        let others = || self.enis.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, e)| e);
        let pd = self.settings.prefix_delegation;
        let rounded = |x: u32| if pd { x.div_ceil(PREFIX_SIZE) * PREFIX_SIZE } else { x };
        let (wit, mit, wpt) = (self.settings.warm_ip(), self.settings.minimum_ip(), self.settings.warm_prefix());
        let free: u32 = others().map(|e| e.total() - e.assigned()).sum();
        let total: u32 = others().map(Eni::total).sum();
        let free_prefixes: u32 = others().map(Eni::free_cidrs).sum();
        (wit == 0 || free >= rounded(wit)) && (mit == 0 || total >= rounded(mit)) && (!pd || wpt == 0 || free_prefixes >= wpt)
    }

    /// A new pod asks for an address: the first free, cooled one (lowest ENI, CIDR, address). False, and
    /// a pod IP wait counted, when there is none.
    pub fn assign_pod(&mut self, now: u64) -> bool {
        let cooldown_ms = self.cooldown_ms();
        let free = self
            .enis
            .iter_mut()
            .flat_map(|e| e.cidrs.iter_mut())
            .flat_map(|c| c.addresses.iter_mut())
            .find(|a| !a.assigned && !in_cooldown(a, now, cooldown_ms));
        match free {
            Some(a) => {
                a.assigned = true;
                true
            }
            None => {
                self.pod_ip_waits += 1;
                false
            }
        }
    }

    /// A pod leaves: the last assigned address is freed and starts its cooldown. False when none is
    /// assigned.
    pub fn release_pod(&mut self, now: u64) -> bool {
        let last = self
            .enis
            .iter_mut()
            .rev()
            .flat_map(|e| e.cidrs.iter_mut().rev())
            .flat_map(|c| c.addresses.iter_mut().rev())
            .find(|a| a.assigned);
        match last {
            Some(a) => {
                a.assigned = false;
                a.freed_at = Some(now);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;
