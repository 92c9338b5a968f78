//! systemd readiness: READY=1 reaches NOTIFY_SOCKET once the programs are
//! attached, not before, and a reload is bracketed by RELOADING=1 and READY=1.
//! The shipped unit: its exposure rating, and its capabilities being enough.

use nat_common::names::{LAYOUT_VERSION, LINK_EGRESS, LINK_INGRESS};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::common::*;
use crate::ops::*;
use nat_tests::{EXTERNAL_IP, NatProcess, Topology, TopologyOpts};

#[test]
fn ops_ready_reaches_notify_socket_after_attach_and_not_before() {
    let topo = Topology::new("ops-notify", TopologyOpts::default());
    let dir = TempDir::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = dir.file(
        "nat.toml",
        &format!(
            "iface = \"veth-ext\"\nexternal = [\"{EXTERNAL_IP}\"]\ninternal = [\"10.200.1.0/25\"]\nports = \"{PORTS}\"\n"
        ),
    );

    // What the programs on the interface were the moment READY arrived.
    let (tx, rx) = mpsc::channel();
    let listener = {
        let socket = socket.try_clone().unwrap();
        let names = Topology::namespace_names("ops-notify");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let n = socket.recv(&mut buf).expect("a notification within 30 s");
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ns = names[1].clone();
            // The loader pins each link once its program is attached.
            let dir = format!("/sys/fs/bpf/nat/{ns}/veth-ext");
            let link = |name: &str| {
                std::path::Path::new(&format!("{dir}/{name}_v{LAYOUT_VERSION}")).exists()
            };
            let attached = link(LINK_EGRESS) && link(LINK_INGRESS);
            let pinned = std::path::Path::new(&dir).exists();
            tx.send((msg, attached, pinned)).unwrap();
        })
    };
    let notify = socket_path.to_str().unwrap().to_owned();
    let daemon = NatProcess::start_load(
        &topo,
        &["--config", path_str(&config)],
        &[("NOTIFY_SOCKET", &notify)],
    );
    let (msg, attached, pinned) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("READY within 30 s");
    listener.join().unwrap();
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "the first notification is not READY=1: {msg:?}"
    );
    assert!(
        attached && pinned,
        "READY=1 arrived before the datapath was attached (links pinned: {attached}, pins: {pinned})"
    );
    assert!(
        attached_programs(&topo).len() == 2,
        "{:?}",
        attached_programs(&topo)
    );

    // A reload: RELOADING=1 first, READY=1 once applied.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "READY=1"))
    {
        let n = socket
            .recv(&mut buf)
            .expect("notifications around the reload");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen[0].lines().any(|l| l == "RELOADING=1"),
        "the reload did not start with RELOADING=1: {seen:?}"
    );
    drop(daemon);
}

/// The shipped unit, as `cargo xtask install` installs it.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/nat@.service");

/// The values of every `KEY=` line of the unit's [Service] section, in order.
fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("read {UNIT}: {e}"));
    let prefix = format!("{key}=");
    text.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| !l.starts_with('[') || l.trim() == "[Service]")
        .filter_map(|l| l.trim().strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// The capabilities a unit key grants, e.g. `["bpf", "net_admin"]`.
fn unit_capabilities(key: &str) -> Vec<String> {
    let caps: Vec<String> = unit_values(key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|c| {
            assert!(
                !c.starts_with('~'),
                "{key}: the test reads lists, not ~ exclusions: {c}"
            );
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{key}: {c} is not a capability"))
                .to_lowercase()
        })
        .collect();
    assert!(!caps.is_empty(), "{UNIT} sets no {key}=");
    caps
}

/// Bit numbers of the capabilities the unit may name (linux/capability.h).
fn capability_bit(name: &str) -> u32 {
    match name {
        "net_bind_service" => 10,
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("no bit known for CAP_{}: add it", other.to_uppercase()),
    }
}

/// `systemd-analyze security --offline=true` rates the shipped unit, and its
/// exposure stays below 5.0 (9.6 "UNSAFE" without the hardening).
#[test]
fn ops_unit_exposure_is_below_5() {
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=true", UNIT])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: systemd-analyze is not installed (package systemd; `cargo xtask setup` installs it)"
            );
            return;
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ")
                .nth(1)?
                .split(": ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in the output of systemd-analyze (--offline needs systemd 252+): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("{UNIT}: exposure {level}");
    assert!(level < 5.0, "exposure {level} is not below 5.0:\n{text}");
}

/// A `nat` run as the unit runs it: root's uid with exactly the unit's
/// capabilities (bounding, ambient, no new privileges), in the nat
/// namespace entered beforehand (`--netns` would need CAP_SYS_ADMIN).
struct UnitCaps {
    ns: String,
    bound: Vec<String>,
    ambient: Vec<String>,
}

impl UnitCaps {
    fn command(&self, args: &[&str]) -> Command {
        let set = |caps: &[String]| {
            let mut s = "-all".to_owned();
            for c in caps {
                s.push_str(&format!(",+{c}"));
            }
            s
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("--")
            .arg("setpriv")
            .arg(format!("--inh-caps={}", set(&self.ambient)))
            .arg(format!("--ambient-caps={}", set(&self.ambient)))
            .arg(format!("--bounding-set={}", set(&self.bound)));
        if unit_values("NoNewPrivileges").iter().any(|v| v == "yes") {
            cmd.arg("--no-new-privs");
        }
        cmd.arg("--").arg(nat_tests::nat_bin()).args(args);
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs a `nat` command to its end: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("nsenter runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The daemon started under [`UnitCaps`]; killed and unloaded (with every
/// capability) on drop, whichever way the test ends.
struct UnitDaemon {
    child: Option<std::process::Child>,
    ns: String,
    iface: String,
}

impl Drop for UnitDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("--")
            .arg(nat_tests::nat_bin())
            .args(["unload", "--iface", &self.iface])
            .output();
    }
}

/// `nat load` as the unit's ExecStart= runs it, a reload (`nat reload` and
/// SIGHUP, as ExecReload= sends), a metrics scrape, `nat sessions`, `nat
/// set` and `nat unload` all work with exactly the capabilities the unit
/// grants (read from dist/nat@.service, so test and unit cannot drift),
/// and traffic is translated meanwhile.
#[test]
fn ops_the_units_capabilities_are_enough() {
    use std::io::BufRead as _;
    use std::net::{SocketAddr, SocketAddrV4};

    let topo = Topology::new("ops-caps", TopologyOpts::default());
    let ns = topo.ns_name(nat_tests::Side::Nat).to_owned();
    // Without --netns the pins go to the root scope, named after the
    // interface: a name of its own keeps other runs' pins apart.
    let iface = format!("nx{}", std::process::id() % 1_000_000);
    for args in [
        vec!["link", "set", "veth-ext", "down"],
        vec!["link", "set", "veth-ext", "name", &iface],
        vec!["link", "set", &iface, "up"],
    ] {
        let out = Command::new("ip")
            .args(["-n", &ns])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let caps = UnitCaps {
        ns: ns.clone(),
        bound: unit_capabilities("CapabilityBoundingSet"),
        ambient: unit_capabilities("AmbientCapabilities"),
    };
    let dir = TempDir::new("caps");
    let metrics = "127.0.0.1:9113";
    let config = dir.file(
        "nat.toml",
        &format!(
            "iface = \"{iface}\"\nexternal = [\"{EXTERNAL_IP}\"]\ninternal = [\"10.200.1.0/25\"]\nports = \"{PORTS}\"\ncooldown = \"100s\"\nmetrics = \"{metrics}\"\non-exhaustion = \"reject\"\n"
        ),
    );

    // ExecStart=, with this build, this file and this interface.
    let exec_start = unit_values("ExecStart");
    let [exec_start] = exec_start.as_slice() else {
        panic!("one ExecStart= expected: {exec_start:?}");
    };
    let mut words = exec_start.split_whitespace();
    assert!(
        words.next().is_some_and(|w| w.ends_with("/nat")),
        "{exec_start}"
    );
    let args: Vec<String> = words
        .map(|w| match w {
            "/etc/nat/%i.toml" => path_str(&config).to_owned(),
            "%i" => iface.clone(),
            w => w.to_owned(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = caps
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nsenter runs");
    let stdout = child.stdout.take().unwrap();
    let mut daemon = UnitDaemon {
        child: Some(child),
        ns: ns.clone(),
        iface: iface.clone(),
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("[nat] {line}");
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("nat: attached") => break,
            Ok(_) => {}
            Err(e) => panic!("no `nat: attached` under the unit's capabilities: {e}"),
        }
    }

    // The process holds exactly those capabilities.
    let pid = daemon.child.as_ref().unwrap().id();
    let want: u64 = caps.bound.iter().map(|c| 1u64 << capability_bit(c)).sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        let have = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        assert_eq!(have, want, "{field} {have:#x}, the unit's set is {want:#x}");
    }

    // Translated traffic, and the session it left.
    let server = nat_tests::tcp_sink_server(topo.ns_name(nat_tests::Side::Server), 8080);
    nat_tests::tcp_transfer(
        topo.ns_name(nat_tests::Side::Client),
        Some(nat_tests::CLIENT_IP),
        SocketAddrV4::new(nat_tests::SERVER_IP, 8080),
        100_000,
    )
    .expect("a transfer through the NAT");
    let peer = server.last_peer().expect("the server saw the connection");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL_IP), "translated");
    let (ok, out, err) = caps.run(&["sessions", "--json"]);
    assert!(ok, "nat sessions: {err}");
    assert!(out.contains(&peer.to_string()), "{peer} not in: {out}");

    // Reloads: `nat reload`, then SIGHUP as ExecReload= sends it.
    let get = |key: &str| {
        let (ok, out, err) = caps.run(&["get", key]);
        assert!(ok, "nat get {key}: {err}");
        out.trim().to_owned()
    };
    let applied = |key: &str, value: &str| {
        let asked = std::time::Instant::now();
        while get(key) != value {
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{key} never became {value}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("100s", "42s"),
    )
    .unwrap();
    let (ok, out, err) = caps.run(&["reload", "--iface", &iface]);
    assert!(ok && out.contains("re-reads"), "nat reload: {out}{err}");
    applied("cooldown", "42000ms");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("42s", "43s"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    applied("cooldown", "43000ms");

    // Metrics and a live setting.
    let addr: SocketAddr = metrics.parse().unwrap();
    let (status, body, _) = http_get(&ns, addr, "/metrics").expect("a metrics scrape");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("nat_datapath_events_total{"), "{body}");
    let (ok, _, err) = caps.run(&["set", "cooldown", "30s"]);
    assert!(ok, "nat set: {err}");
    assert_eq!(get("cooldown"), "30000ms");

    // `nat unload` stops the daemon and removes everything.
    let (ok, out, err) = caps.run(&["unload", "--iface", &iface]);
    assert!(ok, "nat unload: {out}{err}");
    let status = daemon.child.take().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "the daemon's exit after nat unload: {status}"
    );
    let pins = format!("/sys/fs/bpf/nat/{iface}");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} left behind");
}
