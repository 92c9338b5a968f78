//! TCP throughput with iperf3: the server in the server namespace, the client
//! in the client namespace, both under `ip netns exec` (fine for iperf3,
//! which does not care about the remounted /sys).

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nat_tests::{SERVER_IP, interrupt, run_in_ns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::cpu::{Snapshot, Window};
use super::describe;

pub const PORT: u16 = 5201;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// On top of the test's own duration: startup, the control exchange, results.
const CLIENT_SLACK: Duration = Duration::from_secs(20);

/// `iperf3 -s`, running until dropped.
pub struct Server {
    child: Option<Child>,
}

impl Server {
    pub fn start(server_ns: &str, cpu: usize) -> Result<Server> {
        let child = interrupt::spawn(
            Command::new("ip")
                .args(["netns", "exec", server_ns, "iperf3", "-s"])
                .args(["-p", &PORT.to_string(), "-A", &cpu.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let mut server = Server { child: Some(child) };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !listening(server_ns, PORT)? {
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                server.child = None;
                bail!("iperf3 -s exited at once ({status})");
            }
            if Instant::now() > deadline {
                bail!("iperf3 -s is not listening on port {PORT} after {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

/// SIGTERM, a short wait, then SIGKILL.
fn stop_child(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether something in `ns` listens on TCP `port`, over IPv4 or IPv6 (iperf3
/// binds a dual-stack socket), from /proc/thread-self/net/tcp{,6}.
fn listening(ns: &str, port: u16) -> Result<bool> {
    let tables = run_in_ns(ns, || {
        ["tcp", "tcp6"].map(|t| std::fs::read_to_string(format!("/proc/thread-self/net/{t}")))
    });
    let wanted = format!(":{port:04X}");
    for table in tables {
        let table = table.context("cannot read /proc/thread-self/net/tcp")?;
        let found = table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st (0A = LISTEN) field 3.
            fields.get(1).is_some_and(|local| local.ends_with(&wanted))
                && fields.get(3) == Some(&"0A")
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `iperf3 -c` for `secs` with `streams` parallel streams from the
/// client namespace, pinned to `cpu`; returns the receiver's Gbit/s.
pub fn run(client_ns: &str, secs: u32, streams: u32, cpu: usize) -> Result<(f64, Window)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client_ns, "iperf3", "-c"])
        .arg(SERVER_IP.to_string())
        .args(["-p", &PORT.to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .args(["-A", &cpu.to_string(), "-J", "--connect-timeout", "3000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = describe(&cmd);
    let snapshot = Snapshot::take()?;
    let child = interrupt::spawn(&mut cmd)?;
    let output = wait_bounded(child, Duration::from_secs(secs.into()) + CLIENT_SLACK)
        .with_context(|| format!("{what} did not finish"))?;
    let window = snapshot.finish()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "{what} printed no JSON ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    if let Some(error) = report.get("error").and_then(Value::as_str) {
        bail!("{what}: {error}");
    }
    if !output.status.success() {
        bail!("{what} failed ({})", output.status);
    }
    let bps = report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .with_context(|| format!("{what}: no end.sum_received.bits_per_second"))?;
    Ok((bps / 1e9, window))
}

/// Waits for `child` at most `limit`, killing it after that.
fn wait_bounded(child: Child, limit: Duration) -> Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("iperf3-wait".to_owned())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .context("cannot spawn a waiter thread")?;
    match rx.recv_timeout(limit) {
        Ok(output) => Ok(output?),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(5));
            bail!("killed after {limit:?}")
        }
    }
}
