//! Several external addresses: an internal host keeps one (paired pooling,
//! RFC 4787 REQ-2) and moves to another only when its own has no free port
//! toward the destination.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
};

use crate::common::*;
use nat_tests::{
    NatProcess, SERVER_IP, Side, Topology, TopologyOpts, concurrent_tcp, serde_json::Value,
    tcp_sink_server, tcp_transfer,
};

const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

#[test]
fn each_internal_host_keeps_one_external_address() {
    let topo = Topology::new(
        "pool-pair",
        TopologyOpts {
            client_addrs: 24,
            ..Default::default()
        },
    );
    topo.add_address(Side::Nat, SECOND);
    let _nat = NatProcess::start(&topo, &["--ports", PORTS, "--external", "198.18.0.3"]);
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let sources = topo.client_ips();
    // Three connections per host.
    let results = concurrent_tcp(
        topo.ns_name(Side::Client),
        &sources,
        SocketAddrV4::new(SERVER_IP, 8080),
        72,
        512,
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Which external address each internal host got, from the session table.
    let mut by_host: HashMap<String, HashSet<String>> = HashMap::new();
    let addr_of = |endpoint: &Value| {
        let endpoint = endpoint.as_str().expect("an address:port string");
        endpoint.split(':').next().unwrap().to_owned()
    };
    for s in sessions(&topo) {
        by_host
            .entry(addr_of(&s["internal"]))
            .or_default()
            .insert(addr_of(&s["external"]));
    }
    assert_eq!(by_host.len(), 24);
    for (host, exts) in &by_host {
        assert_eq!(
            exts.len(),
            1,
            "{host} was mapped to several external addresses: {exts:?}"
        );
    }
    let used: HashSet<IpAddr> = server.peers().iter().map(SocketAddr::ip).collect();
    let expected: HashSet<IpAddr> = [IpAddr::V4(nat_tests::EXTERNAL_IP), IpAddr::V4(SECOND)].into();
    assert_eq!(
        used, expected,
        "24 hosts hashed over 2 addresses must use both"
    );
    assert_eq!(counter(&stats(&topo), "alloc_other_address"), 0);
}

/// A 4-port range and long cooldowns: a host's fifth and sixth connection to
/// one destination find no free port on its own address and move.
#[test]
fn a_host_moves_to_another_address_only_when_its_own_is_full() {
    let topo = Topology::new("pool-spill", TopologyOpts::default());
    topo.add_address(Side::Nat, SECOND);
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            "20000-20003",
            "--external",
            "198.18.0.3",
            "--policy",
            "strict",
            "--cooldown",
            "100s",
        ],
    );
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    for _ in 0..6 {
        tcp_transfer(
            topo.ns_name(Side::Client),
            Some(nat_tests::CLIENT_IP),
            SocketAddrV4::new(SERVER_IP, 8080),
            64,
        )
        .expect("transfer");
    }
    let peers = server.peers();
    let first = peers[0].ip();
    let own = peers.iter().filter(|p| p.ip() == first).count();
    assert_eq!(
        own, 4,
        "the host's own address serves all 4 of its ports first: {peers:?}"
    );
    assert!(peers[..4].iter().all(|p| p.ip() == first), "{peers:?}");
    assert!(peers[4..].iter().all(|p| p.ip() != first), "{peers:?}");
    assert_eq!(counter(&stats(&topo), "alloc_other_address"), 2);
}
