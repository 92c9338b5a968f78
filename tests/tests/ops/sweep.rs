//! Idle sessions expire on time and the table returns to empty.

use std::time::{Duration, Instant};

use crate::common::*;
use nat_tests::{
    CLIENT_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, udp_echo_server, udp_roundtrip,
};

#[test]
fn idle_udp_sessions_are_swept() {
    let topo = Topology::new("sweep", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-udp",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server = udp_echo_server(topo.ns_name(Side::Server), 5353);
    for ip in topo.client_ips().into_iter().take(4) {
        udp_roundtrip(
            topo.ns_name(Side::Client),
            Some(ip),
            v4(SERVER_IP, 5353),
            100,
        )
        .expect("round trip");
    }
    let opened = Instant::now();
    assert_eq!(sessions(&topo).len(), 4);

    // Not before the timeout...
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sessions(&topo).len(),
        4,
        "swept before its 1 s idle timeout"
    );
    // ...and soon after it.
    while !sessions(&topo).is_empty() {
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "sessions not swept: {:#?}",
            sessions(&topo)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(opened.elapsed() >= Duration::from_secs(1));

    // The external port works again for a new flow once the old pair is gone.
    udp_roundtrip(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 5353),
        100,
    )
    .expect("after sweeping");
    assert_eq!(sessions(&topo).len(), 1);
}
