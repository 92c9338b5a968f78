//! The kernel matrix: the test suite run inside a VM on another kernel.
//!
//! virtme-ng boots the kernel under qemu with this machine's root filesystem
//! shared read-only (writable overlays on /tmp, /var, /etc, ...), so the
//! guest runs the very test binaries and `nat` built here. qemu runs under
//! TCG: this machine's KVM cannot run it ("failed to set MSR 0x10a" with
//! `-cpu host`), which makes the guest roughly ten times slower than the host.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::describe;
use crate::setup_vm::VmTools;
use crate::test_summary::Totals;
use crate::{build_nat, paths, setup_vm};

const CPUS: &str = "2";
/// How long a test waits for `nat load` in the guest: generous, since a
/// verifier regression costs minutes per program under TCG (all programs
/// take under 2 s there now; nat_egress once took 107 s to be rejected).
const ATTACH_TIMEOUT_S: u32 = 1200;
/// The guest ends the suite after this long, so that a stuck run fails
/// within CI's budget instead of eating it.
const SUITE_DEADLINE_S: u32 = 1500;
const MEMORY: &str = "4G";
/// Printed by the guest script once the guest runs it (boot time) and as its last line.
const UP_MARK: &str = "nat-vm: up on ";
const EXIT_MARK: &str = "nat-vm: exit ";

/// Boots `kernel` (what `kernels::resolve` takes) and runs the test
/// binaries in it against the `nat` built here; `test_args` go to every binary.
pub fn run(kernel: &str, test_args: &[String]) -> Result<()> {
    let tools = setup_vm::run(kernel)?;
    let bins = build_nat::build(false)?;
    let binaries = test_binaries()?;
    let suite = suite_script(&binaries, test_args)?;
    let script = write_script(&bins.nat, &bins.nat_bench, &suite)?;
    boot(&tools, &script, &[])
}

/// A test executable and the package directory cargo would run it in.
struct TestBinary {
    path: PathBuf,
    cwd: PathBuf,
}

/// Builds the default members' tests without running them and lists them.
fn test_binaries() -> Result<Vec<TestBinary>> {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("PATH", paths::path_with_tools()?)
        .stderr(Stdio::inherit());
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    ensure!(
        output.status.success(),
        "{} failed ({})",
        describe(&cmd),
        output.status
    );
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let (Some(path), Some(manifest)) = (
            message["executable"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let cwd = Path::new(manifest)
            .parent()
            .context("a manifest path without a directory")?;
        binaries.push(TestBinary {
            path: path.into(),
            cwd: cwd.into(),
        });
    }
    ensure!(!binaries.is_empty(), "cargo built no test binaries");
    Ok(binaries)
}

/// The suite's part of the guest's script: every binary, its failures summed.
fn suite_script(binaries: &[TestBinary], test_args: &[String]) -> Result<PathBuf> {
    let dir = paths::target_dir().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let args: Vec<String> = test_args.iter().map(|a| quote(a)).collect();
    let mut suite = String::from("#!/bin/sh\n# Written by `cargo xtask test --kernel`.\nrc=0\n");
    for binary in binaries {
        let _ = writeln!(
            suite,
            "(cd {} && {} {}) || rc=1",
            quote(&binary.cwd.to_string_lossy()),
            quote(&binary.path.to_string_lossy()),
            args.join(" ")
        );
    }
    suite.push_str("exit $rc\n");
    let suite_path = dir.join("suite.sh");
    fs::write(&suite_path, suite)
        .with_context(|| format!("cannot write {}", suite_path.display()))?;
    Ok(suite_path)
}

/// The guest's side: mount bpffs (the guest starts without one), run
/// `inner` (a shell script) under one deadline, and say how it ended on the
/// console, which is all the host sees. Two files: `timeout` runs the second.
pub fn write_script(nat: &Path, nat_bench: &Path, inner: &Path) -> Result<PathBuf> {
    let dir = inner
        .parent()
        .context("a guest script outside any directory")?;
    let mut text = String::from("#!/bin/sh\n# Written by `cargo xtask test --kernel`.\n");
    let _ = writeln!(
        text,
        "mount -t bpf bpf /sys/fs/bpf || {{ echo 'nat-vm: cannot mount bpffs'; echo '{EXIT_MARK}1'; exit 1; }}"
    );
    let _ = writeln!(text, "echo \"{UP_MARK}$(uname -r)\"");
    let _ = writeln!(text, "export NAT_BIN={}", quote(&nat.to_string_lossy()));
    let _ = writeln!(
        text,
        "export NAT_BENCH_BIN={}",
        quote(&nat_bench.to_string_lossy())
    );
    let _ = writeln!(
        text,
        "export {}={ATTACH_TIMEOUT_S}",
        nat_tests::ATTACH_TIMEOUT_ENV
    );
    let _ = writeln!(
        text,
        "timeout --kill-after=10 {SUITE_DEADLINE_S} sh {}\nrc=$?",
        quote(&inner.to_string_lossy())
    );
    let _ = writeln!(
        text,
        "[ $rc -eq 124 ] && echo 'nat-vm: the suite did not finish within {SUITE_DEADLINE_S} s'"
    );
    let _ = writeln!(text, "echo \"{EXIT_MARK}$rc\"\nexit $rc");
    let script = dir.join("guest.sh");
    fs::write(&script, text).with_context(|| format!("cannot write {}", script.display()))?;
    Ok(script)
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Boots the VM on the script, streams its console and totals the results.
/// `rwdirs`: directories of this machine the guest may write (the rest of
/// the file system it sees is read-only, or an overlay it loses at exit).
pub fn boot(tools: &VmTools, script: &Path, rwdirs: &[PathBuf]) -> Result<()> {
    let mut cmd = Command::new(tools.virtme_bin.join("vng"));
    cmd.current_dir(paths::workspace_root())
        .arg("--run")
        .arg(&tools.kernel.image)
        .args(["--disable-kvm", "--cpus", CPUS, "--memory", MEMORY]);
    for dir in rwdirs {
        cmd.arg(format!("--rwdir={}", dir.display()));
    }
    cmd.arg("--exec")
        .arg(format!("sh {}", script.display()))
        // vng calls virtme-run from PATH.
        .env("PATH", prepend_path(&tools.virtme_bin)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Not inherited: virtme-run reopens its stderr with truncation,
        // which would wipe a log file this command's output goes to.
        .stderr(Stdio::piped());
    println!("xtask: booting {} under TCG", tools.kernel.label);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let relay = std::thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(stderr), &mut std::io::stderr());
    });
    let mut totals = Totals::default();
    let mut guest_exit = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the VM's console")?;
        println!("{line}");
        if line.starts_with(UP_MARK) {
            println!(
                "xtask: the guest booted in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(code) = line.strip_prefix(EXIT_MARK) {
            guest_exit = code.trim().parse::<i32>().ok();
        }
        totals.add_line(&line);
    }
    let status = child.wait().context("cannot wait for vng")?;
    let _ = relay.join();
    println!(
        "xtask: {totals} on {} in {:.0} s",
        tools.kernel.label,
        started.elapsed().as_secs_f64()
    );
    match guest_exit {
        Some(0) if status.success() => Ok(()),
        Some(0) => bail!("the suite passed but {} failed ({status})", describe(&cmd)),
        Some(code) => bail!("the suite failed in the VM (exit {code})"),
        None => bail!("the VM ended before the suite did ({status}); its console is above"),
    }
}

fn prepend_path(dir: &Path) -> Result<std::ffi::OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).context("a PATH entry contains ':'")
}
