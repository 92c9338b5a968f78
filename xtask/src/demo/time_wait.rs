//! The demo's second part: the problem the NAT solves, and its fix.
//!
//! The same scenario as the time_wait integration test, shortened: a server
//! that closes first (so it holds every connection in TIME_WAIT for 60 s), a
//! 64-port range, and a burst of 60 short connections from 8 internal hosts,
//! once with cooldown off and once, after `nat set cooldown-enabled on`, with
//! it on. Each burst goes to its own server port, so the second one does not
//! meet the first one's TIME_WAIT connections. About 25 seconds in all.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::time::Duration;

use nat_tests::{
    NatProcess, SERVER_IP, Side, Topology, interrupt, nat_cmd, nat_json, short_connection_burst,
    short_connection_server, tcp_ext,
};

use super::stop;

const PORTS: &str = "20000-20063";
const CONNECTIONS: usize = 60;
/// 60 connections in 9 s: the range fills up with used ports within the burst.
const INTERVAL: Duration = Duration::from_millis(150);
const PORT_OFF: u16 = 80;
const PORT_ON: u16 = 81;

struct Burst {
    label: &'static str,
    failed: usize,
    collisions: u64,
    reopened: u64,
    paws_timewait: u64,
}

/// Tells the story; returns how many of its checks failed.
pub fn tell(topology: &Topology) -> usize {
    let nat_ns = topology.ns_name(Side::Nat);
    let server_ns = topology.ns_name(Side::Server);
    println!(
        "\ndemo: why cooldown: a server that closes first keeps each connection in TIME_WAIT for 60 s.\n\
         demo: a NAT that hands the same external port to a new connection toward it within that time\n\
         demo: has the SYN taken for an old duplicate (PAWS): the server answers with an ACK of the old\n\
         demo: connection, the NAT counts a collision, the client resets the connection and retries."
    );
    let args = [
        "--ports",
        PORTS,
        "--timeout-tcp-closed",
        "1s",
        "--sweep-interval-ms",
        "200",
        "--policy",
        "strict",
        "--cooldown-enabled",
        "off",
    ];
    println!(
        "\ndemo: starting nat with a narrow range: {}",
        args.join(" ")
    );
    let nat = {
        let _setup = interrupt::namespace_setup();
        NatProcess::start(topology, &args)
    };
    let servers = [
        short_connection_server(server_ns, PORT_OFF),
        short_connection_server(server_ns, PORT_ON),
    ];
    println!(
        "demo: servers on TCP {SERVER_IP}:{PORT_OFF} and :{PORT_ON} answer one request and close first"
    );

    let mut failures = 0;
    let off = burst(topology, "cooldown off", PORT_OFF);
    println!("\n$ nat --netns {nat_ns} set cooldown-enabled on");
    let set = nat_cmd(topology, &["set", "cooldown-enabled", "on"]);
    print!("{}", String::from_utf8_lossy(&set.stdout));
    if !set.status.success() {
        println!(
            "demo: `nat set` FAILED ({}): {}",
            set.status,
            String::from_utf8_lossy(&set.stderr).trim()
        );
        failures += 1;
    }
    let on = burst(topology, "cooldown on", PORT_ON);

    println!("\n{}", table(&[&off, &on]));
    if off.collisions == 0 {
        println!(
            "demo: note: this time no reused port met a TIME_WAIT connection with cooldown off (reuse is random)"
        );
    }
    if on.failed > 0 || on.collisions + on.reopened + on.paws_timewait > 0 {
        println!("demo: FAILED: with cooldown on, no connection may collide or fail");
        failures += 1;
    } else {
        println!(
            "demo: with cooldown on, no port went back to the server while it could still be in TIME_WAIT"
        );
    }

    println!("\n$ nat --netns {nat_ns} top");
    let top = nat_cmd(topology, &["top"]);
    print!("{}", String::from_utf8_lossy(&top.stdout));
    if !top.status.success() {
        println!(
            "demo: `nat top` FAILED ({}): {}",
            top.status,
            String::from_utf8_lossy(&top.stderr).trim()
        );
        failures += 1;
    }
    println!(
        "demo: the price: ports toward that server stay cooling (240 s by default); `nat top` shows whose range runs short"
    );
    drop(servers);
    failures + stop(nat)
}

fn burst(topology: &Topology, label: &'static str, port: u16) -> Burst {
    let server_ns = topology.ns_name(Side::Server);
    println!(
        "demo: {label}: {CONNECTIONS} connections to {SERVER_IP}:{port}, one every {} ms, from {} internal hosts",
        INTERVAL.as_millis(),
        topology.client_ips().len()
    );
    let before = counters(topology);
    let paws_before = tcp_ext(server_ns, "PAWSTimewait");
    let results = short_connection_burst(
        topology.ns_name(Side::Client),
        &topology.client_ips(),
        SocketAddrV4::new(SERVER_IP, port),
        CONNECTIONS,
        INTERVAL,
    );
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for error in errors.iter().take(3) {
        println!("demo:   failed: {error}");
    }
    let after = counters(topology);
    Burst {
        label,
        failed: errors.len(),
        collisions: after.0.saturating_sub(before.0),
        reopened: after.1.saturating_sub(before.1),
        paws_timewait: tcp_ext(server_ns, "PAWSTimewait").saturating_sub(paws_before),
    }
}

/// The NAT's counts of SYNs answered as if they belonged to an old
/// connection (`collisions`), and of mappings the client's retry reopened
/// after its reset (`sessions_reopened`).
fn counters(topology: &Topology) -> (u64, u64) {
    let stats = nat_json(topology, &["stats", "--json"]);
    let counter = |name: &str| {
        stats["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("`nat stats --json` has no counters.{name}: {stats}"))
    };
    (counter("collisions"), counter("sessions_reopened"))
}

fn table(bursts: &[&Burst]) -> String {
    let mut out = format!(
        "{:<13} {:>11} {:>6} {:>14} {:>15} {:>20}",
        "", "connections", "failed", "NAT collisions", "reset, retried", "server PAWSTimewait"
    );
    for b in bursts {
        let _ = write!(
            out,
            "\n{:<13} {:>11} {:>6} {:>14} {:>15} {:>20}",
            b.label, CONNECTIONS, b.failed, b.collisions, b.reopened, b.paws_timewait
        );
    }
    out
}
