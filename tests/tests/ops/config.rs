//! `nat load --config`: the file sets every live setting as the flags do,
//! a bad key or value is refused in one line naming it and its line, and a
//! reload (SIGHUP or `nat reload`) applies a changed cooldown, external
//! addresses and port range while a paced transfer goes on untouched.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ops::*;
use nat_tests::{
    EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, concurrent_tcp, nat_bin,
    nat_json, tcp_sink_server,
};

const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

fn base(external: &[Ipv4Addr], ports: &str, cooldown: &str) -> String {
    let list: Vec<String> = external.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "# written by the test\niface = \"veth-ext\"\nexternal = [{}]\ninternal = [\"10.200.1.0/25\"]\nports = \"{ports}\"\ncooldown = \"{cooldown}\"\n",
        list.join(", ")
    )
}

fn get(topo: &Topology, key: &str) -> String {
    let (ok, out, err) = nat(topo, &["get", key]);
    assert!(ok, "nat get {key}: {err}");
    out.trim().to_owned()
}

#[test]
fn ops_config_file_sets_what_the_flags_set_and_flags_win() {
    let topo = Topology::new("ops-cfg", TopologyOpts::default());
    let dir = TempDir::new("cfg");
    let mut text = base(&[EXTERNAL_IP], PORTS, "123s");
    let values = [
        ("cooldown-local-close", "\"7s\"", 7000),
        ("cooldown-rst", "\"8s\"", 8000),
        ("cooldown-udp", "\"9s\"", 9000),
        ("timeout-tcp-established", "\"11m\"", 660_000),
        ("timeout-tcp-transitory", "\"12s\"", 12_000),
        ("timeout-tcp-closed", "\"13s\"", 13_000),
        ("timeout-udp", "\"14s\"", 14_000),
        ("timeout-icmp", "\"15s\"", 15_000),
    ];
    for (key, toml, _) in values {
        text.push_str(&format!("{key} = {toml}\n"));
    }
    text.push_str("cooldown-enabled = false\npolicy = \"strict\"\non-exhaustion = \"reject\"\nmax-sessions = 4096\n");
    let file = dir.file("nat.toml", &text);
    let (ok, out, err) = nat(&topo, &["check-config", path_str(&file)]);
    assert!(ok, "check-config: {err}");
    assert!(out.contains("is valid"), "{out}");

    // The policy flag overrides the file's.
    let _nat = NatProcess::start_load(
        &topo,
        &["--config", path_str(&file), "--policy", "fallback"],
        &[],
    );
    let got = nat_json(&topo, &["get", "--json"]);
    assert_eq!(got["cooldown"], 123_000, "{got}");
    for (key, _, ms) in values {
        assert_eq!(got[key], ms, "{key}: {got}");
    }
    assert_eq!(got["cooldown-enabled"], "off", "{got}");
    assert_eq!(got["policy"], "fallback", "the flag wins: {got}");
    assert_eq!(got["on-exhaustion"], "reject", "{got}");

    // The file's port range and address are the ones in use.
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let results = concurrent_tcp(
        topo.ns_name(Side::Client),
        &[],
        SocketAddrV4::new(SERVER_IP, 8080),
        4,
        256,
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for peer in server.peers() {
        assert_translated(peer);
    }
}

#[test]
fn ops_config_errors_name_the_key_and_its_line() {
    let dir = TempDir::new("cfg-bad");
    let good = base(&[EXTERNAL_IP], PORTS, "10s");
    let cases = [
        ("colddown = \"5s\"\n", "unknown key 'colddown'"),
        ("ports = \"9-1\"\n", "ports: "),
        ("timeout-udp = \"10ms\"\n", "timeout-udp: "),
        ("ingress = \"ebpf\"\n", "ingress: "),
        ("max-sessions = 5\n", "max-sessions: "),
        ("external = [\"10.200.1.9\"]\n", "inside internal prefix"),
    ];
    for (extra, words) in cases {
        // The bad key last; a duplicate key is itself an error, so the good
        // file's own line for it is dropped.
        let key = extra.split(' ').next().unwrap();
        let mut text: String = good
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(extra);
        let line = text.lines().count();
        let file = dir.file("bad.toml", &text);
        let mut commands = vec![vec!["check-config", path_str(&file)]];
        // A value is checked as the file is read; how the addresses relate
        // to each other only once `nat load` has all of them (check-config
        // names the line there too).
        if !words.contains("inside") {
            commands.push(vec!["load", "--config", path_str(&file)]);
        }
        for args in commands {
            let out = Command::new(nat_bin()).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {extra:?}");
            assert_eq!(err.lines().count(), 1, "{args:?} with {extra:?}: {err}");
            let at = format!("{}:{line}: ", file.display());
            assert!(
                err.contains(&at) && err.contains(words),
                "{args:?} with {extra:?}: expected '{at}' and '{words}' in: {err}"
            );
        }
    }
}

/// The external address:port the paced server's peer used, once connected.
fn transfer_peer(server: &PacedServer) -> SocketAddrV4 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = server.received().peer {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the paced transfer did not connect"
        );
        sleep(Duration::from_millis(20));
    }
}

/// Opens `n` connections from all client addresses; returns what the server saw.
fn new_flows(topo: &Topology, port: u16, n: usize) -> Vec<SocketAddrV4> {
    let server = tcp_sink_server(topo.ns_name(Side::Server), port);
    let results = concurrent_tcp(
        topo.ns_name(Side::Client),
        &topo.client_ips(),
        SocketAddrV4::new(SERVER_IP, port),
        n,
        256,
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    server
        .peers()
        .into_iter()
        .map(|p| match p {
            SocketAddr::V4(p) => p,
            SocketAddr::V6(p) => panic!("IPv6 peer {p}"),
        })
        .collect()
}

#[test]
fn ops_reload_applies_cooldown_addresses_and_port_range_during_a_transfer() {
    let topo = Topology::new(
        "ops-reload",
        TopologyOpts {
            client_addrs: 24,
            ..Default::default()
        },
    );
    topo.add_address(Side::Nat, SECOND);
    let dir = TempDir::new("reload");
    let file = dir.file("nat.toml", &base(&[EXTERNAL_IP], PORTS, "100s"));
    let daemon = NatProcess::start_load(&topo, &["--config", path_str(&file)], &[]);
    assert_eq!(get(&topo, "cooldown"), "100000ms");

    // 1.5 MB in 150 pieces over 12 s, through every reload below.
    let server = PacedServer::start(&topo, 9000);
    let transfer = paced_transfer(
        &topo,
        SocketAddrV4::new(SERVER_IP, 9000),
        1_500_000,
        150,
        Duration::from_secs(12),
    );
    let held = transfer_peer(&server);
    assert_translated(SocketAddr::V4(held));
    // A narrower range that leaves the transfer's port out.
    let (lo, hi) = if held.port() < 20500 {
        (20600, 20699)
    } else {
        (20100, 20199)
    };
    let narrow = format!("{lo}-{hi}");

    // SIGHUP: a shorter cooldown, a second address, the narrower range.
    sleep(Duration::from_secs(1));
    std::fs::write(&file, base(&[EXTERNAL_IP, SECOND], &narrow, "5s")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let asked = Instant::now();
    while get(&topo, "cooldown") != "5000ms" {
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "SIGHUP did not apply the cooldown"
        );
        sleep(Duration::from_millis(10));
    }
    println!("SIGHUP applied within {:?}", asked.elapsed());
    let peers = new_flows(&topo, 8080, 48);
    for p in &peers {
        assert!(
            (lo..=hi).contains(&p.port()),
            "a new flow got port {} outside the reloaded range {narrow}: {peers:?}",
            p.port()
        );
    }
    let used: std::collections::HashSet<Ipv4Addr> = peers.iter().map(|p| *p.ip()).collect();
    assert_eq!(
        used,
        [EXTERNAL_IP, SECOND].into(),
        "24 hosts over the two addresses of the reloaded pool: {peers:?}"
    );

    // A file that does not check: `nat reload` refuses in one line naming
    // the key and its line, and nothing changes.
    let bad = format!("{}timeout-udp = \"1ms\"\n", base(&[SECOND], &narrow, "6s"));
    std::fs::write(&file, &bad).unwrap();
    let (ok, _, err) = nat(&topo, &["reload", "--iface", "veth-ext"]);
    assert!(!ok, "nat reload accepted a bad file");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}:7: timeout-udp", file.display())),
        "{err}"
    );
    // The daemon itself refuses it too, when signalled directly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(
        get(&topo, "cooldown"),
        "5000ms",
        "a bad file changed the cooldown"
    );

    // `nat reload`: the first address leaves the pool. New flows go to the
    // second only; the transfer on the first goes on.
    std::fs::write(&file, base(&[SECOND], &narrow, "6s")).unwrap();
    let (ok, out, err) = nat(&topo, &["reload", "--iface", "veth-ext"]);
    assert!(ok, "nat reload: {err}");
    assert!(out.contains("re-reads"), "{out}");
    let asked = Instant::now();
    while get(&topo, "cooldown") != "6000ms" {
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "nat reload did not apply"
        );
        sleep(Duration::from_millis(10));
    }
    let peers = new_flows(&topo, 8081, 24);
    assert!(
        peers
            .iter()
            .all(|p| *p.ip() == SECOND && (lo..=hi).contains(&p.port())),
        "new flows after {EXTERNAL_IP} left the pool: {peers:?}"
    );
    assert!(
        sessions(&topo)
            .iter()
            .any(|s| s["external"] == held.to_string()),
        "the transfer's session on {held} is gone: {:#?}",
        sessions(&topo)
    );

    transfer
        .join()
        .expect("transfer thread")
        .unwrap_or_else(|e| panic!("the transfer across the reloads: {e}"));
    let got = server.received();
    assert_eq!(got.peer, Some(held), "the transfer kept its mapping");
    assert!(
        got.longest_gap < Duration::from_secs(1),
        "the transfer stalled for {:?}",
        got.longest_gap
    );
    let st = stats(&topo);
    assert_eq!(counter(&st, "drop_no_session"), 0, "{st}");
}

/// `nat reload`, and the daemon's line saying what the reload did.
fn reload_line(topo: &Topology, daemon: &NatProcess) -> String {
    let reloads = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l.contains("reload: "))
            .collect()
    };
    let before = reloads(daemon.log()).len();
    let (ok, _, err) = nat(topo, &["reload", "--iface", "veth-ext"]);
    assert!(ok, "nat reload: {err}");
    let asked = Instant::now();
    loop {
        if let Some(line) = reloads(daemon.log()).get(before) {
            return line.clone();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "no reload line within 5 s: {:?}",
            daemon.log()
        );
        sleep(Duration::from_millis(20));
    }
}

/// The fast path follows the routes: a reload re-reads the routing table,
/// takes the fast path (whose TC program also hairpins) off an interface
/// the internal prefixes no longer leave by, and puts it back once the
/// route is back;
/// a reload of the same file says that nothing changed (the defaults the
/// load settled are not mistaken for changed keys).
#[test]
fn ops_reload_moves_the_fast_path_with_the_routes() {
    let topo = Topology::new("ops-fastroute", TopologyOpts::default());
    let dir = TempDir::new("fastroute");
    let file = dir.file("nat.toml", &base(&[EXTERNAL_IP], PORTS, "100s"));
    let daemon = NatProcess::start_load(&topo, &["--config", path_str(&file)], &[]);
    assert!(fast_path_on_internal(&topo), "{:?}", daemon.output());

    let line = reload_line(&topo, &daemon);
    assert!(
        line.contains("reload: nothing changed") && !line.contains("apply only"),
        "{line}"
    );

    let pins = format!(
        "{}/{}/veth-ext",
        nat_common::names::PIN_ROOT,
        topo.ns_name(Side::Nat)
    );
    let pinned = |prefix: &str| {
        std::path::Path::new(&format!(
            "{pins}/{prefix}veth-in_v{}",
            nat_common::names::LAYOUT_VERSION
        ))
        .exists()
    };
    let links = || {
        [
            nat_common::names::LINK_FAST_PREFIX,
            nat_common::names::LINK_HAIRPIN_PREFIX,
        ]
        .map(pinned)
    };
    // The TC fast path hairpins too: no hairpin program of its own.
    assert_eq!(links(), [true, false], "the fast path's link alone pinned");

    topo.route(Side::Nat, "del 10.200.1.0/24 dev veth-in");
    let line = reload_line(&topo, &daemon);
    assert!(line.contains("fast path off veth-in"), "{line}");
    assert!(!fast_path_on_internal(&topo), "{line}");
    assert_eq!(links(), [false, false], "{line}");

    topo.route(Side::Nat, "add 10.200.1.0/24 dev veth-in");
    let line = reload_line(&topo, &daemon);
    assert!(line.contains("fast path now on veth-in"), "{line}");
    assert!(!line.contains("replies cross the stack"), "{line}");
    assert!(fast_path_on_internal(&topo), "{line}");
    assert_eq!(links(), [true, false], "{line}");

    // The fast path it put back translates.
    let before = counter(&stats(&topo), "fast_out");
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    nat_tests::tcp_transfer(
        topo.ns_name(Side::Client),
        Some(nat_tests::CLIENT_IP),
        SocketAddrV4::new(SERVER_IP, 8080),
        200_000,
    )
    .expect("a transfer over the fast path put back");
    assert_translated(server.last_peer().expect("the server saw the connection"));
    assert!(counter(&stats(&topo), "fast_out") > before);
    assert!(daemon.stop().success());
}

/// Lines of the daemon's log from index `from` on, once one of them says
/// what a reload did (its last line).
fn reload_lines(daemon: &NatProcess, from: usize) -> Vec<String> {
    let asked = Instant::now();
    loop {
        let lines: Vec<String> = daemon.log().into_iter().skip(from).collect();
        if lines
            .iter()
            .any(|l| l.contains("reload: settings") || l.contains("reload: nothing changed"))
        {
            return lines;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "no reload line within 5 s: {lines:?}"
        );
        sleep(Duration::from_millis(20));
    }
}

/// A flag on the command line wins over the file's key (also over one it
/// conflicts with), at load and on every reload, and each time one line per
/// key says so; the file's other keys apply as usual.
#[test]
fn ops_command_line_flags_win_over_the_file_at_load_and_on_reload() {
    let topo = Topology::new("ops-override", TopologyOpts::default());
    let dir = TempDir::new("override");
    let file = dir.file(
        "nat.toml",
        &format!(
            "{}no-fast-path = true\n",
            base(&[EXTERNAL_IP], "20000-20099", "100s")
        ),
    );
    let f = path_str(&file);
    let daemon = NatProcess::start_load(
        &topo,
        &[
            "--config",
            f,
            "--ports",
            "20500-20599",
            "--cooldown",
            "100s",
            "--fast-path",
            "veth-in",
        ],
        &[],
    );
    let said: Vec<String> = daemon
        .output()
        .into_iter()
        .filter(|l| l.contains(" overrides "))
        .collect();
    assert_eq!(
        said,
        [
            format!("nat: --ports 20500-20599 overrides ports = \"20000-20099\" from {f}"),
            format!("nat: --fast-path veth-in overrides no-fast-path = true from {f}"),
        ],
        "one line per key set aside (not cooldown: the same value)"
    );
    assert!(fast_path_on_internal(&topo));
    let in_range = |peers: &[SocketAddrV4], what: &str| {
        assert!(
            peers.iter().all(|p| (20500..=20599).contains(&p.port())),
            "{what}: ports outside the command line's 20500-20599: {peers:?}"
        );
    };
    in_range(&new_flows(&topo, 8080, 8), "at load");

    // The file now asks for another range and cooldown, and a setting of
    // its own: that one applies, the command line's keys stay.
    std::fs::write(
        &file,
        format!(
            "{}no-fast-path = true\ncooldown-rst = \"9s\"\n",
            base(&[EXTERNAL_IP], "20100-20199", "50s")
        ),
    )
    .unwrap();
    let from = daemon.log().len();
    let (ok, out, err) = nat(&topo, &["reload", "--iface", "veth-ext"]);
    assert!(ok, "nat reload: {err}");
    let wins = [
        format!("--ports 20500-20599 overrides ports = \"20100-20199\" from {f}"),
        format!("--cooldown 100s overrides cooldown = \"50s\" from {f}"),
        format!("--fast-path veth-in overrides no-fast-path = true from {f}"),
    ];
    for w in &wins {
        assert!(
            out.lines()
                .any(|l| l == format!("nat: {w} (the daemon's command line wins)")),
            "nat reload does not say {w:?}: {out}"
        );
    }
    let lines = reload_lines(&daemon, from);
    for w in &wins {
        assert!(
            lines.iter().any(|l| l.ends_with(&format!("reload: {w}"))),
            "the daemon does not say {w:?}: {lines:#?}"
        );
    }
    let change = lines.last().unwrap();
    assert!(
        change.contains("reload: settings cooldown-rst") && !change.contains("ports"),
        "{change}"
    );
    assert_eq!(get(&topo, "cooldown-rst"), "9000ms");
    assert_eq!(
        get(&topo, "cooldown"),
        "100000ms",
        "the flag's, not the file's"
    );
    assert!(fast_path_on_internal(&topo), "the flag's fast path stays");
    in_range(&new_flows(&topo, 8081, 8), "after the reload");
    assert!(daemon.stop().success());
}
