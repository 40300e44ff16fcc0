//! Loopback ports for processes that bind them later.

use anyhow::{bail, Context, Result};

/// A free loopback port for a process that binds it later (an aggregator that must come back on the
/// same address, a program under qemu that takes seconds to start).
///
/// The port comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port that
/// `bind(0)` handed out could be taken between the check and the program's bind, by another test's
/// `bind(0)` or by any outgoing connection's local port (CI once failed with "address in use" that way).
/// Ports here are handed out by no one else: each call in this process takes the next one from a start
/// that depends on the process id (tests of one binary share the counter; binaries run one at a time), and
/// a port something already holds is skipped.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = outside_ephemeral_range()?;
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {low} and {high}")
}

/// The ports the kernel never hands out by itself: 10,000 up to the start of the ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32,768 by default), or those above its end when it starts lower.
fn outside_ephemeral_range() -> Result<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>().ok());
    let (first, last) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(first), Some(last)) => (first, last),
        _ => (32_768, 60_999),
    };
    let below = (10_000, first);
    let above = (last.saturating_add(1), u16::MAX);
    [below, above]
        .into_iter()
        .filter(|(low, high)| high > low)
        .max_by_key(|(low, high)| high - low)
        .context(format!("no ports outside the ephemeral range {first}-{last}"))
}
