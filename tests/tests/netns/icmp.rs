//! ICMP through the NAT (RFC 5508): echo, errors about translated flows in
//! both directions with real tools, and crafted errors whose translated bytes
//! are checked field by field.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::common::*;
use nat_common::csum::{ipv4_header_checksum, l4_checksum, sum_bytes};
use nat_tests::{
    CLIENT_IP, EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, run_in_ns,
    serde_json, spawn_in_ns, udp_echo_server, udp_exchange,
};

/// An address beyond the server, which forwards to it: TTL 2 expires there.
const BEYOND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip <args>` (words split on spaces) and requires success.
fn ip(args: &str) {
    sh(&std::iter::once("ip")
        .chain(args.split(' '))
        .collect::<Vec<_>>());
}

/// Makes the server a router toward 203.0.113.0/24 (a veth pair of its own).
fn route_beyond_server(topo: &Topology) {
    let (nat, sv) = (topo.ns_name(Side::Nat), topo.ns_name(Side::Server));
    ip(&format!("-n {sv} link add far0 type veth peer name far1"));
    ip(&format!("-n {sv} addr add 203.0.113.1/24 dev far0"));
    ip(&format!("-n {sv} link set far0 up"));
    ip(&format!("-n {sv} link set far1 up"));
    ip(&format!("netns exec {sv} sysctl -qw net.ipv4.ip_forward=1"));
    // The probes below come in quick succession from one (external) address.
    ip(&format!(
        "netns exec {sv} sysctl -qw net.ipv4.icmp_ratelimit=0"
    ));
    ip(&format!("-n {nat} route add 203.0.113.0/24 via 198.18.0.2"));
}

#[test]
fn ping_goes_through_with_its_identifier_translated() {
    let topo = Topology::new("ping", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let out = ping(&topo, SERVER_IP, &["-c", "3"]);
    assert!(out.contains("3 received"), "{out}");
    let list = sessions(&topo);
    let s = list
        .iter()
        .find(|s| s["proto"] == "icmp")
        .unwrap_or_else(|| panic!("no icmp session: {list:#?}"));
    assert_eq!(s["remote"], "198.18.0.2:0");
    assert_eq!(s["state"], "icmp");
    let ext: SocketAddrV4 = s["external"].as_str().unwrap().parse().unwrap();
    assert_eq!(*ext.ip(), EXTERNAL_IP);
    assert!(
        (PORT_LO..=PORT_HI).contains(&ext.port()),
        "identifier {} outside {PORTS}",
        ext.port()
    );
    let st = stats(&topo);
    assert_eq!(counter(&st, "translated_out"), 3, "{st}");
    assert_eq!(counter(&st, "translated_in"), 3, "{st}");
}

/// Time exceeded from a router beyond the NAT reaches the client, for an
/// embedded ICMP echo (ping -t) and an embedded TCP SYN (connect fails with
/// EHOSTUNREACH instead of timing out: the client matched the embedded ports).
#[test]
fn ttl_probes_get_time_exceeded_back() {
    let topo = Topology::new("ttl", TopologyOpts::default());
    route_beyond_server(&topo);
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);

    let out = ping(&topo, BEYOND, &["-c", "3", "-t", "2"]);
    assert!(
        out.contains("From 198.18.0.2") && out.contains("Time to live exceeded"),
        "{out}"
    );

    let (result, took) = run_in_ns(topo.ns_name(Side::Client), || {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        setsockopt(&fd, sockopt::Ipv4Ttl, &2).unwrap();
        setsockopt(
            &fd,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(3, 0),
        )
        .unwrap();
        let start = Instant::now();
        let r = connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(BEYOND, 80)),
        );
        (r, start.elapsed())
    });
    assert_eq!(
        result,
        Err(nix::errno::Errno::EHOSTUNREACH),
        "after {took:?}"
    );
    // EHOSTUNREACH at all (not a timeout) means the client matched the
    // embedded SYN. When the error lands while connect() still holds the
    // socket the kernel files it as soft and reports it at the first SYN
    // retransmission, 1 s later.
    assert!(
        took < Duration::from_millis(2500),
        "the error took {took:?}"
    );
    let st = stats(&topo);
    assert!(counter(&st, "translated_in") >= 4, "{st}");
    assert_eq!(counter(&st, "icmp_error_unmatched"), 0, "{st}");
}

/// Port unreachable both ways: from the server about the client's datagram
/// (inbound, embedded UDP), and from the client about the server's datagram
/// to a socket the client has closed (outbound, embedded UDP).
#[test]
fn port_unreachable_in_both_directions() {
    let topo = Topology::new(
        "unreach",
        TopologyOpts {
            offloads: false,
            ..Default::default()
        },
    );
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);

    let inbound = run_in_ns(topo.ns_name(Side::Client), || {
        let sock = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.connect((SERVER_IP, 9)).unwrap();
        sock.send(b"anyone?").unwrap();
        sock.recv(&mut [0u8; 16]).map_err(|e| e.kind())
    });
    assert_eq!(inbound, Err(std::io::ErrorKind::ConnectionRefused));

    // The client talks to the server, then closes its socket.
    let server = run_in_ns(topo.ns_name(Side::Server), || {
        UdpSocket::bind((SERVER_IP, 5454)).unwrap()
    });
    run_in_ns(topo.ns_name(Side::Client), || {
        let sock = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        sock.send_to(b"hello", (SERVER_IP, 5454)).unwrap();
    });
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (_, peer) = server.recv_from(&mut [0u8; 16]).unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL_IP));
    server.connect(peer).unwrap();
    server.send(b"still there?").unwrap();
    let outbound = server.recv(&mut [0u8; 16]).map_err(|e| e.kind());
    assert_eq!(
        outbound,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the client's port unreachable did not come back translated"
    );
    for side in [Side::Client, Side::Server] {
        assert_eq!(csum_errors(topo.ns_name(side)), (0, 0), "{side:?}");
    }
}

/// An ICMP error as the server would send it about a datagram it got from
/// `ext`: destination unreachable, port unreachable, quoting `quote` bytes of
/// the original IP datagram.
fn crafted_error(ext: SocketAddrV4, server_port: u16, payload: &[u8], quote: usize) -> Vec<u8> {
    let inner = udp_datagram(ext, SocketAddrV4::new(SERVER_IP, server_port), payload);
    let quoted = &inner[..quote.min(inner.len())];
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = !nat_common::csum::fold(sum_bytes(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    ipv4(SERVER_IP, EXTERNAL_IP, 1, &icmp)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_header_checksum(&p);
    p[10..12].copy_from_slice(&c.to_ne_bytes());
    p.extend_from_slice(payload);
    p
}

fn udp_datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let c = l4_checksum(src.ip().octets(), dst.ip().octets(), 17, &u);
    u[6..8].copy_from_slice(&c.to_ne_bytes());
    ipv4(*src.ip(), *dst.ip(), 17, &u)
}

/// Sends a whole IP datagram from the server namespace.
fn send_raw_from_server(topo: &Topology, datagram: Vec<u8>) {
    run_in_ns(topo.ns_name(Side::Server), move || {
        send_raw(libc::IPPROTO_RAW, &datagram, EXTERNAL_IP)
    });
}

/// Collects the ICMP destination-unreachable packets the client receives for `window`.
fn capture_unreachables(
    topo: &Topology,
    window: Duration,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = spawn_in_ns(topo.ns_name(Side::Client), move || {
        // SAFETY: plain libc socket calls on buffers we own; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let end = Instant::now() + window;
            while Instant::now() < end {
                let mut buf = [0u8; 2048];
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 28 && buf[20] == 3 {
                    got.push(buf[..n as usize].to_vec());
                }
            }
            libc::close(fd);
            got
        }
    });
    ready_rx.recv().unwrap();
    handle
}

#[test]
fn crafted_icmp_errors_are_translated_exactly_or_counted() {
    let topo = Topology::new("crafted", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let echo = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let local = udp_exchange(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        SocketAddrV4::new(SERVER_IP, 5353),
        32,
    )
    .unwrap();
    let ext = match echo.last_peer().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let before = sessions(&topo);

    // 1. A full quote of the translated datagram: every byte checked.
    let payload = b"0123456789abcdef";
    let capture = capture_unreachables(&topo, Duration::from_millis(700));
    send_raw_from_server(
        &topo,
        crafted_error(ext, 5353, payload, 8 + 20 + payload.len()),
    );
    let got = capture.join().unwrap();
    assert_eq!(
        got.len(),
        1,
        "the client must receive exactly the translated error"
    );
    let p = &got[0];
    assert_eq!(p[16..20], CLIENT_IP.octets(), "outer destination");
    assert_eq!(
        ipv4_header_checksum(&zeroed(&p[..20], 10)),
        u16::from_ne_bytes([p[10], p[11]]),
        "outer IP checksum"
    );
    let icmp = &p[20..];
    assert_eq!(
        !nat_common::csum::fold(sum_bytes(&zeroed(icmp, 2), 0)),
        u16::from_ne_bytes([icmp[2], icmp[3]]),
        "ICMP checksum"
    );
    // The quote must now read exactly as the datagram the client sent.
    let expected = udp_datagram(local, SocketAddrV4::new(SERVER_IP, 5353), payload);
    let quoted = &icmp[8..];
    assert_eq!(quoted[12..20], expected[12..20], "embedded addresses");
    assert_eq!(quoted[10..12], expected[10..12], "embedded IP checksum");
    assert_eq!(
        quoted[20..],
        expected[20..],
        "embedded UDP header, checksum and payload"
    );

    // 2. A quote that ends inside the embedded IP header: dropped and counted.
    let malformed = counter(&stats(&topo), "drop_malformed");
    let capture = capture_unreachables(&topo, Duration::from_millis(500));
    send_raw_from_server(&topo, crafted_error(ext, 5353, payload, 12));
    assert!(
        capture.join().unwrap().is_empty(),
        "a truncated error must not reach the client"
    );
    assert_eq!(counter(&stats(&topo), "drop_malformed"), malformed + 1);

    // 3. An error about a flow that does not exist: counted, not translated.
    let unmatched = counter(&stats(&topo), "icmp_error_unmatched");
    let capture = capture_unreachables(&topo, Duration::from_millis(500));
    let stranger = SocketAddrV4::new(
        EXTERNAL_IP,
        if ext.port() == PORT_HI {
            PORT_LO
        } else {
            ext.port() + 1
        },
    );
    send_raw_from_server(&topo, crafted_error(stranger, 5353, payload, 28));
    assert!(
        capture.join().unwrap().is_empty(),
        "an unmatched error must not reach the client"
    );
    assert_eq!(
        counter(&stats(&topo), "icmp_error_unmatched"),
        unmatched + 1
    );

    let after = sessions(&topo);
    let strip = |v: &Vec<serde_json::Value>| {
        v.iter()
            .map(|s| {
                (
                    s["internal"].clone(),
                    s["external"].clone(),
                    s["remote"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "ICMP errors must not create or change sessions"
    );
}

/// `bytes` with the 16-bit field at `at` set to zero, for recomputing a checksum.
fn zeroed(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] = 0;
    v[at + 1] = 0;
    v
}
