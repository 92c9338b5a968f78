//! The pin directories and the run directory are root-only: another user
//! can neither find an instance nor read or update its maps through the pins.

use std::process::Command;

use crate::common::*;
use nat_tests::{EXT_IFACE, NatProcess, Side, Topology, TopologyOpts};

/// Runs `cmd` as the user `nobody`; whether it succeeded, and its stderr.
fn as_nobody(cmd: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(cmd)
        .output()
        .expect("setpriv runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect(path).permissions().mode() & 0o777
}

#[test]
fn pins_and_pid_files_are_root_only() {
    let topo = Topology::new("perm", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--ports", PORTS]);
    let ns = topo.ns_name(Side::Nat);
    let scope = format!("/sys/fs/bpf/nat/{ns}");
    let dir = format!("{scope}/{EXT_IFACE}");
    for d in ["/sys/fs/bpf/nat", &scope, &dir, "/run/nat"] {
        assert_eq!(mode(d), 0o700, "{d}");
    }
    let fwd = format!("{dir}/NAT_FWD_v{}", nat_common::names::LAYOUT_VERSION);
    let pid = format!("/run/nat/{ns}.{EXT_IFACE}.pid");
    for probe in [
        vec!["ls", "/sys/fs/bpf/nat"],
        vec!["ls", &dir],
        vec!["cat", &fwd],
        vec!["cat", &pid],
        vec!["bpftool", "map", "dump", "pinned", &fwd],
        vec![
            "bpftool", "map", "delete", "pinned", &fwd, "key", "hex", "00", "00", "00", "00", "00",
            "00", "00", "00", "00", "00", "00", "00", "00", "00", "00", "00",
        ],
    ] {
        let (ok, err) = as_nobody(&probe);
        assert!(!ok, "nobody ran {probe:?}");
        println!("{probe:?}: {}", err.trim());
    }
    // Root still reads the map through the pin.
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned", &fwd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
