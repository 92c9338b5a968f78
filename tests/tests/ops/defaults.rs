//! `nat load` with no tuning flags picks its hook and the fast path from
//! the interfaces and the routing table, and says what it chose and why.

use crate::common::*;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, EXTERNAL_IP, INTERNAL_PREFIX, NatProcess, SERVER_IP, Side, Topology,
    TopologyOpts, tcp_sink_server, tcp_transfer,
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

/// The programs on the ingress of `iface` in the nat namespace: TCX links,
/// and cls_bpf filters (the NAT's TC programs before Linux 6.6).
fn ingress_programs(topo: &Topology, iface: &'static str) -> Vec<String> {
    let mut names = nat_tests::run_in_ns(topo.ns_name(Side::Nat), move || {
        aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| {
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    names.extend(bpf_filters(topo, iface, "ingress"));
    names
}

/// `--ingress auto` chose XDP (both interfaces count as having a wire), and
/// the internal interface is a bridge, whose driver refuses native XDP: it
/// gets the TC fast path and hairpinning, never generic XDP, while replies
/// stay in XDP on the external interface; traffic is translated, its
/// established packets on the fast path.
#[test]
fn auto_xdp_puts_the_tc_fast_path_where_native_xdp_is_refused() {
    let topo = Topology::new(
        "dflt-bridge",
        TopologyOpts {
            wire_hosts: true,
            ..TopologyOpts::default()
        },
    );
    for args in [
        "link add br-in type bridge",
        "addr del 10.200.1.1/24 dev veth-in",
        "link set veth-in master br-in",
        "addr add 10.200.1.1/24 dev br-in",
        "link set br-in up",
    ] {
        let out = std::process::Command::new("ip")
            .args(["-n", topo.ns_name(Side::Nat)])
            .args(args.split(' '))
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let external = EXTERNAL_IP.to_string();
    let nat = NatProcess::start_load(
        &topo,
        &[
            "--iface",
            EXT_IFACE,
            "--external",
            &external,
            "--internal",
            INTERNAL_PREFIX,
            "--ports",
            PORTS,
        ],
        &[("NAT_ASSUME_WIRE", "veth-ext,br-in")],
    );
    let out = nat.output().join("\n");
    assert!(out.contains("nat: ingress xdp: veth-ext"), "{out}");
    assert!(out.contains("fast path on br-in"), "{out}");
    assert!(
        nat.log()
            .iter()
            .any(|l| l.contains("fast path on br-in (tc, no native XDP)")),
        "{:#?}",
        nat.log()
    );
    assert_eq!(attached_programs(&topo), ["nat_egress", "xdp"]);
    assert!(!xdp_attached(&topo, "br-in"), "generic XDP on br-in");
    let on_bridge = ingress_programs(&topo, "br-in");
    assert!(
        on_bridge.iter().any(|p| p == "nat_fast_tc"),
        "no TC fast path on br-in: {on_bridge:?}"
    );
    // The TC fast path's program hairpins: no hairpin program of its own.
    assert!(
        !on_bridge.iter().any(|p| p == "nat_hairpin"),
        "a hairpin program beside the TC fast path on br-in: {on_bridge:?}"
    );

    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 8080),
        200_000,
    )
    .expect("transfer over the bridge");
    assert_translated(server.last_peer().expect("the server saw the connection"));
    let st = stats(&topo);
    assert!(counter(&st, "fast_out") > 0, "{st}");
    assert_clean(&topo, &st);
    assert!(nat.stop().success());
    assert_nothing_left(&topo);
}
