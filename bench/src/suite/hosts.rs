//! The internal hosts of the allocation runs: [`HOSTS`] addresses of
//! [`PREFIX`], each a source of its own. They are local addresses of the
//! client namespace (on its loopback) and routed to it from the nat
//! namespace through the client's first address, so for the NAT they are
//! hosts behind a router: one neighbour entry serves them all, where 1,000
//! on the link would meet the kernel's neighbour table limit
//! (`gc_thresh3`, 1,024 by default, shared by every namespace).
//!
//! The topology's own prefix (10.200.1.0/25) holds 125 client addresses at
//! most, too few for the block and deterministic modes, whose shares are
//! per host.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nat_tests::{CLIENT_IP, INT_IFACE, INTERNAL_PREFIX, Side, Topology, interrupt};

/// The hosts' prefix: 1,024 addresses, the deterministic numbering's too.
pub const PREFIX: &str = "10.201.0.0/22";
const NETWORK: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 0);
/// Hosts of the allocation runs: the first addresses of [`PREFIX`] after its network address.
pub const HOSTS: u32 = 1_000;

/// Where a run's connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// The topology's 8 client addresses in 10.200.1.0/25.
    Clients,
    /// The [`HOSTS`] addresses of [`PREFIX`].
    Hosts,
}

impl Sources {
    /// The internal prefix the NAT (or nftables, or the server's route) is given.
    pub fn prefix(self) -> &'static str {
        match self {
            Sources::Clients => INTERNAL_PREFIX,
            Sources::Hosts => PREFIX,
        }
    }

    pub fn addrs(self, topology: &Topology) -> Vec<Ipv4Addr> {
        match self {
            Sources::Clients => topology.client_ips(),
            Sources::Hosts => (1..=HOSTS)
                .map(|i| Ipv4Addr::from(u32::from(NETWORK) + i))
                .collect(),
        }
    }
}

/// Gives the client namespace the hosts' addresses and the nat namespace
/// the route to them; both go with the namespaces.
pub fn add(topology: &Topology) -> Result<()> {
    let addrs: Vec<String> = Sources::Hosts
        .addrs(topology)
        .iter()
        .map(|a| format!("addr add {a}/32 dev lo"))
        .collect();
    ip_batch(topology.ns_name(Side::Client), &addrs)?;
    ip_batch(
        topology.ns_name(Side::Nat),
        &[format!(
            "route add {PREFIX} via {CLIENT_IP} dev {INT_IFACE}"
        )],
    )
}

/// `ip -n NS -batch -` over `lines`.
fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let mut child = interrupt::spawn(
        Command::new("ip")
            .args(["-n", ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    {
        let mut stdin = child.stdin.take().context("ip -batch stdin")?;
        stdin.write_all((lines.join("\n") + "\n").as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "ip -n {ns} -batch failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
