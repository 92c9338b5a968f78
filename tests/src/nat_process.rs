//! Running the `nat` binary against a [`Topology`].
//!
//! The binary enters the nat namespace itself (`--netns`), rather than being
//! started under `ip netns exec`, which would remount /sys and hide the real
//! bpffs the NAT pins its maps in.

use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lock::lock;
use crate::topology::{EXT_IFACE, EXTERNAL_IP, INTERNAL_PREFIX, Side, Topology};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds to wait for `nat: attached` instead of [`ATTACH_TIMEOUT`]: the
/// kernel matrix runs the suite under TCG, where the verifier takes minutes.
pub const ATTACH_TIMEOUT_ENV: &str = "NAT_TEST_ATTACH_TIMEOUT_S";

fn attach_timeout() -> Duration {
    std::env::var(ATTACH_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(ATTACH_TIMEOUT, Duration::from_secs)
}
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const ATTACHED_PREFIX: &str = "nat: attached";

/// The `nat` binary: `$NAT_BIN`, else the workspace's debug build.
pub fn nat_bin() -> PathBuf {
    let path = nat_path();
    assert!(
        path.is_file(),
        "nat binary {} not found: build it with `cargo xtask build` (or point NAT_BIN at it)",
        path.display()
    );
    path
}

fn nat_path() -> PathBuf {
    match std::env::var_os("NAT_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/nat")),
    }
}

/// The bench-only `nat-bench` binary: `$NAT_BENCH_BIN`, else the one built
/// beside [`nat_bin`] (one cargo build makes both).
pub fn nat_bench_bin() -> PathBuf {
    let path = match std::env::var_os("NAT_BENCH_BIN") {
        Some(path) => PathBuf::from(path),
        None => nat_bin().with_file_name("nat-bench"),
    };
    assert!(
        path.is_file(),
        "nat-bench binary {} not found: build it with `cargo xtask build` (or point NAT_BENCH_BIN at it)",
        path.display()
    );
    path
}

/// Runs `nat --netns <nat ns> <args>` to completion (`sessions --json`,
/// `stats --json`, `unload --iface veth-ext`, ...).
pub fn nat_cmd(topology: &Topology, args: &[&str]) -> Output {
    nat_cmd_in(topology.ns_name(Side::Nat), args)
}

/// [`nat_cmd`] for a NAT in any namespace, e.g. one node of a
/// [`ScaleOut`](crate::ScaleOut).
pub fn nat_cmd_in(ns: &str, args: &[&str]) -> Output {
    let bin = nat_bin();
    Command::new(&bin)
        .arg("--netns")
        .arg(ns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs [`nat_cmd`], requires success, and parses its stdout as JSON.
pub fn nat_json(topology: &Topology, args: &[&str]) -> serde_json::Value {
    nat_json_in(topology.ns_name(Side::Nat), args)
}

/// [`nat_json`] for a NAT in any namespace.
pub fn nat_json_in(ns: &str, args: &[&str]) -> serde_json::Value {
    let output = nat_cmd_in(ns, args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "nat {args:?} failed ({}): {}\nstdout: {stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("nat {args:?} printed invalid JSON ({e}): {stdout}"))
}

/// A running `nat load`. SIGTERM stops only its daemon (the datapath stays
/// pinned), so on drop it is terminated and then `nat unload` removes the
/// instance, whichever way the test left it.
#[derive(Debug)]
pub struct NatProcess {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    /// What it logged (stderr), echoed as it comes.
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// The namespace and interface of the instance, for the unload on drop.
    netns: String,
    iface: String,
    unloaded: bool,
}

impl NatProcess {
    /// Starts `nat --netns <nat ns> load --iface veth-ext --external
    /// 198.18.0.1 --internal 10.200.1.0/25 <extra_args>` and returns once it
    /// prints `nat: attached`.
    pub fn start(topology: &Topology, extra_args: &[&str]) -> NatProcess {
        let external = EXTERNAL_IP.to_string();
        let mut args = vec!["--external", &external, "--internal", INTERNAL_PREFIX];
        args.extend_from_slice(extra_args);
        NatProcess::start_in(topology.ns_name(Side::Nat), EXT_IFACE, &args)
    }

    /// Starts `nat --netns <ns> load --iface <iface> <load_args>` and
    /// returns once it prints `nat: attached`: for NATs outside a
    /// [`Topology`], such as the nodes of a [`ScaleOut`](crate::ScaleOut).
    pub fn start_in(ns: &str, iface: &str, load_args: &[&str]) -> NatProcess {
        let mut args = vec!["--iface", iface];
        args.extend_from_slice(load_args);
        NatProcess::launch(ns, iface, &args, &[])
    }

    /// Starts `nat --netns <nat ns> load <load_args>` with `env` added to its
    /// environment (the interface may come from a config file: it must be
    /// [`EXT_IFACE`], which the unload on drop names), and returns once it
    /// prints `nat: attached`.
    pub fn start_load(topology: &Topology, load_args: &[&str], env: &[(&str, &str)]) -> NatProcess {
        NatProcess::launch(topology.ns_name(Side::Nat), EXT_IFACE, load_args, env)
    }

    fn launch(ns: &str, iface: &str, load_args: &[&str], env: &[(&str, &str)]) -> NatProcess {
        let bin = nat_bin();
        let mut child = Command::new(&bin)
            .arg("--netns")
            .arg(ns)
            .arg("load")
            .args(load_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout was piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            // Never joined: it ends with the last holder of the pipe, which
            // may be a leftover grandchild.
            let log = Arc::clone(&log);
            let stderr = child.stderr.take().expect("stderr was piped");
            thread::Builder::new()
                .name("nat-stderr".to_owned())
                .spawn(move || {
                    drain(stderr, |line| {
                        // The test harness captures eprintln!, not io::stderr().
                        eprintln!("{line}");
                        lock(&log).push(line);
                    })
                })
                .expect("cannot spawn the nat stderr reader");
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        // Keeps draining after startup too: a full pipe would block the NAT.
        let reader = {
            let lines = Arc::clone(&lines);
            thread::Builder::new()
                .name("nat-stdout".to_owned())
                .spawn(move || {
                    drain(stdout, |line| {
                        println!("[nat] {line}");
                        lock(&lines).push(line.clone());
                        let _ = tx.send(line);
                    })
                })
                .expect("cannot spawn the nat stdout reader")
        };
        let mut process = NatProcess {
            child: Some(child),
            lines,
            log,
            reader: Some(reader),
            netns: ns.to_owned(),
            iface: iface.to_owned(),
            unloaded: false,
        };

        let timeout = attach_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(ATTACHED_PREFIX) => return process,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let mut child = process.child.take().expect("child not yet reaped");
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nat did not print `{ATTACHED_PREFIX}` within {timeout:?}; killed it. stdout so far: {:#?}, stderr: {:#?}",
                        process.output(),
                        process.log()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match process.child.take().expect("child not yet reaped").wait() {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("cannot wait for it: {e}"),
                    };
                    // Its last words on stderr may still be in the pipe.
                    thread::sleep(Duration::from_millis(200));
                    panic!(
                        "nat exited ({status}) before printing `{ATTACHED_PREFIX}`. stdout: {:#?}, stderr: {:#?}",
                        process.output(),
                        process.log()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the NAT logged (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Everything the NAT printed on stdout so far.
    pub fn output(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// Stops the daemon (SIGTERM, waiting for a clean exit) and removes the
    /// instance with `nat unload`: the interface is left as it was. Returns
    /// the daemon's exit status; panics (after SIGKILL) if it takes longer
    /// than 10 s, or if the unload fails.
    pub fn stop(self) -> ExitStatus {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`NatProcess::stop`] with another limit on the daemon's exit (the
    /// bench's daemons with a million sessions, which may be mid-sweep).
    pub fn stop_within(mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_ref().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let status = self.wait_within(limit);
        let out = unload(&self.netns, &self.iface);
        assert!(
            out.status.success(),
            "nat unload failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.unloaded = true;
        status
    }

    /// Sends `signal` to the daemon and waits up to 10 s for it to exit; the
    /// datapath stays for the next load (or the unload on drop).
    pub fn stop_daemon(&mut self, signal: Signal) -> ExitStatus {
        let child = self.child.as_ref().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        let _ = kill(pid, signal);
        self.wait_for_exit()
    }

    /// Waits up to 10 s for the daemon to exit on its own (after `nat
    /// unload`, or when a `--replace` load took over).
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        self.wait_within(STOP_TIMEOUT)
    }

    fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nat did not exit within {limit:?}; killed it");
                }
                Err(e) => panic!("cannot wait for nat (pid {}): {e}", child.id()),
            }
        };
        self.finish_reading();
        status
    }

    /// Lets the reader print the last lines, unless a leftover grandchild
    /// holds the pipe open.
    fn finish_reading(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}

impl Drop for NatProcess {
    fn drop(&mut self) {
        // No panicking here: this often runs while a failed test unwinds.
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = terminate(&mut child) {
                eprintln!("nat (pid {}) ignored SIGTERM; killing it", child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
            self.finish_reading();
        }
        if !self.unloaded {
            match unload_instance(&self.netns, &self.iface) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "nat unload after the test failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("cannot run nat unload after the test: {e}"),
            }
        }
    }
}

/// `nat --netns NS unload --iface IFACE` (a no-op when nothing is loaded).
fn unload(netns: &str, iface: &str) -> Output {
    unload_instance(netns, iface).unwrap_or_else(|e| panic!("cannot run nat unload: {e}"))
}

/// Removes the NAT instance on `iface` of namespace `netns`, if any (`nat
/// unload`); never panics, for cleanup paths: stopping a daemon leaves its
/// datapath.
pub fn unload_instance(netns: &str, iface: &str) -> io::Result<Output> {
    Command::new(nat_path())
        .args(["--netns", netns, "unload", "--iface", iface])
        .stdin(Stdio::null())
        .output()
}

/// SIGTERM, then waits up to [`STOP_TIMEOUT`]; `Ok(None)` if it is still running.
fn terminate(child: &mut Child) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `pipe` to its end, a line at a time (invalid UTF-8 replaced, never
/// a reason to stop: a pipe nobody drains blocks the daemon's writes).
fn drain(pipe: impl io::Read, mut each: impl FnMut(String)) {
    for line in BufReader::new(pipe).split(b'\n') {
        let Ok(line) = line else { break };
        each(String::from_utf8_lossy(&line).into_owned());
    }
}
