//! `cargo xtask lint`: formatting, the markdown files' links and clippy over
//! every crate, as CI runs it.
//!
//! The eBPF crate means something only for the bpf target, so it gets its
//! own clippy run with nightly and `-Z build-std=core`, like aya-build
//! compiles it; a check does not link, so bpf-linker is not involved there.
//! It also promises an empty build on the host, so that `cargo build
//! --workspace` works, and the default members leave it out: a third clippy
//! run compiles it for the host.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::cargo_quietly;
use crate::{links, paths};

pub fn run() -> Result<()> {
    let root = paths::workspace_root();
    let mut failed = Vec::new();

    let mut fmt = Command::new(paths::cargo());
    fmt.current_dir(&root).args(["fmt", "--all", "--check"]);
    check("rustfmt", &mut fmt, &mut failed);

    println!("xtask: lint: dead links in the markdown files");
    match links::dead_links(&root) {
        Ok(dead) if dead.is_empty() => {}
        Ok(dead) => {
            for line in dead {
                println!("{line}");
            }
            failed.push("dead links");
        }
        Err(e) => {
            println!("{e:#}");
            failed.push("dead links");
        }
    }

    // The default members (all but nat-ebpf), tests and build scripts included.
    let mut host = Command::new(paths::cargo());
    host.current_dir(&root)
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        // nat-userspace's build script compiles the eBPF object it embeds.
        .env("PATH", paths::path_with_tools()?);
    check("clippy (host crates)", &mut host, &mut failed);

    // Outside the default members, so the run above does not compile it.
    let mut ebpf_host = Command::new(paths::cargo());
    ebpf_host
        .current_dir(&root)
        .args(["clippy", "--package", "nat-ebpf", "--all-targets"])
        .args(["--", "-D", "warnings"]);
    check(
        "clippy (nat-ebpf, host target)",
        &mut ebpf_host,
        &mut failed,
    );

    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(root.join("nat-ebpf"))
        .args(["run", "nightly", "cargo", "clippy", "--package", "nat-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        // Apart from the host builds: another toolchain and target.
        .arg("--target-dir")
        .arg(paths::target_dir().join("lint-ebpf"))
        .args(["--", "-D", "warnings"])
        // The stable toolchain that runs xtask must not leak into the nightly cargo.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    check("clippy (nat-ebpf, bpf target)", &mut ebpf, &mut failed);

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!(
        "xtask: lint passed (rustfmt, links, clippy on the host crates and on nat-ebpf for the \
         host and the bpf target)"
    );
    Ok(())
}

/// Runs one check, printing its findings; records its name if it failed.
fn check(name: &'static str, cmd: &mut Command, failed: &mut Vec<&'static str>) {
    println!("xtask: lint: {name}");
    match cargo_quietly(cmd) {
        Ok(diagnostics) => {
            for line in diagnostics {
                println!("{line}");
            }
        }
        Err(e) => {
            println!("{e:#}");
            failed.push(name);
        }
    }
}
