//! A reload (SIGHUP, `nat reload`, `systemctl reload`): the changed config
//! file applied to the running datapath.
//!
//! A live change only steers new flows. Replies find their session in
//! NAT_REV by (external address, port, remote) whatever the pool says, so a
//! session on an address or port that left the pool keeps translating until
//! it ends; the allocator reads the pool map per new flow and stops handing
//! those out at once. The cooldown check is per key and independent of the
//! pool, so the reuse rule holds across any change.
//!
//! The compliance export follows the file too: collectors and syslog
//! servers added start receiving at once (IPFIX templates first), those
//! removed stop, and a collector kept keeps its sequence numbers.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use nat_common::config::{Config, MAX_POOL, allocation};

use crate::{
    cli::{LoadArgs, plan::Plan, settings},
    daemon::{
        export::{self, Targets},
        fast_path::{FastChange, FastPath},
    },
    datapath::{
        forward::ForwardTable,
        pins::PinDir,
        pool::{Cidr, PortRange, check_addresses, entries},
        tables::Tables,
    },
};

/// The fields of the config a load settles and a reload keeps: the
/// allocation mode and what the plan worked out for it.
fn keep_allocation(cfg: &mut Config, loaded: &Config) {
    cfg.allocation = loaded.allocation;
    cfg.block_size = loaded.block_size;
    cfg.det_per_address = loaded.det_per_address;
    cfg.det_range = loaded.det_range;
    cfg.share_step = loaded.share_step;
    cfg.index_step = loaded.index_step;
}

/// What a reload changed, for the log line.
#[derive(Debug, Default)]
pub struct Change {
    pub settings: Vec<&'static str>,
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
    pub ports: Option<(PortRange, PortRange)>,
    /// Port forwards added and removed.
    pub forwards: (usize, usize),
    /// Where the fast path went, when it moved.
    pub fast_path: Option<FastChange>,
    /// Where compliance events go now, when that changed.
    pub export: Option<String>,
    /// Keys that changed but apply only on the next `nat load`.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.settings.is_empty() {
            parts.push(format!("settings {}", self.settings.join(",")));
        }
        let ips = |v: &[Ipv4Addr]| {
            v.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.added.is_empty() {
            parts.push(format!("added {}", ips(&self.added)));
        }
        if !self.removed.is_empty() {
            parts.push(format!(
                "removed {} (their sessions run until they end)",
                ips(&self.removed)
            ));
        }
        if let Some((old, new)) = self.ports {
            parts.push(format!(
                "ports {}-{} -> {}-{}",
                old.lo, old.hi, new.lo, new.hi
            ));
        }
        if self.forwards != (0, 0) {
            parts.push(format!(
                "forwards: {} added, {} removed",
                self.forwards.0, self.forwards.1
            ));
        }
        if let Some(fast) = &self.fast_path {
            parts.push(fast.to_string());
        }
        if let Some(export) = &self.export {
            parts.push(export.clone());
        }
        if parts.is_empty() {
            parts.push("nothing changed".to_owned());
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!(
                "{} changed but apply only on the next `nat load`",
                self.needs_restart.join(",")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Applies a changed config file to the running datapath.
pub struct Reloader {
    tables: Tables,
    forwards: ForwardTable,
    /// External addresses egress recognises as translated sources.
    ext_addrs: HashMap<MapData, u32, u32>,
    fast: FastPath,
    export: export::Control,
    fixed: Vec<(&'static str, String)>,
    internal: Vec<Cidr>,
    external: Vec<Ipv4Addr>,
    ports: PortRange,
}

impl Reloader {
    /// `ext_addrs` is the NAT_EXT_ADDRS map of the loaded object, `export`
    /// the compliance export to re-target.
    pub fn new(
        pins: &PinDir,
        ext_addrs: Map,
        plan: &Plan,
        fast: FastPath,
        export: export::Control,
    ) -> Result<Self> {
        Ok(Self {
            tables: Tables::open(pins)?,
            forwards: ForwardTable::open(pins)?,
            ext_addrs: ext_addrs.try_into().context("external address map")?,
            fast,
            export,
            fixed: plan.fixed.clone(),
            internal: plan.pool.internal.clone(),
            external: plan.pool.external.clone(),
            ports: plan.pool.ports,
        })
    }

    /// Applies what `args` set live; fails without a change when they are invalid.
    pub fn apply(&mut self, args: &LoadArgs) -> Result<Change> {
        let old_cfg = self.tables.config()?;
        // Blocks and deterministic shares are cut from the pool as loaded:
        // their addresses and ports wait for the next load.
        let pool_fixed = old_cfg.allocation != allocation::WALK;
        let (external, ports) = if pool_fixed {
            (self.external.clone(), self.ports)
        } else {
            (args.external.clone(), args.ports)
        };
        check_addresses(&external, &self.internal).map_err(anyhow::Error::msg)?;
        crate::cli::forward::check_all(&args.forward, &self.internal, &external)
            .map_err(anyhow::Error::msg)?;
        if external.is_empty() {
            anyhow::bail!("no external address left in the pool");
        }
        args.export.check().map_err(anyhow::Error::msg)?;
        // The prefixes the datapath holds, not the file's: a changed
        // `internal` applies on the next load, with the fast path it implies.
        let fast_path = self.fast.wanted(args, &self.internal)?;
        let mut change = Change {
            needs_restart: crate::cli::plan::fixed(args)
                .into_iter()
                .zip(&self.fixed)
                .filter(|(new, old)| new != *old)
                .map(|(new, _)| new.0)
                .collect(),
            ..Change::default()
        };
        if pool_fixed && args.external != self.external {
            change.needs_restart.push("external");
        }
        if pool_fixed && args.ports != self.ports {
            change.needs_restart.push("ports");
        }
        let mut cfg = crate::cli::plan::config_for(args)?;
        cfg.pool_len = external.len() as u32;
        keep_allocation(&mut cfg, &old_cfg);
        change.settings = settings::SETTINGS
            .iter()
            .filter(|s| s.get(&old_cfg) != s.get(&cfg))
            .map(|s| s.name)
            .collect();
        change.added = external
            .iter()
            .filter(|a| !self.external.contains(a))
            .copied()
            .collect();
        change.removed = self
            .external
            .iter()
            .filter(|a| !external.contains(a))
            .copied()
            .collect();
        if ports != self.ports {
            change.ports = Some((self.ports, ports));
        }

        self.recognise(&external)?;
        let pool = entries(&external, ports);
        let shrinking = cfg.pool_len < old_cfg.pool_len;
        // An allocation reads pool_len, then an entry: a shrinking pool is cut
        // before its tail changes, a growing one gets its entries first, so
        // no allocation reads an index past what is written.
        if shrinking {
            self.tables.set_config(cfg)?;
        }
        for (i, entry) in pool.iter().enumerate() {
            self.tables.set_pool_entry(i as u32, *entry)?;
        }
        if !shrinking {
            self.tables.set_config(cfg)?;
        }
        change.forwards = self.forwards.replace_all(&args.forward)?;
        self.external = external;
        self.ports = ports;
        change.export = self.export.retarget(Targets::from_flags(&args.export));
        // Last: it may wait for a sweep run to end (the object is shared).
        // The rest is applied by now, so a failure here is reported as
        // what did not move rather than as a reload that changed nothing.
        change.fast_path = self
            .fast
            .set(fast_path)
            .unwrap_or_else(|e| Some(FastChange::failed(&e)));
        Ok(change)
    }

    /// Adds the new addresses to NAT_EXT_ADDRS. Removed ones stay while there
    /// is room: the TC fast path still sends their live sessions' packets
    /// through egress, translated already.
    fn recognise(&mut self, external: &[Ipv4Addr]) -> Result<()> {
        let wanted: Vec<u32> = external.iter().map(|a| u32::from(*a).to_be()).collect();
        let retired: Vec<u32> = self
            .ext_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        let room = MAX_POOL as usize - wanted.len();
        for addr in retired.iter().skip(room) {
            let _ = self.ext_addrs.remove(addr);
        }
        for (i, addr) in wanted.iter().enumerate() {
            self.ext_addrs
                .insert(addr, i as u32, 0)
                .context("cannot fill the external address map")?;
        }
        Ok(())
    }
}
