//! Loading, stopping, crashing and unloading leave the interface as it was.

mod common;

use common::*;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, nat_cmd,
    tcp_sink_server, tcp_transfer,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// 10 kB over TCP from the client, which the server must see translated.
fn translated_transfer(topo: &Topology, what: &str) {
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 8080),
        10_000,
    )
    .expect(what);
    assert_translated(server.last_peer().unwrap());
}

#[test]
fn stop_detaches_and_unpins() {
    let topo = Topology::new("stop", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let progs = attached_programs(&topo);
    assert_eq!(progs, ["nat_egress", "nat_ingress_tc"], "{progs:?}");
    translated_transfer(&topo, "transfer");
    assert!(nat.stop().success());
    assert_nothing_left(&topo);
}

/// The links are pinned, so a killed daemon leaves a working datapath behind;
/// `nat unload` then removes it.
#[test]
fn unload_cleans_up_after_a_killed_daemon() {
    let topo = Topology::new("kill", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--ports", PORTS]);
    kill(Pid::from_raw(nat.pid() as i32), Signal::SIGKILL).unwrap();
    assert!(!nat.stop().success());

    translated_transfer(
        &topo,
        "pinned datapath keeps translating without its daemon",
    );
    assert_eq!(sessions(&topo).len(), 1);

    unload(&topo);
    assert_nothing_left(&topo);
    let again = nat_cmd(&topo, &["unload", "--iface", EXT_IFACE]);
    assert!(again.status.success(), "a second unload is a no-op");
    assert!(String::from_utf8_lossy(&again.stdout).contains("not loaded"));
}

#[test]
fn unload_stops_a_running_daemon() {
    let topo = Topology::new("unl", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--ports", PORTS]);
    unload(&topo);
    assert!(
        nat.stop().success(),
        "the daemon exits cleanly on the SIGTERM unload sends"
    );
    assert_nothing_left(&topo);
}

#[test]
fn a_second_load_on_the_same_interface_is_refused() {
    let topo = Topology::new("twice", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let out = try_load(&topo, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already loaded"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // The running instance is untouched.
    let progs = attached_programs(&topo);
    assert_eq!(progs, ["nat_egress", "nat_ingress_tc"], "{progs:?}");
}
