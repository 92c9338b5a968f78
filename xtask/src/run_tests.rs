//! The full test suite, as CI runs it.

use std::process::Command;

use anyhow::Result;

use crate::cmd::stream;
use crate::{build_nat, paths};

/// Builds `nat`, then runs the default members' tests against it.
/// `test_args` go to the test binaries (e.g. `--test-threads 2`, a name filter).
pub fn run(test_args: &[String]) -> Result<()> {
    let nat = build_nat::build(false)?;
    let mut cmd = Command::new(paths::cargo());
    // The default members, not --workspace: nat-ebpf only builds for the bpf target.
    cmd.current_dir(paths::workspace_root())
        .arg("test")
        .env("PATH", paths::path_with_tools()?)
        .env("NAT_BIN", &nat);
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    stream(&mut cmd)
}
