//! Path MTU discovery through the NAT, and IPv4 options (IHL above 5).

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

use crate::common::*;
use nat_tests::{
    CLIENT_IP, EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, run_in_ns,
    tcp_sink_server, tcp_transfer,
};

const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split(' '))
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fourth namespace behind the server, which routes to it over a link
/// whose router side has a 1280-byte MTU; the far host itself has 1500, so it
/// advertises an MSS the path cannot carry and only PMTU discovery helps.
struct FarHost {
    ns: String,
}

impl FarHost {
    fn new(topo: &Topology) -> Self {
        let ns = format!("{}-far", topo.ns_name(Side::Server));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let (nat, sv) = (topo.ns_name(Side::Nat), topo.ns_name(Side::Server));
        ip(&format!("netns add {ns}"));
        let far = Self { ns };
        let ns = &far.ns;
        ip(&format!(
            "-n {sv} link add far0 mtu 1280 type veth peer name far1 netns {ns}"
        ));
        ip(&format!("-n {sv} addr add 203.0.113.1/24 dev far0"));
        ip(&format!("-n {sv} link set far0 up"));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} addr add {FAR}/24 dev far1"));
        ip(&format!("-n {ns} link set far1 up"));
        ip(&format!("-n {ns} route add default via 203.0.113.1"));
        ip(&format!("netns exec {sv} sysctl -qw net.ipv4.ip_forward=1"));
        ip(&format!("-n {nat} route add 203.0.113.0/24 via 198.18.0.2"));
        far
    }
}

impl Drop for FarHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[test]
fn path_mtu_discovery_works_through_the_nat() {
    let topo = Topology::new("pmtu", TopologyOpts::default());
    let far = FarHost::new(&topo);
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let sink = tcp_sink_server(&far.ns, 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        SocketAddrV4::new(FAR, 8080),
        1 << 20,
    )
    .expect("a DF transfer over the 1280-byte link must complete");
    assert_translated(sink.last_peer().unwrap());
    let route = Command::new("ip")
        .args([
            "-n",
            topo.ns_name(Side::Client),
            "route",
            "get",
            &FAR.to_string(),
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1280"),
        "the client did not learn the path MTU: {route}"
    );
    assert_eq!(counter(&stats(&topo), "icmp_error_unmatched"), 0);
}

/// IP_OPTIONS on a socket: every datagram it sends carries them (IHL 6 here).
fn with_ip_options(sock: &impl AsRawFd) {
    // NOP, NOP, NOP, end of options: one extra 32-bit word.
    let opts = [1u8, 1, 1, 0];
    // SAFETY: setsockopt reads `opts.len()` bytes from a live buffer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            opts.as_ptr().cast(),
            opts.len() as u32,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
}

#[test]
fn packets_with_ip_options_are_translated_both_ways() {
    let topo = Topology::new(
        "ipopt",
        TopologyOpts {
            offloads: false,
            ..Default::default()
        },
    );
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let server = run_in_ns(topo.ns_name(Side::Server), || {
        let s = UdpSocket::bind((SERVER_IP, 6000)).unwrap();
        with_ip_options(&s);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let client = run_in_ns(topo.ns_name(Side::Client), || {
        let c = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        with_ip_options(&c);
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c
    });
    client.send_to(b"with options", (SERVER_IP, 6000)).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer) = server
        .recv_from(&mut buf)
        .expect("datagram with options reaches the server");
    assert_eq!(&buf[..n], b"with options");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL_IP));
    server.send_to(b"options back", peer).unwrap();
    let n = client
        .recv(&mut buf)
        .expect("reply with options reaches the client");
    assert_eq!(&buf[..n], b"options back");
    for side in [Side::Client, Side::Server] {
        assert_eq!(csum_errors(topo.ns_name(side)), (0, 0), "{side:?}");
    }
}

/// Transport headers whose lengths contradict the packet (Linux sends raw
/// IP datagrams only with a consistent IHL and total length, so these are the
/// inconsistencies a host can put on the wire): counted as malformed, never
/// sent out with their internal source.
#[test]
fn inconsistent_header_lengths_are_counted_not_translated() {
    let topo = Topology::new("badlen", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    // TCP SYN whose data offset (15 words, 60 bytes) runs past its 20-byte segment.
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 15 << 4;
    tcp[13] = 0x02;
    // UDP whose length field (200) runs past its 18-byte datagram.
    let mut udp = [0u8; 18];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&200u16.to_be_bytes());
    for (proto, segment) in [
        (libc::IPPROTO_TCP, tcp.to_vec()),
        (libc::IPPROTO_UDP, udp.to_vec()),
    ] {
        run_in_ns(topo.ns_name(Side::Client), move || {
            send_raw(proto, &segment, SERVER_IP)
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let st = stats(&topo);
    assert_eq!(counter(&st, "drop_malformed"), 2, "{st}");
    assert_eq!(counter(&st, "translated_out"), 0, "{st}");
    assert!(sessions(&topo).is_empty());
}

/// The internal link has the smaller MTU: the NAT host itself answers the
/// server's full-size segments with fragmentation-needed, quoting the packet
/// it had already translated inbound. That error must leave translated (the
/// quote back to the external address and port), or the server cannot match
/// it and the download black-holes.
#[test]
fn downloads_over_a_smaller_internal_mtu_complete() {
    use std::io::{Read, Write};
    let topo = Topology::new("lanmtu", TopologyOpts::default());
    ip(&format!(
        "-n {} link set veth-in mtu 1280",
        topo.ns_name(Side::Nat)
    ));
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    const SIZE: usize = 1 << 20;
    let listener = run_in_ns(topo.ns_name(Side::Server), || {
        std::net::TcpListener::bind((SERVER_IP, 7070)).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(&vec![0x5a; SIZE]).unwrap();
        peer
    });
    let got = run_in_ns(topo.ns_name(Side::Client), || {
        let mut conn = std::net::TcpStream::connect_timeout(
            &SocketAddrV4::new(SERVER_IP, 7070).into(),
            Duration::from_secs(3),
        )
        .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf)
            .map(|_| buf.len())
            .map_err(|e| e.to_string())
    });
    assert_eq!(got, Ok(SIZE), "the download must complete");
    assert_translated(server.join().unwrap());
    let route = Command::new("ip")
        .args([
            "-n",
            topo.ns_name(Side::Server),
            "route",
            "get",
            "198.18.0.1",
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1280"),
        "the server did not learn the path MTU: {route}"
    );
}
