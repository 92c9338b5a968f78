//! Running the system tools (`ip`, `ethtool`, `sysctl`) the testbed is built with.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `cmd`, panicking with the command line and its stderr if it fails.
pub(crate) fn run(cmd: &mut Command) -> String {
    run_with_stdin(cmd, None)
}

/// Like [`run`], feeding `input` on stdin (for `ip -batch -`).
pub(crate) fn run_with_stdin(cmd: &mut Command, input: Option<&str>) -> String {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("cannot feed stdin of {}: {e}", describe(cmd)));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", describe(cmd)));
    if !output.status.success() {
        let input = input.map(|i| format!("\nstdin:\n{i}")).unwrap_or_default();
        panic!(
            "{} failed ({}): {}{input}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `cmd` for its side effect only; cleanup paths use it, where a failure
/// (say, a namespace that is already gone) is expected and harmless.
pub(crate) fn run_ignoring_failure(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    format!("`{line}`")
}
