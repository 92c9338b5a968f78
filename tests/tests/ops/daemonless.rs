//! With the daemon killed (kill -9: its pins and links stay, the datapath
//! keeps running), the kernel sweep's timer keeps expiring sessions, ending
//! cooldowns and removing orphaned reverse entries, and the cooldown rule
//! still holds.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::closing::*;
use crate::common::*;
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use nat_common::{
    flow::{FlowKey, Session},
    names::{LAYOUT_VERSION, MAP_COOLDOWN, MAP_FWD, MAP_REV, MAP_SWEEP_STATS, PIN_ROOT},
    sweep::{SWEEP_TOTALS, SweepTotal},
};
use nat_tests::{
    CLIENT_IP, EXT_IFACE, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, udp_echo_server,
    udp_exchange, udp_roundtrip,
};
use nix::sys::signal::Signal;

/// SIGKILL: nothing of the daemon's shutdown runs. The instance stays
/// until `nat` is dropped at the end of the test, which unloads it.
fn kill_daemon(nat: &mut NatProcess) {
    nat.stop_daemon(Signal::SIGKILL);
}

fn pin(topo: &Topology, name: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT)
        .join(topo.ns_name(Side::Nat))
        .join(EXT_IFACE)
        .join(format!("{name}_v{LAYOUT_VERSION}"))
}

fn open_map(topo: &Topology, name: &str) -> Map {
    let path = pin(topo, name);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("cannot open pinned map {}: {e}", path.display()));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sessions_map(topo: &Topology, name: &str) -> HashMap<MapData, FlowKey, Session> {
    open_map(topo, name).try_into().expect("a session hash map")
}

/// Every cooldown entry, ended ones included (`nat cooldowns` hides those).
fn cooldown_entries(topo: &Topology) -> usize {
    let map: HashMap<MapData, FlowKey, u64> = open_map(topo, MAP_COOLDOWN)
        .try_into()
        .expect("the cooldown map");
    map.keys().count()
}

/// The sweep's running totals, summed over CPUs, indexed by [`SweepTotal`].
fn sweep_totals(topo: &Topology) -> Vec<u64> {
    let map: PerCpuArray<MapData, u64> = open_map(topo, MAP_SWEEP_STATS)
        .try_into()
        .expect("the sweep stats map");
    (0..SWEEP_TOTALS)
        .map(|i| map.get(&i, 0).expect("read the sweep totals").iter().sum())
        .collect()
}

fn timer_runs(topo: &Topology) -> u64 {
    sweep_totals(topo)[SweepTotal::TimerRuns as usize]
}

fn start(topo: &Topology, extra: &[&str]) -> NatProcess {
    let mut args = vec!["--sweep-interval-ms", "100"];
    args.extend_from_slice(extra);
    NatProcess::start(topo, &args)
}

#[test]
fn udp_session_expires_and_frees_its_port_without_daemon() {
    let topo = Topology::new(
        "dl-udp",
        TopologyOpts {
            client_addrs: 2,
            ..TopologyOpts::default()
        },
    );
    // One port: a second flow toward the server gets it only once the first is gone.
    let mut nat = start(&topo, &["--ports", "20000-20000", "--timeout-udp", "1s"]);
    let server = udp_echo_server(topo.ns_name(Side::Server), 5353);
    kill_daemon(&mut nat);

    let ips = topo.client_ips();
    let sent = Instant::now();
    udp_roundtrip(
        topo.ns_name(Side::Client),
        Some(ips[0]),
        v4(SERVER_IP, 5353),
        64,
    )
    .expect("a round trip through the NAT with its daemon killed");
    assert_eq!(
        assert_translated(server.last_peer().expect("server saw it")).port(),
        20000
    );
    assert_eq!(sessions(&topo).len(), 1);

    sleep(Duration::from_millis(700));
    assert_eq!(sessions(&topo).len(), 1, "expired before its 1 s timeout");
    // 1 s timeout, 1 s touch slack, then the timer's 100 ms interval.
    let gone = wait_until_swept(&topo, Duration::from_secs(5));
    assert!(gone - sent >= Duration::from_secs(1));
    assert!(
        timer_runs(&topo) > 0,
        "the sessions went, but not by the timer"
    );

    udp_roundtrip(
        topo.ns_name(Side::Client),
        Some(ips[1]),
        v4(SERVER_IP, 5353),
        64,
    )
    .expect("a new flow takes the freed port");
    let peer = assert_translated(server.last_peer().expect("server saw it"));
    assert_eq!(*peer.ip(), nat_tests::EXTERNAL_IP);
    assert_eq!(peer.port(), 20000);
    let list = sessions(&topo);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(
        list[0]["internal"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{}:", ips[1]))),
        "{list:#?}"
    );
}

#[test]
fn server_first_close_cools_without_daemon() {
    let topo = Topology::new("dl-cool", TopologyOpts::default());
    let mut nat = start(
        &topo,
        &[
            "--ports",
            "20000-20000",
            "--policy",
            "strict",
            "--cooldown",
            "3s",
            "--timeout-tcp-closed",
            "500ms",
        ],
    );
    let _server = CloseServer::start(&topo, 80);
    kill_daemon(&mut nat);

    let c = quick_close(&topo, 80, Close::ServerFirst);
    assert_eq!(c.external.port(), 20000);
    // The closed session goes after 500 ms and the 1 s slack; its key cools on.
    wait_until_swept(&topo, Duration::from_secs(4));
    let left = left_ms(&cooldowns(&topo), "tcp", c.external, 80)
        .unwrap_or_else(|| panic!("{} is not cooling: {:#?}", c.external, cooldowns(&topo)));
    assert!(left <= 3000, "{left} ms left of a 3 s cooldown");

    // Until the cooldown ends, the only port is not handed out again.
    let until = c.closed_at + Duration::from_secs(3);
    let wait = until
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_millis(300));
    assert!(
        wait >= Duration::from_millis(500),
        "too slow to test: only {wait:?} of the cooldown left"
    );
    assert_blocked(&topo, 80, wait, "its only port is cooling");

    // The timer removes the ended cooldown (no new flow needed for that).
    let ended = wait_for("the ended cooldown removed", Duration::from_secs(3), || {
        (cooldown_entries(&topo) == 0).then(Instant::now)
    });
    assert!(
        ended + Duration::from_millis(50) >= until,
        "the cooldown went {:?} early",
        until - ended
    );
    let again = open_and_close(&topo, 80, Close::ClientFirst);
    assert_eq!(again.external, c.external);
}

#[test]
fn more_flows_than_the_table_holds_over_time_without_daemon() {
    const FLOWS: usize = 2200;
    let topo = Topology::new("dl-churn", TopologyOpts::default());
    // 1024 sessions, 1000 ports toward the one server: 2200 flows fit only
    // if expired ones are reclaimed as the run goes.
    let mut nat = start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--max-sessions",
            "1024",
            "--max-cooldowns",
            "1024",
            "--timeout-udp",
            "1s",
        ],
    );
    let _server = udp_echo_server(topo.ns_name(Side::Server), 5353);
    kill_daemon(&mut nat);

    let started = Instant::now();
    let mut peak = 0;
    for i in 0..FLOWS {
        // About 200 new flows a second: some 450 live at a time.
        let due = started + Duration::from_millis(5 * i as u64);
        sleep(due.saturating_duration_since(Instant::now()));
        udp_exchange(
            topo.ns_name(Side::Client),
            Some(CLIENT_IP),
            v4(SERVER_IP, 5353),
            16,
        )
        .unwrap_or_else(|e| {
            panic!(
                "flow {i}: {e}\nsweep: {:?}\nstats: {:#}",
                sweep_totals(&topo),
                stats(&topo)
            )
        });
        if i % 200 == 0 {
            peak = peak.max(sessions_map(&topo, MAP_FWD).keys().count());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{i} flows in a minute: too slow"
        );
    }
    let st = stats(&topo);
    assert_eq!(counter(&st, "drop_alloc_failed"), 0, "{st}");
    assert!(
        counter(&st, "sessions_opened") > 2 * 1024,
        "fewer flows opened than the test needs: {st}"
    );
    assert!(peak < 1024, "the table reached {peak} sessions");
    wait_until_swept(&topo, Duration::from_secs(5));
}

#[test]
fn orphaned_reverse_entry_is_swept_without_daemon() {
    let topo = Topology::new("dl-orphan", TopologyOpts::default());
    // Short timeouts everywhere but UDP's, so the orphan is old enough to
    // be looked at within seconds while its session would not expire.
    let mut nat = start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--timeout-udp",
            "60s",
            "--timeout-tcp-closed",
            "1s",
            "--timeout-tcp-transitory",
            "1s",
            "--timeout-icmp",
            "1s",
            "--cooldown-udp",
            "30s",
        ],
    );
    let server = udp_echo_server(topo.ns_name(Side::Server), 5353);
    kill_daemon(&mut nat);

    udp_roundtrip(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 5353),
        64,
    )
    .expect("round trip");
    let external = assert_translated(server.last_peer().expect("server saw it"));
    // What a sweep stopped between its two deletes leaves behind.
    let mut fwd = sessions_map(&topo, MAP_FWD);
    let keys: Vec<FlowKey> = fwd.keys().map(|k| k.expect("forward key")).collect();
    assert_eq!(keys.len(), 1);
    fwd.remove(&keys[0]).expect("delete the forward entry");
    let orphaned = Instant::now();
    let rev = sessions_map(&topo, MAP_REV);
    assert_eq!(rev.keys().count(), 1, "the reverse entry is there");

    let gone = wait_for("the orphan removed", Duration::from_secs(20), || {
        (rev.keys().count() == 0).then(Instant::now)
    });
    let left = left_ms(&cooldowns(&topo), "udp", external, 5353).unwrap_or_else(|| {
        panic!(
            "the orphan's key {external} was freed without cooling: {:#?}",
            cooldowns(&topo)
        )
    });
    assert!(left > 20_000, "{left} ms left of a 30 s cooldown");
    println!(
        "orphan removed {:?} after its forward entry",
        gone - orphaned
    );
}
