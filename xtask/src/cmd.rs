//! Running external programs with errors that say which one failed.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio, so its progress streams to the terminal.
pub fn stream(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; stderr is included in the error.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    format!("`{line}`")
}

/// The status words cargo right-aligns at the start of its progress lines.
const CARGO_STATUS: &[&str] = &[
    "Adding",
    "Blocking",
    "Checking",
    "Compiling",
    "Doc-tests",
    "Documenting",
    "Downloaded",
    "Downloading",
    "Executable",
    "Finished",
    "Fresh",
    "Locking",
    "Running",
    "Updating",
];

/// A line of cargo's stderr with the prefix of a build script's
/// `cargo:warning` removed: aya-build forwards the inner cargo that compiles
/// the eBPF crate as `warning: nat-userspace@0.1.0: <line>`.
pub fn unforwarded(line: &str) -> &str {
    let Some(rest) = line.strip_prefix("warning: ") else {
        return line;
    };
    let Some((package, inner)) = rest.split_once(": ") else {
        return line;
    };
    let is_package_id = package.split_once('@').is_some_and(|(name, version)| {
        !name.is_empty()
            && !name.contains(' ')
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    });
    if is_package_id { inner } else { line }
}

/// Progress of the outer or the forwarded inner cargo, as opposed to a
/// compiler diagnostic or test output.
pub fn is_cargo_progress(line: &str) -> bool {
    let line = unforwarded(line);
    let word = line.trim_start().split(' ').next().unwrap_or("");
    line.starts_with(' ') && CARGO_STATUS.contains(&word)
}

/// Runs a cargo build-like `cmd` with its output captured. Its progress
/// lines (its own and the forwarded ones of the eBPF build) are dropped; what
/// remains are the diagnostics, returned on success and put in the error on
/// failure, so that a failed build still shows every compiler message.
pub fn cargo_quietly(cmd: &mut Command) -> Result<Vec<String>> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let diagnostics: Vec<String> = stderr
        .lines()
        .filter(|line| !is_cargo_progress(line))
        .map(|line| unforwarded(line).to_owned())
        .collect();
    let diagnostics = if diagnostics.iter().all(|l| l.trim().is_empty()) {
        Vec::new()
    } else {
        diagnostics
    };
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            diagnostics.join("\n")
        );
    }
    Ok(diagnostics)
}

#[cfg(test)]
mod tests {
    use super::{is_cargo_progress, unforwarded};

    #[test]
    fn forwarded_progress_is_recognised() {
        let forwarded = "warning: nat-userspace@0.1.0:    Compiling nat-ebpf v0.1.0 (/x/nat-ebpf)";
        assert!(is_cargo_progress(forwarded));
        assert!(is_cargo_progress(
            "warning: nat-userspace@0.1.0:     Finished `release` profile [optimized] target(s) in 39.83s"
        ));
        assert!(is_cargo_progress("   Compiling libc v0.2.191"));
        assert!(is_cargo_progress(
            "     Running unittests src/lib.rs (target/debug/deps/nat_common-0123)"
        ));
        assert!(is_cargo_progress(
            "  Executable tests/fixtures/main.rs (target/debug/deps/fixtures-0123)"
        ));
        assert!(is_cargo_progress(
            "    Finished `dev` profile [unoptimized + debuginfo] target(s) in 1m 36s"
        ));
    }

    #[test]
    fn diagnostics_are_kept() {
        let inner = "warning: nat-userspace@0.1.0: warning: unused variable: `x`";
        assert!(!is_cargo_progress(inner));
        assert_eq!(unforwarded(inner), "warning: unused variable: `x`");
        assert!(!is_cargo_progress(
            "error[E0425]: cannot find value `y` in this scope"
        ));
        assert!(!is_cargo_progress("warning: unused import: `std::fs`"));
        assert_eq!(
            unforwarded("warning: unused import: `std::fs`"),
            "warning: unused import: `std::fs`"
        );
        // Not a status line although it starts with a status word.
        assert!(!is_cargo_progress("Compiling failed somewhere"));
    }
}
