//! A narrated run of the NAT on the namespace testbed: first what it does
//! (translation, sessions, counters), then why it exists (TIME_WAIT
//! collisions, with cooldown off and on).

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use nat_tests::{
    CLIENT_IFACE, EXT_IFACE, EXTERNAL_IP, INT_IFACE, INTERNAL_PREFIX, NAT_INTERNAL_IP, NatProcess,
    OUTSIDE_CLIENT_IP, SERVER_IFACE, SERVER_IP, ServerHandle, Side, Topology, TopologyOpts,
    in_internal_prefix, interrupt, nat_cmd, tcp_exchange, tcp_sink_server, udp_echo_server,
    udp_exchange,
};

use crate::build_nat;

mod time_wait;

const TAG: &str = "demo";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const PIN_ROOT: &str = "/sys/fs/bpf/nat";

enum Traffic {
    Tcp { bytes: usize },
    Udp { bytes: usize },
}

struct Step {
    traffic: Traffic,
    from: Ipv4Addr,
}

pub fn run() -> Result<()> {
    let nat_bin = build_nat::build(false)?.nat;
    // SAFETY: nothing but this thread exists yet (no handler, servers or
    // readers have been started), so nobody can read the environment concurrently.
    unsafe {
        std::env::set_var("NAT_BIN", &nat_bin);
        // The daemon's info log (a line per sweep) would bury the story.
        std::env::set_var("RUST_LOG", "warn");
    }
    interrupt::install("demo", TAG)?;
    // Caught so that, after a signal, the cleanup thread and not a panic
    // decides how the process ends.
    let outcome = panic::catch_unwind(|| narrate(&nat_bin));
    interrupt::defer_to_cleanup();
    outcome.unwrap_or_else(|panic| panic::resume_unwind(panic))
}

fn narrate(nat_bin: &Path) -> Result<()> {
    let topology = {
        let _setup = interrupt::namespace_setup();
        Topology::new(
            TAG,
            TopologyOpts {
                offloads: true,
                ..TopologyOpts::default()
            },
        )
    };
    describe_topology(&topology);

    println!(
        "\ndemo: starting {} in {}",
        nat_bin.display(),
        topology.ns_name(Side::Nat)
    );
    let nat = NatProcess::start(&topology, &[]);
    let server_ns = topology.ns_name(Side::Server);
    let tcp = tcp_sink_server(server_ns, TCP_PORT);
    let udp = udp_echo_server(server_ns, UDP_PORT);
    println!(
        "demo: server listens on TCP {SERVER_IP}:{TCP_PORT} (sink, replies length + hash) and UDP {SERVER_IP}:{UDP_PORT} (echo)\n"
    );

    let [first, second, third, ..] = topology.client_ips()[..] else {
        unreachable!("the default topology has 8 client addresses");
    };
    let steps = [
        Step {
            traffic: Traffic::Tcp { bytes: 1 << 20 },
            from: first,
        },
        Step {
            traffic: Traffic::Tcp { bytes: 64 << 10 },
            from: second,
        },
        Step {
            traffic: Traffic::Udp { bytes: 512 },
            from: first,
        },
        Step {
            traffic: Traffic::Udp { bytes: 512 },
            from: third,
        },
        Step {
            traffic: Traffic::Tcp { bytes: 64 << 10 },
            from: OUTSIDE_CLIENT_IP,
        },
    ];
    let mut failures = 0;
    for (number, step) in steps.iter().enumerate() {
        if !run_step(number + 1, step, &topology, &tcp, &udp) {
            failures += 1;
        }
    }

    for (title, args) in [("sessions", ["sessions"]), ("stats", ["stats"])] {
        println!("\n$ nat --netns {} {title}", topology.ns_name(Side::Nat));
        let output = nat_cmd(&topology, &args);
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            println!(
                "demo: `nat {title}` FAILED ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            failures += 1;
        }
    }

    drop(tcp);
    drop(udp);
    failures += stop(nat);

    failures += time_wait::tell(&topology);

    match leftovers(topology.ns_name(Side::Nat)) {
        pins if pins.is_empty() => println!(
            "demo: no pins remain under {PIN_ROOT}/{}",
            topology.ns_name(Side::Nat)
        ),
        pins => {
            println!("demo: FAILED: pins remain under {PIN_ROOT}:");
            for pin in pins {
                println!("  {pin}");
            }
            failures += 1;
        }
    }

    let names = Topology::namespace_names(TAG);
    drop(topology);
    let listing = Command::new("ip").args(["netns", "list"]).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    if names.iter().any(|name| {
        listing
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }) {
        println!("demo: FAILED: namespaces remain: {listing}");
        failures += 1;
    } else {
        println!("demo: namespaces {} removed", names.join(", "));
    }

    if failures > 0 {
        bail!("demo: {failures} step(s) failed");
    }
    println!("demo: all steps passed");
    Ok(())
}

/// Stops the NAT and says how it went; 1 if it did not exit cleanly.
fn stop(nat: NatProcess) -> usize {
    println!("\ndemo: stopping the NAT (SIGTERM, then nat unload)");
    let status = nat.stop();
    println!("demo: nat exited: {status}");
    usize::from(!status.success())
}

fn describe_topology(topology: &Topology) {
    let ips = topology.client_ips();
    let first = ips.first().expect("at least one client address");
    let last = ips.last().expect("at least one client address");
    println!(
        "demo: testbed (namespaces {}, {}, {})",
        topology.ns_name(Side::Client),
        topology.ns_name(Side::Nat),
        topology.ns_name(Side::Server)
    );
    println!(
        "  client  {CLIENT_IFACE}  {first} .. {last} (inside {INTERNAL_PREFIX}), {OUTSIDE_CLIENT_IP} (outside)"
    );
    println!(
        "  nat     {INT_IFACE}  {NAT_INTERNAL_IP}   {EXT_IFACE}  {EXTERNAL_IP}   SNAT {INTERNAL_PREFIX} -> {EXTERNAL_IP}"
    );
    println!("  server  {SERVER_IFACE}  {SERVER_IP}   (routes back only to 10.200.1.128/25)");
}

/// Runs one step and prints one line about it; `false` if it failed.
fn run_step(
    number: usize,
    step: &Step,
    topology: &Topology,
    tcp: &ServerHandle,
    udp: &ServerHandle,
) -> bool {
    let client_ns = topology.ns_name(Side::Client);
    let (label, result, server) = match step.traffic {
        Traffic::Tcp { bytes } => (
            format!("TCP {}", size(bytes)),
            tcp_exchange(
                client_ns,
                Some(step.from),
                SocketAddrV4::new(SERVER_IP, TCP_PORT),
                bytes,
            ),
            tcp,
        ),
        Traffic::Udp { bytes } => (
            format!("UDP {}", size(bytes)),
            udp_exchange(
                client_ns,
                Some(step.from),
                SocketAddrV4::new(SERVER_IP, UDP_PORT),
                bytes,
            ),
            udp,
        ),
    };
    let mut line = format!("[{number}] {label:<11} from {:<13}", step.from.to_string());
    let ok = match result {
        Err(e) => {
            let _ = write!(line, "FAILED: {e}");
            false
        }
        Ok(local) => {
            let seen = server.last_peer();
            let _ = write!(
                line,
                "client sent from {:<21} server saw {:<21} ",
                local.to_string(),
                seen.map_or("nothing".to_owned(), |s| s.to_string())
            );
            let translated = seen.is_some_and(|s| s.ip() == EXTERNAL_IP);
            let expected = in_internal_prefix(step.from);
            let verdict = match (translated, expected) {
                (true, true) => "translated (inside the prefix)",
                (false, false) if seen == Some(SocketAddr::V4(local)) => {
                    "not translated (outside the prefix)"
                }
                (true, false) => "FAILED: translated although outside the prefix",
                (false, true) => "FAILED: not translated although inside the prefix",
                (false, false) => "FAILED: server saw an unexpected address",
            };
            line.push_str(verdict);
            !verdict.starts_with("FAILED")
        }
    };
    println!("{line}");
    ok
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// What is left of this demo's pins: its namespace's directory under the pin
/// root and everything in it. Other directories belong to other runs (tests
/// may be running beside the demo), which are not ours to judge.
fn leftovers(nat_ns: &str) -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(format!("{}/", path.display()));
                walk(&path, found);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    let ours = Path::new(PIN_ROOT).join(nat_ns);
    let mut found = Vec::new();
    if ours.exists() {
        found.push(format!("{}/", ours.display()));
        walk(&ours, &mut found);
    }
    found.sort();
    found
}
