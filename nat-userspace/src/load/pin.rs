//! Phase 3 of `nat load`: the instance's pins on bpffs, which keep the
//! datapath alive independently of this process, and their removal.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::links::{FdLink, PinnedLink},
};
use log::warn;
use nat_common::names::{
    LINK_EGRESS, LINK_INGRESS, MAP_CONFIG, MAP_COOLDOWN, MAP_FRAGS, MAP_FWD, MAP_INTERNAL,
    MAP_POOL, MAP_PROBES, MAP_REV, MAP_STATS,
};

use crate::pins::{self, PinDir};

/// Every map the instance pins.
pub const PINNED_MAPS: [&str; 9] = [
    MAP_FWD,
    MAP_REV,
    MAP_COOLDOWN,
    MAP_FRAGS,
    MAP_CONFIG,
    MAP_POOL,
    MAP_INTERNAL,
    MAP_STATS,
    MAP_PROBES,
];
/// Every link the instance pins.
pub const PINNED_LINKS: [&str; 2] = [LINK_EGRESS, LINK_INGRESS];

/// What this process pinned; removed again on every exit path.
pub struct Instance {
    pub pins: PinDir,
    links: Vec<PinnedLink>,
}

impl Instance {
    /// Claims the pin directory of a new instance; refuses when one is loaded.
    pub fn create(pins: PinDir, scope: &str) -> Result<Self> {
        if pins.is_loaded()
            || PINNED_LINKS.iter().any(|l| pins.path(l).exists())
            || !pins.fast_links().is_empty()
        {
            bail!(
                "a NAT is already loaded on {}{scope} (pins in {}); stop it, or run `nat unload --iface {}` if it crashed",
                pins.iface,
                pins.dir.display(),
                pins.iface
            );
        }
        std::fs::create_dir_all(&pins.dir)
            .with_context(|| format!("cannot create {}", pins.dir.display()))?;
        Ok(Self {
            pins,
            links: Vec::new(),
        })
    }

    /// Pins every map the datapath keeps its state in.
    pub fn pin_maps(&self, ebpf: &Ebpf) -> Result<()> {
        for name in PINNED_MAPS {
            let map = ebpf
                .map(name)
                .with_context(|| format!("map {name} missing from the object"))?;
            let path = self.pins.path(name);
            map.pin(&path)
                .with_context(|| format!("cannot pin map {name} at {}", path.display()))?;
        }
        Ok(())
    }

    pub fn pin_link(&mut self, link: FdLink, name: &str) -> Result<()> {
        let path = self.pins.path(name);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("cannot pin link at {}", path.display()))?;
        self.links.push(pinned);
        Ok(())
    }

    pub fn remove(&mut self) -> Result<()> {
        for link in self.links.drain(..) {
            // Unpinning hands back the last reference; dropping it detaches.
            drop(link.unpin());
        }
        remove_pins(&self.pins)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            warn!("cleanup: {e:#}");
        }
    }
}

/// Removes every pin of an instance: links first (which detaches them), then maps.
pub fn remove_pins(pins: &PinDir) -> Result<()> {
    let links = PINNED_LINKS
        .iter()
        .map(|l| (*l).to_owned())
        .chain(pins.fast_links());
    for name in links {
        let path = pins.path(&name);
        if path.exists() {
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("cannot open pinned link {}", path.display()))?;
            drop(
                link.unpin()
                    .with_context(|| format!("cannot unpin {}", path.display()))?,
            );
        }
    }
    for name in PINNED_MAPS {
        match std::fs::remove_file(pins.path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove {}", pins.path(name).display()));
            }
        }
    }
    pins::remove_dir(pins)
}
