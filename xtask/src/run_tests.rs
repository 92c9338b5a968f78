//! The full test suite, as CI runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use crate::cmd::describe;
use crate::test_summary::Totals;
use crate::{build_nat, paths};

/// Builds `nat`, then runs the default members' tests against it and ends
/// with the grand total. `test_args` go to the test binaries (e.g.
/// `--test-threads 2`, a name filter).
pub fn run(test_args: &[String]) -> Result<()> {
    let nat = build_nat::build(false)?;
    let mut cmd = Command::new(paths::cargo());
    // The default members, not --workspace: nat-ebpf only builds for the bpf target.
    cmd.current_dir(paths::workspace_root())
        .args(["test", "--no-fail-fast"])
        .env("PATH", paths::path_with_tools()?)
        .env("NAT_BIN", &nat);
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    // libtest reports on stdout; it is read here to total it and passed on.
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the output of cargo test")?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child.wait().context("cannot wait for cargo test")?;
    println!("xtask: {totals}");
    ensure!(status.success(), "{} failed ({status})", describe(&cmd));
    Ok(())
}
