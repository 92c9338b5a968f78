//! Live sessions before a measurement: real UDP flows from the client
//! namespace, one datagram each, so this NAT and conntrack hold the same
//! number of entries the same way (nothing is written into either table
//! behind its back).
//!
//! Flows go from the 8 client addresses and many source ports to
//! [`DEST_PORTS`] server ports; the server binds those ports and never reads
//! them, so no ICMP error comes back. The datagrams are built whole and sent
//! through one raw socket (IPPROTO_RAW), which needs no socket per source port.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nat_tests::packet::Pkt;
use nat_tests::{SERVER_IP, Side, Topology, run_in_ns};

use super::cpu;

/// Server ports the flows spread over: each is a destination of its own for
/// the NAT, so 1,000,000 flows use about 31,250 of the 64,512 external ports
/// toward each (conntrack likewise keys by destination).
pub const DEST_PORTS: u16 = 32;
const FIRST_DEST_PORT: u16 = 30_000;
const FIRST_SOURCE_PORT: u16 = 1024;
const BATCH: usize = 64;
/// Resend rounds while fewer than [`FILLED_SHARE`] of the flows hold an entry
/// (a datagram dropped on the way creates none; a resent one refreshes it).
const MAX_PASSES: u32 = 4;
const FILLED_SHARE: f64 = 0.99;
/// Capacity of both tables in the scale runs (this NAT's --max-sessions and
/// net.netfilter.nf_conntrack_max): room for the largest point and the
/// measured flows, the same at every point so only the occupancy changes.
pub const CAPACITY: u64 = 1_310_720;
/// conntrack's timeout for unreplied UDP (30 s) would expire the flows in the
/// middle of a scale point; this NAT keeps a UDP session 300 s by default.
pub const CONNTRACK_UDP_TIMEOUT_S: u32 = 300;
const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The `i`-th fill flow: source address i mod 8 after spreading over the
/// destination ports, then source ports upwards; all distinct for i < 2^22.
fn flow(i: u32, clients: &[Ipv4Addr]) -> (SocketAddrV4, SocketAddrV4) {
    let dport = FIRST_DEST_PORT + (i % u32::from(DEST_PORTS)) as u16;
    let j = i / u32::from(DEST_PORTS);
    let n = clients.len() as u32;
    let src = clients[(j % n) as usize];
    let sport = FIRST_SOURCE_PORT + (j / n) as u16;
    (
        SocketAddrV4::new(src, sport),
        SocketAddrV4::new(SERVER_IP, dport),
    )
}

/// Bound, never-read sockets on the fill flows' server ports.
pub struct Sinks {
    _sockets: Vec<UdpSocket>,
}

impl Sinks {
    pub fn bind(server_ns: &str) -> Result<Sinks> {
        let sockets = run_in_ns(server_ns, || {
            (FIRST_DEST_PORT..FIRST_DEST_PORT + DEST_PORTS)
                .map(|p| UdpSocket::bind(("0.0.0.0", p)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .context("cannot bind the scale sinks")?;
        Ok(Sinks { _sockets: sockets })
    }
}

pub struct Filled {
    /// Entries the table held after the fill.
    pub live: u64,
    pub secs: f64,
    pub passes: u32,
}

/// Sends one datagram for each of `n` flows (again while `count` says that
/// fewer than 99% hold an entry), from a thread pinned to `cpu`.
pub fn fill(
    topology: &Topology,
    n: u32,
    cpu: usize,
    count: impl Fn() -> Result<u64>,
) -> Result<Filled> {
    let began = Instant::now();
    let before = count()?;
    let mut live = before;
    let mut passes = 0;
    while passes < MAX_PASSES && ((live - before.min(live)) as f64) < f64::from(n) * FILLED_SHARE {
        passes += 1;
        let clients = topology.client_ips();
        let client_ns = topology.ns_name(Side::Client).to_owned();
        run_in_ns(&client_ns, move || -> Result<()> {
            cpu::pin_current_thread(cpu)?;
            send_flows(n, &clients)
        })?;
        live = count()?;
    }
    Ok(Filled {
        live: live - before.min(live),
        secs: began.elapsed().as_secs_f64(),
        passes,
    })
}

fn send_flows(n: u32, clients: &[Ipv4Addr]) -> Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_in is a plain C struct; all-zero is valid.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(SERVER_IP).to_be();
    let mut i = 0;
    let mut transient = 0u64;
    while i < n {
        let end = (i + BATCH as u32).min(n);
        let mut datagrams: Vec<Vec<u8>> = (i..end)
            .map(|k| {
                let (src, dst) = flow(k, clients);
                Pkt::udp(src, dst).payload(&[0x5a; 18]).datagram()
            })
            .collect();
        let mut iovs: Vec<libc::iovec> = datagrams
            .iter_mut()
            .map(|d| libc::iovec {
                iov_base: d.as_mut_ptr().cast(),
                iov_len: d.len(),
            })
            .collect();
        // SAFETY: all-zero mmsghdr is valid; every pointer set below points
        // at `to` or `iovs`, which outlive the sendmmsg call.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut off = 0;
        while off < msgs.len() {
            // SAFETY: see above; the kernel reads the messages and writes msg_len.
            let sent = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs[off..].as_mut_ptr(),
                    (msgs.len() - off) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                off += sent as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) if transient < 1_000_000 => {
                    transient += 1;
                    std::thread::yield_now();
                }
                _ => bail!("sendmmsg on the raw socket: {err}"),
            }
        }
        i = end;
    }
    Ok(())
}

/// conntrack entries of `nat_ns`.
pub fn conntrack_count(nat_ns: &str) -> Result<u64> {
    let text = run_in_ns(nat_ns, || {
        fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
    })
    .context("cannot read nf_conntrack_count")?;
    text.trim()
        .parse()
        .context("nf_conntrack_count is not a number")
}

/// Sets conntrack's unreplied-UDP timeout of `nat_ns` (a per-namespace setting).
pub fn set_conntrack_udp_timeout(nat_ns: &str) -> Result<()> {
    run_in_ns(nat_ns, || {
        fs::write(
            "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
            CONNTRACK_UDP_TIMEOUT_S.to_string(),
        )
    })
    .context("cannot set nf_conntrack_udp_timeout")
}

/// The machine-wide nf_conntrack_max before the bench raised it (0: untouched).
static SAVED_CONNTRACK_MAX: AtomicU64 = AtomicU64::new(0);

/// Raises net.netfilter.nf_conntrack_max to [`CAPACITY`] (it can only be set
/// in the initial namespace and holds for all); [`restore_conntrack_max`]
/// puts the old value back.
pub fn raise_conntrack_max() -> Result<()> {
    let old: u64 = fs::read_to_string(CONNTRACK_MAX)
        .context("cannot read nf_conntrack_max (is nf_conntrack loaded?)")?
        .trim()
        .parse()
        .context("nf_conntrack_max is not a number")?;
    if old >= CAPACITY {
        return Ok(());
    }
    let _ = SAVED_CONNTRACK_MAX.compare_exchange(0, old, Ordering::SeqCst, Ordering::SeqCst);
    fs::write(CONNTRACK_MAX, CAPACITY.to_string()).context("cannot raise nf_conntrack_max")
}

pub fn restore_conntrack_max() {
    let old = SAVED_CONNTRACK_MAX.swap(0, Ordering::SeqCst);
    if old != 0 {
        let _ = fs::write(CONNTRACK_MAX, old.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn fill_flows_are_distinct_and_leave_room_toward_each_destination() {
        let clients: Vec<Ipv4Addr> = (2..10).map(|h| Ipv4Addr::new(10, 200, 1, h)).collect();
        // The largest scale point.
        let n = 1_000_000;
        let mut seen = HashSet::with_capacity(n as usize);
        let mut per_dest = std::collections::HashMap::<u16, u32>::new();
        for i in 0..n {
            let (src, dst) = flow(i, &clients);
            assert!(src.port() >= FIRST_SOURCE_PORT, "flow {i}: {src}");
            assert!(seen.insert((src, dst)), "flow {i} repeats {src} -> {dst}");
            *per_dest.entry(dst.port()).or_default() += 1;
        }
        assert_eq!(per_dest.len(), usize::from(DEST_PORTS));
        // Well inside the 64,512 external ports toward one destination.
        assert!(
            per_dest.values().all(|&k| k <= 64_512 / 2 + 1),
            "{per_dest:?}"
        );
    }
}
