//! Free /28 prefixes in a subnet, as pure logic: will ipamd's next prefix fit?
//!
//! With prefix delegation ipamd asks EC2 for an aligned /28; a subnet with thousands of free addresses
//! scattered by other ENIs still fails with `InsufficientCidrBlocks`. From the subnet's CIDR, every block
//! in use (ENI addresses and prefixes from `DescribeNetworkInterfaces`, united with what the agents'
//! introspection lists, so an address seen twice counts once), the subnet's CIDR reservations and the 5
//! addresses AWS reserves (the first four and the last), [`count`] tells how many aligned /28 blocks are
//! wholly free outside explicit reservations (EC2 never hands those out automatically), how many of them
//! lie inside prefix reservations (where EC2 places prefixes first), and the largest free aligned block.
//!
//! A subnet is at most a /16 in AWS, so its addresses fit a bitmap of at most 65,536 bits (8 KiB): marking
//! a used block costs its size in words, a /32 one bit, so the count is linear in the addresses in use
//! plus the subnet's size (`cargo bench -p cni-metrics-aggregator --bench prefixes`).

use std::net::Ipv4Addr;

/// The smallest subnet AWS allows is a /28, the largest a /16.
pub const LARGEST_SUBNET: u8 = 16;
/// ipamd's prefix (prefix delegation): a /28 of 16 addresses.
pub const PREFIX_LEN: u8 = 28;

/// An aligned IPv4 block (`10.0.1.16/28`); a single address is a /32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    first: u32,
    len: u8,
}

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("{0:?} is not an IPv4 address or CIDR")]
    NotIpv4(String),
    #[error("prefix length {0} is over 32")]
    Length(u32),
    #[error("{0} is not aligned to its prefix length")]
    Unaligned(String),
}

impl Block {
    /// An aligned block; an unaligned address is refused (a peer sending one is not trusted with it).
    pub fn new(first: u32, len: u8) -> Result<Self, BlockError> {
        if len > 32 {
            return Err(BlockError::Length(u32::from(len)));
        }
        let b = Self { first, len };
        if first & !b.mask() != 0 {
            return Err(BlockError::Unaligned(format!("{}/{len}", Ipv4Addr::from(first))));
        }
        Ok(b)
    }

    /// `10.0.1.16/28` or `10.0.1.5` (a /32). IPv6 and anything else is refused.
    pub fn parse(s: &str) -> Result<Self, BlockError> {
        let not = || BlockError::NotIpv4(s.to_owned());
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().map_err(|_| not())?),
            None => (s.trim(), 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| not())?;
        let len = u8::try_from(len).ok().filter(|l| *l <= 32).ok_or(BlockError::Length(len))?;
        Self::new(u32::from(addr), len)
    }

    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    pub fn first(self) -> u32 {
        self.first
    }

    /// The prefix length (28 for a /28).
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// The last address, inclusive.
    pub fn last(self) -> u32 {
        self.first | !self.mask()
    }

    /// Addresses in the block.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.first), self.len)
    }
}

/// A subnet CIDR reservation (`GetSubnetCidrReservations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Only assigned by hand: never free for ipamd.
    Explicit(Block),
    /// Where EC2 places prefixes first.
    Prefix(Block),
}

/// What EC2 says is taken in one subnet: every ENI's addresses and prefixes, and its reservations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpaceFacts {
    pub used: Vec<Block>,
    pub reservations: Vec<Reservation>,
    /// ENIs described in the subnet.
    pub enis: u32,
    /// Entries that are not IPv4 (IPv6 addresses, anything unreadable), left out.
    pub skipped: u32,
}

/// What [`count`] finds in one subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixSpace {
    /// Aligned /28 blocks wholly free and outside explicit reservations.
    pub free: u32,
    /// Of those, the ones wholly inside prefix reservations.
    pub free_in_prefix_reservations: u32,
    /// The largest free aligned block outside explicit reservations, as a prefix length (`Some(24)`);
    /// `None` when not one address is free.
    pub largest_free_len: Option<u8>,
    /// Addresses free outside explicit reservations (the bitmap's zeros).
    pub free_addresses: u32,
}

/// Why a subnet cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    #[error("subnet {0} is larger than a /16, which AWS does not allow")]
    TooLarge(Block),
}

/// One bit per address of the subnet; set = not free.
struct Bitmap {
    words: Vec<u64>,
    base: u32,
    size: u32,
}

impl Bitmap {
    fn new(subnet: Block) -> Self {
        let size = u32::try_from(subnet.size()).unwrap_or(u32::MAX);
        Self { words: vec![0; size.div_ceil(64) as usize], base: subnet.first(), size }
    }

    /// Set the bits of `[lo, hi]` (addresses, inclusive), clipped to the subnet.
    fn mark(&mut self, lo: u32, hi: u32) {
        let end = self.base.saturating_add(self.size - 1);
        let (lo, hi) = (lo.max(self.base), hi.min(end));
        if lo > hi {
            return;
        }
        let (mut i, hi) = ((lo - self.base) as usize, (hi - self.base) as usize);
        while i <= hi {
            let (w, bit) = (i / 64, i % 64);
            let n = (64 - bit).min(hi - i + 1);
            let ones = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
            self.words[w] |= ones;
            i += n;
        }
    }

    fn mark_block(&mut self, b: Block) {
        self.mark(b.first(), b.last());
    }

    /// Whether `[i, i + n)` (offsets, `n` a power of two up to 64, `i` aligned to it) is all clear.
    fn clear(&self, i: u32, n: u32) -> bool {
        let (w, bit) = ((i / 64) as usize, i % 64);
        let ones = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
        self.words[w] & ones == 0
    }

    fn zeros(&self) -> u32 {
        let set: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        self.size - set.min(self.size)
    }
}

/// Count the free /28 blocks of `subnet` given what is in use and its reservations. Blocks outside the
/// subnet are clipped away (a wider prefix only counts where it overlaps), so overlapping or repeated
/// inputs cannot count twice.
pub fn count(subnet: Block, used: impl IntoIterator<Item = Block>, reservations: &[Reservation]) -> Result<PrefixSpace, SpaceError> {
    if subnet.prefix_len() < LARGEST_SUBNET {
        return Err(SpaceError::TooLarge(subnet));
    }
    let mut taken = Bitmap::new(subnet);
    // AWS reserves the first four addresses and the last one.
    taken.mark(subnet.first(), subnet.first().saturating_add(3));
    taken.mark(subnet.last(), subnet.last());
    for b in used {
        taken.mark_block(b);
    }
    let mut preferred = Bitmap::new(subnet);
    for r in reservations {
        match *r {
            Reservation::Explicit(b) => taken.mark_block(b),
            Reservation::Prefix(b) => preferred.mark_block(b),
        }
    }
    let mut space = PrefixSpace { free_addresses: taken.zeros(), ..PrefixSpace::default() };
    let chunk = 1u32 << (32 - PREFIX_LEN);
    // Free /28s, level by level up to the subnet: a block is free when both halves are.
    let mut level: Vec<bool> =
        (0..taken.size / chunk.min(taken.size)).map(|k| taken.size >= chunk && taken.clear(k * chunk, chunk)).collect();
    if taken.size >= chunk {
        for (k, free) in level.iter().enumerate() {
            if *free {
                space.free += 1;
                // Inside prefix reservations: every address of the block is in one (all bits set).
                let w = preferred.words[(k as u32 * chunk / 64) as usize] >> (k as u32 * chunk % 64);
                if w & 0xffff == 0xffff {
                    space.free_in_prefix_reservations += 1;
                }
            }
        }
    }
    space.largest_free_len = largest_free(&taken, &mut level);
    Ok(space)
}

/// The largest free aligned block: /28 and up from the /28 level, else the largest below a /28.
fn largest_free(taken: &Bitmap, level: &mut Vec<bool>) -> Option<u8> {
    let mut len = PREFIX_LEN;
    if taken.size >= 16 && level.iter().any(|f| *f) {
        while level.len() > 1 {
            let up: Vec<bool> = level.chunks(2).map(|p| p.iter().all(|f| *f)).collect();
            if !up.iter().any(|f| *f) {
                break;
            }
            *level = up;
            len -= 1;
        }
        return Some(len);
    }
    // Nothing of 16: the largest of 8, 4, 2, 1.
    for (n, len) in [(8u32, 29u8), (4, 30), (2, 31), (1, 32)] {
        if (0..taken.size / n).any(|k| taken.clear(k * n, n)) {
            return Some(len);
        }
    }
    None
}

/// One subnet to count: its CIDR and the blocks the cluster's own nodes report in it.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetInput {
    pub subnet_id: String,
    pub availability_zone: String,
    pub cidr: Block,
    pub cluster_blocks: Vec<Block>,
}

/// One subnet's free prefixes, and whether it is low on them.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixRow {
    pub subnet_id: String,
    pub availability_zone: String,
    pub space: PrefixSpace,
    pub low: bool,
}

/// Every counted subnet, fewest free /28s first, and the sums per AZ and for the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixReport {
    pub rows: Vec<PrefixRow>,
    /// Per AZ: free /28s, subnets low on them.
    pub by_az: std::collections::BTreeMap<String, (u32, u32)>,
    pub free: u32,
    pub low: u32,
}

/// Count each subnet from EC2's facts united with the cluster's blocks (a subnet EC2 did not answer for
/// is left out), and mark the ones with fewer than `low_below` free /28s.
pub fn report(inputs: &[SubnetInput], ec2: &std::collections::BTreeMap<String, SpaceFacts>, low_below: u32) -> PrefixReport {
    let mut r = PrefixReport::default();
    for input in inputs {
        let Some(facts) = ec2.get(&input.subnet_id) else { continue };
        let used = facts.used.iter().chain(&input.cluster_blocks).copied();
        let Ok(space) = count(input.cidr, used, &facts.reservations) else { continue };
        let low = space.free < low_below;
        let az = r.by_az.entry(input.availability_zone.clone()).or_default();
        az.0 += space.free;
        az.1 += u32::from(low);
        r.free += space.free;
        r.low += u32::from(low);
        r.rows.push(PrefixRow { subnet_id: input.subnet_id.clone(), availability_zone: input.availability_zone.clone(), space, low });
    }
    r.rows.sort_by(|a, b| a.space.free.cmp(&b.space.free).then_with(|| a.subnet_id.cmp(&b.subnet_id)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Block {
        Block::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn blocks_parse_and_refuse() {
        assert_eq!(b("10.0.1.16/28").to_string(), "10.0.1.16/28");
        assert_eq!(b("10.0.1.5"), b("10.0.1.5/32"));
        assert_eq!((b("10.0.1.16/28").first(), b("10.0.1.16/28").last()), (0x0a00_0110, 0x0a00_011f));
        assert_eq!(b("0.0.0.0/0").size(), 1 << 32);
        for bad in ["2600:1f18::/80", "fd00::1", "10.0.1.17/28", "10.0.1.0/33", "10.0.1/24", "", "subnet-1"] {
            assert!(Block::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Block::new(0x0a00_0101, 28), Err(BlockError::Unaligned("10.0.1.1/28".into())));
    }

    fn space(free: u32, in_res: u32, largest: Option<u8>, addresses: u32) -> PrefixSpace {
        PrefixSpace { free, free_in_prefix_reservations: in_res, largest_free_len: largest, free_addresses: addresses }
    }

    #[test]
    fn counts_table() {
        let none: Vec<Block> = Vec::new();
        type Case = (&'static str, &'static str, Vec<Block>, Vec<Reservation>, PrefixSpace);
        let cases: Vec<Case> = vec![
            // A /28 subnet: the reserved addresses sit in its only block.
            ("a /28 subnet", "10.0.0.0/28", none.clone(), vec![], space(0, 0, Some(30), 11)),
            // /24: 16 blocks, the first (10.0.0.0-3) and the last (.255) touch the reserved addresses.
            ("an empty /24", "10.0.0.0/24", none.clone(), vec![], space(14, 0, Some(26), 251)),
            (
                "one address in every other /28 (fragmented)",
                "10.0.1.0/24",
                (0..16).step_by(2).map(|k| b(&format!("10.0.1.{}", k * 16 + 5))).collect(),
                vec![],
                space(7, 0, Some(28), 243),
            ),
            (
                "the same address twice, and a prefix that is also in introspection",
                "10.0.1.0/24",
                vec![b("10.0.1.20"), b("10.0.1.20"), b("10.0.1.32/28"), b("10.0.1.32/28"), b("10.0.1.40")],
                vec![],
                space(12, 0, Some(26), 251 - 17),
            ),
            (
                "overlapping inputs, one wider than the subnet",
                "10.0.1.0/24",
                vec![b("10.0.0.0/23"), b("10.0.1.64/26")],
                vec![],
                space(0, 0, None, 0),
            ),
            (
                "blocks outside the subnet are clipped away",
                "10.0.1.0/24",
                vec![b("10.0.2.0/24"), b("10.0.0.255")],
                vec![],
                space(14, 0, Some(26), 251),
            ),
            (
                "explicit reservation: never free",
                "10.0.1.0/24",
                none.clone(),
                vec![Reservation::Explicit(b("10.0.1.128/25"))],
                space(7, 0, Some(26), 251 - 127),
            ),
            (
                "prefix reservation partly used",
                "10.0.1.0/24",
                vec![b("10.0.1.64/28"), b("10.0.1.100")],
                vec![Reservation::Prefix(b("10.0.1.64/26"))],
                space(12, 2, Some(26), 251 - 17),
            ),
            (
                "a prefix reservation that is not /28-aligned counts only whole blocks inside it",
                "10.0.1.0/24",
                none.clone(),
                vec![Reservation::Prefix(b("10.0.1.64/29")), Reservation::Prefix(b("10.0.1.80/28"))],
                space(14, 1, Some(26), 251),
            ),
            (
                "only a few single addresses free",
                "10.0.1.0/28",
                vec![b("10.0.1.4/31"), b("10.0.1.7"), b("10.0.1.8/30"), b("10.0.1.14")],
                vec![],
                space(0, 0, Some(31), 3),
            ),
            ("an empty /16", "10.1.0.0/16", none.clone(), vec![], space(4094, 0, Some(18), 65_531)),
        ];
        for (what, subnet, used, res, want) in cases {
            assert_eq!(count(b(subnet), used, &res), Ok(want), "{what}");
        }
        assert_eq!(count(b("10.0.0.0/15"), none, &[]), Err(SpaceError::TooLarge(b("10.0.0.0/15"))));
    }

    #[test]
    fn a_full_16_has_nothing_left() {
        let used = (0..65_536u32).step_by(16).map(|k| Block::new(0x0a01_0000 + k + 7, 32).unwrap_or_else(|e| panic!("{e}")));
        let s = count(b("10.1.0.0/16"), used, &[]);
        assert_eq!(s.map(|s| (s.free, s.largest_free_len)), Ok((0, Some(29))));
    }

    #[test]
    fn report_unites_ec2_with_the_cluster() {
        let input = |id: &str, az: &str, cidr: &str, blocks: Vec<Block>| SubnetInput {
            subnet_id: id.into(),
            availability_zone: az.into(),
            cidr: b(cidr),
            cluster_blocks: blocks,
        };
        let facts = |used: Vec<Block>, reservations: Vec<Reservation>| SpaceFacts { used, reservations, enis: 1, skipped: 0 };
        let ec2: std::collections::BTreeMap<String, SpaceFacts> = [
            // A prefix EC2 lists that a node's introspection lists too: counted once.
            ("subnet-a".to_owned(), facts(vec![b("10.0.1.32/28")], vec![])),
            ("subnet-b".to_owned(), facts(vec![], vec![Reservation::Explicit(b("10.0.2.0/25"))])),
        ]
        .into_iter()
        .collect();
        let inputs = [
            input("subnet-a", "az-1", "10.0.1.0/24", vec![b("10.0.1.32/28"), b("10.0.1.64/28")]),
            input("subnet-b", "az-2", "10.0.2.0/24", vec![]),
            input("subnet-c", "az-2", "10.0.3.0/24", vec![]), // EC2 did not answer for it
        ];
        let r = report(&inputs, &ec2, 8);
        let rows: Vec<(&str, u32, bool)> = r.rows.iter().map(|r| (r.subnet_id.as_str(), r.space.free, r.low)).collect();
        assert_eq!(rows, [("subnet-b", 7, true), ("subnet-a", 12, false)]);
        assert_eq!((r.free, r.low), (19, 1));
        assert_eq!(r.by_az.get("az-2"), Some(&(7, 1)));
    }
}
