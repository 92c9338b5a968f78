//! `nat unload`: stop a live instance or clean up after a dead one.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{load::remove_pins, pidfile, pins::PinDir};

pub fn run(netns: Option<&str>, iface: &str) -> Result<()> {
    crate::pins::require_bpffs()?;
    let pins = PinDir::new(netns, iface);
    if let Some(pid) = pidfile::live(netns, iface) {
        // The daemon removes its own pins on SIGTERM; give it the chance.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pins.dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if !pins.dir.exists() {
        println!(
            "nat: {iface} is not loaded (nothing pinned in {})",
            pins.dir.display()
        );
        pidfile::remove(netns, iface);
        return Ok(());
    }
    remove_pins(&pins)?;
    pidfile::remove(netns, iface);
    if pins.dir.exists() {
        bail!(
            "{} still holds files this version does not know; remove them by hand",
            pins.dir.display()
        );
    }
    println!("nat: unloaded from {iface}");
    Ok(())
}
