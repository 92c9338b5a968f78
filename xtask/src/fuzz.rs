//! `cargo xtask fuzz`: the fuzz targets, one at a time, for a set time.
//!
//! `datapath` is the `nat-fuzz` binary (mutated frames through the real
//! programs with BPF_PROG_TEST_RUN and an oracle; root). The host targets
//! are bolero tests, run here for longer than their second in `cargo test`.
//! Findings go to `target/fuzz-findings/`: the datapath's as `.case` files
//! (`nat-fuzz --replay FILE`, and `tests/fuzz-regressions/` keeps them),
//! a host target's as the test output with bolero's seed and input.

use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo_quietly, describe, stream};
use crate::paths;

/// A host target: its name, package, test binary and test (its path in
/// that binary, which `--exact` matches whole).
const HOST: &[(&str, &str, &str, &str)] = &[
    (
        "common-headers",
        "nat-common",
        "logic",
        "fuzz::fuzz_common_headers",
    ),
    (
        "common-state",
        "nat-common",
        "logic",
        "fuzz::fuzz_common_state",
    ),
    (
        "userspace-text",
        "nat-userspace",
        "integration",
        "fuzz_text::fuzz_userspace_text",
    ),
];

pub const DATAPATH: &str = "datapath";

pub fn targets() -> Vec<&'static str> {
    std::iter::once(DATAPATH)
        .chain(HOST.iter().map(|t| t.0))
        .collect()
}

pub struct Options {
    pub minutes: f64,
    pub target: Option<String>,
    pub seed: Option<u64>,
}

pub fn run(opts: &Options) -> Result<()> {
    let chosen: Vec<&str> = match &opts.target {
        Some(t) if targets().contains(&t.as_str()) => {
            vec![targets().into_iter().find(|x| x == t).expect("just found")]
        }
        Some(t) => bail!(
            "unknown fuzz target '{t}' (one of: {})",
            targets().join(", ")
        ),
        None => targets(),
    };
    let findings = paths::target_dir().join("fuzz-findings");
    let mut failed = Vec::new();
    for target in chosen {
        println!("xtask: fuzz {target} for {} min", opts.minutes);
        let start = Instant::now();
        let ok = if target == DATAPATH {
            datapath(opts, &findings)?
        } else {
            host(target, opts, &findings)?
        };
        println!(
            "xtask: fuzz {target}: {} after {:.1} s",
            if ok { "no finding" } else { "FINDINGS" },
            start.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "findings in {} (see {})",
            failed.join(", "),
            findings.display()
        );
    }
    Ok(())
}

fn cargo() -> Result<Command> {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .env("PATH", paths::path_with_tools()?);
    Ok(cmd)
}

fn datapath(opts: &Options, findings: &std::path::Path) -> Result<bool> {
    for line in cargo_quietly(cargo()?.args(["build", "-p", "nat-tests", "--bin", "nat-fuzz"]))? {
        println!("{line}");
    }
    let mut cmd = Command::new(paths::target_dir().join("debug/nat-fuzz"));
    cmd.arg("--minutes")
        .arg(opts.minutes.to_string())
        .arg("--findings")
        .arg(findings);
    if let Some(seed) = opts.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    Ok(stream(&mut cmd).is_ok())
}

fn host(target: &str, opts: &Options, findings: &std::path::Path) -> Result<bool> {
    let &(_, package, binary, test) = HOST.iter().find(|t| t.0 == target).expect("a host target");
    let test_cmd = || -> Result<Command> {
        let mut cmd = cargo()?;
        cmd.args(["test", "-p", package, "--test", binary]);
        Ok(cmd)
    };
    for line in cargo_quietly(test_cmd()?.arg("--no-run"))? {
        println!("{line}");
    }
    let mut cmd = test_cmd()?;
    cmd.args(["--", test, "--exact", "--nocapture"]).env(
        "BOLERO_RANDOM_TEST_TIME_MS",
        ((opts.minutes * 60_000.0) as u64).to_string(),
    );
    if let Some(seed) = opts.seed {
        cmd.env("BOLERO_RANDOM_SEED", seed.to_string());
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text
        .lines()
        .filter(|l| l.contains("iterations") || l.starts_with("test result"))
    {
        println!("{}", line.trim());
    }
    if out.status.success() {
        return Ok(true);
    }
    std::fs::create_dir_all(findings)
        .with_context(|| format!("cannot create {}", findings.display()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = findings.join(format!("{target}-{stamp}.txt"));
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "xtask: fuzz {target}: finding written to {}",
        path.display()
    );
    Ok(false)
}
