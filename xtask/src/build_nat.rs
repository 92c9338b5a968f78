//! Building the `nat` binary (which embeds the eBPF object) and the
//! bench-only `nat-bench` beside it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::cmd::cargo_quietly;
use crate::paths;

/// The binaries of one build: the product and the bench's.
pub struct Binaries {
    pub nat: PathBuf,
    pub nat_bench: PathBuf,
}

/// `cargo build -p nat-userspace -p nat-bench --bins`, quietly: one line when
/// it is done, the compiler's diagnostics if there are any, everything on
/// failure.
pub fn build(release: bool) -> Result<Binaries> {
    let profile = if release { "release" } else { "debug" };
    println!("xtask: building nat ({profile}; the first build takes a few minutes)");
    let started = Instant::now();
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .args(["build", "-p", "nat-userspace", "-p", "nat-bench", "--bins"])
        // nat-userspace's build script compiles nat-ebpf via aya-build, which
        // links it with the bpf-linker from the tools cache.
        .env("PATH", paths::path_with_tools()?);
    if release {
        cmd.arg("--release");
    }
    for line in cargo_quietly(&mut cmd)? {
        println!("{line}");
    }
    let dir = paths::target_dir().join(profile);
    let binaries = Binaries {
        nat: dir.join("nat"),
        nat_bench: dir.join("nat-bench"),
    };
    for bin in [&binaries.nat, &binaries.nat_bench] {
        ensure!(
            bin.is_file(),
            "the build succeeded but {} does not exist",
            bin.display()
        );
    }
    let secs = started.elapsed().as_secs();
    println!(
        "xtask: built {} and {} in {}m{:02}s",
        shown(&binaries.nat),
        shown(&binaries.nat_bench),
        secs / 60,
        secs % 60
    );
    Ok(binaries)
}

/// Relative to the workspace when inside it: shorter to read.
fn shown(path: &Path) -> String {
    path.strip_prefix(paths::workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
