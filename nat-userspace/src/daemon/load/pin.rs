//! Phase 3 of `nat load`: the instance's pins on bpffs, which keep the
//! datapath alive independently of this process. A new instance gets a
//! fresh directory; an instance pinned with this layout is adopted, its
//! sessions, cooldowns and counters kept.
//!
//! Until the load succeeds, [`Instance`] is also its guard: it notes every
//! directory, map, link and filter record this load creates, and a load
//! that fails removes exactly those, whatever phase it failed in. What an
//! adopted instance had, and what another instance pinned, is never
//! touched.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::MapInfo,
    programs::links::{FdLink, LinkType, PinnedLink},
};
use log::warn;
use nat_common::{
    config::{Config, allocation},
    flow::{FlowKey, Session},
    hosts::HostEntry,
    names::{
        LAYOUT_VERSION, LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX, LINK_INGRESS, MAP_CONFIG,
        MAP_COOLDOWN, MAP_FWD, MAP_HOSTS, MAP_REV, PIN_ROOT,
    },
};

use crate::{
    cli::{
        IngressArg,
        plan::{AttachPlan, ObjectPlan, Pool, Target},
    },
    datapath::{
        pins::{self, PINNED_MAPS, PinDir},
        tables::Tables,
    },
};

/// The instance's pin directory, fresh or adopted.
pub struct Instance {
    pub pins: PinDir,
    /// What an adopted instance held when it was found; `None` for a new one.
    pub adopted: Option<Found>,
    /// Set once the load succeeded: from then on the pins outlive this process.
    started: bool,
    /// What this load pinned, for the cleanup of a load that fails.
    created: Created,
}

/// The pins a load made itself, in the order they are removed again.
#[derive(Debug, Default)]
struct Created {
    links: Vec<PathBuf>,
    /// Names of netlink filter records (kernels without TCX).
    filters: Vec<String>,
    maps: Vec<PathBuf>,
    /// The instance's directory and its namespace's, when this load made them.
    dirs: Vec<PathBuf>,
    /// Maps not pinned when the object was loaded: the loader pinned the
    /// ones of them that exist afterwards.
    absent_maps: Vec<PathBuf>,
}

/// What `nat load` found pinned, for its report.
#[derive(Clone, Debug)]
pub struct Found {
    pub sessions: usize,
    pub cooling: usize,
    pub links: usize,
}

impl Instance {
    /// Adopts the pins of this layout in `pins`, or claims the directory for
    /// a new instance. Pins of another layout are refused, never discarded.
    pub fn open(
        target: &Target,
        object: &ObjectPlan,
        attach: &AttachPlan,
        config: &Config,
        pool: &Pool,
    ) -> Result<Self> {
        let pins = target.pins.clone();
        let scope = &target.scope;
        let survey = pins.survey()?;
        if let Some(old) = survey.other.iter().next() {
            bail!(
                "{}{scope} has pins of layout version {old} in {} and this nat uses version {LAYOUT_VERSION}: finish them with the nat that made them, or run `nat unload --iface {}` to remove them (their sessions are lost)",
                pins.iface,
                pins.dir.display(),
                pins.iface
            );
        }
        let mut created = Created::default();
        let adopted = if survey.current.is_empty() {
            // In the order they would go again: the instance's, then its
            // namespace's (the root every instance shares stays).
            created.dirs = [Some(pins.dir.as_path()), pins.dir.parent()]
                .into_iter()
                .flatten()
                .filter(|d| *d != Path::new(PIN_ROOT) && !d.exists())
                .map(Path::to_path_buf)
                .collect();
            pins.create()?;
            None
        } else {
            check_sizes(&pins, object)?;
            check_hooks(&pins, attach)?;
            check_allocation(&pins, config, pool)?;
            Some(found(&pins, &survey.current))
        };
        Ok(Self {
            pins,
            adopted,
            started: false,
            created,
        })
    }

    /// The instance of a daemon whose datapath runs, for attaching more of
    /// it later (a reload): dropping it leaves the pins.
    pub fn running(pins: PinDir) -> Self {
        Self {
            pins,
            adopted: None,
            started: true,
            created: Created::default(),
        }
    }

    /// Where the loader finds (or creates) each pinned map; call
    /// [`Instance::maps_loaded`] after loading, whether it worked or not.
    pub fn map_paths(&mut self) -> Vec<(&'static str, PathBuf)> {
        let paths: Vec<(&'static str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|name| (*name, self.pins.path(name)))
            .collect();
        self.created.absent_maps = paths
            .iter()
            .map(|(_, p)| p.clone())
            .filter(|p| !p.exists())
            .collect();
        paths
    }

    /// Notes the maps the loader pinned: those absent before that exist now
    /// (a loader that failed part-way may have pinned some of them).
    pub fn maps_loaded(&mut self) {
        let absent = std::mem::take(&mut self.created.absent_maps);
        self.created
            .maps
            .extend(absent.into_iter().filter(|p| p.exists()));
    }

    /// The pinned link named `name`, if the instance has one.
    pub fn pinned_link(&self, name: &str) -> Result<Option<FdLink>> {
        let path = self.pins.path(name);
        if !path.exists() {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("cannot open pinned link {}", path.display()))?;
        Ok(Some(link.into()))
    }

    pub fn pin_link(&mut self, link: FdLink, name: &str) -> Result<()> {
        let path = self.pins.path(name);
        // The pin holds the link from here on; our descriptor closes on drop.
        drop(
            link.pin(&path)
                .with_context(|| format!("cannot pin link at {}", path.display()))?,
        );
        self.created.links.push(path);
        Ok(())
    }

    /// Notes a netlink filter this load added and recorded as `record`.
    pub fn filter_added(&mut self, record: String) {
        self.created.filters.push(record);
    }

    /// Detaches the fast-path links of interfaces not in `fast`, and the
    /// hairpin links of interfaces not in `hairpin` (those whose fast path
    /// runs in XDP).
    pub fn remove_stale_links(
        &self,
        fast: &[(String, u32)],
        hairpin: &[(String, u32)],
    ) -> Result<()> {
        self.remove_stale_fast_links(fast)?;
        self.remove_stale_hairpin_links(hairpin)
    }

    /// Detaches fast-path links of interfaces no longer given with `--fast-path`.
    fn remove_stale_fast_links(&self, keep: &[(String, u32)]) -> Result<()> {
        for name in self.pins.fast_links() {
            let iface = name.strip_prefix(LINK_FAST_PREFIX).unwrap_or(&name);
            if !keep.iter().any(|(n, _)| n == iface) {
                pins::remove_link(&self.pins.path(&name))?;
                log::info!("fast path removed from {iface}");
            }
        }
        Ok(())
    }

    /// Detaches hairpin links of interfaces that no longer take the hairpin
    /// program: no longer internal ones, or ones whose TC fast path hairpins.
    fn remove_stale_hairpin_links(&self, keep: &[(String, u32)]) -> Result<()> {
        for name in self.pins.links_with(LINK_HAIRPIN_PREFIX) {
            let iface = name.strip_prefix(LINK_HAIRPIN_PREFIX).unwrap_or(&name);
            if !keep.iter().any(|(n, _)| n == iface) {
                pins::remove_link(&self.pins.path(&name))?;
                log::info!("hairpin program removed from {iface}");
            }
        }
        Ok(())
    }

    /// The load succeeded: the pins now outlive this process.
    pub fn started(&mut self) {
        self.started = true;
    }

    /// Removes everything: links (which detaches them) and maps.
    pub fn remove(&mut self) -> Result<()> {
        self.started = true;
        crate::datapath::teardown::remove_all(&self.pins)
    }

    /// Removes what this load created: links first (which detaches them),
    /// then filters, maps, and the directories if nothing else is in them.
    fn remove_created(&mut self) {
        let created = std::mem::take(&mut self.created);
        let results = created
            .links
            .iter()
            .map(|link| pins::remove_link(link))
            .chain(
                created
                    .filters
                    .iter()
                    .map(|record| crate::datapath::tc_attach::detach(&self.pins, record)),
            )
            .chain(created.maps.iter().map(|map| pins::remove_pin(map)))
            .chain(created.dirs.iter().map(|dir| pins::remove_if_empty(dir)));
        for e in results.filter_map(Result::err) {
            warn!("cleanup: {e:#}");
        }
    }
}

impl Drop for Instance {
    /// A load that failed takes what it pinned with it: a new instance
    /// disappears, an adopted one keeps translating with what it had.
    fn drop(&mut self) {
        if !self.started {
            self.remove_created();
        }
    }
}

/// Pinned maps keep their size: a load asking another size would silently
/// get the old one, so it is refused with what to do.
fn check_sizes(pins: &PinDir, object: &ObjectPlan) -> Result<()> {
    let key = size_of::<FlowKey>() as u32;
    for (name, flag, want, value) in [
        (
            MAP_FWD,
            "--max-sessions",
            Some(object.max_sessions),
            size_of::<Session>(),
        ),
        (
            MAP_REV,
            "--max-sessions",
            Some(object.max_sessions),
            size_of::<Session>(),
        ),
        (
            MAP_COOLDOWN,
            "--max-cooldowns",
            Some(object.max_cooldowns),
            size_of::<u64>(),
        ),
        (
            MAP_HOSTS,
            "--max-sessions",
            Some(object.max_sessions),
            size_of::<HostEntry>(),
        ),
        (MAP_CONFIG, "", None, size_of::<Config>()),
    ] {
        let path = pins.path(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("cannot read pinned map {}", path.display()))?;
        let key_want = if name == MAP_CONFIG || name == MAP_HOSTS {
            4
        } else {
            key
        };
        if info.key_size() != key_want || info.value_size() != value as u32 {
            bail!(
                "pinned map {} has entries of {}+{} bytes, this nat expects {}+{}: its layout changed without a version bump; run `nat unload --iface {}` first (its sessions are lost)",
                path.display(),
                info.key_size(),
                info.value_size(),
                key_want,
                value,
                pins.iface
            );
        }
        if let Some(want) = want
            && info.max_entries() != want
        {
            bail!(
                "the pinned {name} map on {} holds {} entries and {flag} asks {want}: give {flag} {} to keep its sessions, or run `nat unload --iface {}` first (they are lost)",
                pins.iface,
                info.max_entries(),
                info.max_entries(),
                pins.iface
            );
        }
    }
    Ok(())
}

/// The allocation mode and block size stay with the instance: its blocks
/// and their counts only mean something under the mode that made them, so
/// a load asking another is refused with what to do.
fn check_allocation(pins: &PinDir, config: &Config, pool: &Pool) -> Result<()> {
    let tables = Tables::open(pins)?;
    let pinned = tables.config()?;
    let name = |code: u32| match code {
        allocation::BLOCKS => "blocks",
        allocation::DETERMINISTIC => "deterministic",
        _ => "walk",
    };
    if pinned.allocation != config.allocation {
        bail!(
            "the instance on {} allocates with allocation {} and this load asks {}: give --allocation {} to keep its sessions, or run `nat unload --iface {}` first (they are lost)",
            pins.iface,
            name(pinned.allocation),
            name(config.allocation),
            name(pinned.allocation),
            pins.iface
        );
    }
    if pinned.allocation == allocation::BLOCKS {
        check_block_pool(pins, &tables, pool)?;
    }
    if pinned.allocation == allocation::BLOCKS && pinned.block_size != config.block_size {
        bail!(
            "the instance on {} has blocks of {} ports and this load asks {}: give --block-size {} to keep its blocks, or run `nat unload --iface {}` first",
            pins.iface,
            pinned.block_size,
            config.block_size,
            pinned.block_size,
            pins.iface
        );
    }
    Ok(())
}

/// Under blocks the pool's addresses, in order, and its port range stay
/// too: a block is a number on an address, its ports the range's, so a
/// changed pool would give held blocks other ports (and their sessions'
/// releases other blocks).
fn check_block_pool(pins: &PinDir, tables: &Tables, pool: &Pool) -> Result<()> {
    let pinned = tables.pool()?;
    let addrs: Vec<Ipv4Addr> = pinned
        .iter()
        .map(|p| Ipv4Addr::from(u32::from_be(p.addr)))
        .collect();
    let range = pinned.first().map(|p| (p.port_min, p.port_max));
    if addrs != pool.external || range != Some((pool.ports.lo, pool.ports.hi)) {
        let (lo, hi) = range.unwrap_or_default();
        let list: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
        bail!(
            "the instance on {} holds port blocks on external {} ports {lo}-{hi}, and a block's ports follow from them: give --external {} --ports {lo}-{hi} to keep its blocks, or run `nat unload --iface {}` first (their sessions are lost)",
            pins.iface,
            list.join(","),
            list.join(","),
            pins.iface
        );
    }
    Ok(())
}

/// A pinned link can take a new program of its own kind only: switching
/// between XDP and TC would leave a gap, so it is refused.
fn check_hooks(pins: &PinDir, attach: &AttachPlan) -> Result<()> {
    let (want, flag) = match attach.ingress {
        IngressArg::Xdp => (LinkType::Xdp, "xdp"),
        IngressArg::Tc | IngressArg::Auto => (LinkType::Tcx, "tc"),
    };
    // `--ingress auto` that chose XDP falls back to TC anyway when native XDP
    // is refused: an instance already in TC is kept there.
    let also_tc = attach.tc_unless_native_xdp;
    let links = [LINK_INGRESS.to_owned()]
        .into_iter()
        .chain(pins.fast_links());
    for name in links {
        let path = pins.path(&name);
        if !path.exists() {
            continue;
        }
        let link: FdLink = PinnedLink::from_pin(&path)
            .with_context(|| format!("cannot open pinned link {}", path.display()))?
            .into();
        let kind = link
            .info()
            .and_then(|i| i.link_type())
            .with_context(|| format!("cannot read pinned link {}", path.display()))?;
        if kind != want && !(also_tc && kind == LinkType::Tcx) {
            let have = if kind == LinkType::Xdp { "xdp" } else { "tc" };
            bail!(
                "the NAT on {} translates replies in {have} and --ingress asks for {flag}: switching hooks would drop packets; give --ingress {have}, or run `nat unload --iface {}` first (sessions are lost)",
                pins.iface,
                pins.iface
            );
        }
    }
    Ok(())
}

/// Counts what an adopted instance holds.
fn found(pins: &PinDir, current: &[String]) -> Found {
    let links = current.iter().filter(|n| n.starts_with("link_")).count();
    let (sessions, cooling) = match Tables::open(pins) {
        Ok(t) => (
            t.forward_entries().map_or(0, |v| v.len()),
            t.cooldown_entries().map_or(0, |v| v.len()),
        ),
        Err(_) => (0, 0),
    };
    Found {
        sessions,
        cooling,
        links,
    }
}
