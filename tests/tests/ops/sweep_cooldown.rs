//! Sessions the sweep expires leave their key cooling, for the protocol's
//! cooldown from the moment of expiry, and the sweep ends that too.

use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::closing::*;
use crate::common::*;
use nat_tests::{
    CLIENT_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, udp_echo_server, udp_roundtrip,
};

#[test]
fn expired_udp_flow_cools_for_cooldown_udp() {
    let topo = Topology::new("rc-udp", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-udp",
            "1s",
            "--cooldown-udp",
            "2s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let server = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let before = Instant::now();
    udp_roundtrip(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 5353),
        100,
    )
    .expect("UDP round trip");
    let external = assert_translated(server.last_peer().expect("server saw the datagram"));
    assert_eq!(sessions(&topo).len(), 1);
    assert!(cooldowns(&topo).is_empty(), "{:#?}", cooldowns(&topo));

    let expired = wait_until_swept(&topo, Duration::from_secs(3));
    assert!(
        expired - before >= Duration::from_secs(1),
        "swept {:?} after the round trip, before its 1 s idle timeout",
        expired - before
    );
    let list = cooldowns(&topo);
    let left = left_ms(&list, "udp", external, 5353)
        .unwrap_or_else(|| panic!("expired UDP flow on {external} is not cooling: {list:#?}"));
    assert!(
        1000 < left && left <= 2000,
        "{left} ms left of a 2 s cooldown-udp just after expiry"
    );
    assert_eq!(list.len(), 1, "{list:#?}");

    sleep((expired + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    assert!(
        left_ms(&cooldowns(&topo), "udp", external, 5353).is_some(),
        "the 2 s cooldown ended within 1 s"
    );
    let gone = wait_for("the UDP cooldown to end", Duration::from_secs(3), || {
        cooldowns(&topo).is_empty().then(Instant::now)
    });
    assert!(
        gone - expired >= Duration::from_millis(1500),
        "a 2 s cooldown ended {:?} after the expiry",
        gone - expired
    );
    let st = stats(&topo);
    assert_eq!(st["sessions"], 0, "{st}");
    assert_eq!(st["cooling"], 0, "{st}");
}

#[test]
fn idle_established_tcp_session_cools_for_cooldown() {
    let topo = Topology::new("rc-tcp", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-tcp-established",
            "1s",
            "--cooldown",
            "3s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server = CloseServer::start(&topo, 80);
    let before = Instant::now();
    // Held open and silent: the NAT sees an established session go idle.
    let (stream, _) = connect(&topo, 80, QUICK).unwrap_or_else(|e| panic!("{e}"));
    let list = sessions(&topo);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["state"], "established", "{list:#?}");
    let external: std::net::SocketAddrV4 = list[0]["external"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no external address in {list:#?}"));

    let expired = wait_until_swept(&topo, Duration::from_secs(3));
    assert!(
        expired - before >= Duration::from_secs(1),
        "swept {:?} after the handshake, before its 1 s idle timeout",
        expired - before
    );
    let list = cooldowns(&topo);
    let left = left_ms(&list, "tcp", external, 80)
        .unwrap_or_else(|| panic!("swept TCP session on {external} is not cooling: {list:#?}"));
    assert!(
        2000 < left && left <= 3000,
        "{left} ms left of a 3 s cooldown just after an idle expiry"
    );

    sleep((expired + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    assert!(
        left_ms(&cooldowns(&topo), "tcp", external, 80).is_some(),
        "the 3 s cooldown ended within 2 s"
    );
    let gone = wait_for("the TCP cooldown to end", Duration::from_secs(3), || {
        cooldowns(&topo).is_empty().then(Instant::now)
    });
    assert!(gone - expired >= Duration::from_millis(2500));
    let st = stats(&topo);
    assert_eq!(st["sessions"], 0, "{st}");
    assert_eq!(st["cooling"], 0, "{st}");
    drop(stream);
}
