//! Live settings: `nat set` changes what the running datapath does, `nat get`
//! shows it, and a bad value is refused without changing anything.

use std::thread::sleep;
use std::time::Duration;

use crate::closing::*;
use crate::common::*;
use nat_tests::serde_json::{Value, json};
use nat_tests::{NatProcess, Topology, TopologyOpts, nat_cmd, nat_json};

const FOUR_PORTS: &str = "20000-20003";

fn get_json(topo: &Topology) -> Value {
    nat_json(topo, &["get", "--json"])
}

/// `nat get KEY` as text.
fn get(topo: &Topology, key: &str) -> String {
    let out = nat_cmd(topo, &["get", key]);
    assert!(
        out.status.success(),
        "nat get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn cooldown_can_be_switched_off_shortened_and_policy_changed_live() {
    let topo = Topology::new("set-live", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            FOUR_PORTS,
            "--policy",
            "strict",
            "--cooldown",
            "100s",
            "--timeout-tcp-closed",
            "500ms",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let s80 = CloseServer::start(&topo, 80);
    let _s81 = CloseServer::start(&topo, 81);
    for _ in 0..4 {
        quick_close(&topo, 80, Close::ServerFirst);
    }
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        sessions(&topo).is_empty().then_some(())
    });
    assert_eq!(cooldowns(&topo).len(), 4, "{:#?}", cooldowns(&topo));
    assert_blocked(
        &topo,
        80,
        Duration::from_millis(1500),
        "all 4 ports cool toward it under policy strict",
    );
    assert!(counter(&stats(&topo), "drop_strict_cooling") >= 1);

    set(&topo, "cooldown-enabled", "off");
    assert_eq!(get(&topo, "cooldown-enabled"), "off");
    // Held open to the end, so that its port stays taken. Had it closed, the
    // port could legitimately be free again after re-enabling: the server
    // may answer this reuse from its TIME_WAIT, the client then resets and
    // retries, and that reopen deletes the key's old cooldown.
    let (reused, took) = connect(&topo, 80, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("with cooldown-enabled off: {e}"));
    assert!(
        took < QUICK,
        "with cooldown-enabled off the first SYN was still dropped ({took:?})"
    );
    wait_for("the server to accept it", Duration::from_secs(1), || {
        (s80.accepted() == 5).then_some(())
    });
    // With cooldowns off a close records none either.
    let off_close = quick_close(&topo, 81, Close::ServerFirst);
    wait_for("closed sessions swept", Duration::from_secs(3), || {
        (sessions(&topo).len() == 1).then_some(())
    });
    let list = cooldowns(&topo);
    assert_eq!(
        left_ms(&list, "tcp", off_close.external, 81),
        None,
        "a close with cooldown-enabled off started a cooldown: {list:#?}"
    );
    for c in &list {
        assert_eq!(c["remote"], "198.18.0.2:80", "{list:#?}");
        assert!(c["left_ms"].as_u64().unwrap() > 90_000, "{list:#?}");
    }

    set(&topo, "cooldown-enabled", "on");
    set(&topo, "cooldown", "2s");
    let short = quick_close(&topo, 81, Close::ServerFirst);
    let left = wait_for("cooldown of the new close", Duration::from_secs(2), || {
        left_ms(&cooldowns(&topo), "tcp", short.external, 81)
    });
    assert!(
        1000 < left && left <= 2000,
        "a close after `set cooldown 2s` cools for {left} ms"
    );
    // The new value applies to new closes; the keys already cooling keep theirs.
    let list = cooldowns(&topo);
    let long: Vec<_> = list
        .iter()
        .filter(|c| c["left_ms"].as_u64().unwrap() > 90_000)
        .collect();
    assert!(long.len() >= 3, "{list:#?}");

    assert_eq!(get(&topo, "cooldown"), "2000ms");
    assert_eq!(get(&topo, "cooldown-enabled"), "on");
    assert_eq!(get(&topo, "policy"), "strict");
    let out = nat_cmd(&topo, &["get"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let value_of = |name: &str| {
        text.lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.next().unwrap_or("").to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in `nat get`:\n{text}"))
    };
    assert_eq!(value_of("cooldown"), "2000ms", "{text}");
    assert_eq!(value_of("cooldown-enabled"), "on", "{text}");
    assert_eq!(value_of("policy"), "strict", "{text}");
    assert_eq!(value_of("timeout-tcp-closed"), "500ms", "{text}");
    let json = get_json(&topo);
    assert_eq!(json["cooldown"], 2000, "{json:#}");
    assert_eq!(json["cooldown-enabled"], "on", "{json:#}");
    assert_eq!(json["policy"], "strict", "{json:#}");
    assert_eq!(json["timeout-tcp-closed"], 500, "{json:#}");
    assert_eq!(json["cooldown-local-close"], 15_000, "{json:#}");

    // Re-enabled, the 100 s keys toward :80 block it again...
    assert_blocked(
        &topo,
        80,
        Duration::from_millis(1500),
        "cooldowns are on again and every port toward it cools or is in use",
    );
    // ...until the policy allows taking a cooling port.
    set(&topo, "policy", "fallback");
    assert_eq!(get(&topo, "policy"), "fallback");
    let before = counter(&stats(&topo), "alloc_fallback");
    quick_close(&topo, 80, Close::ClientFirst);
    assert!(counter(&stats(&topo), "alloc_fallback") > before);

    // The 2 s cooldown really ends.
    sleep(Duration::from_millis(500));
    wait_for("the 2 s cooldown to end", Duration::from_secs(2), || {
        left_ms(&cooldowns(&topo), "tcp", short.external, 81)
            .is_none()
            .then_some(())
    });
    drop(reused);
}

#[test]
fn get_shows_load_flags_and_bad_sets_change_nothing() {
    let topo = Topology::new("set-bad", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            FOUR_PORTS,
            "--cooldown",
            "4m",
            "--cooldown-rst",
            "1500",
            "--cooldown-udp",
            "1500ms",
        ],
    );
    let json = get_json(&topo);
    let expected = [
        ("cooldown", json!(240_000)),
        ("cooldown-local-close", 15_000.into()),
        ("cooldown-rst", 1500.into()),
        ("cooldown-udp", 1500.into()),
        ("cooldown-icmp", 0.into()),
        ("cooldown-enabled", "on".into()),
        ("policy", "fallback".into()),
        ("on-exhaustion", "drop".into()),
        ("log-events", "off".into()),
        ("timeout-tcp-established", 7_440_000.into()),
        ("timeout-tcp-transitory", 240_000.into()),
        ("timeout-tcp-closed", 10_000.into()),
        ("timeout-udp", 300_000.into()),
        ("timeout-icmp", 60_000.into()),
        ("mapping-udp", "endpoint-independent".into()),
        ("mapping-tcp", "address-port-dependent".into()),
        ("filtering-udp", "address-dependent".into()),
        ("max-sessions-per-host", 32_768.into()),
        ("max-blocks-per-host", 8.into()),
        ("pool-threshold", 0.into()),
        ("log-sessions", "off".into()),
    ];
    assert_eq!(
        json.as_object().map(|o| o.len()),
        Some(expected.len()),
        "{json:#}"
    );
    for (key, value) in &expected {
        assert_eq!(&json[key], value, "{key}: {json:#}");
    }
    assert_eq!(
        nat_json(&topo, &["get", "cooldown-rst", "--json"]),
        json!({ "cooldown-rst": 1500 })
    );

    for (value, ms) in [
        ("1500", 1500),
        ("1500ms", 1500),
        ("240s", 240_000),
        ("4m", 240_000),
    ] {
        set(&topo, "cooldown-local-close", value);
        assert_eq!(get_json(&topo)["cooldown-local-close"], ms, "{value}");
    }
    let before = get_json(&topo);

    for args in [
        ["set", "cooldown", "100000001"],
        ["set", "policy", "maybe"],
        ["set", "no-such", "1"],
        ["set", "cooldown-enabled", "maybe"],
        ["set", "timeout-udp", "10ms"],
        ["set", "cooldown", "soon"],
        ["set", "mapping-udp", "full-cone"],
        ["set", "filtering-udp", "address"],
    ] {
        let out = nat_cmd(&topo, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nat {args:?} succeeded");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "nat {args:?}: one error line expected: {err}"
        );
        assert!(err.starts_with("nat: "), "nat {args:?}: {err}");
        assert!(
            err.contains(args[1]),
            "nat {args:?} does not name the key: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(get_json(&topo), before, "nat {args:?} changed a setting");
    }
    let out = nat_cmd(&topo, &["get", "no-such"]);
    assert!(!out.status.success());
}
