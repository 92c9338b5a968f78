//! systemd readiness: READY=1 reaches NOTIFY_SOCKET once the programs are
//! attached, not before, and a reload is bracketed by RELOADING=1 and READY=1.

mod common;
mod ops;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use nat_tests::{EXTERNAL_IP, NatProcess, Topology, TopologyOpts};
use ops::*;

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
            let attached = std::process::Command::new("ip")
                .args(["-n", &ns, "-d", "link", "show", "veth-ext"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("prog/xdp"))
                .unwrap_or(false);
            let pinned = std::path::Path::new(&format!("/sys/fs/bpf/nat/{ns}/veth-ext")).exists();
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
        "READY=1 arrived before the datapath was attached (xdp attached: {attached}, pins: {pinned})"
    );
    assert!(
        attached_programs(&topo).iter().any(|p| p == "xdp"),
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
