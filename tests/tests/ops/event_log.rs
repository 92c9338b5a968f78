//! `log-events`: rare drops reach the daemon's log through aya-log, with
//! their addresses, only while the setting is on.

use std::time::Duration;

use crate::closing::*;
use crate::common::*;
use nat_common::event_rate::EVENTS_PER_SECOND;
use nat_tests::{CLIENT_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, run_in_ns};

/// What the daemon logged so far, as one text.
fn log(nat: &NatProcess) -> String {
    nat.log().join("\n")
}

#[test]
fn exhaustion_is_logged_only_while_log_events_is_on() {
    let topo = Topology::new("evlog", TopologyOpts::default());
    // One external port: a second connection to the same server finds none.
    let nat = NatProcess::start(&topo, &["--ports", "20000-20000", "--log-events", "on"]);
    let _server = CloseServer::start(&topo, 80);
    let (held, _) = connect(&topo, 80, Duration::from_secs(5)).expect("first connection");
    let line = format!("no free external port for {CLIENT_IP} -> {SERVER_IP}");

    connect(&topo, 80, Duration::from_millis(300)).expect_err("no port is free");
    wait_for("the exhaustion in the log", Duration::from_secs(5), || {
        log(&nat).contains(&line).then_some(())
    });
    assert!(counter(&stats(&topo), "drop_alloc_failed") >= 1);

    set(&topo, "log-events", "off");
    let logged = log(&nat).matches(&line).count();
    let dropped = counter(&stats(&topo), "drop_alloc_failed");
    connect(&topo, 80, Duration::from_millis(300)).expect_err("still no port");
    // Time for a record to reach the log, as it did above.
    std::thread::sleep(Duration::from_secs(1));
    assert!(counter(&stats(&topo), "drop_alloc_failed") > dropped);
    assert_eq!(
        log(&nat).matches(&line).count(),
        logged,
        "logged with log-events off: {}",
        log(&nat)
    );
    drop(held);
}

#[test]
fn a_storm_of_drops_is_cut_to_the_rate_limit() {
    let topo = Topology::new("evstorm", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--ports", "20000-20000", "--log-events", "on"]);
    let server = std::net::SocketAddrV4::new(SERVER_IP, 53);
    // The first datagram takes the only port toward the server; each of the
    // next, from its own source port, finds none and is dropped.
    const STORM: usize = 400;
    run_in_ns(topo.ns_name(Side::Client), move || {
        for _ in 0..=STORM {
            let s = std::net::UdpSocket::bind((CLIENT_IP, 0)).expect("bind");
            s.send_to(b"x", server).expect("send");
        }
    });
    let line = format!("no free external port for {CLIENT_IP} -> {SERVER_IP}");
    wait_for("the first record", Duration::from_secs(5), || {
        log(&nat).contains(&line).then_some(())
    });
    assert!(counter(&stats(&topo), "drop_alloc_failed") >= STORM as u64 - 5);
    // Records reach the log within this second, and the window closes.
    std::thread::sleep(Duration::from_millis(1100));
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get());
    let logged = log(&nat).matches(&line).count();
    assert!(
        logged <= cpus * EVENTS_PER_SECOND as usize,
        "{logged} records of {STORM} drops: the rate limit did not hold"
    );
    // A CPU's next record after the window says how many it held back (the
    // datagrams may land on either CPU, so a few are sent).
    wait_for("the held-back record", Duration::from_secs(5), || {
        run_in_ns(topo.ns_name(Side::Client), move || {
            let sock = std::net::UdpSocket::bind((CLIENT_IP, 0)).expect("bind");
            sock.send_to(b"x", server).expect("send");
        });
        log(&nat).contains("event records held back").then_some(())
    });
}
