//! `--on-exhaustion reject`: a SYN that gets no port is answered with ICMP
//! administratively prohibited, so the client fails fast instead of
//! retrying blind; `drop` keeps it retrying.

use std::time::{Duration, Instant};

use crate::closing::*;
use crate::common::*;
use nat_tests::{NatProcess, Topology, TopologyOpts};

#[test]
fn rejected_connections_fail_fast_and_dropped_ones_wait() {
    let topo = Topology::new("reject", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            "20000-20003",
            "--policy",
            "strict",
            "--cooldown",
            "100s",
            "--timeout-tcp-closed",
            "500ms",
            "--sweep-interval-ms",
            "100",
            "--on-exhaustion",
            "reject",
        ],
    );
    let _server = CloseServer::start(&topo, 80);
    for _ in 0..4 {
        quick_close(&topo, 80, Close::ServerFirst);
    }
    // All four ports now cool toward the server for 100 s.
    wait_until_swept(&topo, Duration::from_secs(3));

    let started = Instant::now();
    let err = connect(&topo, 80, Duration::from_secs(5))
        .expect_err("no port is free: the connect must fail");
    let took = started.elapsed();
    assert!(
        err.contains("EHOSTUNREACH"),
        "the client must get the ICMP error: {err}"
    );
    assert!(
        took < Duration::from_millis(500),
        "it failed only after {took:?}"
    );
    let st = stats(&topo);
    assert!(counter(&st, "rejected") >= 1, "{st}");
    assert!(counter(&st, "drop_strict_cooling") >= 1, "{st}");

    // Live switch back to drop: the client now waits for its retransmissions.
    set(&topo, "on-exhaustion", "drop");
    let rejected = counter(&stats(&topo), "rejected");
    let err = connect(&topo, 80, Duration::from_millis(1500)).expect_err("still no free port");
    assert!(err.contains("no handshake"), "{err}");
    assert_eq!(
        counter(&stats(&topo), "rejected"),
        rejected,
        "nothing rejected under drop"
    );
}
