//! Hostile traffic through the live datapath: one internal host floods SYNs
//! far over its limit, another sends a storm of malformed packets, and the
//! outside sprays resets with guessed ports and wrong sequence numbers,
//! unsolicited SYNs and UDP at every external port. Meanwhile a transfer
//! from a third internal host and an established connection of the
//! flooding host must keep working, and afterwards nothing internal has
//! left the NAT, no table went past its bounds, and no session was closed
//! by a reset from outside its window.
//!
//! Everything is bounded (a few thousand frames, under a minute) and stays
//! inside the test's own namespaces.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::common::*;
use nat_tests::{
    CLIENT_IFACE, CLIENT_IP, EXT_IFACE, EXTERNAL_IP, EchoConnection, INT_IFACE, NatProcess,
    SERVER_IFACE, SERVER_IP, Side, Topology, TopologyOpts, nat_cmd, nat_json,
    packet::{L3_AT, Pkt, checksum, tcp_flags},
    raw::{Capture, link_address, send_frames},
    run_in_ns, serde_json, spawn_in_ns, tcp_echo_server, tcp_sink_server, tcp_transfer,
};

const LIMIT: u64 = 100;
const MAX_SESSIONS: u64 = 1024;
const FLOOD_SYNS: u16 = 3000;
/// Internal hosts: the flooder (also holding the established connection),
/// the well-behaved transfer, and the malformed storm.
const FLOODER: Ipv4Addr = CLIENT_IP;
const TRANSFER: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 3);
const MALFORMED: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 4);
/// A port nothing listens on at the server: it answers with resets.
const CLOSED_PORT: u16 = 7;

fn linked(mut p: Pkt, dst: [u8; 6], src: [u8; 6]) -> Pkt {
    p.eth_dst = dst;
    p.eth_src = src;
    p
}

fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[L3_AT] & 0x0f) * 4;
    if ihl < 20 || f.len() < L3_AT + ihl {
        return;
    }
    f[L3_AT + 10..L3_AT + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&[&f[L3_AT..L3_AT + ihl]]);
    f[L3_AT + 10..L3_AT + 12].copy_from_slice(&c.to_be_bytes());
}

/// Truncated headers, IHL and length lies, odd flag combinations, bad
/// checksums, tiny and overlapping fragments, from [`MALFORMED`].
fn malformed_frames(dst: [u8; 6], src: [u8; 6]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for i in 0..20u16 {
        let from = SocketAddrV4::new(MALFORMED, 30_000 + i * 16);
        let to = SocketAddrV4::new(SERVER_IP, CLOSED_PORT);
        let port = |n: u16| SocketAddrV4::new(MALFORMED, from.port() + n);
        let syn = linked(Pkt::tcp(from, to, tcp_flags::SYN), dst, src).frame();
        // Truncated: inside the IPv4 header, inside the TCP header.
        frames.push(syn[..L3_AT + 12].to_vec());
        frames.push(syn[..L3_AT + 20 + 7].to_vec());
        // IHL lies: longer than the frame, shorter than the minimum.
        for ihl in [0x4f, 0x43, 0x46] {
            let mut f = syn.clone();
            f[L3_AT] = ihl;
            fix_ip_checksum(&mut f);
            frames.push(f);
        }
        // Total length lies: past the frame, inside the header, one short.
        for len in [1500u16, 12, 39] {
            let mut f = syn.clone();
            f[L3_AT + 2..L3_AT + 4].copy_from_slice(&len.to_be_bytes());
            fix_ip_checksum(&mut f);
            frames.push(f);
        }
        // Flag combinations.
        for (n, flags) in [
            (1, tcp_flags::SYN | tcp_flags::FIN),
            (2, tcp_flags::SYN | tcp_flags::RST),
            (3, 0),
            (4, 0x3f),
            (5, tcp_flags::FIN),
        ] {
            frames.push(linked(Pkt::tcp(port(n), to, flags), dst, src).frame());
        }
        // Bad checksums: IPv4, then TCP and UDP.
        let mut f = linked(Pkt::tcp(port(6), to, tcp_flags::SYN), dst, src).frame();
        f[L3_AT + 10] ^= 0x5a;
        frames.push(f);
        let mut f = linked(Pkt::tcp(port(7), to, tcp_flags::SYN), dst, src).frame();
        f[L3_AT + 20 + 16] ^= 0x5a;
        frames.push(f);
        let mut f = linked(
            Pkt::udp(port(8), SocketAddrV4::new(SERVER_IP, 5353)).payload(&[7; 32]),
            dst,
            src,
        )
        .frame();
        f[L3_AT + 20 + 6] ^= 0x5a;
        frames.push(f);
        // Tiny fragments: 8 bytes of TCP in the first (ports only).
        let big = linked(
            Pkt::tcp(port(9), to, tcp_flags::SYN).payload(&[1; 64]),
            dst,
            src,
        );
        frames.extend(big.fragments(8));
        // Overlapping fragments: the second starts inside the first.
        let [first, mut second] = linked(
            Pkt::udp(port(10), SocketAddrV4::new(SERVER_IP, 5353)).payload(&[2; 64]),
            dst,
            src,
        )
        .fragments(24);
        second[L3_AT + 6..L3_AT + 8].copy_from_slice(&1u16.to_be_bytes());
        fix_ip_checksum(&mut second);
        frames.push(first);
        frames.push(second);
        // A later fragment with no first one.
        let [_, orphan] = big.fragments(16);
        frames.push(orphan);
    }
    frames
}

/// The SYN flood: [`FLOOD_SYNS`] opening SYNs from [`FLOODER`], each from
/// its own port.
fn flood_frames(dst: [u8; 6], src: [u8; 6]) -> Vec<Vec<u8>> {
    (0..FLOOD_SYNS)
        .map(|i| {
            let from = SocketAddrV4::new(FLOODER, 40_000 + i);
            let to = SocketAddrV4::new(SERVER_IP, CLOSED_PORT);
            linked(Pkt::tcp(from, to, tcp_flags::SYN), dst, src).frame()
        })
        .collect()
}

/// From outside: a reset with a wrong sequence number from each server port
/// in use to every external port, then a SYN and a UDP datagram to every
/// external port.
fn outside_storm(server_ns: &str, dst: [u8; 6], src: [u8; 6]) {
    let mut frames = Vec::new();
    for port in PORT_LO..=PORT_HI {
        let ext = SocketAddrV4::new(EXTERNAL_IP, port);
        for from in [9000, 8080] {
            let mut rst = Pkt::tcp(SocketAddrV4::new(SERVER_IP, from), ext, tcp_flags::RST);
            if let nat_tests::packet::L4::Tcp { seq, .. } = &mut rst.l4 {
                *seq = 0x8000_0000u32.wrapping_add(u32::from(port) * 7919);
            }
            frames.push(linked(rst, dst, src).frame());
        }
        let syn = Pkt::tcp(SocketAddrV4::new(SERVER_IP, 4444), ext, tcp_flags::SYN);
        frames.push(linked(syn, dst, src).frame());
    }
    run_in_ns(server_ns, move || {
        send_frames(SERVER_IFACE, &frames);
        let udp = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
        for port in PORT_LO..=PORT_HI {
            let _ = udp.send_to(b"hello?", (EXTERNAL_IP, port));
        }
    });
}

/// (host, sessions) from `nat top --hosts --json`.
fn host_counts(topo: &Topology) -> Vec<(String, u64)> {
    nat_json(topo, &["top", "--hosts", "--json", "--limit", "1000"])
        .as_array()
        .expect("an array")
        .iter()
        .map(|h| {
            (
                h["host"].as_str().expect("host").to_owned(),
                h["sessions"].as_u64().expect("sessions"),
            )
        })
        .collect()
}

fn count_of(counts: &[(String, u64)], host: Ipv4Addr) -> u64 {
    counts
        .iter()
        .find(|(h, _)| *h == host.to_string())
        .map_or(0, |(_, n)| *n)
}

#[test]
fn hostile_traffic_leaks_nothing_and_loses_no_session() {
    let started = Instant::now();
    let topo = Topology::new("hostile", TopologyOpts::default());
    let limit = LIMIT.to_string();
    let max = MAX_SESSIONS.to_string();
    let nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--max-sessions",
            &max,
            "--max-sessions-per-host",
            &limit,
            "--timeout-tcp-closed",
            "2s",
        ],
    );
    let client_ns = topo.ns_name(Side::Client).to_owned();
    let server_ns = topo.ns_name(Side::Server).to_owned();
    let nat_ns = topo.ns_name(Side::Nat);
    let _echo = tcp_echo_server(&server_ns, 9000);
    let _sink = tcp_sink_server(&server_ns, 8080);
    let to_nat = (
        link_address(nat_ns, INT_IFACE),
        link_address(&client_ns, CLIENT_IFACE),
    );
    let from_outside = (
        link_address(nat_ns, EXT_IFACE),
        link_address(&server_ns, SERVER_IFACE),
    );
    let pcap = format!("/tmp/nat-hostile-{}.pcap", std::process::id());
    let mut capture = Capture::start(&server_ns, SERVER_IFACE, &pcap);

    // The flooding host's established connection, opened before the storm.
    let mut conn = EchoConnection::open(&client_ns, Some(FLOODER), v4(SERVER_IP, 9000))
        .expect("the flooder's connection opens");
    conn.roundtrip(1000, Duration::from_secs(5))
        .expect("a first round trip");

    // `nat stats` is asked throughout; the sampler also watches the bounds.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let ns = nat_ns.to_owned();
        thread::spawn(move || {
            let (mut answers, mut slowest, mut most_host, mut most_total) =
                (0u32, Duration::ZERO, 0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = nat_tests::nat_cmd_in(&ns, &["stats", "--json"]);
                assert!(out.status.success(), "nat stats failed during the storm");
                slowest = slowest.max(t.elapsed());
                answers += 1;
                let st: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("stats --json prints JSON");
                most_total = most_total.max(st["sessions"].as_u64().expect("sessions"));
                let hosts = nat_tests::nat_json_in(&ns, &["top", "--hosts", "--json"]);
                let counts: Vec<u64> = hosts
                    .as_array()
                    .expect("an array")
                    .iter()
                    .map(|h| h["sessions"].as_u64().expect("sessions"))
                    .collect();
                most_host = most_host.max(counts.iter().copied().max().unwrap_or(0));
                thread::sleep(Duration::from_millis(200));
            }
            (answers, slowest, most_host, most_total)
        })
    };

    // The well-behaved transfer, during the storm.
    let transfer = {
        let ns = client_ns.clone();
        thread::spawn(move || tcp_transfer(&ns, Some(TRANSFER), v4(SERVER_IP, 8080), 16 << 20))
    };
    let (dst, src) = to_nat;
    let flood = flood_frames(dst, src);
    let malformed = malformed_frames(dst, src);
    let storm_inside = spawn_in_ns(&client_ns, move || {
        for chunk in flood
            .chunks(500)
            .zip(malformed.chunks(malformed.len() / 6 + 1))
        {
            send_frames(CLIENT_IFACE, chunk.0);
            send_frames(CLIENT_IFACE, chunk.1);
        }
    });
    outside_storm(&server_ns, from_outside.0, from_outside.1);
    storm_inside.join().expect("the inside storm was sent");
    let transferred = transfer.join().expect("transfer thread");
    // The established connection still carries data, after the resets.
    let after = conn.roundtrip(1000, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let (answers, slowest, most_host, most_total) = sampler.join().expect("sampler");

    transferred.expect("the transfer from another host completed during the storm");
    after.expect("the flooder's established connection survived the storm");
    let st = stats(&topo);
    eprintln!(
        "hostile: {answers} stats answers (slowest {slowest:?}), most per host {most_host}, most in all {most_total}; counters: {}",
        st["counters"]
    );
    assert!(
        counter(&st, "drop_host_limit") >= u64::from(FLOOD_SYNS) - LIMIT,
        "the flood went past the limit: {st}"
    );
    assert!(counter(&st, "rst_out_of_window") > 0, "{st}");
    assert!(counter(&st, "drop_malformed") > 0, "{st}");
    assert!(answers >= 3, "nat stats answered {answers} times");
    assert!(
        slowest < Duration::from_secs(3),
        "nat stats took {slowest:?}"
    );
    assert!(most_host <= LIMIT, "a host held {most_host} sessions");
    assert!(most_total <= MAX_SESSIONS, "{most_total} sessions");
    let counts = host_counts(&topo);
    assert!(count_of(&counts, FLOODER) <= LIMIT, "{counts:?}");
    assert!(
        nat_json(&topo, &["sessions", "--json"])
            .as_array()
            .expect("an array")
            .len() as u64
            <= MAX_SESSIONS
    );

    // Nothing with an internal source left on the external side.
    let (total, leaked) = capture.stop_and_read("src net 10.200.1.0/25");
    eprintln!(
        "hostile: capture of {total} packets, {} with an internal source",
        leaked.len()
    );
    assert!(total > 1000, "the capture saw {total} packets");
    assert!(
        leaked.is_empty(),
        "internal sources on the wire: {leaked:?}"
    );

    // The flood's sessions were reset by the server; once they expire the
    // sweep counts them off, down to the established connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = count_of(&host_counts(&topo), FLOODER);
        if n <= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the flooder still counts {n}");
        thread::sleep(Duration::from_millis(250));
    }
    conn.roundtrip(100, Duration::from_secs(5))
        .expect("the connection is still there");
    let top = nat_cmd(&topo, &["top", "--hosts"]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "nat top --hosts failed");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&FLOODER.to_string()) && l.contains(&limit)),
        "{text}"
    );
    drop(conn);
    assert!(nat.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
