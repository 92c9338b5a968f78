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
use log::info;
use nat_common::names::{LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX, MAP_FAST_DEVS, MAP_IF_MACS};

use super::{
    attach::{self, FastHook},
    pin::Instance,
    populate, validate,
};
use crate::{
    cli::{Cidr, LoadArgs},
    pins::PinDir,
};

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
    /// Why it did not move (all or part of it), when it did not.
    pub not_moved: Option<String>,
}

impl FastChange {
    /// A move that failed part-way.
    pub fn failed(e: &anyhow::Error) -> Self {
        Self {
            not_moved: Some(format!("{e:#}")),
            ..Self::default()
        }
    }
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
        if let Some(why) = &self.not_moved {
            let what = if parts.is_empty() {
                "fast path".to_owned()
            } else {
                parts.join(", ")
            };
            return write!(f, "{what}: not moved ({why})");
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
    /// interfaces the datapath's `internal` prefixes are routed through now.
    pub fn wanted(&self, args: &LoadArgs, internal: &[Cidr]) -> Result<Vec<(String, u32)>> {
        if args.no_fast_path {
            return Ok(Vec::new());
        }
        let names = if args.fast_path.is_empty() {
            let (names, why) =
                crate::defaults::fast_path_auto(internal, &self.iface, self.hook.hook())?;
            if why.contains("; not on ") {
                // Left out under XDP ingress (virtual): say so, as the load did.
                info!("reload: {why}");
            }
            names
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
            ..FastChange::default()
        };
        if change.joined.is_empty() && change.left.is_empty() {
            return Ok(None);
        }
        if crate::kernel::tc_hooks() == crate::kernel::TcHooks::Netlink {
            // Its TC fast path is a recorded cls_bpf filter per interface,
            // which the load replaces as a whole.
            change.not_moved =
                Some("kernels without TCX links move it on the next `nat load`".to_owned());
            return Ok(Some(change));
        }
        let joined: Vec<(String, u32)> = wanted
            .iter()
            .filter(|w| !self.on.contains(w))
            .cloned()
            .collect();
        let moved = self.move_to(&wanted, &joined);
        if moved.is_err() {
            // Part of it may have moved: the next reload tidies up what is
            // left on either side.
            for w in joined {
                self.on.push(w);
            }
        }
        moved?;
        change.replies_by_stack = !self.replies && !wanted.is_empty();
        self.on = wanted;
        Ok(Some(change))
    }

    fn move_to(&mut self, wanted: &[(String, u32)], joined: &[(String, u32)]) -> Result<()> {
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
        // The joined interfaces' redirect and MAC entries go in before their
        // links, as at load (a fast path that refuses native XDP takes its
        // entry out again); those already on keep theirs untouched.
        populate::populate_fast_path(&mut ebpf, &self.iface, self.ext_ifindex, joined)?;
        let in_xdp = attach::attach_fast_path(&mut ebpf, &self.hook, wanted, &mut self.instance)?;
        attach::attach_hairpin(&mut ebpf, &in_xdp, &mut self.instance)?;
        // Leftovers of a move that failed part-way.
        self.instance.remove_stale_links(wanted, &in_xdp)?;
        let gone: Vec<u32> = self
            .on
            .iter()
            .filter(|(_, i)| !wanted.iter().any(|(_, w)| w == i))
            .map(|(_, i)| *i)
            .collect();
        forget(&mut ebpf, &gone)
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
