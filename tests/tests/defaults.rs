//! `nat load` with no tuning flags picks its hook and the fast path from
//! the interfaces and the routing table, and says what it chose and why.

mod common;

use common::*;
use nat_tests::{
    CLIENT_IP, EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, tcp_sink_server,
    tcp_transfer,
};

#[test]
fn no_flags_on_veth_choose_tc_and_the_routed_fast_path() {
    let topo = Topology::new("dflt", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &[]);
    let out = nat.output().join("\n");
    assert!(
        out.contains("nat: ingress tc: veth-ext is a veth interface"),
        "{out}"
    );
    assert!(out.contains("fast path on veth-in (the internal prefixes are routed there)"));
    assert_eq!(attached_programs(&topo), ["nat_egress", "nat_ingress_tc"]);
    assert!(fast_path_on_internal(&topo));

    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 8080),
        200_000,
    )
    .expect("transfer with the defaults");
    let peer = server.last_peer().expect("the server saw the connection");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL_IP), "translated");
    let st = stats(&topo);
    assert!(counter(&st, "fast_out") > 0, "{st}");
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
    assert_nothing_left(&topo);
}

#[test]
fn explicit_flags_override_the_defaults() {
    let topo = Topology::new("dflt-off", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--no-fast-path"]);
    let out = nat.output().join("\n");
    assert!(out.contains("nat: ingress tc:"), "{out}");
    assert!(!fast_path_on_internal(&topo), "--no-fast-path");
    drop(nat);

    // Explicit XDP: a veth may hand over partial checksums, which an XDP
    // rewrite would get wrong, so the automatic fast path leaves it out.
    let nat = NatProcess::start(&topo, &["--ingress", "xdp"]);
    let out = nat.output().join("\n");
    assert!(!out.contains("nat: ingress"), "no choice to explain: {out}");
    assert!(out.contains("not on veth-in (virtual"), "{out}");
    assert_eq!(attached_programs(&topo), ["nat_egress", "xdp"]);
    assert!(!fast_path_on_internal(&topo));
}
