//! The XDP fast path: established flows cross the NAT without its stack, and
//! everything the fast path does not take still works through the stack.

mod closing;
mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use closing::{Close, CloseServer, cooldowns, left_ms, quick_close, wait_for};
use common::*;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, INT_IFACE, NatProcess, SERVER_IP, Side, Topology, TopologyOpts,
    run_in_ns, tcp_exchange, tcp_sink_server, udp_echo_server, udp_exchange,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const MIB: usize = 1 << 20;

/// XDP needs hosts that send complete checksums; TC works with the veth
/// defaults, under which the client and server send partial ones.
fn topology(tag: &str, ingress: &str) -> Topology {
    let topo = Topology::new(
        tag,
        TopologyOpts {
            wire_hosts: ingress == "xdp",
            ..Default::default()
        },
    );
    if ingress == "tc" {
        // The kernel completes partial checksums in software as the NAT
        // sends, after the programs ran, so the receivers check the result.
        tx_checksum_off(&topo, EXT_IFACE);
        tx_checksum_off(&topo, INT_IFACE);
    }
    topo
}

fn start(topo: &Topology, ingress: &str, extra: &[&str]) -> NatProcess {
    let mut args = vec![
        "--ports",
        PORTS,
        "--ingress",
        ingress,
        "--fast-path",
        INT_IFACE,
    ];
    args.extend_from_slice(extra);
    NatProcess::start(topo, &args)
}

/// The hook the fast path runs in on the internal interface, if any.
fn hook_on_internal(topo: &Topology) -> Option<&'static str> {
    if xdp_attached(topo, INT_IFACE) {
        return Some("xdp");
    }
    let tcx = run_in_ns(topo.ns_name(Side::Nat), || {
        SchedClassifier::query_tcx(INT_IFACE, TcAttachType::Ingress)
            .expect("query TCX ingress")
            .1
            .len()
    });
    (tcx > 0).then_some("tc")
}

fn established_flows_bypass_the_stack(tag: &str, ingress: &'static str) {
    let topo = topology(tag, ingress);
    let nat = start(&topo, ingress, &[]);
    assert_eq!(hook_on_internal(&topo), Some(ingress));
    let tcp = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let client = topo.ns_name(Side::Client);
    let nat_ns = topo.ns_name(Side::Nat);
    let forwarded_before = snmp(nat_ns, "Ip", "ForwDatagrams");

    let tcp_local = tcp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 8080), MIB)
        .expect("1 MiB TCP transfer");
    let tcp_ext = assert_translated(tcp.last_peer().expect("server saw the TCP connection"));
    for _ in 0..20 {
        udp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 5353), 1200).expect("UDP round trip");
        assert_translated(udp.last_peer().expect("server saw the datagram"));
    }

    let list = sessions(&topo);
    assert_eq!(list.len(), 21, "one TCP and 20 UDP sessions: {list:#?}");
    let tcp_session = list
        .iter()
        .find(|s| s["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no tcp session in {list:#?}"));
    assert_eq!(tcp_session["internal"], tcp_local.to_string());
    assert_eq!(tcp_session["external"], tcp_ext.to_string());

    let st = stats(&topo);
    let (fast_out, fast_in) = (counter(&st, "fast_out"), counter(&st, "fast_in"));
    // Only what opened a flow took the stack and TC egress's translation:
    // the TCP SYN and the first datagram of each UDP flow.
    assert_eq!(counter(&st, "translated_out"), 21, "{st}");
    if ingress == "xdp" {
        // Client tx checksum offload is off: 1 MiB crosses as ~720
        // MSS-sized segments, which never reach TC egress.
        assert!(fast_out > 700, "{st}");
        assert_eq!(counter(&st, "pass_external_source"), 0, "{st}");
    } else {
        // GSO super-packets, translated by the fast path and passed on by
        // TC egress at its first check.
        assert!(fast_out > 20, "{st}");
        assert_eq!(counter(&st, "pass_external_source"), fast_out, "{st}");
    }
    assert!(fast_in > 20, "{st}");
    // The stack forwarded only the packets that opened flows (and, at most,
    // their first replies).
    let forwarded = snmp(nat_ns, "Ip", "ForwDatagrams") - forwarded_before;
    assert!(
        forwarded <= 2 * 21 + 4,
        "the stack forwarded {forwarded} packets: {st}"
    );
    assert_clean(&topo, &st);
    if ingress == "xdp" {
        assert!(nat.stop().success());
    } else {
        // The fast path's links are pinned like the others: it keeps working
        // without its daemon, and `nat unload` removes it too.
        kill(Pid::from_raw(nat.pid() as i32), Signal::SIGKILL).unwrap();
        assert!(!nat.stop().success());
        let before = counter(&stats(&topo), "fast_out");
        tcp_exchange(client, Some(CLIENT_IP), v4(SERVER_IP, 8080), MIB)
            .expect("TCP transfer without the daemon");
        assert!(counter(&stats(&topo), "fast_out") > before);
        unload(&topo);
    }
    assert_eq!(
        hook_on_internal(&topo),
        None,
        "fast path left on {INT_IFACE}"
    );
    assert_nothing_left(&topo);
}

#[test]
fn established_flows_bypass_the_stack_xdp() {
    established_flows_bypass_the_stack("fastxdp", "xdp");
}

#[test]
fn established_flows_bypass_the_stack_tc() {
    established_flows_bypass_the_stack("fasttc", "tc");
}

#[test]
fn closes_seen_on_the_fast_path_start_cooldowns() {
    let topo = topology("fastclose", "xdp");
    let _nat = start(
        &topo,
        "xdp",
        &["--cooldown", "100s", "--cooldown-rst", "20s"],
    );
    let _server = CloseServer::start(&topo, 80);
    // The client sends the last FIN of a server-first close, and the RST of a
    // reset: both cross the NAT on the fast path, which must see them.
    let server_first = quick_close(&topo, 80, Close::ServerFirst);
    let reset = quick_close(&topo, 80, Close::Reset);
    let list = wait_for("two cooling keys", Duration::from_secs(2), || {
        let list = cooldowns(&topo);
        (list.len() >= 2).then_some(list)
    });
    let left = |c: &closing::Closed| left_ms(&list, "tcp", c.external, 80);
    let first = left(&server_first).unwrap_or_else(|| panic!("no cooldown: {list:#?}"));
    assert!(
        (90_000..=100_000).contains(&first),
        "{first} ms left: {list:#?}"
    );
    let rst = left(&reset).unwrap_or_else(|| panic!("no cooldown: {list:#?}"));
    assert!((10_000..=20_000).contains(&rst), "{rst} ms left: {list:#?}");
    let st = stats(&topo);
    assert_eq!(
        counter(&st, "translated_out"),
        2,
        "only the SYNs take the stack: {st}"
    );
    assert!(counter(&st, "fast_out") >= 4, "{st}");
}

#[test]
fn expiring_ttl_is_left_to_the_stack() {
    let topo = topology("fastttl", "xdp");
    let _nat = start(&topo, "xdp", &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let nat_ns = topo.ns_name(Side::Nat);
    let expired_before = snmp(nat_ns, "Icmp", "OutTimeExcds");
    let (echoed, late) = run_in_ns(topo.ns_name(Side::Client), || {
        let socket = UdpSocket::bind((CLIENT_IP, 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let server = v4(SERVER_IP, 5353);
        let mut buf = [0u8; 64];
        socket.send_to(b"first", server).expect("send");
        let echoed = socket.recv(&mut buf).is_ok();
        // Same flow, now with TTL 1: it must expire at the NAT, not be forwarded.
        socket.set_ttl(1).expect("ttl");
        socket.send_to(b"second", server).expect("send");
        let late = socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec());
        (echoed, late)
    });
    assert!(echoed, "the first datagram was not echoed");
    assert_eq!(late, None, "a TTL 1 datagram crossed the NAT");
    let expired = snmp(nat_ns, "Icmp", "OutTimeExcds") - expired_before;
    assert_eq!(expired, 1, "the NAT's stack did not answer time exceeded");
    let st = stats(&topo);
    assert!(counter(&st, "fast_miss") >= 1, "{st}");
}

#[test]
fn fast_path_arguments_are_checked() {
    let topo = topology("fastargs", "xdp");
    let twice = format!("{INT_IFACE},{INT_IFACE}");
    for (args, expected) in [
        (
            vec!["--fast-path", EXT_IFACE],
            "names the external interface",
        ),
        (
            vec!["--fast-path", "nosuch0"],
            "no interface named 'nosuch0'",
        ),
        (vec!["--fast-path", twice.as_str()], "names veth-in twice"),
    ] {
        let out = try_load(&topo, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(hook_on_internal(&topo), None);
    assert_nothing_left(&topo);
}

#[test]
fn route_changes_reach_established_flows() {
    let topo = topology("fastroute", "xdp");
    let _nat = start(&topo, "xdp", &[]);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    let socket = run_in_ns(topo.ns_name(Side::Client), || {
        UdpSocket::bind((CLIENT_IP, 0)).expect("bind")
    });
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let server = v4(SERVER_IP, 5353);
    let echoed = |payload: &[u8]| {
        socket.send_to(payload, server).expect("send");
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == payload)
    };
    assert!(echoed(b"opens the flow"));
    assert!(echoed(b"fast"));
    let st = stats(&topo);
    assert!(counter(&st, "fast_out") >= 1, "{st}");

    let route = |verb: &str| {
        let out = Command::new("ip")
            .args(["-n", topo.ns_name(Side::Nat), "route", verb])
            .args(["blackhole", "198.18.0.2/32"])
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    route("add");
    // The flow's cached lookup is used for at most a second.
    std::thread::sleep(Duration::from_millis(1100));
    let before = counter(&stats(&topo), "fast_route");
    assert!(
        !echoed(b"blackholed"),
        "a datagram crossed a blackhole route"
    );
    assert!(counter(&stats(&topo), "fast_route") > before);
    route("del");
    assert!(echoed(b"routed again"), "the flow did not recover");
}
