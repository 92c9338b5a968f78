//! The XDP fast path: established flows cross the NAT without its stack, and
//! everything the fast path does not take still works through the stack.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::closing::{self, Close, CloseServer, cooldowns, left_ms, quick_close, wait_for};
use crate::common::*;
use aya::programs::{SchedClassifier, TcAttachType};
use nat_common::csum;
use nat_tests::{
    CLIENT_IFACE, CLIENT_IP, EXT_IFACE, INT_IFACE, NatProcess, SERVER_IP, Side, Topology,
    TopologyOpts, run_in_ns, tcp_exchange, tcp_sink_server, udp_echo_server, udp_exchange,
};
use nix::sys::signal::Signal;

const MIB: usize = 1 << 20;

/// XDP needs hosts that send complete checksums; TC works with the veth
/// defaults, under which the client and server send partial ones.
fn topology(tag: &str, ingress: &str) -> Topology {
    let topo = Topology::new(
        tag,
        TopologyOpts {
            wire_hosts: ingress == "xdp",
            ..Default::default()
        },
    );
    if ingress == "tc" {
        // The kernel completes partial checksums in software as the NAT
        // sends, after the programs ran, so the receivers check the result.
        tx_checksum_off(&topo, EXT_IFACE);
        tx_checksum_off(&topo, INT_IFACE);
    }
    topo
}

fn start(topo: &Topology, ingress: &str, extra: &[&str]) -> NatProcess {
    let mut args = vec![
        "--ports",
        PORTS,
        "--ingress",
        ingress,
        "--fast-path",
        INT_IFACE,
    ];
    args.extend_from_slice(extra);
    NatProcess::start(topo, &args)
}

/// Runs `ip ARGS` in the nat namespace, which must succeed.
fn ip_in_nat(topo: &Topology, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", topo.ns_name(Side::Nat)])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hook the fast path runs in on the internal interface, if any.
fn hook_on_internal(topo: &Topology) -> Option<&'static str> {
    if xdp_attached(topo, INT_IFACE) {
        return Some("xdp");
    }
    // Kernels before 6.6 have no TCX to query; the program is a cls_bpf filter there.
    let tcx = run_in_ns(topo.ns_name(Side::Nat), || {
        SchedClassifier::query_tcx(INT_IFACE, TcAttachType::Ingress).map_or(0, |(_, p)| p.len())
    });
    (tcx > 0 || !bpf_filters(topo, INT_IFACE, "ingress").is_empty()).then_some("tc")
}

/// A UDP socket on the client's first address, toward the echo server on
/// port 5353, for tests that send more than one datagram on one flow.
struct Flow {
    socket: UdpSocket,
    server: SocketAddrV4,
}

impl Flow {
    fn open(topo: &Topology) -> Flow {
        let socket = run_in_ns(topo.ns_name(Side::Client), || {
            UdpSocket::bind((CLIENT_IP, 0)).expect("bind")
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        Flow {
            socket,
            server: v4(SERVER_IP, 5353),
        }
    }

    /// Sends `payload` and says whether it came back within half a second.
    fn echoed(&self, payload: &[u8]) -> bool {
        if self.socket.send_to(payload, self.server).is_err() {
            return false;
        }
        let mut buf = [0u8; 2048];
        self.socket
            .recv(&mut buf)
            .is_ok_and(|n| buf[..n] == payload[..])
    }

    fn local(&self) -> SocketAddrV4 {
        match self.socket.local_addr().expect("local address") {
            SocketAddr::V4(local) => local,
            other => panic!("not IPv4: {other}"),
        }
    }
}

fn established_flows_bypass_the_stack(tag: &str, ingress: &'static str) {
    let topo = topology(tag, ingress);
    let mut nat = start(&topo, ingress, &[]);
    assert_eq!(hook_on_internal(&topo), Some(ingress));
    let tcp = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let client = topo.ns_name(Side::Client);
    let nat_ns = topo.ns_name(Side::Nat);
    let forwarded_before = snmp(nat_ns, "Ip", "ForwDatagrams");

    let tcp_local = tcp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 8080), MIB)
        .expect("1 MiB TCP transfer");
    let tcp_ext = assert_translated(tcp.last_peer().expect("server saw the TCP connection"));
    // Each exchange is a new socket; the kernel may hand two of them the same
    // ephemeral port, and then they are one flow.
    let mut udp_locals = std::collections::HashSet::new();
    for _ in 0..20 {
        let local = udp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 5353), 1200)
            .expect("UDP round trip");
        udp_locals.insert(local);
        assert_translated(udp.last_peer().expect("server saw the datagram"));
    }

    let list = sessions(&topo);
    assert_eq!(
        list.len(),
        1 + udp_locals.len(),
        "one TCP session and one per UDP flow: {list:#?}"
    );
    let tcp_session = list
        .iter()
        .find(|s| s["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no tcp session in {list:#?}"));
    assert_eq!(tcp_session["internal"], tcp_local.to_string());
    assert_eq!(tcp_session["external"], tcp_ext.to_string());

    let st = stats(&topo);
    let (fast_out, fast_in) = (counter(&st, "fast_out"), counter(&st, "fast_in"));
    // Only what opened a flow took the stack and TC egress's translation:
    // the TCP SYN and the first datagram of each UDP flow.
    assert_eq!(counter(&st, "translated_out"), 21, "{st}");
    if ingress == "xdp" {
        // Client tx checksum offload is off: 1 MiB crosses as ~720
        // MSS-sized segments, which never reach TC egress.
        assert!(fast_out > 700, "{st}");
        assert_eq!(counter(&st, "pass_external_source"), 0, "{st}");
    } else {
        // GSO super-packets, translated by the fast path and passed on by
        // TC egress at its first check.
        assert!(fast_out > 20, "{st}");
        assert_eq!(counter(&st, "pass_external_source"), fast_out, "{st}");
    }
    assert!(fast_in > 20, "{st}");
    // The stack forwarded only the packets that opened flows (and, at most,
    // their first replies).
    let forwarded = snmp(nat_ns, "Ip", "ForwDatagrams") - forwarded_before;
    assert!(
        forwarded <= 2 * 21 + 4,
        "the stack forwarded {forwarded} packets: {st}"
    );
    assert_clean(&topo, &st);
    if ingress == "xdp" {
        assert!(nat.stop().success());
    } else {
        // The fast path's links are pinned like the others: it keeps working
        // without its daemon, and `nat unload` removes it too.
        assert!(!nat.stop_daemon(Signal::SIGKILL).success());
        let before = counter(&stats(&topo), "fast_out");
        tcp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 8080), MIB)
            .expect("TCP transfer without the daemon");
        assert!(counter(&stats(&topo), "fast_out") > before);
        unload(&topo);
    }
    assert_eq!(
        hook_on_internal(&topo),
        None,
        "fast path left on {INT_IFACE}"
    );
    assert_nothing_left(&topo);
}

#[test]
fn established_flows_bypass_the_stack_xdp() {
    established_flows_bypass_the_stack("fastxdp", "xdp");
}

#[test]
fn established_flows_bypass_the_stack_tc() {
    established_flows_bypass_the_stack("fasttc", "tc");
}

#[test]
fn closes_seen_on_the_fast_path_start_cooldowns() {
    let topo = topology("fastclose", "xdp");
    let _nat = start(
        &topo,
        "xdp",
        &["--cooldown", "100s", "--cooldown-rst", "20s"],
    );
    let _server = CloseServer::start(&topo, 80);
    // The client sends the last FIN of a server-first close, and the RST of a
    // reset: both cross the NAT on the fast path, which must see them.
    let server_first = quick_close(&topo, 80, Close::ServerFirst);
    let reset = quick_close(&topo, 80, Close::Reset);
    let list = wait_for("two cooling keys", Duration::from_secs(2), || {
        let list = cooldowns(&topo);
        (list.len() >= 2).then_some(list)
    });
    let left = |c: &closing::Closed| left_ms(&list, "tcp", c.external, 80);
    let first = left(&server_first).unwrap_or_else(|| panic!("no cooldown: {list:#?}"));
    assert!(
        (90_000..=100_000).contains(&first),
        "{first} ms left: {list:#?}"
    );
    let rst = left(&reset).unwrap_or_else(|| panic!("no cooldown: {list:#?}"));
    assert!((10_000..=20_000).contains(&rst), "{rst} ms left: {list:#?}");
    let st = stats(&topo);
    assert_eq!(
        counter(&st, "translated_out"),
        2,
        "only the SYNs take the stack: {st}"
    );
    assert!(counter(&st, "fast_out") >= 4, "{st}");
}

#[test]
fn expiring_ttl_is_left_to_the_stack() {
    let topo = topology("fastttl", "xdp");
    let _nat = start(&topo, "xdp", &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let nat_ns = topo.ns_name(Side::Nat);
    let expired_before = snmp(nat_ns, "Icmp", "OutTimeExcds");
    let flow = Flow::open(&topo);
    assert!(flow.echoed(b"first"), "the first datagram was not echoed");
    // Same flow, now with TTL 1: it must expire at the NAT, not be forwarded.
    flow.socket.set_ttl(1).expect("ttl");
    assert!(!flow.echoed(b"second"), "a TTL 1 datagram crossed the NAT");
    let expired = snmp(nat_ns, "Icmp", "OutTimeExcds") - expired_before;
    assert_eq!(expired, 1, "the NAT's stack did not answer time exceeded");
    let st = stats(&topo);
    assert!(counter(&st, "fast_miss") >= 1, "{st}");
}

#[test]
fn fast_path_arguments_are_checked() {
    let topo = topology("fastargs", "xdp");
    let twice = format!("{INT_IFACE},{INT_IFACE}");
    for (args, expected) in [
        (
            vec!["--fast-path", EXT_IFACE],
            "names the external interface",
        ),
        (
            vec!["--fast-path", "nosuch0"],
            "no interface named 'nosuch0'",
        ),
        (vec!["--fast-path", twice.as_str()], "names veth-in twice"),
    ] {
        let out = try_load(&topo, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(hook_on_internal(&topo), None);
    assert_nothing_left(&topo);
}

#[test]
fn route_changes_reach_established_flows() {
    let topo = topology("fastroute", "xdp");
    let _nat = start(&topo, "xdp", &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let flow = Flow::open(&topo);
    let echoed = |payload: &[u8]| flow.echoed(payload);
    assert!(echoed(b"opens the flow"));
    assert!(echoed(b"fast"));
    let st = stats(&topo);
    assert!(counter(&st, "fast_out") >= 1, "{st}");

    let route = |verb: &str| ip_in_nat(&topo, &["route", verb, "blackhole", "198.18.0.2/32"]);
    route("add");
    // The flow's cached lookup is used for at most a second.
    std::thread::sleep(Duration::from_millis(1100));
    let before = counter(&stats(&topo), "fast_route");
    assert!(
        !echoed(b"blackholed"),
        "a datagram crossed a blackhole route"
    );
    assert!(counter(&stats(&topo), "fast_route") > before);
    route("del");
    assert!(echoed(b"routed again"), "the flow did not recover");
}

/// A datagram of an established flow that is larger than the external MTU,
/// by as little as 2 bytes, is left to the stack, which answers with
/// fragmentation needed; one that fits takes the fast path.
fn mtu_is_checked(tag: &str, ingress: &'static str) {
    let topo = topology(tag, ingress);
    let nat_ns = topo.ns_name(Side::Nat);
    ip_in_nat(&topo, &["link", "set", EXT_IFACE, "mtu", "1400"]);
    let _nat = start(&topo, ingress, &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let flow = Flow::open(&topo);
    let echoed = |len: usize| flow.echoed(&vec![b'x'; len]);
    assert!(echoed(16), "the flow did not open");
    assert!(echoed(16));
    let fast_before = counter(&stats(&topo), "fast_out");
    let unreach_before = snmp(nat_ns, "Icmp", "OutDestUnreachs");
    // 20 bytes of IP and 8 of UDP: 1402 bytes on the wire, 2 over the MTU.
    assert!(
        !echoed(1374),
        "a datagram over the external MTU crossed the NAT"
    );
    assert_eq!(snmp(nat_ns, "Icmp", "OutDestUnreachs") - unreach_before, 1);
    let st = stats(&topo);
    assert!(counter(&st, "fast_route") >= 1, "{st}");
    assert_eq!(counter(&st, "fast_out"), fast_before, "{st}");
    // Exactly the MTU fits, and takes the fast path.
    assert!(echoed(1372), "a datagram of exactly the MTU was lost");
    assert_eq!(counter(&stats(&topo), "fast_out"), fast_before + 1);
}

#[test]
fn mtu_is_checked_xdp() {
    mtu_is_checked("fastmtux", "xdp");
}

#[test]
fn mtu_is_checked_tc() {
    mtu_is_checked("fastmtut", "tc");
}

/// A UDP datagram from `src` to `dst` in an Ethernet frame addressed to `dst_mac`.
fn udp_frame(dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let (s, d) = (src.ip().octets(), dst.ip().octets());
    let check = csum::l4_checksum(s, d, libc::IPPROTO_UDP as u8, &udp);
    udp[6..8].copy_from_slice(&check.to_ne_bytes());
    let mut ip = vec![
        0x45,
        0,
        0,
        0,
        0x12,
        0x34,
        0x40,
        0,
        64,
        libc::IPPROTO_UDP as u8,
        0,
        0,
    ];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&s);
    ip.extend_from_slice(&d);
    let check = csum::ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_ne_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// Sends one Ethernet frame out of `iface` of the calling thread's namespace.
fn send_frame(iface: &str, frame: &[u8]) {
    let index = nix::net::if_::if_nametoindex(iface).expect("interface index");
    // SAFETY: plain libc socket calls on buffers we own; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            n,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// A frame of an established flow sent to another host's MAC address (what a
/// promiscuous interface also sees) is not forwarded: the stack drops it.
fn frames_for_other_hosts_stay(tag: &str, ingress: &'static str) {
    let topo = topology(tag, ingress);
    let _nat = start(&topo, ingress, &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let flow = Flow::open(&topo);
    for _ in 0..2 {
        assert!(flow.echoed(b"flow"), "the flow did not work");
    }
    let before = stats(&topo);
    let frame = udp_frame(
        [0x02, 0, 0, 0, 0, 0x99],
        flow.local(),
        flow.server,
        b"stray",
    );
    run_in_ns(topo.ns_name(Side::Client), move || {
        send_frame(CLIENT_IFACE, &frame)
    });
    let mut buf = [0u8; 64];
    assert!(
        flow.socket.recv(&mut buf).is_err(),
        "a frame for another host's MAC was forwarded and echoed"
    );
    let after = stats(&topo);
    assert_eq!(
        counter(&after, "fast_out"),
        counter(&before, "fast_out"),
        "{after}"
    );
    assert!(
        counter(&after, "fast_miss") > counter(&before, "fast_miss"),
        "{after}"
    );
}

#[test]
fn frames_for_other_hosts_stay_xdp() {
    frames_for_other_hosts_stay("fastmacx", "xdp");
}

#[test]
fn frames_for_other_hosts_stay_tc() {
    frames_for_other_hosts_stay("fastmact", "tc");
}
