//! TCP and UDP through the NAT, checked from the server's side of the wire.

use std::collections::HashSet;

use crate::common::*;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, INT_IFACE, NatProcess, OUTSIDE_CLIENT_IP, SERVER_IP, Side, Topology,
    TopologyOpts, concurrent_tcp, tcp_exchange, tcp_sink_server, tcp_transfer, udp_echo_server,
    udp_exchange,
};

const MIB: usize = 1 << 20;

fn tcp_and_udp(tag: &str, offloads: bool, ingress: &str) {
    let topo = Topology::new(
        tag,
        TopologyOpts {
            offloads,
            ..Default::default()
        },
    );
    if ingress == "tc" {
        // Partial checksums from the client and the server are completed in
        // software after the rewrite, on the NAT's way out in both directions.
        tx_checksum_off(&topo, EXT_IFACE);
        tx_checksum_off(&topo, INT_IFACE);
    }
    // The stack path: the fast path has tests of its own.
    let nat = NatProcess::start(
        &topo,
        &["--ports", PORTS, "--ingress", ingress, "--no-fast-path"],
    );
    let tcp = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let client = topo.ns_name(Side::Client);

    let tcp_local = tcp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 8080), MIB)
        .expect("1 MiB TCP transfer");
    let tcp_ext = assert_translated(tcp.last_peer().expect("server saw the TCP connection"));
    let udp_local =
        udp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 5353), 1200).expect("UDP round trip");
    let udp_ext = assert_translated(udp.last_peer().expect("server saw the datagram"));

    let list = sessions(&topo);
    assert_eq!(list.len(), 2, "{list:#?}");
    for (proto, local, ext, port) in [
        ("tcp", tcp_local, tcp_ext, 8080),
        ("udp", udp_local, udp_ext, 5353),
    ] {
        let s = list
            .iter()
            .find(|s| s["proto"] == proto)
            .unwrap_or_else(|| panic!("no {proto} session in {list:#?}"));
        assert_eq!(s["internal"], local.to_string());
        assert_eq!(s["external"], ext.to_string());
        assert_eq!(s["remote"], v4(SERVER_IP, port).to_string());
    }
    let st = stats(&topo);
    assert_eq!(counter(&st, "sessions_opened"), 2);
    // Without offloads 1 MiB is ~700 MSS-sized segments; with them GSO sends 64 KiB super-packets.
    let min_out = if offloads { 16 } else { 700 };
    assert!(counter(&st, "translated_out") > min_out, "{st}");
    assert!(counter(&st, "translated_in") > 2);
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
    assert_nothing_left(&topo);
}

#[test]
fn tcp_and_udp_with_offloads() {
    tcp_and_udp("offl-on", true, "xdp");
}

#[test]
fn tcp_and_udp_without_offloads() {
    tcp_and_udp("offl-off", false, "xdp");
}

/// CHECKSUM_PARTIAL packets in both directions, their checksums completed
/// after translation: egress TC and the TC ingress variant keep the seed right.
#[test]
fn tcp_and_udp_partial_checksums_with_tc_ingress() {
    tcp_and_udp("partial", true, "tc");
}

#[test]
fn concurrent_connections_get_distinct_tuples() {
    let topo = Topology::new("conc", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let server = tcp_sink_server(topo.ns_name(Side::Server), 9000);
    let sources = topo.client_ips();
    assert_eq!(sources.len(), 8);

    let results = concurrent_tcp(
        topo.ns_name(Side::Client),
        &sources,
        v4(SERVER_IP, 9000),
        200,
        4096,
    );
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {failed:?}",
        failed.len()
    );

    let peers = server.peers();
    assert_eq!(peers.len(), 200);
    let ports: HashSet<u16> = peers.iter().map(|p| assert_translated(*p).port()).collect();
    assert_eq!(
        ports.len(),
        200,
        "two connections to one destination shared an external port"
    );

    let list = sessions(&topo);
    let tuples: HashSet<(String, String)> = list
        .iter()
        .map(|s| {
            (
                s["external"].as_str().unwrap().to_owned(),
                s["remote"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(list.len(), 200);
    assert_eq!(tuples.len(), 200);
    let internals: HashSet<String> = list
        .iter()
        .map(|s| {
            s["internal"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        internals.len(),
        8,
        "sessions from all 8 client addresses: {internals:?}"
    );
}

#[test]
fn sources_outside_the_internal_prefixes_are_not_translated() {
    let topo = Topology::new("outside", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(OUTSIDE_CLIENT_IP),
        v4(SERVER_IP, 8080),
        64 * 1024,
    )
    .expect("untranslated transfer");
    let peer = server.last_peer().expect("server saw the connection");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(OUTSIDE_CLIENT_IP),
        "must not be translated"
    );
    assert!(sessions(&topo).is_empty());
    let st = stats(&topo);
    assert!(counter(&st, "pass_not_internal") > 10, "{st}");
    assert_eq!(counter(&st, "translated_out"), 0);
}

/// A TCP segment that is not a SYN and has no session must not leave with its
/// internal source address: it is dropped and counted.
#[test]
fn internal_segment_without_session_is_dropped() {
    let topo = Topology::new("nosess", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let before = counter(&stats(&topo), "drop_no_session");
    // The client's primary address, 10.200.1.2, is the source the kernel picks.
    nat_tests::run_in_ns(topo.ns_name(Side::Client), || {
        send_raw(libc::IPPROTO_TCP, &bare_tcp(0x10 /* ACK */), SERVER_IP)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = stats(&topo);
    assert_eq!(counter(&st, "drop_no_session"), before + 1, "{st}");
    assert_eq!(counter(&st, "translated_out"), 0);
    assert!(sessions(&topo).is_empty());
}

/// A bare 20-byte TCP header from port 40000 to 8080 with `flags`.
fn bare_tcp(flags: u8) -> [u8; 20] {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
    seg[2..4].copy_from_slice(&8080u16.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg
}
