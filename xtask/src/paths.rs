//! Where things live: the workspace, the tools cache outside it, the output.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The repository root (xtask sits one level below it).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Tools that are slow to build (bpf-linker) are cached outside the clone, so
/// a fresh clone, e.g. in CI, reuses them.
pub fn tools_cache() -> Result<PathBuf> {
    if let Some(dir) = non_empty_env("NAT_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("nat-xtask"));
    }
    match non_empty_env("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache/nat-xtask")),
        None => bail!("neither NAT_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set"),
    }
}

/// The `cargo install --root` for tools built from crates.io.
pub fn tools_root() -> Result<PathBuf> {
    Ok(tools_cache()?.join("tools"))
}

pub fn tools_bin() -> Result<PathBuf> {
    Ok(tools_root()?.join("bin"))
}

/// `PATH` with the tools cache first: aya-build, run from nat-userspace's
/// build script, looks for bpf-linker there.
pub fn path_with_tools() -> Result<OsString> {
    let mut dirs = vec![tools_bin()?];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).context("a PATH entry contains ':'")
}

/// Honours `CARGO_TARGET_DIR` like cargo does (relative to the directory
/// cargo runs in, which for xtask is always the workspace root).
pub fn target_dir() -> PathBuf {
    match non_empty_env("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that is running xtask, so nested builds use the same toolchain.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}
