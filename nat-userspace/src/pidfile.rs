//! A pid file per instance, so `nat unload` can stop a live daemon instead of
//! pulling its pins from under it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Root-only, like the pin directories.
const RUN_DIR: &str = "/run/nat";

fn path(netns: Option<&str>, iface: &str) -> PathBuf {
    let name = match netns {
        Some(ns) => format!("{ns}.{iface}.pid"),
        None => format!("{iface}.pid"),
    };
    PathBuf::from(RUN_DIR).join(name)
}

pub fn write(netns: Option<&str>, iface: &str) -> Result<()> {
    let p = path(netns, iface);
    crate::pins::create_private_dir(Path::new(RUN_DIR), Path::new(RUN_DIR))?;
    std::fs::write(&p, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", p.display()))
}

pub fn remove(netns: Option<&str>, iface: &str) {
    let _ = std::fs::remove_file(path(netns, iface));
}

/// The pid of a running `nat load` for this instance, if there is one.
pub fn live(netns: Option<&str>, iface: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path(netns, iface))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A recycled pid belonging to another program is not ours to signal.
    let is_nat = cmdline.split(|b| *b == 0).any(|arg| arg == b"load");
    is_nat.then_some(pid)
}
