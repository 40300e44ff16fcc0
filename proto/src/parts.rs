//! Reports in parts. [`split`] cuts a report larger than [`PART_BYTES`] into parts of about that size and
//! [`Assembler`] puts them back together, so that no message on an agent stream is larger than about
//! 1 KiB. The aggregator's per-connection buffers then stay small: the gRPC decoder's buffer grows to the
//! largest message a stream ever carried and never shrinks, and one snapshot of a v1.23 node is ~12 KiB.
//!
//! Each repeated field of a report is cut into consecutive runs, part after part, and the assembler
//! concatenates them in part order, so the assembled report is the original one, field for field: `ids`,
//! `values` and `counter_raws` line up again wherever the cuts fell. The other fields (seq, snapshot,
//! status, times, flags) travel in part 1; later parts carry only the seq and their place. A subnet whose
//! blocks do not fit in one part continues in entries marked `continued` (same subnet id, blocks only).
//!
//! Only an aggregator that says so in its Welcome (`accepts_parts`) gets parts; an older one gets every
//! report whole, and a whole report from an older agent goes through the assembler unchanged. Pure: no
//! I/O; table-tested by splitting and assembling.

use prost::Message;

use crate::v1::{Report, SubnetUsage};

/// The size an agent keeps each part of a report under (a part holding a single item that is larger
/// on its own, e.g. a long status detail, is the only exception).
pub const PART_BYTES: usize = 1024;

/// The most parts one report may have (a report of the largest allowed size in parts of 1 KiB needs
/// fewer).
pub const MAX_PARTS: u32 = 65_536;

/// The most `part` and `parts` take in a part: two fields, a key byte and at most five varint bytes each.
const PLACE_BYTES: usize = 12;

/// Why parts cannot be assembled: the stream's sender does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("part {part} of {parts} is not a valid place (parts are numbered 1 to at most {MAX_PARTS})")]
    OutOfRange { part: u32, parts: u32 },
    #[error("expected part {expected} of {parts} of report {seq}, got part {part} of {got_parts} of report {got_seq}")]
    OutOfOrder { expected: u32, parts: u32, seq: u64, part: u32, got_parts: u32, got_seq: u64 },
    #[error("report {seq} came while report {pending} still missed parts {missing_from} to {parts}")]
    Interrupted { seq: u64, pending: u64, missing_from: u32, parts: u32 },
    #[error("the parts of report {seq} add up to more than {max} bytes")]
    TooLarge { seq: u64, max: usize },
    #[error("a subnet entry marked continued does not follow an entry of the same subnet")]
    StrayContinuation,
}

/// Cut `report` into parts of at most about `budget` bytes each; a report that fits is returned whole
/// (one element, `part` and `parts` 0).
pub fn split(mut report: Report, budget: usize) -> Vec<Report> {
    if report.encoded_len() <= budget {
        return vec![report];
    }
    let defs = std::mem::take(&mut report.defs);
    let ids = std::mem::take(&mut report.ids);
    let values = std::mem::take(&mut report.values);
    let counter_raws = std::mem::take(&mut report.counter_raws);
    let removed = std::mem::take(&mut report.removed);
    let subnets = std::mem::take(&mut report.subnets);
    let mut cutter = Cutter::new(report, budget);
    for d in defs {
        cutter.put(d, |r| &mut r.defs);
    }
    for id in ids {
        cutter.put(id, |r| &mut r.ids);
    }
    for v in values {
        cutter.put(v, |r| &mut r.values);
    }
    for raw in counter_raws {
        cutter.put(raw, |r| &mut r.counter_raws);
    }
    for id in removed {
        cutter.put(id, |r| &mut r.removed);
    }
    for mut s in subnets {
        let blocks = std::mem::take(&mut s.blocks);
        let subnet = s.subnet_id.clone();
        cutter.put(s, |r| &mut r.subnets);
        for b in blocks {
            cutter.put_block(b, &subnet);
        }
    }
    cutter.finish()
}

/// Fills one part at a time: an item that takes the part over the budget goes to the next part (unless
/// the part holds nothing else yet).
struct Cutter {
    budget: usize,
    seq: u64,
    done: Vec<Report>,
    part: Report,
    items: usize,
}

impl Cutter {
    fn new(header: Report, budget: usize) -> Self {
        // Room for each part's place (`part` and `parts`, numbered once the count is known).
        let budget = budget.saturating_sub(PLACE_BYTES);
        Self { budget, seq: header.seq, done: Vec::new(), part: header, items: 0 }
    }

    fn over(&self) -> bool {
        self.items > 0 && self.part.encoded_len() > self.budget
    }

    fn next_part(&mut self) {
        let fresh = Report { seq: self.seq, ..Report::default() };
        self.done.push(std::mem::replace(&mut self.part, fresh));
        self.items = 0;
    }

    fn put<T>(&mut self, item: T, field: fn(&mut Report) -> &mut Vec<T>) {
        field(&mut self.part).push(item);
        if self.over() {
            if let Some(item) = field(&mut self.part).pop() {
                self.next_part();
                field(&mut self.part).push(item);
            }
        }
        self.items += 1;
    }

    /// A block of the subnet whose entry was put last: into that entry while it fits, else into a
    /// `continued` entry of the next part.
    fn put_block(&mut self, block: crate::v1::Ipv4Block, subnet: &str) {
        if let Some(entry) = self.part.subnets.last_mut() {
            entry.blocks.push(block);
            if !self.over() {
                self.items += 1;
                return;
            }
            let popped = self.part.subnets.last_mut().and_then(|e| e.blocks.pop());
            self.next_part();
            let continued = SubnetUsage {
                subnet_id: subnet.to_owned(),
                continued: true,
                blocks: popped.into_iter().collect(),
                ..SubnetUsage::default()
            };
            self.part.subnets.push(continued);
        } else {
            let continued = SubnetUsage { subnet_id: subnet.to_owned(), continued: true, blocks: vec![block], ..SubnetUsage::default() };
            self.part.subnets.push(continued);
        }
        self.items += 1;
    }

    fn finish(mut self) -> Vec<Report> {
        if self.items > 0 || self.done.is_empty() {
            self.done.push(self.part);
        }
        let parts = u32::try_from(self.done.len()).unwrap_or(u32::MAX);
        for (i, p) in self.done.iter_mut().enumerate() {
            p.part = u32::try_from(i + 1).unwrap_or(u32::MAX);
            p.parts = parts;
        }
        self.done
    }
}

/// One stream's report in the making: the parts so far, appended.
#[derive(Debug)]
struct Pending {
    report: Report,
    next: u32,
    parts: u32,
    bytes: usize,
}

/// Puts a stream's parts back together (one per stream; a report's parts follow each other).
#[derive(Debug)]
pub struct Assembler {
    max_bytes: usize,
    /// Boxed: an aggregator holds an assembler per connected agent, mostly idle.
    pending: Option<Box<Pending>>,
}

impl Assembler {
    /// The assembled parts of one report may add up to `max_bytes` (the limit of one whole message).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, pending: None }
    }

    /// Whether a report is waiting for more parts.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Take the next message's report: the assembled report when it was whole or its last part, `None`
    /// while parts are missing.
    pub fn feed(&mut self, report: Report) -> Result<Option<Report>, PartError> {
        let (part, parts) = (report.part, report.parts);
        if part == 0 && parts == 0 {
            if let Some(p) = &self.pending {
                return Err(PartError::Interrupted { seq: report.seq, pending: p.report.seq, missing_from: p.next, parts: p.parts });
            }
            let mut whole = report;
            whole.subnets = join_continued(std::mem::take(&mut whole.subnets), Vec::new())?;
            return Ok(Some(whole));
        }
        if part == 0 || part > parts || parts > MAX_PARTS {
            return Err(PartError::OutOfRange { part, parts });
        }
        let bytes = report.encoded_len();
        let mut pending = match self.pending.take() {
            None if part == 1 => Box::new(Pending { report: Report { seq: report.seq, ..Report::default() }, next: 1, parts, bytes: 0 }),
            None => return Err(PartError::OutOfOrder { expected: 1, parts, seq: report.seq, part, got_parts: parts, got_seq: report.seq }),
            Some(p) => p,
        };
        if part != pending.next || parts != pending.parts || report.seq != pending.report.seq {
            let p = &pending;
            return Err(PartError::OutOfOrder {
                expected: p.next,
                parts: p.parts,
                seq: p.report.seq,
                part,
                got_parts: parts,
                got_seq: report.seq,
            });
        }
        pending.bytes += bytes;
        if pending.bytes > self.max_bytes {
            return Err(PartError::TooLarge { seq: report.seq, max: self.max_bytes });
        }
        if part == 1 {
            // Part 1 is the report's header and first runs: it becomes the report.
            pending.report = report;
            pending.report.subnets = join_continued(std::mem::take(&mut pending.report.subnets), Vec::new())?;
        } else {
            append(&mut pending.report, report)?;
        }
        if part < parts {
            pending.next += 1;
            self.pending = Some(pending);
            return Ok(None);
        }
        let Pending { report: mut done, .. } = *pending;
        done.part = 0;
        done.parts = 0;
        Ok(Some(done))
    }
}

/// Append a later part's repeated fields (its other fields are not read).
fn append(into: &mut Report, mut p: Report) -> Result<(), PartError> {
    into.defs.append(&mut p.defs);
    into.ids.append(&mut p.ids);
    into.values.append(&mut p.values);
    into.counter_raws.append(&mut p.counter_raws);
    into.removed.append(&mut p.removed);
    let subnets = std::mem::take(&mut into.subnets);
    into.subnets = join_continued(subnets, p.subnets)?;
    Ok(())
}

/// `have` followed by `more`, each `continued` entry's blocks added to the entry before it.
fn join_continued(mut have: Vec<SubnetUsage>, more: Vec<SubnetUsage>) -> Result<Vec<SubnetUsage>, PartError> {
    if !more.iter().chain(have.iter()).any(|s| s.continued) {
        have.extend(more);
        return Ok(have);
    }
    let mut out: Vec<SubnetUsage> = Vec::with_capacity(have.len() + more.len());
    for s in have.into_iter().chain(more) {
        if s.continued {
            let Some(last) = out.last_mut().filter(|l| l.subnet_id == s.subnet_id) else { return Err(PartError::StrayContinuation) };
            last.blocks.extend(s.blocks);
        } else {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Ipv4Block, Label, SeriesDef};

    fn def(id: u32) -> SeriesDef {
        SeriesDef {
            id,
            family: "awscni_assigned_ip_addresses".to_owned(),
            name: format!("awscni_series_number_{id}"),
            kind: 1,
            family_type: 2,
            labels: vec![Label { name: "fn".to_owned(), value: format!("value-{id}") }],
            committed_total: f64::from(id),
        }
    }

    fn subnet(n: u32, blocks: u32) -> SubnetUsage {
        SubnetUsage {
            subnet_id: format!("subnet-0{n:016x}"),
            total_ips: 30.0,
            assigned_ips: 7.0,
            enis: 2,
            blocks: (0..blocks).map(|b| Ipv4Block { address: 0x0a00_0000 + (n << 16) + (b << 4), prefix_len: 28 }).collect(),
            ipv6_prefixes: 0,
            continued: false,
            cooldown_ips: 2.0,
        }
    }

    /// A snapshot-like report: `series` series (a third of them counters) and the given subnets.
    fn report(series: u32, subnets: Vec<SubnetUsage>) -> Report {
        Report {
            seq: 7,
            snapshot: true,
            scrape_time_ms: 1_765_000_000_000,
            status_detail: "ok".to_owned(),
            defs: (1..=series).map(def).collect(),
            ids: (1..=series).collect(),
            values: (1..=series).map(|i| f64::from(i) * 1.5).collect(),
            counter_raws: (1..=series).filter(|i| i % 3 == 0).map(f64::from).collect(),
            removed: vec![1000, 1001],
            subnets_changed: true,
            subnets,
            baseline_in_doubt: true,
            cooldown_ips: Some(4.5),
            ..Report::default()
        }
    }

    fn assemble(parts: Vec<Report>) -> Result<Report, PartError> {
        let mut a = Assembler::new(4 * 1024 * 1024);
        let mut out = None;
        for p in parts {
            assert!(out.is_none(), "a report came out before its last part");
            out = a.feed(p)?;
        }
        assert!(!a.is_pending());
        Ok(out.expect("the last part completes the report"))
    }

    #[test]
    fn split_and_assembled_is_the_same_report_and_every_part_is_small() {
        let cases: Vec<(&str, Report)> = vec![
            ("tiny delta", Report { seq: 3, ids: vec![1, 2], values: vec![1.0, 2.0], ..Report::default() }),
            ("v1.23-sized snapshot", report(60, vec![subnet(1, 0), subnet(2, 0)])),
            ("series only", report(300, Vec::new())),
            ("a subnet of 4096 blocks", report(5, vec![subnet(1, 4096)])),
            ("blocks across subnets", report(40, vec![subnet(1, 150), subnet(2, 3), subnet(3, 400)])),
        ];
        for (name, r) in cases {
            let parts = split(r.clone(), PART_BYTES);
            for p in &parts {
                assert!(p.encoded_len() <= PART_BYTES, "{name}: a part of {} bytes", p.encoded_len());
            }
            if r.encoded_len() <= PART_BYTES {
                assert_eq!(parts.len(), 1, "{name}");
                assert_eq!((parts[0].part, parts[0].parts), (0, 0), "{name}: a small report goes whole");
            } else {
                assert!(parts.len() > 1, "{name}");
                let n = parts.len() as u32;
                assert!(parts.iter().enumerate().all(|(i, p)| p.part == i as u32 + 1 && p.parts == n && p.seq == r.seq), "{name}");
                assert!(parts.iter().skip(1).all(|p| !p.snapshot && p.status_detail.is_empty()), "{name}: header in part 1 only");
            }
            assert_eq!(assemble(parts), Ok(r.clone()), "{name}");
        }
    }

    #[test]
    fn the_parts_of_a_report_are_about_the_budget_not_much_smaller() {
        let r = report(300, vec![subnet(1, 2000)]);
        let total = r.encoded_len();
        let parts = split(r, PART_BYTES);
        // Every part but the last is filled to within one item of the budget.
        assert!(parts.len() <= total / (PART_BYTES - 120) + 1, "{} parts for {total} bytes", parts.len());
    }

    #[test]
    fn a_whole_report_from_an_older_agent_passes_unchanged() {
        let r = report(60, vec![subnet(1, 500)]);
        let mut a = Assembler::new(1 << 20);
        assert_eq!(a.feed(r.clone()), Ok(Some(r)));
        assert!(!a.is_pending());
    }

    #[test]
    fn parts_out_of_protocol_are_refused_with_what_was_expected() {
        let parts = split(report(60, Vec::new()), PART_BYTES);
        assert!(parts.len() >= 3);
        let seq = parts[0].seq;
        let n = parts[0].parts;

        // A part missing.
        let mut a = Assembler::new(1 << 20);
        assert_eq!(a.feed(parts[0].clone()), Ok(None));
        assert_eq!(
            a.feed(parts[2].clone()),
            Err(PartError::OutOfOrder { expected: 2, parts: n, seq, part: 3, got_parts: n, got_seq: seq })
        );

        // Starting in the middle.
        let mut a = Assembler::new(1 << 20);
        assert!(matches!(a.feed(parts[1].clone()), Err(PartError::OutOfOrder { expected: 1, .. })));

        // A whole report between parts.
        let mut a = Assembler::new(1 << 20);
        assert_eq!(a.feed(parts[0].clone()), Ok(None));
        let whole = Report { seq: seq + 1, ..Report::default() };
        assert_eq!(a.feed(whole), Err(PartError::Interrupted { seq: seq + 1, pending: seq, missing_from: 2, parts: n }));

        // Another report's part.
        let mut a = Assembler::new(1 << 20);
        assert_eq!(a.feed(parts[0].clone()), Ok(None));
        let other = Report { seq: seq + 1, ..parts[1].clone() };
        assert!(matches!(a.feed(other), Err(PartError::OutOfOrder { got_seq, .. }) if got_seq == seq + 1));

        // Places that do not exist.
        for (part, parts) in [(0, 3), (4, 3), (1, MAX_PARTS + 1)] {
            let mut a = Assembler::new(1 << 20);
            let r = Report { seq: 1, part, parts, ..Report::default() };
            assert_eq!(a.feed(r), Err(PartError::OutOfRange { part, parts }));
        }
    }

    #[test]
    fn parts_adding_up_past_the_message_limit_are_refused() {
        let parts = split(report(300, Vec::new()), PART_BYTES);
        let mut a = Assembler::new(3 * PART_BYTES);
        let mut result = Ok(None);
        for p in parts {
            result = a.feed(p);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(PartError::TooLarge { seq: 7, max: 3 * PART_BYTES }));
    }

    #[test]
    fn a_continued_entry_must_follow_its_subnet() {
        let stray = SubnetUsage { subnet_id: "subnet-1".to_owned(), continued: true, ..SubnetUsage::default() };
        let mut a = Assembler::new(1 << 20);
        let r = Report { seq: 1, subnets: vec![subnet(2, 1), stray.clone()], ..Report::default() };
        assert_eq!(a.feed(r), Err(PartError::StrayContinuation));
        // Following its own subnet, in a whole report, the blocks join it.
        let mut own = stray;
        own.subnet_id = subnet(2, 0).subnet_id;
        own.blocks = vec![Ipv4Block { address: 0x0a00_0100, prefix_len: 32 }];
        let r = Report { seq: 2, subnets: vec![subnet(2, 1), own], ..Report::default() };
        let joined = a.feed(r).map(|r| r.map(|r| r.subnets));
        assert_eq!(joined.map(|s| s.map(|s| (s.len(), s[0].blocks.len()))), Ok(Some((1, 2))));
    }
}
