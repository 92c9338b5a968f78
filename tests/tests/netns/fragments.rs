//! IPv4 fragments: 8 KB UDP datagrams over a 1500-byte MTU, both directions,
//! content checked; and a later fragment that arrives before its first.

use std::net::SocketAddrV4;

use crate::common::*;
use nat_tests::{
    CLIENT_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, udp_echo_server, udp_exchange,
};

fn large_datagrams(tag: &str, offloads: bool, ingress: &str) {
    let topo = Topology::new(
        tag,
        TopologyOpts {
            offloads,
            ..Default::default()
        },
    );
    let _nat = NatProcess::start(&topo, &["--ports", PORTS, "--ingress", ingress]);
    let echo = udp_echo_server(topo.ns_name(Side::Server), 5353);
    for size in [8000, 8192, 3000] {
        udp_exchange(
            topo.ns_name(Side::Client),
            Some(CLIENT_IP),
            SocketAddrV4::new(SERVER_IP, 5353),
            size,
        )
        .unwrap_or_else(|e| panic!("{size}-byte datagram: {e}"));
        assert_translated(echo.last_peer().unwrap());
    }
    let st = stats(&topo);
    // 8000 bytes over a 1500 MTU are 6 fragments each way.
    assert!(counter(&st, "translated_out") >= 6 + 6 + 3, "{st}");
    assert!(counter(&st, "translated_in") >= 6 + 6 + 3, "{st}");
    assert_eq!(counter(&st, "fragment_unknown"), 0, "{st}");
    for side in [Side::Client, Side::Server] {
        assert_eq!(csum_errors(topo.ns_name(side)), (0, 0), "{side:?}");
    }
}

#[test]
fn large_udp_datagrams_with_offloads() {
    large_datagrams("frag-on", true, "xdp");
}

#[test]
fn large_udp_datagrams_without_offloads() {
    large_datagrams("frag-off", false, "xdp");
}

#[test]
fn large_udp_datagrams_with_tc_ingress() {
    large_datagrams("frag-tc", true, "tc");
}

/// A later fragment whose first fragment never came: from inside it is
/// dropped and counted (it would leave with the internal source); from
/// outside it is passed to the host and counted. Sessions are untouched.
#[test]
fn fragment_of_an_unknown_datagram_is_counted() {
    let topo = Topology::new("frag-unk", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    // Offset 185 * 8 = 1480, no more fragments: the tail of a datagram.
    let tail = raw_fragment(CLIENT_IP, SERVER_IP, 0x7777, 185);
    nat_tests::run_in_ns(topo.ns_name(Side::Client), move || {
        send_raw(libc::IPPROTO_RAW, &tail, SERVER_IP)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = stats(&topo);
    assert_eq!(counter(&st, "fragment_unknown"), 1, "{st}");
    assert_eq!(counter(&st, "translated_out"), 0, "{st}");

    let tail = raw_fragment(SERVER_IP, nat_tests::EXTERNAL_IP, 0x8888, 185);
    nat_tests::run_in_ns(topo.ns_name(Side::Server), move || {
        send_raw(libc::IPPROTO_RAW, &tail, nat_tests::EXTERNAL_IP)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = stats(&topo);
    assert_eq!(counter(&st, "fragment_unknown"), 2, "{st}");
    assert_eq!(counter(&st, "translated_in"), 0, "{st}");
    assert!(sessions(&topo).is_empty());
}

/// Pings larger than the MTU: the echo request and reply are fragmented.
#[test]
fn large_pings_are_translated() {
    let topo = Topology::new("frag-ping", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let text = ping(&topo, SERVER_IP, &["-c", "2", "-s", "4000"]);
    assert!(text.contains("2 received"), "{text}");
    assert_eq!(counter(&stats(&topo), "fragment_unknown"), 0);
}

/// An IPv4 UDP fragment at `offset` (in 8-byte units), last of its datagram.
fn raw_fragment(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, id: u16, offset: u16) -> Vec<u8> {
    let payload = [0xabu8; 64];
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&offset.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = nat_common::csum::ipv4_header_checksum(&p);
    p[10..12].copy_from_slice(&c.to_ne_bytes());
    p.extend_from_slice(&payload);
    p
}
