//! Port cooldowns: how long a key cools after each kind of close, that the
//! key includes the destination, what the policies do once every port toward
//! a destination is cooling, and how `nat top` reports it.

use std::collections::HashSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::closing::*;
use crate::common::*;
use nat_tests::{EXTERNAL_IP, NatProcess, Topology, TopologyOpts, nat_json, serde_json::Value};

const FOUR_PORTS: &str = "20000-20003";
const EIGHT_PORTS: &str = "20000-20007";

fn in_range(port: u16, range: &str) -> bool {
    let (lo, hi) = range.split_once('-').expect("LO-HI");
    (lo.parse().unwrap()..=hi.parse().unwrap()).contains(&port)
}

fn assert_external(c: &Closed, range: &str) {
    assert_eq!(*c.external.ip(), EXTERNAL_IP, "{c:?}");
    assert!(in_range(c.external.port(), range), "{c:?} outside {range}");
}

#[test]
fn each_close_kind_cools_for_its_own_duration() {
    let topo = Topology::new("cd-kinds", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            FOUR_PORTS,
            "--cooldown",
            "100s",
            "--cooldown-local-close",
            "50s",
            "--cooldown-rst",
            "20s",
            "--timeout-tcp-closed",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _server = CloseServer::start(&topo, 80);

    let server_first = quick_close(&topo, 80, Close::ServerFirst);
    let client_first = quick_close(&topo, 80, Close::ClientFirst);
    let reset = quick_close(&topo, 80, Close::Reset);
    let expected = [
        ("server-first close", server_first, 90_000, 100_000),
        ("client-first close", client_first, 40_000, 50_000),
        ("reset", reset, 10_000, 20_000),
    ];
    for (_, c, _, _) in &expected {
        assert_external(c, FOUR_PORTS);
    }

    // The last segments may still be on their way when close() returns.
    let list = wait_for("three cooling keys", Duration::from_secs(2), || {
        let list = cooldowns(&topo);
        (list.len() >= 3).then_some(list)
    });
    assert_eq!(list.len(), 3, "{list:#?}");
    let mut first_left = Vec::new();
    for (what, c, lo, hi) in &expected {
        let left = left_ms(&list, "tcp", c.external, 80)
            .unwrap_or_else(|| panic!("no cooldown for the {what} on {}: {list:#?}", c.external));
        assert!(
            *lo < left && left <= *hi,
            "{what} on {}: {left} ms left, expected ({lo}, {hi}]: {list:#?}",
            c.external
        );
        first_left.push(left);
    }
    // Closed and reset sessions keep their mapping for timeout-tcp-closed.
    assert_eq!(sessions(&topo).len(), 3, "{:#?}", sessions(&topo));

    // Swept once timeout-tcp-closed (1 s) has passed, allowing the sweep's
    // 1 s slack for the coarse last-seen clock and a sweep interval.
    sleep(
        (reset.closed_at + Duration::from_millis(2300)).saturating_duration_since(Instant::now()),
    );
    let left_over = sessions(&topo);
    assert!(
        left_over.is_empty(),
        "closed sessions outlived timeout-tcp-closed (1 s) by more than the slack: {left_over:#?}"
    );
    let list = cooldowns(&topo);
    assert_eq!(
        list.len(),
        3,
        "sweeping the sessions ended their cooldowns: {list:#?}"
    );
    for ((what, c, lo, _), before) in expected.iter().zip(first_left) {
        let left = left_ms(&list, "tcp", c.external, 80)
            .unwrap_or_else(|| panic!("the {what} stopped cooling: {list:#?}"));
        assert!(
            left <= before && left > lo - 3000,
            "{what}: {left} ms left, {before} ms 1.5 s ago"
        );
    }
    let st = stats(&topo);
    assert_eq!(st["sessions"], 0, "{st}");
    assert_eq!(st["cooling"], 3, "{st}");
}

#[test]
fn cooldown_keys_include_the_destination() {
    let topo = Topology::new("cd-dest", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            EIGHT_PORTS,
            "--policy",
            "strict",
            "--cooldown",
            "100s",
            "--timeout-tcp-closed",
            "1s",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let s80 = CloseServer::start(&topo, 80);
    let s81 = CloseServer::start(&topo, 81);

    // 12 connections over 8 ports: only possible if a port cooling toward one
    // destination is still free toward the other.
    let mut ports = [Vec::new(), Vec::new()];
    for (dst, ports) in [80, 81].into_iter().zip(&mut ports) {
        for _ in 0..6 {
            let c = quick_close(&topo, dst, Close::ServerFirst);
            assert_external(&c, EIGHT_PORTS);
            ports.push(c.external.port());
        }
    }
    let [to80, to81] = &ports;
    for (dst, p) in [(80, to80), (81, to81)] {
        let distinct: HashSet<_> = p.iter().collect();
        assert_eq!(
            distinct.len(),
            6,
            "a port cooling toward :{dst} was handed out toward it again: {p:?}"
        );
    }
    let shared: HashSet<_> = to80
        .iter()
        .collect::<HashSet<_>>()
        .intersection(&to81.iter().collect())
        .copied()
        .collect();
    assert!(
        !shared.is_empty(),
        "no external port served both destinations: :80 {to80:?}, :81 {to81:?}"
    );
    let list = wait_for("12 cooling keys", Duration::from_secs(2), || {
        let list = cooldowns(&topo);
        (list.len() >= 12).then_some(list)
    });
    assert_eq!(list.len(), 12, "{list:#?}");
    for (dst, p) in [(80, to80), (81, to81)] {
        for &port in p {
            let left = left_ms(&list, "tcp", v4(EXTERNAL_IP, port), dst)
                .unwrap_or_else(|| panic!("{EXTERNAL_IP}:{port} -> :{dst} not cooling: {list:#?}"));
            assert!(left > 90_000, "{port} -> :{dst}: {left} ms left");
        }
    }

    // Toward :80 two of the eight ports are still free, then none.
    let mut all80: HashSet<u16> = to80.iter().copied().collect();
    for _ in 0..2 {
        let c = quick_close(&topo, 80, Close::ServerFirst);
        assert!(
            all80.insert(c.external.port()),
            "port {} handed out toward :80 while cooling: {all80:?}",
            c.external.port()
        );
    }
    assert_eq!(all80.len(), 8);
    assert_eq!(s80.accepted(), 8);
    // Once the closed sessions are swept every port toward :80 is cooling
    // and none is live, which is what drop_strict_cooling counts.
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        sessions(&topo).is_empty().then_some(())
    });
    assert_blocked(
        &topo,
        80,
        Duration::from_millis(1500),
        "all 8 ports cool toward it under policy strict",
    );
    assert_eq!(s80.accepted(), 8, "the server saw the 9th connection");
    assert_eq!(s81.accepted(), 6);
    let st = stats(&topo);
    assert!(counter(&st, "drop_strict_cooling") >= 1, "{st}");
    assert_eq!(counter(&st, "drop_alloc_failed"), 0, "{st}");
    assert_eq!(counter(&st, "alloc_fallback"), 0, "{st}");
    assert_eq!(counter(&st, "sessions_opened"), 14, "{st}");
}

/// Four server-first closes toward :80, 100 ms apart, so their cooldowns end
/// in the same order.
fn fill_four(topo: &Topology) -> Vec<Closed> {
    let mut closed: Vec<Closed> = Vec::new();
    for i in 0..4 {
        if i > 0 {
            sleep(Duration::from_millis(100));
        }
        let c = quick_close(topo, 80, Close::ServerFirst);
        assert_external(&c, FOUR_PORTS);
        assert!(
            closed.iter().all(|o| o.external != c.external),
            "{} handed out again while cooling",
            c.external
        );
        closed.push(c);
    }
    closed
}

fn over_capacity_nat(topo: &Topology, policy: &str) -> NatProcess {
    NatProcess::start(
        topo,
        &[
            "--ports",
            FOUR_PORTS,
            "--policy",
            policy,
            "--cooldown",
            "4s",
            "--timeout-tcp-closed",
            "500ms",
            "--sweep-interval-ms",
            "100",
        ],
    )
}

#[test]
fn strict_policy_waits_until_a_key_has_cooled() {
    let topo = Topology::new("cd-strict", TopologyOpts::default());
    let _nat = over_capacity_nat(&topo, "strict");
    let server = CloseServer::start(&topo, 80);
    let closed = fill_four(&topo);
    // timeout-tcp-closed (500 ms) plus the sweep's 1 s slack.
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        sessions(&topo).is_empty().then_some(())
    });
    assert_eq!(cooldowns(&topo).len(), 4, "{:#?}", cooldowns(&topo));

    let started = Instant::now();
    let (stream, took) = connect(&topo, 80, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("5th connection never got a port: {e}"));
    let connected = Instant::now();
    let external = finish(stream, Close::ClientFirst);
    let first_cooled = closed[0].closed_at + Duration::from_secs(4);
    assert!(
        took >= Duration::from_secs(2),
        "5th connection took only {took:?}: a cooling port was handed out under policy strict"
    );
    // The datapath starts a cooldown when it forwards the closing FIN, a
    // moment before close() returns here; 50 ms covers that gap.
    assert!(
        connected + Duration::from_millis(50) >= first_cooled,
        "connected {:?} before the first cooldown could end",
        first_cooled - connected
    );
    assert!(
        closed.iter().any(|c| c.external == external),
        "{external} is none of the cooled ports {closed:?}"
    );
    assert_eq!(server.accepted(), 5);
    let st = stats(&topo);
    assert!(counter(&st, "drop_strict_cooling") >= 1, "{st}");
    assert_eq!(counter(&st, "alloc_fallback"), 0, "{st}");
    println!(
        "5th connection: started {:?} after the first close, took {took:?}, got {external}",
        started - closed[0].closed_at
    );
}

#[test]
fn fallback_policy_takes_the_port_that_cools_soonest() {
    let topo = Topology::new("cd-fallback", TopologyOpts::default());
    let _nat = over_capacity_nat(&topo, "fallback");
    let server = CloseServer::start(&topo, 80);
    let closed = fill_four(&topo);
    // timeout-tcp-closed (500 ms) plus the sweep's 1 s slack.
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        sessions(&topo).is_empty().then_some(())
    });
    let list = cooldowns(&topo);
    assert_eq!(list.len(), 4, "{list:#?}");

    let fifth = quick_close(&topo, 80, Close::ClientFirst);
    assert!(
        fifth.closed_at < closed[0].closed_at + Duration::from_secs(4),
        "too slow to test the fallback: the first key had cooled already"
    );
    assert_eq!(
        fifth.external, closed[0].external,
        "fallback took {} instead of the first connection's port, whose cooldown ends soonest: {closed:?}, {list:#?}",
        fifth.external
    );
    assert_eq!(server.accepted(), 5);
    let st = stats(&topo);
    assert!(counter(&st, "alloc_fallback") >= 1, "{st}");
    assert_eq!(counter(&st, "drop_strict_cooling"), 0, "{st}");
    assert_eq!(counter(&st, "drop_alloc_failed"), 0, "{st}");
}

#[test]
fn top_counts_live_and_cooling_ports_per_destination() {
    let topo = Topology::new("cd-top", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            EIGHT_PORTS,
            "--cooldown",
            "100s",
            "--timeout-tcp-closed",
            "500ms",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let _s80 = CloseServer::start(&topo, 80);
    let _s81 = CloseServer::start(&topo, 81);
    for _ in 0..6 {
        quick_close(&topo, 80, Close::ServerFirst);
    }
    quick_close(&topo, 81, Close::ServerFirst);
    // Held open so that :81 has ports in use as well as cooling.
    let open: Vec<_> = (0..2)
        .map(|_| connect(&topo, 81, QUICK).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        (sessions(&topo).len() == 2).then_some(())
    });

    let top = nat_json(&topo, &["top", "--json"]);
    let rows = top.as_array().expect("top --json prints an array");
    assert_eq!(rows.len(), 2, "{top:#}");
    let expect = |row: &Value, dst: &str, in_use: u64, cooling: u64| {
        assert_eq!(row["destination"], dst, "{top:#}");
        assert_eq!(row["external"], EXTERNAL_IP.to_string(), "{top:#}");
        assert_eq!(row["proto"], "tcp", "{top:#}");
        assert_eq!(row["in_use"], in_use, "{dst}: {top:#}");
        assert_eq!(row["cooling"], cooling, "{dst}: {top:#}");
        assert_eq!(row["capacity"], 8, "{dst}: {top:#}");
        let pct = (in_use + cooling) as f64 * 100.0 / 8.0;
        assert_eq!(row["used_pct"].as_f64(), Some(pct), "{dst}: {top:#}");
    };
    // Sorted by share used: 6 of 8 toward :80 before 3 of 8 toward :81.
    expect(&rows[0], "198.18.0.2:80", 0, 6);
    expect(&rows[1], "198.18.0.2:81", 2, 1);

    let first = nat_json(&topo, &["top", "--json", "--limit", "1"]);
    assert_eq!(first.as_array().map(Vec::len), Some(1), "{first:#}");
    assert_eq!(first[0]["destination"], "198.18.0.2:80", "{first:#}");
    drop(open);
}
