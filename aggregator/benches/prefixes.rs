//! `cargo bench -p cni-metrics-aggregator --bench prefixes`: the free-/28 count of one subnet (pure, see
//! `state/subnets/prefixes.rs`) for a /16 with up to 60,000 addresses in use, as single addresses (secondary
//! IP mode, the worst case) or as /28 prefixes, with and without reservations. Prints a table.

use std::hint::black_box;
use std::time::Instant;

use cni_metrics_aggregator::state::subnets::prefixes::{count, Block, Reservation};

/// `n` distinct offsets of a /16 spread over it (a fixed permutation: multiply by an odd constant).
fn offsets(n: u32) -> Vec<u32> {
    (0..n).map(|i| (i.wrapping_mul(40_503) ^ 0x5a5a) & 0xffff).collect()
}

fn main() {
    let subnet = Block::parse("10.1.0.0/16").expect("a /16");
    let base = subnet.first();
    let addr = |o: u32| Block::new(base + o, 32).expect("a /32 is aligned");
    let prefix = |o: u32| Block::new(base + (o & !15), 28).expect("aligned to 16");
    let reservations: Vec<Reservation> = (0..16)
        .map(|k| {
            let b = Block::new(base + k * 4096, 24).expect("aligned");
            if k % 2 == 0 {
                Reservation::Explicit(b)
            } else {
                Reservation::Prefix(b)
            }
        })
        .collect();
    println!("{:<44} {:>10} {:>12} {:>10} {:>8}", "case (subnet 10.1.0.0/16)", "in use", "µs/count", "free /28s", "largest");
    let cases: Vec<(&str, Vec<Block>, &[Reservation])> = vec![
        ("empty", Vec::new(), &[]),
        ("1,000 addresses", offsets(1_000).into_iter().map(addr).collect(), &[]),
        ("60,000 addresses (secondary IP mode)", offsets(60_000).into_iter().map(addr).collect(), &[]),
        ("60,000 addresses + 16 reservations", offsets(60_000).into_iter().map(addr).collect(), &reservations),
        ("3,750 /28 prefixes (60,000 addresses)", (0..3_750).map(|k| prefix(k * 16)).collect(), &[]),
        ("60,000 addresses, each also as its /28", offsets(60_000).into_iter().flat_map(|o| [addr(o), prefix(o)]).collect(), &[]),
    ];
    for (what, used, res) in cases {
        let iterations = 200u32;
        let start = Instant::now();
        let mut last = None;
        for _ in 0..iterations {
            last = Some(count(black_box(subnet), black_box(used.iter().copied()), black_box(res)));
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
        let (free, largest) = match last {
            Some(Ok(s)) => (s.free.to_string(), s.largest_free_len.map_or("none".into(), |l| format!("/{l}"))),
            _ => ("error".into(), String::new()),
        };
        let addresses: u64 = used.iter().map(|b| b.size()).sum();
        println!("{what:<44} {addresses:>10} {per:>12.1} {free:>10} {largest:>8}");
    }
}
