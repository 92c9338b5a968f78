//! `nat unload`: remove an instance, whether its daemon runs, died, or its
//! network namespace is gone.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::{
    pidfile,
    pins::{self, PinDir},
};

/// `netns_gone`: the instance's namespace no longer exists; its pins are
/// still removed (they live in the root bpffs, not in the namespace).
pub fn run(netns: Option<&str>, iface: &str, netns_gone: bool) -> Result<()> {
    pins::require_bpffs()?;
    let pins = PinDir::new(netns, iface);
    let daemon = pidfile::live(netns, iface).map(|d| (d.pid(), d));
    if let Some((pid, d)) = &daemon
        && !d.stop(Duration::from_secs(10))
    {
        bail!("the daemon (pid {pid}) did not exit within 10 s of SIGTERM; nothing removed");
    }
    pidfile::remove(netns, iface);
    let gone = match (netns, netns_gone) {
        (Some(ns), true) => format!(" (network namespace {ns} no longer exists)"),
        _ => String::new(),
    };
    if !pins.dir.exists() {
        if let Some((pid, _)) = daemon {
            // It was started with --unload-on-exit and removed everything itself.
            println!("nat: unloaded from {iface} (its daemon, pid {pid}, removed the pins)");
            return Ok(());
        }
        println!(
            "nat: {iface} is not loaded{gone} (nothing pinned in {})",
            pins.dir.display()
        );
        return Ok(());
    }
    pins::remove_all(&pins)?;
    if pins.dir.exists() {
        bail!(
            "{} still holds files nat did not pin; remove them by hand",
            pins.dir.display()
        );
    }
    println!("nat: unloaded from {iface}{gone}");
    Ok(())
}
