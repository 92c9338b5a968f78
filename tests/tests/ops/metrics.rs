//! `nat load --metrics`: the scrape is valid Prometheus text (promtool), a
//! real Prometheus server scrapes it and its query API gives the session
//! count `nat stats` shows, and a scrape answers fast with a million sessions.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ops::*;
use aya::maps::{Array, MapData};
use nat_common::{
    config::Config,
    flow::{FlowKey, PROTO_UDP, Session},
    names::{LAYOUT_VERSION, MAP_CONFIG, MAP_FWD, MAP_REV, MAP_SWEEP_STATS, PIN_ROOT},
    sweep::SweepTotal,
};
use nat_tests::serde_json;
use nat_tests::{
    EXT_IFACE, EXTERNAL_IP, NatProcess, SERVER_IP, Side, Topology, TopologyOpts, run_in_ns,
    tcp_sink_server, tcp_transfer, udp_echo_server, udp_roundtrip,
};

const METRICS: &str = "127.0.0.1:9109";

/// The tests of a million sessions each keep both cores of the testbed busy
/// (a daemon sweeping and snapshotting them); at once they would measure
/// each other, so they take turns.
static A_MILLION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn a_million_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    A_MILLION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn metrics_addr() -> SocketAddr {
    METRICS.parse().unwrap()
}

fn scrape(topo: &Topology) -> String {
    let (status, body, _) = http_get(topo.ns_name(Side::Nat), metrics_addr(), "/metrics")
        .unwrap_or_else(|e| panic!("scrape: {e}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits for a scrape whose snapshot part is there and passes `ok`.
fn scrape_until(
    topo: &Topology,
    what: &str,
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = scrape(topo);
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last scrape:\n{body}"
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn ops_scrape_passes_promtool_and_shows_the_datapath() {
    let topo = Topology::new("ops-prom", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--metrics",
            METRICS,
            "--metrics-interval-ms",
            "200",
            "--max-sessions",
            "4096",
        ],
    );
    let _tcp = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    tcp_transfer(
        topo.ns_name(Side::Client),
        None,
        SocketAddrV4::new(SERVER_IP, 8080),
        64 * 1024,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        udp_roundtrip(
            topo.ns_name(Side::Client),
            None,
            SocketAddrV4::new(SERVER_IP, 5353),
            100,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let body = scrape_until(
        &topo,
        "three UDP sessions in the snapshot",
        Duration::from_secs(10),
        |b| sample(b, r#"nat_sessions{protocol="udp",state="udp"}"#) == Some(3.0),
    );

    assert_promtool_accepts(&body);

    let stats = stats(&topo);
    let translated = sample(
        &body,
        r#"nat_datapath_events_total{outcome="translated",reason="out"}"#,
    )
    .unwrap_or_else(|| panic!("no translated_out counter:\n{body}"));
    assert!(translated > 0.0 && translated <= counter(&stats, "translated_out") as f64);
    assert!(
        sample(
            &body,
            r#"nat_datapath_events_total{outcome="event",reason="sessions_opened"}"#
        )
        .is_some_and(|v| v >= 4.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            r#"nat_datapath_events_total{outcome="drop",reason="no_session"}"#
        )
        .is_some(),
        "{body}"
    );
    assert!(
        sample(&body, r#"nat_map_capacity{map="NAT_FWD"}"#) == Some(4096.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"nat_map_entries{map="NAT_POOL"}"#),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, r#"nat_allocation_probes_total{probes="1"}"#).is_some_and(|v| v >= 1.0),
        "{body}"
    );
    let dest = format!(
        r#"nat_destination_ports_in_use{{destination="{SERVER_IP}:5353",external="{EXTERNAL_IP}",protocol="udp"}}"#
    );
    assert_eq!(sample(&body, &dest), Some(3.0), "{body}");
    assert!(
        body.contains("nat_build_info{") && body.contains("nat_sweep_duration_seconds_count"),
        "{body}"
    );
    let (status, _, _) = http_get(topo.ns_name(Side::Nat), metrics_addr(), "/other").unwrap();
    assert_eq!(status, 404);
}

/// A Prometheus server in the nat namespace, with its data in a temp dir;
/// killed on drop.
struct PrometheusServer {
    child: Child,
    _dir: TempDir,
}

impl PrometheusServer {
    fn start(topo: &Topology) -> PrometheusServer {
        let dir = TempDir::new("prometheus");
        let config = dir.file(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: nat\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        );
        let data = dir.0.join("data");
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:9090".to_owned(),
        ];
        // Started from a thread inside the namespace: the child inherits it.
        let child = run_in_ns(topo.ns_name(Side::Nat), move || {
            Command::new("prometheus")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "prometheus runs (Debian package prometheus; cargo xtask setup installs it)",
                )
        });
        PrometheusServer { child, _dir: dir }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ops_prometheus_scrapes_the_session_count_nat_stats_shows() {
    let topo = Topology::new("ops-promsrv", TopologyOpts::default());
    let _nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--metrics",
            METRICS,
            "--metrics-interval-ms",
            "200",
        ],
    );
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    for _ in 0..5 {
        udp_roundtrip(
            topo.ns_name(Side::Client),
            None,
            SocketAddrV4::new(SERVER_IP, 5353),
            64,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let expected = stats(&topo)["sessions"]
        .as_u64()
        .expect("sessions in stats");
    assert_eq!(expected, 5);
    let _prometheus = PrometheusServer::start(&topo);
    let api: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok((200, body, _)) = http_get(
            topo.ns_name(Side::Nat),
            api,
            "/api/v1/query?query=sum(nat_sessions)",
        ) {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(v) = doc["data"]["result"][0]["value"][1].as_str()
                && v.parse::<u64>().ok() == Some(expected)
            {
                break;
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report sum(nat_sessions) = {expected} within 60 s; last answer: {last}"
        );
        sleep(Duration::from_millis(500));
    }
    assert_eq!(stats(&topo)["sessions"].as_u64(), Some(expected));
}

/// Writes all pairs into the pinned map at `path` with BPF_MAP_UPDATE_BATCH.
fn update_batch<K: aya::Pod, V: aya::Pod>(path: &str, pairs: &[(K, V)]) {
    let data = MapData::from_pin(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nat_userspace::datapath::batch::update_all(&data, pairs)
        .unwrap_or_else(|e| panic!("BPF_MAP_UPDATE_BATCH on {path}: {e}"));
}

/// Fills the pinned session maps with `n` UDP sessions last seen at `now`.
fn prefill(topo: &Topology, n: u32, now: u64) {
    let dir = format!("{PIN_ROOT}/{}/{EXT_IFACE}", topo.ns_name(Side::Nat));
    let ext = u32::from(EXTERNAL_IP).to_be();
    let internal = u32::from(Ipv4Addr::new(10, 200, 1, 2)).to_be();
    let (mut fwd, mut rev) = (Vec::new(), Vec::new());
    for i in 0..n {
        // 50 000 ports per remote address, several remotes: all distinct keys.
        let remote = u32::from(Ipv4Addr::new(198, 51, 100, (i / 50_000) as u8 + 1)).to_be();
        let port = ((10_000 + i % 50_000) as u16).to_be();
        let key = FlowKey::new(PROTO_UDP, internal, port, remote, 53u16.to_be());
        let out = Session {
            addr: ext,
            port,
            last_seen: now,
            ..Session::default()
        };
        let back = Session {
            addr: internal,
            ..out
        };
        fwd.push((key, out));
        rev.push((key.translated(ext, port), back));
    }
    let started = Instant::now();
    update_batch(&format!("{dir}/{MAP_FWD}_v{LAYOUT_VERSION}"), &fwd);
    println!("NAT_FWD filled in {:?}", started.elapsed());
    update_batch(&format!("{dir}/{MAP_REV}_v{LAYOUT_VERSION}"), &rev);
}

fn boot_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Runs `nat unload` on drop (after a failed test too).
struct UnloadOnDrop<'a>(&'a Topology);

impl Drop for UnloadOnDrop<'_> {
    fn drop(&mut self) {
        let _ = nat_tests::nat_cmd(self.0, &["unload", "--iface", EXT_IFACE]);
    }
}

#[test]
fn ops_scrapes_answer_within_100ms_with_a_million_sessions() {
    const SESSIONS: u32 = 1_000_000;
    let _turn = a_million_at_a_time();
    let topo = Topology::new("ops-promfast", TopologyOpts::default());
    // Dropped after the daemon: its pins go even if it had to be killed.
    let _pins = UnloadOnDrop(&topo);
    let dir = TempDir::new("promfast");
    let config = |cooldown_ms: u64| {
        format!(
            "iface = \"{EXT_IFACE}\"\nexternal = [\"{EXTERNAL_IP}\"]\ninternal = [\"10.200.1.0/25\"]\nports = \"{PORTS}\"\ncooldown = {cooldown_ms}\n"
        )
    };
    let file = dir.file("nat.toml", &config(100_000));
    let nat = NatProcess::start_load(
        &topo,
        &[
            "--config",
            path_str(&file),
            "--metrics",
            METRICS,
            "--metrics-interval-ms",
            "500",
            "--max-sessions",
            "1100000",
            "--max-cooldowns",
            "1100000",
            "--sweep-interval-ms",
            "1000",
            // Routine sweeps only (one batched read of the million): what
            // this measures is the metrics thread against the snapshot.
            "--timeout-tcp-closed",
            "1h",
            "--timeout-icmp",
            "1h",
            "--timeout-udp",
            "1h",
            "--timeout-tcp-transitory",
            "1h",
        ],
        &[],
    );
    let filled = Instant::now();
    prefill(&topo, SESSIONS, boot_ns());
    assert_eq!(stats(&topo)["sessions"].as_u64(), Some(u64::from(SESSIONS)));
    println!("filled {SESSIONS} sessions in {:?}", filled.elapsed());
    // The snapshot thread reads every session each 500 ms from here on.
    // A debug build of nat reads them in several seconds.
    let body = scrape_until(
        &topo,
        "the million sessions in a snapshot",
        Duration::from_secs(90),
        |b| metric_sum(b, "nat_sessions") >= f64::from(SESSIONS),
    );
    let took = sample(&body, "nat_metrics_snapshot_duration_seconds").unwrap();
    println!("one snapshot of {SESSIONS} sessions took {took:.3} s");
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    for _ in 0..30 {
        let (status, _, t) = http_get(topo.ns_name(Side::Nat), metrics_addr(), "/metrics")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200);
        worst = worst.max(t);
        all.push(t.as_millis());
        sleep(Duration::from_millis(97));
    }
    println!("30 scrapes over ~3 s while snapshots and sweeps ran, ms: {all:?}");
    // The median is what the design promises (< 100 ms); on a machine shared
    // with other builds a single scrape may wait for a CPU, so the worst
    // case is bounded well below what a scrape that read the tables itself
    // would take (the snapshot duration, seconds).
    let mut sorted = all.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < 100,
        "median scrape took {median} ms with {SESSIONS} sessions (all: {all:?} ms)"
    );
    assert!(
        worst < Duration::from_secs(1) && worst.as_secs_f64() < took,
        "a scrape took {worst:?} with {SESSIONS} sessions, a snapshot {took:.3} s (all: {all:?} ms)"
    );

    // SIGHUP is answered on a thread of its own: each reload reaches the
    // config map at once, whatever the daemon's loop (a sweep reading the
    // million sessions every second) and the snapshot thread are doing.
    let cfg_path = format!(
        "{PIN_ROOT}/{}/{EXT_IFACE}/{MAP_CONFIG}_v{LAYOUT_VERSION}",
        topo.ns_name(Side::Nat)
    );
    let cfg: Array<MapData, Config> =
        Array::try_from(aya::maps::Map::Array(MapData::from_pin(&cfg_path).unwrap())).unwrap();
    let mut reloads = Vec::new();
    for i in 1..=10u64 {
        std::fs::write(&file, config(100_000 + i)).unwrap();
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(nat.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        while cfg.get(&0, 0).unwrap().cooldown_ms != 100_000 + i {
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "reload {i} not applied within 5 s"
            );
            sleep(Duration::from_millis(2));
        }
        reloads.push(sent.elapsed().as_millis());
        sleep(Duration::from_millis(150));
    }
    println!("SIGHUP to applied, ms: {reloads:?}");
    // A reload that waited for the daemon's loop or the snapshot thread
    // would take a sweep or a snapshot (seconds, see above) each time; one
    // that waited for a CPU on the shared 2-core testbed takes that once.
    let mut sorted = reloads.clone();
    sorted.sort_unstable();
    let slow = reloads.iter().filter(|&&ms| ms >= 500).count();
    assert!(
        sorted[sorted.len() / 2] < 100 && slow <= 1 && sorted[sorted.len() - 1] < 2000,
        "reloads with {SESSIONS} sessions took {reloads:?} ms"
    );

    // The daemon's own loop, busy sweeping a million sessions, may take
    // longer than the test harness waits to answer SIGTERM: end it at once
    // and remove the pins.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nat.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    drop(nat);
}

/// A total of the expiry sweep so far (the daemon's runs and the timer's).
fn sweep_total(topo: &Topology, total: SweepTotal) -> u64 {
    let path = format!(
        "{PIN_ROOT}/{}/{EXT_IFACE}/{MAP_SWEEP_STATS}_v{LAYOUT_VERSION}",
        topo.ns_name(Side::Nat)
    );
    let map: aya::maps::PerCpuArray<MapData, u64> = aya::maps::PerCpuArray::try_from(
        aya::maps::Map::PerCpuArray(MapData::from_pin(&path).unwrap()),
    )
    .unwrap();
    map.get(&(total as u32), 0).unwrap().iter().sum()
}

/// The sweep runs off the runtime: a SIGTERM that arrives while a million
/// sessions expire ends the daemon after the sweep's current run, not after
/// the whole sweep (about a second of BPF work for a million).
#[test]
fn ops_sigterm_is_answered_while_a_million_sessions_expire() {
    const SESSIONS: u32 = 1_000_000;
    let _turn = a_million_at_a_time();
    let topo = Topology::new("ops-termfast", TopologyOpts::default());
    let mut nat = NatProcess::start(
        &topo,
        &[
            "--max-sessions",
            "1100000",
            "--max-cooldowns",
            "1100000",
            "--timeout-udp",
            "15s",
            "--sweep-interval-ms",
            "200",
        ],
    );
    // Fresh while they are written (seconds for a million); all idle past
    // their timeout together 16 s after, so one sweep has the million to expire.
    let before = sweep_total(&topo, SweepTotal::Expired);
    prefill(&topo, SESSIONS, boot_ns());
    assert_eq!(
        sweep_total(&topo, SweepTotal::Expired),
        before,
        "sessions expired while they were written"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while sweep_total(&topo, SweepTotal::Expired) < before + 30_000 {
        assert!(Instant::now() < deadline, "no session expired within 60 s");
        sleep(Duration::from_millis(1));
    }
    // Timed to the daemon's exit (its process a zombie), not to the end of
    // the harness's reading of its output, which ends only when the pipe's
    // last writer closes it: in the full suite that came about 100 ms later.
    let pid = nix::unistd::Pid::from_raw(nat.pid() as i32);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exited = |pid: nix::unistd::Pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    while !exited(pid) && sent.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_micros(500));
    }
    let took = sent.elapsed();
    let status = nat.stop_daemon(nix::sys::signal::Signal::SIGTERM);
    let expired = sweep_total(&topo, SweepTotal::Expired) - before;
    println!(
        "SIGTERM during an expiring sweep of {SESSIONS} sessions: the daemon exited after {took:?}, {expired} of them expired by then"
    );
    assert!(status.success(), "{status}");
    // The sweep was still under way: the daemon did not wait for it.
    assert!(
        expired < u64::from(SESSIONS) * 3 / 4,
        "the sweep ran (nearly) to its end before the daemon exited: {expired} expired"
    );
    // The issue's bound; about 30 ms here.
    assert!(
        took < Duration::from_millis(100),
        "the daemon took {took:?} to answer SIGTERM during a sweep"
    );
}
