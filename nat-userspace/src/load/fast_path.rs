//! The fast path follows the routes: a reload re-reads the routing table (or
//! the `--fast-path` list the file and command line now give), attaches the
//! fast path and hairpinning to internal interfaces that joined and takes
//! them off those that left, with the programs of the object this daemon
//! loaded, in the hook settled at load.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap, MapError},
};
use nat_common::names::{LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX, MAP_FAST_DEVS, MAP_IF_MACS};

use super::{
    attach::{self, FastHook},
    pin::Instance,
    populate, validate,
};
use crate::{cli::LoadArgs, pins::PinDir};

/// The loaded object, shared by the sweep thread (which runs the sweep
/// program through it) and the reload thread (which attaches its programs).
pub type SharedObject = Arc<Mutex<Ebpf>>;

/// Locks the object; a thread that panicked holding it left the object as
/// it was (attaching and sweeping change kernel state, not the handle).
pub fn lock(ebpf: &SharedObject) -> std::sync::MutexGuard<'_, Ebpf> {
    ebpf.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct FastPath {
    ebpf: SharedObject,
    /// Already started: dropping it leaves the pins alone.
    instance: Instance,
    iface: String,
    ext_ifindex: u32,
    hook: FastHook,
    /// The interfaces the fast path runs on now, with their ifindexes.
    on: Vec<(String, u32)>,
    /// Whether the loaded ingress program redirects replies toward the
    /// fast-path interfaces (a load-time global of the object).
    replies: bool,
}

/// What a reload did to the fast path, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FastChange {
    pub joined: Vec<String>,
    pub left: Vec<String>,
    /// The object was loaded without a fast path: replies keep crossing the
    /// stack until the next `nat load`.
    pub replies_by_stack: bool,
}

impl std::fmt::Display for FastChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.joined.is_empty() {
            parts.push(format!("fast path now on {}", self.joined.join(",")));
        }
        if !self.left.is_empty() {
            parts.push(format!("fast path off {}", self.left.join(",")));
        }
        write!(f, "{}", parts.join(", "))?;
        if self.replies_by_stack {
            write!(
                f,
                " (replies cross the stack until the next `nat load`: it loaded without a fast path)"
            )?;
        }
        Ok(())
    }
}

impl FastPath {
    pub fn new(
        ebpf: SharedObject,
        pins: PinDir,
        plan: &validate::Plan,
        args: &LoadArgs,
        hook: FastHook,
    ) -> Self {
        Self {
            ebpf,
            instance: Instance::running(pins),
            iface: args.iface.clone(),
            ext_ifindex: plan.ext_ifindex,
            hook,
            on: plan.fast.clone(),
            replies: plan.globals.fast_path,
        }
    }

    /// The interfaces `args` (as a reload re-read them) put the fast path
    /// on: none under `--no-fast-path`, the `--fast-path` list, or the
    /// interfaces the internal prefixes are routed through now.
    pub fn wanted(&self, args: &LoadArgs) -> Result<Vec<(String, u32)>> {
        if args.no_fast_path {
            return Ok(Vec::new());
        }
        let names = if args.fast_path.is_empty() {
            crate::defaults::fast_path_auto(&args.internal, &self.iface, self.hook.hook())?.0
        } else {
            args.fast_path.clone()
        };
        validate::fast_path_interfaces(&self.iface, &names, |name| {
            nix::net::if_::if_nametoindex(name)
                .map_err(|_| anyhow::anyhow!("fast path: no interface named '{name}'"))
        })
    }

    /// Puts the fast path (and hairpinning) on exactly `wanted`; `None` when
    /// it runs there already.
    pub fn set(&mut self, wanted: Vec<(String, u32)>) -> Result<Option<FastChange>> {
        let mut change = FastChange {
            joined: names_not_in(&wanted, &self.on),
            left: names_not_in(&self.on, &wanted),
            replies_by_stack: false,
        };
        if change.joined.is_empty() && change.left.is_empty() {
            return Ok(None);
        }
        // An interface made again under its old name has a new ifindex: its
        // pinned links went with the old device and must not be updated.
        for (name, _) in self.on.iter().filter(|on| !wanted.contains(on)) {
            for prefix in [LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX] {
                let path = self.instance.pins.path(&format!("{prefix}{name}"));
                if path.exists() {
                    crate::pins::remove_link(&path)?;
                }
            }
        }
        let mut ebpf = lock(&self.ebpf);
        // Redirect entries first, so the first packet of a joined interface
        // finds its device; links next; the left ones' entries last.
        populate::populate_fast_path(&mut ebpf, &self.iface, self.ext_ifindex, &wanted)?;
        attach::attach_fast_path(&mut ebpf, &self.hook, &wanted, &mut self.instance)?;
        attach::attach_hairpin(&mut ebpf, &wanted, &mut self.instance)?;
        let gone: Vec<u32> = self
            .on
            .iter()
            .filter(|(_, i)| !wanted.iter().any(|(_, w)| w == i))
            .map(|(_, i)| *i)
            .collect();
        forget(&mut ebpf, &gone)?;
        change.replies_by_stack = !self.replies && !wanted.is_empty();
        self.on = wanted;
        Ok(Some(change))
    }
}

fn names_not_in(these: &[(String, u32)], those: &[(String, u32)]) -> Vec<String> {
    these
        .iter()
        .filter(|t| !those.contains(t))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Takes interfaces the fast path left out of its redirect and MAC maps.
fn forget(ebpf: &mut Ebpf, gone: &[u32]) -> Result<()> {
    if gone.is_empty() {
        return Ok(());
    }
    let mut devs: DevMapHash<_> = ebpf
        .map_mut(MAP_FAST_DEVS)
        .context("map NAT_FAST_DEVS missing from the object")?
        .try_into()?;
    for index in gone {
        match devs.remove(*index) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("cannot update the fast path's redirect map"),
        }
    }
    let mut macs: HashMap<_, u32, [u8; 8]> = ebpf
        .map_mut(MAP_IF_MACS)
        .context("map NAT_IF_MACS missing from the object")?
        .try_into()?;
    for index in gone {
        match macs.remove(index) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("cannot update the fast path's MAC map"),
        }
    }
    Ok(())
}
