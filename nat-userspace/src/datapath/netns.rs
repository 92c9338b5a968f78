//! Entering a named network namespace the way `ip netns` names them.

use std::fs::File;

use anyhow::{Context as _, Result};
use nix::sched::{CloneFlags, setns};

fn path(name: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        anyhow::bail!("'{name}' is not a network namespace name");
    }
    Ok(format!("/var/run/netns/{name}"))
}

/// Whether `ip netns` still knows the namespace.
pub fn exists(name: &str) -> Result<bool> {
    Ok(std::path::Path::new(&path(name)?).exists())
}

/// Moves the calling thread into `/var/run/netns/<name>`. Called before any
/// other thread exists, so every thread the program starts later is inside it
/// too. Only the network namespace changes: /sys/fs/bpf stays the root bpffs.
pub fn enter(name: &str) -> Result<()> {
    let path = path(name)?;
    let file = File::open(&path)
        .with_context(|| format!("network namespace '{name}' does not exist ({path})"))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace '{name}'"))?;
    Ok(())
}
