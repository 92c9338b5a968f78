//! The sweep expires a session only once its timeout has really passed:
//! idle time counts from the session's last packet, and a closed session's
//! from its close.

use std::io::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::closing::*;
use crate::common::*;
use nat_tests::{NatProcess, Topology, TopologyOpts};

/// An established session that keeps sending is not idle, however short its
/// timeout.
#[test]
fn active_session_is_not_swept_as_idle() {
    let topo = Topology::new("rc-active", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-tcp-established",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server = CloseServer::start(&topo, 80);
    let (mut stream, _) = connect(&topo, 80, QUICK).unwrap_or_else(|e| panic!("{e}"));
    let opened = Instant::now();
    announce(&mut stream, Close::ClientFirst);
    // Never more than 300 ms of silence: at no point is the session 1 s idle.
    for _ in 0..8 {
        sleep(Duration::from_millis(300));
        stream.write_all(b"x").expect("send a byte");
        let list = sessions(&topo);
        assert_eq!(
            list.len(),
            1,
            "{:?} after the handshake, sending a byte every 300 ms, the session was swept as idle under a 1 s timeout",
            opened.elapsed()
        );
    }
    complete(stream, Close::ClientFirst);
    let st = stats(&topo);
    assert_eq!(counter(&st, "drop_no_session"), 0, "{st}");
}

/// timeout-tcp-closed runs from the close, not from some earlier packet.
#[test]
fn closed_session_keeps_its_mapping_for_timeout_tcp_closed_after_the_close() {
    let topo = Topology::new("rc-closed", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-tcp-closed",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server = CloseServer::start(&topo, 80);
    let (mut stream, _) = connect(&topo, 80, QUICK).unwrap_or_else(|e| panic!("{e}"));
    // Data at 1.05 s and the close at 1.95 s: the close comes more than 1 s
    // after the handshake but less than 1 s after the last data, so an idle
    // clock refreshed at most once a second would still date the session
    // from the data.
    sleep(Duration::from_millis(1050));
    announce(&mut stream, Close::ClientFirst);
    sleep(Duration::from_millis(900));
    complete(stream, Close::ClientFirst);
    let closed = Instant::now();
    sleep(Duration::from_millis(700));
    let list = sessions(&topo);
    assert_eq!(
        list.len(),
        1,
        "closed session swept within 700 ms of its close under timeout-tcp-closed 1s"
    );
    assert_eq!(list[0]["state"], "closed", "{list:#?}");
    let gone = wait_until_swept(&topo, Duration::from_secs(2));
    assert!(
        gone - closed >= Duration::from_millis(900),
        "swept {:?} after the close",
        gone - closed
    );
}
