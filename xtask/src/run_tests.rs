//! The full test suite, as CI runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context, Result, ensure};

use crate::cmd::{cargo_quietly, describe, is_cargo_progress};
use crate::test_summary::Totals;
use crate::{build_nat, paths};

/// Builds `nat`, then runs the default members' tests against it and ends
/// with the grand total. `test_args` go to the test binaries (e.g.
/// `--test-threads 2`, a name filter).
pub fn run(test_args: &[String]) -> Result<()> {
    let bins = build_nat::build(false)?;
    let test = || {
        let mut cmd = Command::new(paths::cargo());
        // The default members, not --workspace: nat-ebpf only builds for the bpf target.
        cmd.current_dir(paths::workspace_root())
            .args(["test", "--no-fail-fast"])
            .env("PATH", paths::path_with_tools()?)
            .env("NAT_BIN", &bins.nat)
            .env("NAT_BENCH_BIN", &bins.nat_bench);
        anyhow::Ok(cmd)
    };
    // Compiled first, quietly, so that the run itself prints only tests.
    println!("xtask: building the tests");
    for line in cargo_quietly(test()?.arg("--no-run"))? {
        println!("{line}");
    }
    let mut cmd = test()?;
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    // libtest reports on stdout; it is read here to total it and passed on.
    // cargo's progress on stderr (which binary runs) is dropped; the rest of
    // stderr (a test's child processes, cargo's errors) is passed on.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let errors = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !is_cargo_progress(&line) {
                eprintln!("{line}");
            }
        }
    });
    let mut totals = Totals::default();
    let mut shown = Shown::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the output of cargo test")?;
        totals.add_line(&line);
        shown.line(&line);
    }
    let status = child.wait().context("cannot wait for cargo test")?;
    let _ = errors.join();
    println!("xtask: {totals}");
    ensure!(status.success(), "{} failed ({status})", describe(&cmd));
    Ok(())
}

/// libtest's report minus the binaries that ran no test: with a name filter,
/// most of the workspace's dozen test binaries would each print an empty
/// block.
#[derive(Default)]
struct Shown {
    in_empty_block: bool,
    blank_pending: bool,
}

impl Shown {
    fn line(&mut self, line: &str) {
        if line.trim() == "running 0 tests" {
            self.in_empty_block = true;
            return;
        }
        if self.in_empty_block {
            self.in_empty_block = !line.starts_with("test result:");
            return;
        }
        // Blank lines separate blocks: printed only before something shown.
        if line.trim().is_empty() {
            self.blank_pending = true;
            return;
        }
        if std::mem::take(&mut self.blank_pending) {
            println!();
        }
        println!("{line}");
    }
}
