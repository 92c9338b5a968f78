//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Command,
};

use aya::programs::{SchedClassifier, TcAttachType};
use nat_tests::{EXT_IFACE, EXTERNAL_IP, INT_IFACE, Side, Topology, nat_json, serde_json::Value};

/// The port range the tests hand the NAT, so "in range" is checked against a known value.
pub const PORTS: &str = "20000-20999";
pub const PORT_LO: u16 = 20000;
pub const PORT_HI: u16 = 20999;

pub fn stats(topo: &Topology) -> Value {
    nat_json(topo, &["stats", "--json"])
}

pub fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing from {stats}"))
}

pub fn sessions(topo: &Topology) -> Vec<Value> {
    nat_json(topo, &["sessions", "--json"])
        .as_array()
        .expect("sessions --json prints an array")
        .clone()
}

/// Asserts the server saw the NAT's external address and a port from the range.
pub fn assert_translated(peer: SocketAddr) -> SocketAddrV4 {
    let SocketAddr::V4(peer) = peer else {
        panic!("server saw an IPv6 peer {peer}")
    };
    assert_eq!(
        *peer.ip(),
        EXTERNAL_IP,
        "server must see the external address, saw {peer}"
    );
    assert!(
        (PORT_LO..=PORT_HI).contains(&peer.port()),
        "external port {} outside {PORTS}",
        peer.port()
    );
    peer
}

pub fn v4(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Nothing of ours is attached to the external interface and nothing is pinned for this namespace.
pub fn assert_nothing_left(topo: &Topology) {
    let ns = topo.ns_name(Side::Nat);
    let pin_dir = format!("/sys/fs/bpf/nat/{ns}");
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "pins left behind in {pin_dir}: {:?}",
        std::fs::read_dir(&pin_dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let progs = attached_programs(topo);
    assert!(
        progs.is_empty(),
        "programs still attached to {EXT_IFACE}: {progs:?}"
    );
}

/// The programs on the external interface: egress, then ingress (TCX links,
/// or cls_bpf filters on kernels before 6.6), then "xdp".
pub fn attached_programs(topo: &Topology) -> Vec<String> {
    let mut names = Vec::new();
    for (hook, name) in [
        (TcAttachType::Egress, "egress"),
        (TcAttachType::Ingress, "ingress"),
    ] {
        names.extend(nat_tests::run_in_ns(topo.ns_name(Side::Nat), move || {
            match SchedClassifier::query_tcx(EXT_IFACE, hook) {
                Ok((_, progs)) => progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                    .collect::<Vec<_>>(),
                // No TCX on this kernel: nothing can be attached that way.
                Err(_) => Vec::new(),
            }
        }));
        names.extend(bpf_filters(topo, EXT_IFACE, name));
    }
    if xdp_attached(topo, EXT_IFACE) {
        names.push("xdp".to_owned());
    }
    names
}

/// Names of the BPF programs in the cls_bpf filters on `hook` of `iface`
/// in the nat namespace (`tc filter show` prints `... name nat_egress tag ...`).
pub fn bpf_filters(topo: &Topology, iface: &str, hook: &str) -> Vec<String> {
    let out = Command::new("tc")
        .args([
            "-n",
            topo.ns_name(Side::Nat),
            "filter",
            "show",
            "dev",
            iface,
            hook,
        ])
        .output()
        .expect("tc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(" bpf "))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "name")?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// Whether an XDP program is attached to `iface` in the nat namespace.
pub fn xdp_attached(topo: &Topology, iface: &str) -> bool {
    let link = Command::new("ip")
        .args(["-n", topo.ns_name(Side::Nat), "-d", "link", "show", iface])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&link.stdout).contains("prog/xdp")
}

/// Runs `nat load` on the external interface with the topology's addresses
/// and `extra`, for tests that expect it to be refused (it exits at once).
pub fn try_load(topo: &Topology, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "load",
        "--iface",
        EXT_IFACE,
        "--external",
        "198.18.0.1",
        "--internal",
        "10.200.1.0/25",
    ];
    args.extend_from_slice(extra);
    nat_tests::nat_cmd(topo, &args)
}

/// `nat unload --iface` the external interface, which must succeed.
pub fn unload(topo: &Topology) {
    let out = nat_tests::nat_cmd(topo, &["unload", "--iface", EXT_IFACE]);
    assert!(
        out.status.success(),
        "unload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No packet was dropped for a reason that means a bug or exhaustion, and
/// neither end saw a checksum error.
pub fn assert_clean(topo: &Topology, stats: &Value) {
    for drop in [
        "drop_no_session",
        "drop_alloc_failed",
        "drop_malformed",
        "drop_rewrite_error",
    ] {
        assert_eq!(counter(stats, drop), 0, "{drop}: {stats}");
    }
    for side in [Side::Client, Side::Server] {
        assert_eq!(
            csum_errors(topo.ns_name(side)),
            (0, 0),
            "checksum errors seen by the {side:?}"
        );
    }
}

/// (TCP, UDP) InCsumErrors of a namespace: packets its stack dropped for a bad checksum.
pub fn csum_errors(ns: &str) -> (u64, u64) {
    (
        snmp(ns, "Tcp", "InCsumErrors"),
        snmp(ns, "Udp", "InCsumErrors"),
    )
}

/// One counter of a namespace's /proc/net/snmp, e.g. ("Ip", "ForwDatagrams").
pub fn snmp(ns: &str, proto: &'static str, name: &'static str) -> u64 {
    proc_net_counter(ns, "snmp", proto, name)
}

fn proc_net_counter(ns: &str, file: &'static str, row: &'static str, name: &'static str) -> u64 {
    nat_tests::proc_net_counter(ns, file, row, name)
}

/// Turns TX checksum offload off on one of the NAT's interfaces: the kernel
/// then completes CHECKSUM_PARTIAL checksums in software when it sends, after
/// our programs ran, so the receiver really checks what the rewrite left.
pub fn tx_checksum_off(topo: &Topology, dev: &str) {
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.ns_name(Side::Nat),
            "ethtool",
            "-K",
            dev,
            "tx",
            "off",
        ])
        .output()
        .expect("ethtool runs");
    assert!(
        st.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A TcpExt counter of a namespace (from /proc/net/netstat), e.g. PAWSTimewait.
pub fn tcp_ext(ns: &str, name: &'static str) -> u64 {
    proc_net_counter(ns, "netstat", "TcpExt", name)
}

/// Sends one raw IP datagram (`proto` IPPROTO_RAW: `bytes` is the whole
/// datagram; otherwise the kernel adds the IP header) from the calling
/// thread's namespace to `dst`.
pub fn send_raw(proto: i32, bytes: &[u8], dst: Ipv4Addr) {
    // SAFETY: plain libc socket calls on buffers we own; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, proto);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from(dst).to_be();
        let n = libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(
            n,
            bytes.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// Runs ping from the client namespace (0.2 s apart, 1 s wait) with `args`
/// (count, TTL, size...) and returns what it printed.
pub fn ping(topo: &Topology, dst: Ipv4Addr, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.ns_name(Side::Client),
            "ping",
            "-n",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .args(args)
        .arg(dst.to_string())
        .output()
        .expect("ping runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a fast path runs on the internal interface: XDP, a TCX ingress
/// program, or a cls_bpf ingress filter (kernels before 6.6).
pub fn fast_path_on_internal(topo: &Topology) -> bool {
    xdp_attached(topo, INT_IFACE)
        || !bpf_filters(topo, INT_IFACE, "ingress").is_empty()
        || nat_tests::run_in_ns(topo.ns_name(Side::Nat), || {
            SchedClassifier::query_tcx(INT_IFACE, TcAttachType::Ingress)
                .is_ok_and(|(_, progs)| !progs.is_empty())
        })
}
