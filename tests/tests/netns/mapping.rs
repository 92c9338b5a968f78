//! Mapping and filtering behaviour (RFC 4787, RFC 5382): endpoint-independent
//! mappings for UDP by default, address-and-port-dependent ones on request,
//! the three filtering settings, TCP in both modes, and the TIME_WAIT rule
//! that wins over a mapping.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::closing::{self, Close, CloseServer, announce, complete, set, wait_for};
use crate::common::*;
use nat_tests::{
    CLIENT_IP, EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, run_in_ns,
    serde_json::Value,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect as sys_connect, getsockopt,
    setsockopt, socket, sockopt,
};

/// Two more addresses of the server namespace, on the NAT's external link.
const SERVER_IP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const SERVER_IP3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const CLIENT_IP2: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 3);
/// How long a datagram the NAT should have delivered is waited for; one that
/// should not arrive is waited for as long.
const DELIVERY: Duration = Duration::from_millis(600);

/// A topology whose server namespace also has [`SERVER_IP2`] and [`SERVER_IP3`].
fn topology(tag: &str) -> Topology {
    topology_with(tag, TopologyOpts::default())
}

fn topology_with(tag: &str, opts: TopologyOpts) -> Topology {
    let topo = Topology::new(tag, opts);
    for ip in [SERVER_IP2, SERVER_IP3] {
        topo.add_address(Side::Server, ip);
    }
    topo
}

fn udp_socket(ns: &str, at: SocketAddrV4) -> UdpSocket {
    let socket = run_in_ns(ns, move || {
        UdpSocket::bind(at).unwrap_or_else(|e| panic!("cannot bind UDP {at}: {e}"))
    });
    socket
        .set_read_timeout(Some(DELIVERY))
        .expect("set a read timeout");
    socket
}

/// The next datagram's payload and sender, or `None` within [`DELIVERY`].
fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddrV4)> {
    let mut buf = [0; 256];
    let deadline = Instant::now() + DELIVERY;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(from))) => return Some((buf[..n].to_vec(), from)),
            Ok((_, from)) => panic!("datagram from {from}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            // A signal to the test process (another test's daemon ending).
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Sends `payload` from `from` to `to` and returns the source the receiver saw.
fn seen_from(from: &UdpSocket, to: &UdpSocket, payload: &[u8]) -> SocketAddrV4 {
    let dst = to.local_addr().expect("local address");
    from.send_to(payload, dst).expect("send");
    let (got, peer) =
        receive(to).unwrap_or_else(|| panic!("{dst} got nothing within {DELIVERY:?}"));
    assert_eq!(got, payload);
    peer
}

fn sessions_of(topo: &Topology, internal: SocketAddrV4) -> Vec<Value> {
    let internal = internal.to_string();
    sessions(topo)
        .into_iter()
        .filter(|s| s["internal"] == internal.as_str())
        .collect()
}

#[test]
fn udp_endpoint_independent_by_default_and_port_dependent_on_request() {
    let topo = topology("map-udp");
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let server_ns = topo.ns_name(Side::Server);
    let servers: Vec<UdpSocket> = [
        v4(SERVER_IP, 7001),
        v4(SERVER_IP, 7002),
        v4(SERVER_IP2, 7001),
        v4(SERVER_IP2, 7002),
    ]
    .into_iter()
    .map(|at| udp_socket(server_ns, at))
    .collect();

    let client_at = v4(CLIENT_IP, 40000);
    let client = udp_socket(topo.ns_name(Side::Client), client_at);
    let seen: Vec<SocketAddrV4> = servers
        .iter()
        .map(|s| seen_from(&client, s, b"eim"))
        .collect();
    let external = assert_translated(SocketAddr::V4(seen[0]));
    assert!(
        seen.iter().all(|s| *s == external),
        "two addresses and two ports saw different sources: {seen:?}"
    );
    let list = sessions_of(&topo, client_at);
    assert_eq!(list.len(), 4, "{list:#?}");
    assert!(
        list.iter().all(|s| s["mapping"] == "endpoint-independent"
            && s["external"] == external.to_string().as_str()),
        "{list:#?}"
    );
    // The replies come back through the one mapping.
    for s in &servers {
        s.send_to(b"back", seen[0]).expect("reply");
        let (got, from) = receive(&client).expect("reply through the mapping");
        assert_eq!(got, b"back");
        assert_eq!(
            from,
            s.local_addr()
                .map(|a| match a {
                    SocketAddr::V4(a) => a,
                    _ => unreachable!(),
                })
                .unwrap()
        );
    }

    // Live: new flows follow the new value, the existing mapping stays.
    set(&topo, "mapping-udp", "address-port-dependent");
    let other_at = v4(CLIENT_IP, 40001);
    let other = udp_socket(topo.ns_name(Side::Client), other_at);
    for s in &servers {
        assert_translated(SocketAddr::V4(seen_from(&other, s, b"apd")));
    }
    let list = sessions_of(&topo, other_at);
    assert_eq!(list.len(), 4, "{list:#?}");
    assert!(
        list.iter()
            .all(|s| s["mapping"] == "address-port-dependent"),
        "{list:#?}"
    );
    assert_eq!(counter(&stats(&topo), "eim_conflict"), 0);
}

/// With one external port, address-and-port-dependent mappings share it
/// between two internal hosts toward different destinations; an
/// endpoint-independent mapping keeps it to its endpoint.
#[test]
fn one_port_serves_two_hosts_only_without_endpoint_independence() {
    let topo = topology("map-share");
    let nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            "20000-20000",
            "--mapping-udp",
            "address-port-dependent",
        ],
    );
    let server_ns = topo.ns_name(Side::Server);
    let s1 = udp_socket(server_ns, v4(SERVER_IP, 7001));
    let s2 = udp_socket(server_ns, v4(SERVER_IP2, 7001));
    let client_ns = topo.ns_name(Side::Client);
    let a = udp_socket(client_ns, v4(CLIENT_IP, 40000));
    let b = udp_socket(client_ns, v4(CLIENT_IP2, 40000));
    let port = v4(EXTERNAL_IP, 20000);
    assert_eq!(seen_from(&a, &s1, b"a"), port);
    assert_eq!(seen_from(&b, &s2, b"b"), port);
    drop(nat);

    let topo = topology("map-own");
    let _nat = NatProcess::start(&topo, &["--ports", "20000-20000"]);
    let server_ns = topo.ns_name(Side::Server);
    let s1 = udp_socket(server_ns, v4(SERVER_IP, 7001));
    let s2 = udp_socket(server_ns, v4(SERVER_IP2, 7001));
    let client_ns = topo.ns_name(Side::Client);
    let a = udp_socket(client_ns, v4(CLIENT_IP, 40000));
    let b = udp_socket(client_ns, v4(CLIENT_IP2, 40000));
    assert_eq!(seen_from(&a, &s1, b"a"), port);
    b.send_to(b"b", v4(SERVER_IP2, 7001)).expect("send");
    assert_eq!(
        receive(&s2),
        None,
        "the mapping's port went to another host"
    );
    assert_eq!(counter(&stats(&topo), "drop_alloc_failed"), 1);
    // Once the owner's mapping is the only thing toward that server, the
    // owner still reaches it on the same port.
    assert_eq!(seen_from(&a, &s2, b"a2"), port);
}

/// A mapping's endpoint sends to one server port; then a second port of that
/// address and a third address send to the mapping. `ingress` picks the
/// hook of the ingress program, whose miss path does the filtering.
fn filtering(tag: &str, ingress: &str, setting: &str, second_port: bool, third_address: bool) {
    // XDP needs hosts that send complete checksums.
    let opts = TopologyOpts {
        wire_hosts: ingress == "xdp",
        ..TopologyOpts::default()
    };
    let topo = topology_with(tag, opts);
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            ingress,
            "--filtering-udp",
            setting,
        ],
    );
    let server_ns = topo.ns_name(Side::Server);
    let known = udp_socket(server_ns, v4(SERVER_IP, 7001));
    let known_other_port = udp_socket(server_ns, v4(SERVER_IP, 7002));
    let third = udp_socket(server_ns, v4(SERVER_IP2, 7001));
    let client = udp_socket(topo.ns_name(Side::Client), v4(CLIENT_IP, 40000));
    let external = seen_from(&client, &known, b"hello");

    known_other_port.send_to(b"port", external).expect("send");
    let got = receive(&client);
    assert_eq!(
        got.is_some(),
        second_port,
        "filtering-udp {setting}: a second port of a known address got {got:?}"
    );
    if let Some((payload, from)) = got {
        assert_eq!(payload, b"port");
        assert_eq!(from, v4(SERVER_IP, 7002));
        // And the client's answer goes back through the same mapping.
        assert_eq!(seen_from(&client, &known_other_port, b"answer"), external);
    }
    third.send_to(b"third", external).expect("send");
    let got = receive(&client);
    assert_eq!(
        got.is_some(),
        third_address,
        "filtering-udp {setting}: a third address got {got:?}"
    );
    let st = stats(&topo);
    let admitted = u64::from(second_port) + u64::from(third_address);
    assert_eq!(counter(&st, "eim_inbound"), admitted, "{st}");
    assert_eq!(counter(&st, "pass_filtered"), 2 - admitted, "{st}");
    // The mapping's own destination always answers.
    known.send_to(b"reply", external).expect("send");
    assert_eq!(receive(&client).map(|r| r.0), Some(b"reply".to_vec()));
}

#[test]
fn filtering_udp_endpoint_independent_admits_anyone() {
    filtering("filt-eif", "tc", "endpoint-independent", true, true);
}

#[test]
fn filtering_udp_endpoint_independent_admits_anyone_in_xdp() {
    filtering("filt-eif-xdp", "xdp", "endpoint-independent", true, true);
}

#[test]
fn filtering_udp_address_dependent_admits_known_addresses_in_xdp() {
    filtering("filt-adf-xdp", "xdp", "address-dependent", true, false);
}

#[test]
fn filtering_udp_address_dependent_admits_known_addresses() {
    filtering("filt-adf", "tc", "address-dependent", true, false);
}

#[test]
fn filtering_udp_address_port_dependent_admits_only_sessions() {
    filtering("filt-apdf", "tc", "address-port-dependent", false, false);
}

/// A TCP connection from `src` (bound with SO_REUSEADDR, so one internal
/// endpoint can hold several connections) to `dst`.
fn connect_from(topo: &Topology, src: SocketAddrV4, dst: SocketAddrV4) -> TcpStream {
    run_in_ns(topo.ns_name(Side::Client), move || {
        let fail = |e: String| -> ! { panic!("connect {src} -> {dst}: {e}") };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap_or_else(|e| fail(format!("socket: {e}")));
        setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap_or_else(|e| fail(format!("{e}")));
        bind(fd.as_raw_fd(), &SockaddrIn::from(src)).unwrap_or_else(|e| fail(format!("bind: {e}")));
        match sys_connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(e) => fail(e.to_string()),
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(5000u16)) {
            Ok(1) => {}
            other => fail(format!("no handshake within 5 s: {other:?}")),
        }
        match getsockopt(&fd, sockopt::SocketError) {
            Ok(0) => {}
            other => fail(format!("SO_ERROR {other:?}")),
        }
        let stream = TcpStream::from(fd);
        stream.set_nonblocking(false).expect("set blocking");
        stream
    })
}

#[test]
fn tcp_address_port_dependent_by_default() {
    let topo = topology("map-tcp-apd");
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let _server = CloseServer::start(&topo, 80);
    let src = v4(CLIENT_IP, 41000);
    let mut a = connect_from(&topo, src, v4(SERVER_IP, 80));
    let mut b = connect_from(&topo, src, v4(SERVER_IP2, 80));
    assert_translated(SocketAddr::V4(announce(&mut a, Close::ClientFirst)));
    assert_translated(SocketAddr::V4(announce(&mut b, Close::ClientFirst)));
    let list = sessions_of(&topo, src);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(
        list.iter()
            .all(|s| s["mapping"] == "address-port-dependent"),
        "{list:#?}"
    );
    complete(a, Close::ClientFirst);
    complete(b, Close::ClientFirst);
}

/// With `mapping-tcp endpoint-independent` every connection of an endpoint
/// leaves from one external port, except toward a destination on which that
/// port's key is cooling: that connection gets another port, counted in
/// `eim_conflict`, and the cooling key is never handed out.
#[test]
fn tcp_endpoint_independent_yields_to_time_wait() {
    let topo = topology("map-tcp-eim");
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--mapping-tcp",
            "endpoint-independent",
            "--timeout-tcp-closed",
            "200ms",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server80 = CloseServer::start(&topo, 80);
    let _server81 = CloseServer::start(&topo, 81);
    let src = v4(CLIENT_IP, 41001);
    // Held open: it keeps the endpoint's mapping alive.
    let mut keep = connect_from(&topo, src, v4(SERVER_IP, 81));
    let external = assert_translated(SocketAddr::V4(announce(&mut keep, Close::ClientFirst)));
    let mut other = connect_from(&topo, src, v4(SERVER_IP2, 80));
    assert_eq!(announce(&mut other, Close::ClientFirst), external);
    complete(other, Close::ClientFirst);

    // The server closes first: (external, SERVER_IP:80) cools for 240 s.
    let closing = connect_from(&topo, src, v4(SERVER_IP, 80));
    let mut closing_stream = closing;
    assert_eq!(announce(&mut closing_stream, Close::ServerFirst), external);
    complete(closing_stream, Close::ServerFirst);
    let cooling = wait_for(
        "the closed session to be swept",
        Duration::from_secs(5),
        || {
            let gone = sessions_of(&topo, src)
                .iter()
                .all(|s| s["remote"] != v4(SERVER_IP, 80).to_string().as_str());
            let list = closing::cooldowns(&topo);
            (gone && closing::left_ms(&list, "tcp", external, 80).is_some()).then_some(list)
        },
    );
    assert!(!cooling.is_empty());
    let list = sessions_of(&topo, src);
    assert!(
        list.iter().any(|s| s["mapping"] == "endpoint-independent"),
        "the mapping must still be alive: {list:#?}"
    );

    let before = Instant::now();
    let mut again = connect_from(&topo, src, v4(SERVER_IP, 80));
    let second = assert_translated(SocketAddr::V4(announce(&mut again, Close::ClientFirst)));
    assert!(
        before.elapsed() < Duration::from_secs(1),
        "the SYN was dropped"
    );
    assert_ne!(
        second, external,
        "a cooling key ({external} -> {SERVER_IP}:80) was handed out"
    );
    let st = stats(&topo);
    assert_eq!(counter(&st, "eim_conflict"), 1, "{st}");
    assert_eq!(counter(&st, "collisions"), 0, "{st}");
    let apd: Vec<Value> = sessions_of(&topo, src)
        .into_iter()
        .filter(|s| s["mapping"] == "address-port-dependent")
        .collect();
    assert_eq!(apd.len(), 1, "{apd:#?}");
    assert_eq!(apd[0]["external"], second.to_string().as_str());
    complete(again, Close::ClientFirst);
    complete(keep, Close::ClientFirst);
}

/// RFC 5780 behaviour discovery with the Debian `stun-client` against
/// `stund` answering from two addresses and two ports beyond the NAT
/// (classic STUN, RFC 3489 tests I-III, which RFC 5780 refines): with the
/// defaults the NAT is endpoint-independent mapping with address-dependent
/// filtering, "restricted cone"; with address-port-dependent mapping it is
/// "symmetric".
#[test]
fn stun_behaviour_discovery_reports_the_settings() {
    let topo = topology("map-stun");
    let nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let server_ns = topo.ns_name(Side::Server).to_owned();
    let _stund = Stund::start(&server_ns);
    let report = stun_client(&topo, 42000);
    assert!(
        report.contains("Independent Mapping") && report.contains("Address Dependent Filter"),
        "{report}\n{}\n{:#?}",
        stats(&topo),
        sessions(&topo)
    );
    // Each run takes a fresh pair of client ports (the client sends from
    // PORT and PORT + 1): a live mapping outlives a change of setting.
    set(&topo, "filtering-udp", "endpoint-independent");
    let report = stun_client(&topo, 42010);
    assert!(
        report.contains("Independent Mapping") && report.contains("Independent Filter"),
        "{report}"
    );
    set(&topo, "mapping-udp", "address-port-dependent");
    let report = stun_client(&topo, 42020);
    assert!(
        report.contains("Dependent Mapping"),
        "{report}\n{:#?}",
        sessions(&topo)
    );
    drop(nat);
}

/// `stund` in the server namespace, answering on SERVER_IP and SERVER_IP2.
struct Stund(std::process::Child);

impl Stund {
    fn start(ns: &str) -> Stund {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "stund", "-h"])
            .arg(SERVER_IP.to_string())
            .arg("-a")
            .arg(SERVER_IP2.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stund (Debian package stun-server) runs");
        std::thread::sleep(Duration::from_millis(300));
        Stund(child)
    }
}

impl Drop for Stund {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client's one-line verdict ("Primary: ...").
fn stun_client(topo: &Topology, port: u16) -> String {
    let out = Command::new("timeout")
        .arg("20")
        .args(["ip", "netns", "exec", topo.ns_name(Side::Client), "stun"])
        .arg(SERVER_IP.to_string())
        .args(["-i", &CLIENT_IP.to_string(), "-p", &port.to_string()])
        .output()
        .expect("stun (Debian package stun-client) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("Primary:"))
        .unwrap_or_else(|| panic!("no verdict from stun: {text}"))
        .to_owned()
}

/// A mapping lives exactly as long as its endpoint's sessions: the one its
/// endpoint opened and the one a packet from outside opened both hold it,
/// and once the sweep has expired both, its port goes to another host.
#[test]
fn mapping_ends_with_its_last_session() {
    let topo = topology("map-life");
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            "20000-20000",
            "--filtering-udp",
            "endpoint-independent",
            "--timeout-udp",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let server_ns = topo.ns_name(Side::Server);
    let s1 = udp_socket(server_ns, v4(SERVER_IP, 7001));
    let s2 = udp_socket(server_ns, v4(SERVER_IP2, 7001));
    let client_ns = topo.ns_name(Side::Client);
    let a_at = v4(CLIENT_IP, 40000);
    let a = udp_socket(client_ns, a_at);
    let b = udp_socket(client_ns, v4(CLIENT_IP2, 40000));
    let port = v4(EXTERNAL_IP, 20000);
    assert_eq!(seen_from(&a, &s1, b"a"), port);
    // Admitted from outside: a second session on the mapping.
    s2.send_to(b"hi", port).expect("send");
    assert_eq!(receive(&a).map(|r| r.0), Some(b"hi".to_vec()));
    let list = sessions_of(&topo, a_at);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(
        list.iter().all(|s| s["mapping"] == "endpoint-independent"),
        "{list:#?}"
    );
    // While the mapping lives, its port is not another host's.
    b.send_to(b"b", v4(SERVER_IP2, 7001)).expect("send");
    assert_eq!(
        receive(&s2),
        None,
        "the mapping's port went to another host"
    );

    wait_for("both sessions to expire", Duration::from_secs(5), || {
        sessions(&topo).is_empty().then_some(())
    });
    assert_eq!(seen_from(&b, &s2, b"b"), port, "the port was not freed");
    let list = sessions(&topo);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["mapping"], "endpoint-independent", "{list:#?}");
}
