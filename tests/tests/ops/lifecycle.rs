//! Loading, stopping, crashing and unloading: stopping the daemon leaves the
//! datapath translating, `nat unload` (or `--unload-on-exit`) leaves the
//! interface as it was, and pins that cannot be adopted are refused, never
//! discarded.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use nat_common::names::LAYOUT_VERSION;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, NatProcess, OUTSIDE_CLIENT_IP, SERVER_IP, Side, Topology, TopologyOpts,
    nat_cmd, tcp_sink_server, tcp_transfer,
};
use nix::sys::signal::Signal;

/// 10 kB over TCP from the client, which the server must see translated.
fn translated_transfer(topo: &Topology, what: &str) {
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(CLIENT_IP),
        v4(SERVER_IP, 8080),
        10_000,
    )
    .expect(what);
    assert_translated(server.last_peer().unwrap());
}

fn pin_dir(topo: &Topology) -> String {
    format!("/sys/fs/bpf/nat/{}/{EXT_IFACE}", topo.ns_name(Side::Nat))
}

#[test]
fn sigterm_stops_the_daemon_and_keeps_the_datapath() {
    let topo = Topology::new("stop", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let progs = attached_programs(&topo);
    assert_eq!(progs, ["nat_egress", "nat_ingress_tc"], "{progs:?}");
    translated_transfer(&topo, "transfer");
    assert!(nat.stop_daemon(Signal::SIGTERM).success());

    let progs = attached_programs(&topo);
    assert_eq!(
        progs,
        ["nat_egress", "nat_ingress_tc"],
        "still attached: {progs:?}"
    );
    translated_transfer(&topo, "the datapath translates without its daemon");
    assert_eq!(sessions(&topo).len(), 2);
    unload(&topo);
    assert_nothing_left(&topo);
}

#[test]
fn unload_on_exit_detaches_and_unpins() {
    let topo = Topology::new("uoe", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS, "--unload-on-exit"]);
    translated_transfer(&topo, "transfer");
    assert!(nat.stop_daemon(Signal::SIGINT).success());
    assert_nothing_left(&topo);
}

/// The links are pinned, so a killed daemon leaves a working datapath behind;
/// `nat unload` then removes it.
#[test]
fn unload_cleans_up_after_a_killed_daemon() {
    let topo = Topology::new("kill", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    assert!(!nat.stop_daemon(Signal::SIGKILL).success());

    translated_transfer(
        &topo,
        "pinned datapath keeps translating without its daemon",
    );
    assert_eq!(sessions(&topo).len(), 1);

    unload(&topo);
    assert_nothing_left(&topo);
    let again = nat_cmd(&topo, &["unload", "--iface", EXT_IFACE]);
    assert!(again.status.success(), "a second unload is a no-op");
    assert!(String::from_utf8_lossy(&again.stdout).contains("not loaded"));
}

#[test]
fn unload_stops_a_running_daemon() {
    let topo = Topology::new("unl", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    unload(&topo);
    assert!(
        nat.wait_for_exit().success(),
        "the daemon exits cleanly on the SIGTERM unload sends"
    );
    assert_nothing_left(&topo);
}

#[test]
fn a_second_load_on_the_same_interface_is_refused() {
    let topo = Topology::new("twice", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let out = try_load(&topo, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already loaded"), "{err}");
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // The running instance is untouched.
    let progs = attached_programs(&topo);
    assert_eq!(progs, ["nat_egress", "nat_ingress_tc"], "{progs:?}");
}

/// The instance's pins live in the root bpffs, so they outlive its
/// namespace; `nat unload` still removes them.
#[test]
fn unload_removes_the_pins_of_a_deleted_namespace() {
    let topo = Topology::new("gone", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    assert!(nat.stop_daemon(Signal::SIGTERM).success());
    let ns = topo.ns_name(Side::Nat).to_owned();
    assert!(Path::new(&pin_dir(&topo)).exists());
    let deleted = Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .expect("ip netns del");
    assert!(deleted.success());

    let out = nat_cmd(&topo, &["unload", "--iface", EXT_IFACE]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no longer exists"), "{stdout}");
    assert!(
        !Path::new(&format!("/sys/fs/bpf/nat/{ns}")).exists(),
        "pins left behind"
    );
}

/// Pins of another layout version are not adopted (the maps would be
/// misread) nor removed (their sessions would be lost): the load is refused
/// with both versions named, and the datapath keeps running.
#[test]
fn pins_of_another_layout_are_refused_not_discarded() {
    let topo = Topology::new("layout", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    assert!(!nat.stop_daemon(Signal::SIGKILL).success());
    // Renamed in place as an older binary would have named them.
    let old = LAYOUT_VERSION + 7;
    let dir = pin_dir(&topo);
    let current = format!("_v{LAYOUT_VERSION}");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = name.strip_suffix(&current).expect("a versioned pin");
        std::fs::rename(entry.path(), format!("{dir}/{base}_v{old}")).unwrap();
    }
    let pinned = std::fs::read_dir(&dir).unwrap().count();

    let out = try_load(&topo, &["--ports", PORTS]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("layout version {old}"))
            && err.contains(&format!("version {LAYOUT_VERSION}")),
        "{err}"
    );
    assert!(err.contains("nat unload"), "says what to do: {err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), pinned);
    translated_transfer(&topo, "the old datapath still translates");

    unload(&topo);
    assert_nothing_left(&topo);
}

/// What a pinned instance cannot take from a new load is refused with one
/// line saying what to do, and the instance keeps running as it was.
#[test]
fn adoption_refuses_what_it_cannot_keep() {
    let topo = Topology::new("adopt", TopologyOpts::default());
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    translated_transfer(&topo, "transfer");
    assert!(nat.stop_daemon(Signal::SIGTERM).success());
    for (args, expected) in [
        (vec!["--ingress", "xdp"], "--ingress tc"),
        (vec!["--max-sessions", "4096"], "--max-sessions 262144"),
    ] {
        let out = try_load(&topo, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(expected) && err.contains("nat unload"),
            "{args:?}: {err}"
        );
        let progs = attached_programs(&topo);
        assert_eq!(progs, ["nat_egress", "nat_ingress_tc"], "{progs:?}");
        assert_eq!(sessions(&topo).len(), 1, "the session is kept");
    }
}

/// The peer the server sees for a transfer from `src`.
fn peer_of(topo: &Topology, src: std::net::Ipv4Addr) -> std::net::SocketAddr {
    let server = tcp_sink_server(topo.ns_name(Side::Server), 8080);
    tcp_transfer(
        topo.ns_name(Side::Client),
        Some(src),
        v4(SERVER_IP, 8080),
        10_000,
    )
    .expect("transfer");
    server.last_peer().expect("server saw the connection")
}

/// An adopting load applies its own prefixes: one given anew starts being
/// translated, one no longer given stops.
#[test]
fn adoption_applies_the_new_prefixes() {
    let topo = Topology::new("prefix", TopologyOpts::default());
    let outside = std::net::IpAddr::V4(OUTSIDE_CLIENT_IP);
    let mut first = NatProcess::start(&topo, &["--ports", PORTS]);
    assert_eq!(peer_of(&topo, OUTSIDE_CLIENT_IP).ip(), outside);
    assert!(first.stop_daemon(Signal::SIGTERM).success());

    // Added to the topology's 10.200.1.0/25.
    let mut wider = NatProcess::start(&topo, &["--ports", PORTS, "--internal", "10.200.1.0/24"]);
    assert_translated(peer_of(&topo, OUTSIDE_CLIENT_IP));
    assert!(wider.stop_daemon(Signal::SIGTERM).success());

    let _narrow = NatProcess::start(&topo, &["--ports", PORTS]);
    assert_eq!(
        peer_of(&topo, OUTSIDE_CLIENT_IP).ip(),
        outside,
        "the prefix no longer given was removed"
    );
}

/// What the instance's pin directory holds, by name (nothing when absent).
fn pinned_names(topo: &Topology) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pin_dir(topo))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A listener on `addr` in the nat namespace, so that a load's `--metrics`
/// on it fails: the last step of a load, after everything is pinned.
fn occupy(topo: &Topology, addr: &'static str) -> std::net::TcpListener {
    nat_tests::run_in_ns(topo.ns_name(Side::Nat), move || {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    })
}

/// `nat load` with `extra`, which must fail naming `words`.
fn failed_load(topo: &Topology, extra: &[&str], words: &str) {
    let out = try_load(topo, extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} loaded");
    assert!(err.contains(words), "{extra:?}: {err}");
}

/// A load that fails after it pinned something removes exactly what it
/// pinned: a new instance leaves no trace, an adopted one is left with what
/// it had (and keeps translating), whether the load failed at its last step
/// (a metrics address in use) or at an attach the kernel refused.
#[test]
fn a_failed_load_removes_what_it_pinned_and_nothing_else() {
    let topo = Topology::new("failpin", TopologyOpts::default());
    let ns_dir = format!("/sys/fs/bpf/nat/{}", topo.ns_name(Side::Nat));
    let pid_file = format!("/run/nat/{}.{EXT_IFACE}.pid", topo.ns_name(Side::Nat));
    let _busy = occupy(&topo, "127.0.0.1:9911");
    let metrics = ["--ports", PORTS, "--metrics", "127.0.0.1:9911"];

    failed_load(&topo, &metrics, "127.0.0.1:9911");
    assert!(
        !Path::new(&ns_dir).exists(),
        "a new instance's failed load left {ns_dir}: {:?}",
        pinned_names(&topo)
    );
    assert_nothing_left(&topo);
    assert!(!fast_path_on_internal(&topo), "fast path left on veth-in");
    assert!(!Path::new(&pid_file).exists(), "pid file left: {pid_file}");

    // Adopted, without a fast path: the failing load puts one (and
    // hairpinning) on veth-in, pins their links, then fails.
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS, "--no-fast-path"]);
    translated_transfer(&topo, "before the failed load");
    assert!(nat.stop_daemon(Signal::SIGTERM).success());
    let before = pinned_names(&topo);
    assert!(!before.is_empty());
    failed_load(&topo, &metrics, "127.0.0.1:9911");
    assert_eq!(pinned_names(&topo), before, "the adopted instance's pins");
    assert!(!fast_path_on_internal(&topo), "fast path left on veth-in");
    assert_eq!(
        attached_programs(&topo),
        ["nat_egress", "nat_ingress_tc"],
        "the adopted instance stays attached"
    );
    translated_transfer(&topo, "the adopted instance after the failed load");
    assert_eq!(sessions(&topo).len(), 2, "its sessions are kept");
    assert!(!Path::new(&pid_file).exists(), "pid file left: {pid_file}");
    unload(&topo);

    // An attach the kernel refuses: a bridge has no native XDP. The fast
    // path's link on veth-in, attached just before, goes again.
    let mut nat = NatProcess::start(
        &topo,
        &[
            "--ports",
            PORTS,
            "--ingress",
            "xdp",
            "--xdp-mode",
            "native",
            "--no-fast-path",
        ],
    );
    assert!(nat.stop_daemon(Signal::SIGTERM).success());
    let before = pinned_names(&topo);
    Command::new("ip")
        .args([
            "-n",
            topo.ns_name(Side::Nat),
            "link",
            "add",
            "br-x",
            "type",
            "bridge",
        ])
        .status()
        .expect("ip runs");
    let refused = [
        "--ports",
        PORTS,
        "--ingress",
        "xdp",
        "--xdp-mode",
        "native",
        "--fast-path",
        "veth-in,br-x",
    ];
    failed_load(&topo, &refused, "native XDP attach to br-x failed");
    assert_eq!(pinned_names(&topo), before, "the adopted instance's pins");
    assert!(!xdp_attached(&topo, "veth-in"), "fast path left on veth-in");
    assert_eq!(attached_programs(&topo), ["nat_egress", "xdp"]);
    unload(&topo);
    assert_nothing_left(&topo);
}

/// A process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Killed {
    fn running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the instance's pid file as a daemon would have, dated `written`.
fn write_pid_file(topo: &Topology, text: &str, written: std::time::SystemTime) {
    let path = format!("/run/nat/{}.{EXT_IFACE}.pid", topo.ns_name(Side::Nat));
    std::fs::create_dir_all("/run/nat").expect("mkdir /run/nat");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(written))
        .unwrap_or_else(|e| panic!("date {path}: {e}"));
}

/// A pid file whose daemon is gone and whose pid went to another process
/// that looks like one (`nat load --config` on its command line, as under
/// the unit) never gets that process signalled, in this version's format
/// (a start time that is not the process's) or an old version's (the pid
/// alone, written before the process started); a file of the old format
/// that names a running daemon still counts.
#[test]
fn a_pid_that_went_to_another_process_is_never_signalled() {
    use std::time::{Duration, SystemTime};
    let topo = Topology::new("pidreuse", TopologyOpts::default());
    let mut other = Killed(
        Command::new("sh")
            .args([
                "-c",
                "sleep 60; :",
                "nat",
                "load",
                "--config",
                "/etc/nat/veth-ext.toml",
            ])
            .args(["--iface", EXT_IFACE])
            .spawn()
            .expect("sh runs"),
    );
    let pid = other.0.id();
    // The spawn returns while exec is still setting up the command line.
    let cmdline = format!("/proc/{pid}/cmdline");
    while !std::fs::read(&cmdline).is_ok_and(|c| c.windows(4).any(|w| w == b"load")) {
        sleep_a_little();
    }
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (text, written) in [
        (format!("{pid}\n"), an_hour_ago),
        (format!("{pid} 1\n"), SystemTime::now()),
    ] {
        write_pid_file(&topo, &text, written);
        let out = nat_cmd(&topo, &["unload", "--iface", EXT_IFACE]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("not loaded"),
            "{text:?}: {said}"
        );
        sleep_a_little();
        assert!(other.running(), "{text:?}: nat unload signalled pid {pid}");
        write_pid_file(&topo, &text, written);
        let out = nat_cmd(&topo, &["reload", "--iface", EXT_IFACE]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("no `nat load` is running"),
            "{text:?}: {err}"
        );
        assert!(other.running(), "{text:?}: nat reload signalled pid {pid}");
    }
    // Nor does it stand in the way of a load.
    write_pid_file(&topo, &format!("{pid}\n"), an_hour_ago);
    let mut nat = NatProcess::start(&topo, &["--ports", PORTS]);
    assert!(other.running());

    // An old version's file naming a daemon that runs: still found.
    write_pid_file(&topo, &format!("{}\n", nat.pid()), SystemTime::now());
    let out = try_load(&topo, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already loaded"),
        "{err}"
    );
    unload(&topo);
    assert!(nat.wait_for_exit().success(), "unload stopped the daemon");
    assert_nothing_left(&topo);
    assert!(other.running());
}

/// Long enough for a signal sent to have been delivered and acted on.
fn sleep_a_little() {
    std::thread::sleep(std::time::Duration::from_millis(200));
}
