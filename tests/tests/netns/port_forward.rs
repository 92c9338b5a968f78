//! Static port forwards (DNAT) and hairpinning through them: servers behind
//! the NAT reached from outside and from inside, the `nat forward` commands,
//! bad forwards refused without a change, and the allocator keeping its
//! hands off forwarded ports.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ops;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, EXTERNAL_IP, EchoConnection, INT_IFACE, NatProcess, SERVER_IP, Side,
    Topology, TopologyOpts, nat_cmd, nat_json, tcp_echo_server, tcp_sink_server, tcp_transfer,
    udp_echo_server, udp_exchange,
};

/// The internal host the forwards lead to (a second address of the client namespace).
const INTERNAL_HOST: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 3);

fn forwards(topo: &Topology) -> Vec<String> {
    nat_json(topo, &["forward", "list", "--json"])
        .as_array()
        .expect("forward list --json prints an array")
        .iter()
        .map(|f| {
            format!(
                "{} {}:{}+{} {}:{}",
                f["protocol"].as_str().unwrap(),
                f["external"].as_str().unwrap(),
                f["external_port"],
                f["ports"],
                f["internal"].as_str().unwrap(),
                f["internal_port"]
            )
        })
        .collect()
}

/// `nat forward ARGS` must fail with one line containing `want`.
fn refused(topo: &Topology, args: &[&str], want: &str) {
    let mut full = vec!["forward"];
    full.extend_from_slice(args);
    let out = nat_cmd(topo, &full);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nat {full:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "nat {full:?}: {err}");
    assert!(err.contains(want), "nat {full:?}: {err}");
}

fn ok(topo: &Topology, args: &[&str]) {
    let mut full = vec!["forward"];
    full.extend_from_slice(args);
    let out = nat_cmd(topo, &full);
    assert!(
        out.status.success(),
        "nat {full:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn peer_ip(peer: SocketAddr) -> Ipv4Addr {
    match peer {
        SocketAddr::V4(p) => *p.ip(),
        SocketAddr::V6(p) => panic!("IPv6 peer {p}"),
    }
}

fn topology(tag: &str) -> Topology {
    let topo = Topology::new(tag, TopologyOpts::default());
    // Partial checksums are completed in software after translation, as in
    // the other TC tests.
    tx_checksum_off(&topo, EXT_IFACE);
    tx_checksum_off(&topo, INT_IFACE);
    topo
}

#[test]
fn port_forwards_reach_tcp_and_udp_servers_from_outside() {
    let topo = topology("pfwd");
    let tcp_fwd = format!("tcp,{EXTERNAL_IP}:8443,{INTERNAL_HOST}:443");
    // The echo server's socket is bound to 0.0.0.0, so its replies leave
    // from the namespace's first address: the forward leads there.
    let udp_fwd = format!("udp,{EXTERNAL_IP}:5300,{CLIENT_IP}:5353");
    let nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            "tc",
            "--forward",
            &tcp_fwd,
            "--forward",
            &udp_fwd,
        ],
    );
    let client = topo.ns_name(Side::Client);
    let outside = topo.ns_name(Side::Server);
    let tcp = tcp_sink_server(client, 443);
    let udp = udp_echo_server(client, 5353);

    tcp_transfer(outside, None, v4(EXTERNAL_IP, 8443), 1 << 20).expect("TCP through the forward");
    assert_eq!(peer_ip(tcp.last_peer().expect("TCP peer")), SERVER_IP);
    // The echo must come back from the forwarded address and port.
    udp_exchange(outside, None, v4(EXTERNAL_IP, 5300), 1200).expect("UDP through the forward");
    assert_eq!(peer_ip(udp.last_peer().expect("UDP peer")), SERVER_IP);

    let list = sessions(&topo);
    for (proto, int, ext_port) in [
        ("tcp", v4(INTERNAL_HOST, 443), 8443),
        ("udp", v4(CLIENT_IP, 5353), 5300),
    ] {
        let s = list
            .iter()
            .find(|s| s["proto"] == proto)
            .unwrap_or_else(|| panic!("no {proto} session in {list:#?}"));
        assert_eq!(s["internal"], int.to_string());
        assert_eq!(s["external"], v4(EXTERNAL_IP, ext_port).to_string());
    }
    let st = stats(&topo);
    assert_eq!(counter(&st, "forward_opened"), 2, "{st}");
    // Opened by the forward, not by the allocator.
    assert_eq!(counter(&st, "sessions_opened"), 0, "{st}");
    assert_clean(&topo, &st);

    // Listed as loaded; a live forward works at once, a deleted one stops.
    assert_eq!(
        forwards(&topo),
        [
            format!("tcp {EXTERNAL_IP}:8443+1 {INTERNAL_HOST}:443"),
            format!("udp {EXTERNAL_IP}:5300+1 {CLIENT_IP}:5353"),
        ]
    );
    ok(
        &topo,
        &[
            "add",
            "tcp",
            &format!("{EXTERNAL_IP}:9100-9101"),
            &format!("{INTERNAL_HOST}:443-444"),
        ],
    );
    tcp_transfer(outside, None, v4(EXTERNAL_IP, 9100), 4096).expect("TCP through a live forward");
    ok(&topo, &["del", "tcp", &format!("{EXTERNAL_IP}:8443")]);
    assert!(
        tcp_transfer(outside, None, v4(EXTERNAL_IP, 8443), 4096).is_err(),
        "a deleted forward still forwards"
    );
    assert_eq!(
        forwards(&topo),
        [
            format!("tcp {EXTERNAL_IP}:9100+2 {INTERNAL_HOST}:443"),
            format!("udp {EXTERNAL_IP}:5300+1 {CLIENT_IP}:5353"),
        ]
    );
    assert!(nat.stop().success());
}

#[test]
fn bad_forwards_are_one_line_and_change_nothing() {
    let topo = topology("pfbad");
    let nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            "tc",
            "--forward",
            &format!("tcp,{EXTERNAL_IP}:9000-9009,{INTERNAL_HOST}:9000-9009"),
        ],
    );
    let before = forwards(&topo);
    assert_eq!(before.len(), 1);
    let ext = |p: &str| format!("{EXTERNAL_IP}:{p}");
    let int = |p: &str| format!("{INTERNAL_HOST}:{p}");
    refused(&topo, &["add", "tcp", &ext("9005"), &int("80")], "overlaps");
    refused(
        &topo,
        &["add", "tcp", &ext("8990-9000"), &int("1-11")],
        "overlaps",
    );
    refused(&topo, &["add", "tcp", &ext("0"), &int("80")], "not a port");
    refused(
        &topo,
        &["add", "tcp", &ext("65536"), &int("80")],
        "not a port",
    );
    refused(
        &topo,
        &["add", "udp", &ext("80-81"), &int("80")],
        "port by port",
    );
    refused(
        &topo,
        &["add", "udp", &ext("80"), "10.200.1.200:80"],
        "outside the internal prefixes",
    );
    refused(
        &topo,
        &["add", "udp", "198.18.0.9:80", &int("80")],
        "not an external address",
    );
    refused(
        &topo,
        &["add", "sctp", &ext("80"), &int("80")],
        "not a protocol",
    );
    refused(&topo, &["del", "udp", &ext("9000")], "no udp forward");
    assert_eq!(forwards(&topo), before);
    // The same rules at load: one line, nothing attached.
    drop(nat);
    let out = try_load(
        &topo,
        &[
            "--forward",
            &format!("tcp,{EXTERNAL_IP}:80,{INTERNAL_HOST}:80"),
            "--forward",
            &format!("udp,{EXTERNAL_IP}:70-80,{INTERNAL_HOST}:70-80"),
            "--forward",
            &format!("tcp,{EXTERNAL_IP}:75-85,{INTERNAL_HOST}:75-85"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("overlaps"), "{err}");
    assert_nothing_left(&topo);
}

/// With 4 ports and one of them forwarded, three connections toward one
/// server take the other three; the fourth finds none and the forwarded
/// port is never handed out.
#[test]
fn the_allocator_never_hands_out_a_forwarded_port() {
    let topo = topology("pfalloc");
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            "20000-20003",
            "--ingress",
            "tc",
            "--forward",
            &format!("tcp,{EXTERNAL_IP}:20001,{INTERNAL_HOST}:443"),
        ],
    );
    let server = tcp_echo_server(topo.ns_name(Side::Server), 7000);
    let client = topo.ns_name(Side::Client);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = EchoConnection::open(client, Some(CLIENT_IP), v4(SERVER_IP, 7000))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.roundtrip(64, Duration::from_secs(5)).expect("echo");
        held.push(c);
    }
    assert!(
        EchoConnection::open(client, Some(CLIENT_IP), v4(SERVER_IP, 7000)).is_err(),
        "a fourth connection got a port"
    );
    let mut ports: Vec<u16> = server
        .peers()
        .iter()
        .map(|p| {
            assert_eq!(peer_ip(*p), EXTERNAL_IP);
            p.port()
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [20000, 20002, 20003]);
    let st = stats(&topo);
    assert!(counter(&st, "drop_alloc_failed") >= 1, "{st}");
    drop(held);
}

/// An internal client reaches the internal server through the forward's
/// external address, and the server sees the client's external address:
/// the TC fast path's program hairpins, also through the netlink filter of
/// kernels without TCX links (CI's netlink pass runs the `_tc` tests).
#[test]
fn hairpin_reaches_forwarded_servers_from_inside_tc() {
    hairpin(topology("pfhair"), "tc");
}

/// The same beside the XDP fast path (hosts with complete checksums, as
/// XDP needs): the hairpin program runs in TC, on its own.
#[test]
fn hairpin_reaches_forwarded_servers_beside_the_xdp_fast_path() {
    let topo = Topology::new(
        "pfhairx",
        TopologyOpts {
            wire_hosts: true,
            ..Default::default()
        },
    );
    hairpin(topo, "xdp");
}

fn hairpin(topo: Topology, ingress: &str) {
    let nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            ingress,
            "--lan",
            INT_IFACE,
            "--forward",
            &format!("tcp,{EXTERNAL_IP}:8443,{INTERNAL_HOST}:443"),
        ],
    );
    let client = topo.ns_name(Side::Client);
    let tcp = tcp_sink_server(client, 443);
    for _ in 0..2 {
        tcp_transfer(client, Some(CLIENT_IP), v4(EXTERNAL_IP, 8443), 256 << 10)
            .expect("TCP hairpinned through the forward");
    }
    let peers = tcp.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for p in &peers {
        assert_translated(*p);
    }
    // Each connection is two sessions: the client's toward the forward's
    // external endpoint, the server's toward the client's external one.
    let list = sessions(&topo);
    assert_eq!(list.len(), 4, "{list:#?}");
    let to_forward = list
        .iter()
        .filter(|s| s["remote"] == v4(EXTERNAL_IP, 8443).to_string())
        .count();
    assert_eq!(to_forward, 2, "{list:#?}");
    // UDP the same way, from another internal address to the echo server
    // behind a forward added live; the echo comes back from the forward.
    ok(
        &topo,
        &[
            "add",
            "udp",
            &format!("{EXTERNAL_IP}:5300"),
            &format!("{CLIENT_IP}:5353"),
        ],
    );
    let udp = udp_echo_server(client, 5353);
    let sender = Ipv4Addr::new(10, 200, 1, 4);
    udp_exchange(client, Some(sender), v4(EXTERNAL_IP, 5300), 600)
        .expect("UDP hairpinned through the forward");
    assert_translated(udp.last_peer().expect("UDP peer"));
    let st = stats(&topo);
    assert!(counter(&st, "hairpin") > 10, "{st}");
    assert_eq!(counter(&st, "forward_opened"), 3, "{st}");
    assert_eq!(counter(&st, "sessions_opened"), 3, "{st}");
    assert_eq!(counter(&st, "drop_hairpin_unrouted"), 0, "{st}");
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
}

/// A NAT hairpinning on the LAN with `filtering-udp` at `filtering`, and
/// two hosts inside: A (the client address) and B (a second address), whose
/// UDP socket has a mapping from talking to a server outside. Returns the
/// daemon, A's and B's sockets and B's external endpoint.
fn mapped_pair(
    topo: &Topology,
    filtering: &str,
) -> (
    NatProcess,
    std::net::UdpSocket,
    std::net::UdpSocket,
    SocketAddrV4,
) {
    let nat = NatProcess::start(
        topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            "tc",
            "--lan",
            INT_IFACE,
            "--filtering-udp",
            filtering,
        ],
    );
    let outside = udp_echo_server(topo.ns_name(Side::Server), 3478);
    let client = topo.ns_name(Side::Client).to_owned();
    let (a, b) = nat_tests::run_in_ns(&client, || {
        let bind = |ip: Ipv4Addr| {
            let s = std::net::UdpSocket::bind((ip, 0)).expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        };
        (bind(CLIENT_IP), bind(INTERNAL_HOST))
    });
    let mut buf = [0u8; 64];
    b.send_to(b"hello", (SERVER_IP, 3478))
        .expect("B to the server");
    b.recv_from(&mut buf).expect("the server's echo to B");
    let b_ext = match outside.last_peer().expect("the server saw B") {
        SocketAddr::V4(p) => p,
        SocketAddr::V6(p) => panic!("IPv6 peer {p}"),
    };
    assert_eq!(*b_ext.ip(), EXTERNAL_IP, "B is seen translated");
    (nat, a, b, b_ext)
}

/// A hairpinned packet the mapping's filter refuses (B's mapping has sent
/// only to the server's address, not to the NAT's own) goes to the stack
/// untouched and leaves no session of its sender behind: the filter answers
/// before the sender's session is allocated.
#[test]
fn hairpin_refused_by_a_mappings_filter_leaves_no_session() {
    let topo = topology("pfhairflt");
    let (nat, a, b, b_ext) = mapped_pair(&topo, "address-dependent");
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let a_at = match a.local_addr().expect("A's address") {
        SocketAddr::V4(p) => p,
        SocketAddr::V6(p) => panic!("IPv6 socket {p}"),
    };
    for _ in 0..3 {
        a.send_to(b"to B", b_ext).expect("A to B's mapping");
    }
    let mut buf = [0u8; 64];
    assert!(b.recv_from(&mut buf).is_err(), "the filter admitted A");
    let a_at = a_at.to_string();
    let left: Vec<_> = sessions(&topo)
        .into_iter()
        .filter(|s| s["internal"] == a_at.as_str())
        .collect();
    assert!(left.is_empty(), "A's refused packets left {left:?}");
    let st = stats(&topo);
    assert_eq!(counter(&st, "hairpin"), 0, "{st}");
    assert!(counter(&st, "pass_filtered") >= 3, "{st}");
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
}

/// Hairpinning through another internal endpoint's endpoint-independent
/// UDP mapping (RFC 4787 REQ-9): host B's socket has a mapping from talking
/// to a server outside; host A sends to that mapping's external endpoint
/// and B receives it from A's external endpoint, and B's answer reaches A
/// from B's external endpoint.
#[test]
fn hairpin_reaches_another_hosts_udp_mapping() {
    let topo = topology("pfhaireim");
    let (nat, a, b, b_ext) = mapped_pair(&topo, "endpoint-independent");
    let mut buf = [0u8; 64];
    a.send_to(b"to B", b_ext).expect("A to B's mapping");
    let (n, from) = b
        .recv_from(&mut buf)
        .expect("B receives A through its mapping");
    assert_eq!(&buf[..n], b"to B");
    let a_ext = assert_translated(from);
    b.send_to(b"to A", a_ext)
        .expect("B answers A's external endpoint");
    let (n, from) = a.recv_from(&mut buf).expect("A receives B's answer");
    assert_eq!(&buf[..n], b"to A");
    assert_eq!(
        from,
        SocketAddr::V4(b_ext),
        "B's answer comes from B's mapping"
    );
    let st = stats(&topo);
    assert!(counter(&st, "hairpin") >= 2, "{st}");
    assert!(counter(&st, "eim_inbound") >= 1, "{st}");
    // B's exchange with the server crossed the hairpin program on the LAN
    // interface uncounted by it: only a packet to an external address that
    // it leaves to the stack is.
    assert_eq!(counter(&st, "pass_not_hairpin"), 0, "{st}");
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
}

/// The config file's `forward` list is loaded, and a reload makes the map
/// the file's again (a forward added live and not in the file goes, as a
/// setting changed with `nat set` returns to the file's); a file with
/// overlapping forwards is refused in one line and changes nothing.
#[test]
fn port_forwards_come_from_the_config_file_and_reload() {
    let topo = topology("pfcfg");
    let dir = ops::TempDir::new("pfcfg");
    let file_with = |forwards: &[String]| {
        let list: Vec<String> = forwards.iter().map(|f| format!("\"{f}\"")).collect();
        format!(
            "iface = \"veth-ext\"\nexternal = [\"{EXTERNAL_IP}\"]\ninternal = [\"10.200.1.0/25\"]\nports = \"{PORTS}\"\ningress = \"tc\"\nforward = [{}]\n",
            list.join(", ")
        )
    };
    let first = format!("tcp,{EXTERNAL_IP}:8443,{INTERNAL_HOST}:443");
    let file = dir.file("nat.toml", &file_with(std::slice::from_ref(&first)));
    let nat = NatProcess::start_load(&topo, &["--config", ops::path_str(&file)], &[]);
    assert_eq!(
        forwards(&topo),
        [format!("tcp {EXTERNAL_IP}:8443+1 {INTERNAL_HOST}:443")]
    );
    ok(
        &topo,
        &[
            "add",
            "udp",
            &format!("{EXTERNAL_IP}:5300"),
            &format!("{INTERNAL_HOST}:5353"),
        ],
    );

    let bad = [
        format!("tcp,{EXTERNAL_IP}:9440-9449,{INTERNAL_HOST}:440-449"),
        format!("tcp,{EXTERNAL_IP}:9443,{INTERNAL_HOST}:443"),
    ];
    std::fs::write(&file, file_with(&bad)).unwrap();
    let (done, _, err) = ops::nat(&topo, &["reload", "--iface", EXT_IFACE]);
    assert!(!done, "nat reload accepted overlapping forwards");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("overlaps"), "{err}");
    assert_eq!(forwards(&topo).len(), 2);

    let second = format!("tcp,{EXTERNAL_IP}:9443,{INTERNAL_HOST}:443");
    std::fs::write(&file, file_with(&[second])).unwrap();
    let (done, _, err) = ops::nat(&topo, &["reload", "--iface", EXT_IFACE]);
    assert!(done, "nat reload: {err}");
    let want = [format!("tcp {EXTERNAL_IP}:9443+1 {INTERNAL_HOST}:443")];
    let asked = Instant::now();
    while forwards(&topo) != want {
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "the reload did not apply the forwards: {:?}",
            forwards(&topo)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcp = tcp_sink_server(topo.ns_name(Side::Client), 443);
    tcp_transfer(
        topo.ns_name(Side::Server),
        None,
        v4(EXTERNAL_IP, 9443),
        4096,
    )
    .expect("TCP through the reloaded forward");
    assert_eq!(peer_ip(tcp.last_peer().expect("TCP peer")), SERVER_IP);
    assert!(nat.stop().success());
}
