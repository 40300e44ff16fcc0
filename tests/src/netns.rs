//! A small lab of Linux network namespaces for fault tests: one namespace for the control plane (the
//! aggregator, and a bridge) and one per node (the node's fake ipamd on its own `127.0.0.1:61678`, and
//! its agent), each node joined to the bridge by a veth pair. Every interface and address lives inside a
//! namespace the lab created; nothing is added to the host's own network. Dropping the lab deletes the
//! namespaces (and with them the veths).
//!
//! A partition is the node's veth set down (`ip link set eth0 down` inside the node's namespace): the
//! node keeps its local ipamd, loses the aggregator, and the aggregator sees silence (no reset).

use std::process::Command;

use anyhow::{bail, Context, Result};

/// The control plane's address on the bridge.
pub const CONTROL_IP: &str = "10.77.0.1";

pub struct Lab {
    prefix: String,
    nodes: usize,
    cut: std::sync::Mutex<std::collections::BTreeSet<usize>>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Lab {
    /// Create the lab with `nodes` node namespaces, or say why it cannot be created here (not root, no
    /// `ip`, no namespace support): the caller prints the reason and falls back to loopback.
    pub fn create(nodes: usize) -> std::result::Result<Self, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("network namespaces need root (ip netns add)".into());
        }
        let lab = Lab { prefix: format!("cmh{}x{}", std::process::id(), fastrand_suffix()), nodes: 0, cut: Default::default() };
        lab.setup_control().map_err(|e| format!("cannot create the control namespace: {e:#}"))?;
        let mut lab = lab;
        for i in 0..nodes {
            lab.add_node(i).map_err(|e| format!("cannot create node namespace {i}: {e:#}"))?;
        }
        Ok(lab)
    }

    fn setup_control(&self) -> Result<()> {
        let ns = self.control();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{CONTROL_IP}/24"), "dev", "br0"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Add node namespace `i` (nodes are numbered from 0, in order).
    pub fn add_node(&mut self, i: usize) -> Result<()> {
        let ns = self.node(i);
        let control = self.control();
        ip(&["netns", "add", &ns])?;
        self.nodes = self.nodes.max(i + 1);
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let peer = format!("v{i}");
        ip(&["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &control])?;
        ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{}/24", 10 + i), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &control, "link", "set", &peer, "master", "br0"])?;
        ip(&["-n", &control, "link", "set", &peer, "up"])?;
        Ok(())
    }

    pub fn control(&self) -> String {
        format!("{}c", self.prefix)
    }

    pub fn node(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Cut (`down = true`) or restore node `i`'s link to the control plane.
    pub fn set_partitioned(&self, i: usize, down: bool) -> Result<()> {
        ip(&["-n", &self.node(i), "link", "set", "eth0", if down { "down" } else { "up" }])?;
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        if down {
            cut.insert(i);
        } else {
            cut.remove(&i);
        }
        Ok(())
    }

    pub fn is_partitioned(&self, i: usize) -> bool {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).contains(&i)
    }
}

fn fastrand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() % 100_000).unwrap_or(0)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.node(i)]);
        }
        let _ = ip(&["netns", "del", &self.control()]);
    }
}
