//! The verifier budget: every kernel program loaded into the verifier of
//! each kernel of the matrix, the figures side by side, and a failure when
//! a program is rejected or processes more instructions than the budget.
//!
//! This machine's kernel is asked directly; the others boot in a VM
//! (virtme-ng under TCG) that runs `nat-bench verify` and writes its report
//! into a directory shared with this machine.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cmd::stream;
use crate::{build_nat, kernels, paths, setup_vm, vm};

/// A quarter of the verifier's limit of 1,000,000: the room a stable
/// kernel's verifier change needs (one measured +65% to +221%).
pub const DEFAULT_BUDGET: u64 = 250_000;

/// The budget when no `--budget` is given: NAT_VERIFY_BUDGET, else the default.
pub fn budget_from_env() -> Result<u64> {
    match std::env::var("NAT_VERIFY_BUDGET") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("NAT_VERIFY_BUDGET={v} is not a number of instructions")),
        _ => Ok(DEFAULT_BUDGET),
    }
}

pub struct Options {
    /// What `kernels::resolve` takes, or `host`; empty: the matrix.
    pub kernels: Vec<String>,
    pub budget: u64,
    pub json: Option<PathBuf>,
    /// Each program's whole verifier log, per kernel, under target/verify/.
    pub logs: bool,
}

/// One kernel's report as `nat-bench verify --json` wrote it.
struct KernelReport {
    /// The kernel's release (`uname -r`).
    release: String,
    programs: Vec<Value>,
}

pub fn run(options: &Options) -> Result<()> {
    let wanted: Vec<String> = if options.kernels.is_empty() {
        kernels::MATRIX.iter().map(|k| k.to_string()).collect()
    } else {
        options.kernels.clone()
    };
    let bins = build_nat::build(false)?;
    let out = paths::target_dir().join("verify");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (i, kernel) in wanted.iter().enumerate() {
        let json = out.join(format!("{i}.json"));
        // Inside target/verify, which the VM may write: a directory the
        // guest overlays (such as /tmp) would hide the logs from this machine.
        let logs = options
            .logs
            .then(|| out.join(format!("logs-{i}-{}", kernel.replace('/', "_"))));
        let ran = if kernel == "host" {
            verify_here(&bins.nat_bench, &json, logs.as_deref())
        } else {
            verify_in_vm(
                kernel,
                &bins.nat,
                &bins.nat_bench,
                &out,
                &json,
                logs.as_deref(),
            )
        };
        if let Err(e) = ran {
            failures.push(format!("{kernel}: {e:#}"));
            continue;
        }
        match read_report(&json) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(format!("{kernel}: {e:#}")),
        }
    }
    print!("{}", table(&reports, options.budget));
    if options.logs {
        println!("xtask: the verifier's logs are in {}/logs-*", out.display());
    }
    for r in &reports {
        for p in &r.programs {
            let name = p["program"].as_str().unwrap_or("?");
            if let Some(why) = p["rejected"].as_str() {
                failures.push(format!("{name} on {}: rejected: {why}", r.release));
            } else if let Some(n) = p["processed"].as_u64()
                && n > options.budget
            {
                failures.push(format!(
                    "{name} on {}: {n} instructions processed, over the budget of {}",
                    r.release, options.budget
                ));
            }
        }
    }
    if let Some(path) = &options.json {
        let doc = json!({
            "budget": options.budget,
            "kernels": reports.iter().map(|r| json!({ "kernel": r.release, "programs": r.programs })).collect::<Vec<_>>(),
        });
        fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("xtask: wrote {}", path.display());
    }
    if !failures.is_empty() {
        bail!(
            "the verifier budget is not held:\n  {}",
            failures.join("\n  ")
        );
    }
    println!(
        "xtask: every program verified within {} instructions on {} kernel(s)",
        thousands(options.budget),
        reports.len()
    );
    Ok(())
}

fn verify_args(json: &Path, logs: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "verify".to_string(),
        "--json".into(),
        json.display().to_string(),
    ];
    if let Some(dir) = logs {
        args.push("--log-dir".into());
        args.push(dir.display().to_string());
    }
    args
}

fn verify_here(nat_bench: &Path, json: &Path, logs: Option<&Path>) -> Result<()> {
    println!("xtask: verifying on this machine's kernel");
    if let Some(dir) = logs {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Its own failure (a rejection, no budget of its own) shows in the
    // report, which the matrix judges.
    let _ = stream(Command::new(nat_bench).args(verify_args(json, logs)));
    Ok(())
}

fn verify_in_vm(
    kernel: &str,
    nat: &Path,
    nat_bench: &Path,
    out: &Path,
    json: &Path,
    logs: Option<&Path>,
) -> Result<()> {
    let tools = setup_vm::run(kernel)?;
    let rwdirs = vec![out.to_path_buf()];
    if let Some(dir) = logs {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let inner = out.join(format!(
        "verify-{}.sh",
        json.file_stem().and_then(|s| s.to_str()).unwrap_or("vm")
    ));
    let mut text = String::from("#!/bin/sh\n# Written by `cargo xtask verify`.\n");
    let args: Vec<String> = verify_args(json, logs)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let _ = writeln!(text, "'{}' {}\nexit 0", nat_bench.display(), args.join(" "));
    fs::write(&inner, text).with_context(|| format!("cannot write {}", inner.display()))?;
    let script = vm::write_script(nat, nat_bench, &inner)?;
    vm::boot(&tools, &script, &rwdirs)
}

fn read_report(json: &Path) -> Result<KernelReport> {
    let text = fs::read_to_string(json)
        .with_context(|| format!("no report at {} (did the verifier run?)", json.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    Ok(KernelReport {
        release: doc["kernel"].as_str().unwrap_or("?").to_string(),
        programs: doc["programs"].as_array().cloned().unwrap_or_default(),
    })
}

/// Instructions processed per program and kernel, then peak states, the
/// program's own stack frame and the verification time.
fn table(reports: &[KernelReport], budget: u64) -> String {
    let programs: BTreeSet<String> = reports
        .iter()
        .flat_map(|r| {
            r.programs
                .iter()
                .filter_map(|p| p["program"].as_str().map(str::to_string))
        })
        .collect();
    let cell = |r: &KernelReport, name: &str, f: &dyn Fn(&Value) -> String| {
        r.programs
            .iter()
            .find(|p| p["program"] == name)
            .map_or("-".to_string(), f)
    };
    let width = reports
        .iter()
        .map(|r| r.release.len())
        .max()
        .unwrap_or(0)
        .max(22);
    let mut out = String::new();
    let header = |out: &mut String, title: &str| {
        let _ = write!(out, "\n{title}\n{:<16}", "program");
        for r in reports {
            let _ = write!(out, " {:>width$}", r.release);
        }
        out.push('\n');
    };
    header(
        &mut out,
        &format!("instructions processed (budget {})", thousands(budget)),
    );
    for name in &programs {
        let _ = write!(out, "{name:<16}");
        for r in reports {
            let c = cell(r, name, &|p| {
                if p["rejected"].is_string() {
                    "REJECTED".to_string()
                } else {
                    p["processed"].as_u64().map_or("-".into(), thousands)
                }
            });
            let _ = write!(out, " {c:>width$}");
        }
        out.push('\n');
    }
    header(
        &mut out,
        "peak states / stack bytes of the program (of the deepest call chain, where the kernel says) / verification ms",
    );
    for name in &programs {
        let _ = write!(out, "{name:<16}");
        for r in reports {
            let c = cell(r, name, &|p| {
                let ms = p["verification_us"]
                    .as_u64()
                    .map(|us| us as f64 / 1000.0)
                    .or(p["elapsed_ms"].as_u64().map(|ms| ms as f64))
                    .map_or("-".to_string(), |ms| format!("{ms:.0}"));
                let own = p["stack"][0].as_u64().map_or("-".into(), |s| s.to_string());
                let stack = match p["stack_max"].as_u64() {
                    Some(max) => format!("{own} ({max})"),
                    None => own,
                };
                format!(
                    "{} / {stack} / {ms}",
                    p["peak_states"].as_u64().map_or("-".into(), thousands),
                )
            });
            let _ = write!(out, " {c:>width$}");
        }
        out.push('\n');
    }
    out
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(250_000), "250,000");
        assert_eq!(thousands(1_000_001), "1,000,001");
    }
}
