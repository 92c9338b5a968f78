//! `cargo xtask dist`: what an operator installs, in target/dist/, and the
//! alerting rules for the Prometheus server that scrapes it.
//!
//! The completions and man pages come from `nat`'s clap definition, written
//! by the bench-only `nat-bench docs` that the same build produces: xtask
//! cannot link nat-userspace itself, or building xtask would need the eBPF
//! toolchain, and the operator's binary carries no generator.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::capture;
use crate::{build_nat, paths};

pub fn run() -> Result<()> {
    let bins = build_nat::build(true)?;
    let dist = paths::target_dir().join("dist");
    // Stale pages of a removed subcommand must not ship.
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("cannot remove {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    let nat = dist.join("nat");
    fs::copy(&bins.nat, &nat)
        .with_context(|| format!("cannot copy {} to {}", bins.nat.display(), nat.display()))?;
    let written = capture(
        Command::new(&bins.nat_bench)
            .arg("docs")
            .arg("--out")
            .arg(&dist),
    )?;
    println!("xtask: wrote {}", nat.display());
    for file in written.lines() {
        println!("xtask: wrote {file}");
    }
    // For the Prometheus server, not the NAT host: its rules and their tests.
    let prometheus = dist.join("prometheus");
    fs::create_dir_all(&prometheus)
        .with_context(|| format!("cannot create {}", prometheus.display()))?;
    for name in ["nat-alerts.yml", "nat-alerts.test.yml"] {
        let to = prometheus.join(name);
        fs::copy(paths::workspace_root().join("dist").join(name), &to)
            .with_context(|| format!("cannot copy dist/{name} to {}", to.display()))?;
        println!("xtask: wrote {}", to.display());
    }
    println!(
        "xtask: install e.g. with: install -m 755 {0}/nat /usr/local/sbin/ && install -m 644 {0}/man/*.1 /usr/local/share/man/man1/ && install -m 644 {0}/completions/nat.bash /usr/share/bash-completion/completions/nat",
        dist.display()
    );
    Ok(())
}
