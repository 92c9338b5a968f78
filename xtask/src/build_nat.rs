//! Building the `nat` binary (which embeds the eBPF object).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, ensure};

use crate::cmd::stream;
use crate::paths;

/// `cargo build -p nat-userspace`; returns the path of the binary.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .args(["build", "-p", "nat-userspace"])
        // nat-userspace's build script compiles nat-ebpf via aya-build, which
        // links it with the bpf-linker from the tools cache.
        .env("PATH", paths::path_with_tools()?);
    if release {
        cmd.arg("--release");
    }
    stream(&mut cmd)?;
    let bin = paths::target_dir()
        .join(if release { "release" } else { "debug" })
        .join("nat");
    ensure!(
        bin.is_file(),
        "the build succeeded but {} does not exist",
        bin.display()
    );
    Ok(bin)
}
