//! TC programs on kernels without TCX (before 6.6): cls_bpf filters in
//! direct-action mode on the interface's clsact qdisc, added through netlink.
//!
//! The programs need no change for this: their pass verdict is
//! TC_ACT_UNSPEC, which both TCX ("next") and a cls_bpf chain (go on to the
//! filter of the next priority) treat as "let the rest of the hook run",
//! while TC_ACT_OK would end the hook in both. The NAT's filter takes
//! priority 1, so, as under TCX (which runs before every classic filter),
//! the operator's own filters see translated packets.
//!
//! A netlink filter holds no file descriptor: it stays attached when the
//! daemon dies, like a pinned link. The NAT records each one it adds in the
//! pin directory (an empty directory named after its hook, priority, handle
//! and interface index: bpffs holds no regular files and no names with a
//! dot, which interface names may have), so that the daemon's exit
//! and `nat unload` remove exactly those filters, and a later load replaces
//! a leftover one at the same priority and handle instead of failing.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::Link as _,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use log::info;
use nat_common::names::LAYOUT_VERSION;

use crate::pins::PinDir;

/// The priority of the NAT's filters: first on the hook, as under TCX.
pub const FILTER_PRIORITY: u16 = 1;
/// The handle of the NAT's filters ("NA"), so a leftover one is found again.
pub const FILTER_HANDLE: u32 = 0x4e41;
/// Name prefix of the record of a filter in the pin directory.
pub const RECORD_PREFIX: &str = "tc_filter_";

/// One filter the NAT added.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    ifindex: u32,
    hook: TcAttachType,
    priority: u16,
    handle: u32,
}

impl Filter {
    /// `tc_filter_egress_1_20033_7`.
    fn record_name(&self) -> String {
        format!(
            "{RECORD_PREFIX}{}_{}_{}_{}",
            hook_name(self.hook),
            self.priority,
            self.handle,
            self.ifindex
        )
    }

    fn parse(name: &str) -> Option<Self> {
        let mut fields = name.strip_prefix(RECORD_PREFIX)?.split('_');
        let hook = match fields.next()? {
            "ingress" => TcAttachType::Ingress,
            "egress" => TcAttachType::Egress,
            _ => return None,
        };
        Some(Self {
            hook,
            priority: fields.next()?.parse().ok()?,
            handle: fields.next()?.parse().ok()?,
            ifindex: fields.next()?.parse().ok()?,
        })
        .filter(|_| fields.next().is_none())
    }

    /// The filter as aya's link, to replace or detach it; fails when the
    /// interface is gone (and the filter with it).
    fn link(&self) -> std::io::Result<SchedClassifierLink> {
        let iface = nix::net::if_::if_indextoname(self.ifindex)?;
        SchedClassifierLink::attached(
            &iface.to_string_lossy(),
            self.hook,
            self.priority,
            TcHandle::from(self.handle),
            None,
        )
    }
}

fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        // Custom parents are never used by the NAT.
        _ => "egress",
    }
}

fn record_path(pins: &PinDir, filter: &Filter) -> PathBuf {
    pins.path(&filter.record_name())
}

/// Attaches a loaded TC program as the NAT's filter on `hook` of `iface`
/// (replacing a leftover one) and records it in `pins`; returns the name of
/// the record when this call made it (for [`detach`]).
pub fn attach(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    pins: &PinDir,
) -> Result<Option<String>> {
    // EEXIST means the interface already has a clsact qdisc, which is fine.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        log::debug!("clsact on {iface}: {e}");
    }
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("no interface named '{iface}'"))?;
    let filter = Filter {
        ifindex,
        hook,
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE,
    };
    // A filter at our priority and handle is a leftover of an earlier NAT
    // on this interface (one NAT per interface): replace it in place.
    let id = match filter
        .link()
        .map_err(anyhow::Error::from)
        .and_then(|link| prog.attach_to_link(link).map_err(anyhow::Error::from))
    {
        Ok(id) => {
            info!("replaced a leftover NAT filter on {iface} {}", hook_name(hook));
            id
        }
        Err(_) => prog
            .attach_with_options(
                iface,
                hook,
                TcAttachOptions::Netlink(NlOptions {
                    priority: filter.priority,
                    handle: TcHandle::from(filter.handle),
                    classid: None,
                }),
            )
            .with_context(|| {
                format!(
                    "cannot add a TC {} filter to {iface} at priority {} (does a filter of another kind hold that priority?)",
                    hook_name(hook),
                    filter.priority
                )
            })?,
    };
    // The filter must outlive this process like a pinned link; dropping the
    // link would detach it. It holds no file descriptor, so nothing leaks.
    std::mem::forget(prog.take_link(id)?);
    let path = record_path(pins, &filter);
    match std::fs::create_dir(&path) {
        Ok(()) => Ok(Some(filter.record_name())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => {
            let _ = filter.link().map(SchedClassifierLink::detach);
            Err(e).with_context(|| format!("cannot record the filter at {}", path.display()))
        }
    }
}

/// Detaches the filter recorded as `record` (a name [`attach`] returned)
/// and removes the record.
pub fn detach(pins: &PinDir, record: &str) -> Result<()> {
    let filter = Filter::parse(record)
        .with_context(|| format!("'{record}' is not the record of a filter"))?;
    detach_filter(pins, record, &filter)
}

/// Detaches every filter recorded in `pins` and removes the records. A
/// filter already gone (its interface deleted, say) counts as detached.
pub fn detach_recorded(pins: &PinDir) -> Result<()> {
    for (name, filter) in recorded(pins) {
        detach_filter(pins, &name, &filter)?;
    }
    Ok(())
}

/// A filter already gone (its interface deleted, say) counts as detached.
fn detach_filter(pins: &PinDir, name: &str, filter: &Filter) -> Result<()> {
    let path = pins.path(name);
    if let Ok(link) = filter.link()
        && let Err(e) = link.detach()
    {
        log::debug!(
            "detaching the {} filter on ifindex {}: {e} (taken as already gone)",
            hook_name(filter.hook),
            filter.ifindex
        );
    }
    match std::fs::remove_dir(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The recorded filters, with their record names (without the version suffix).
fn recorded(pins: &PinDir) -> Vec<(String, Filter)> {
    let suffix = format!("_v{LAYOUT_VERSION}");
    let Ok(entries) = std::fs::read_dir(&pins.dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(&suffix)?.to_owned();
            let filter = Filter::parse(&name)?;
            Some((name, filter))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aya::programs::TcAttachType;

    use super::Filter;

    #[test]
    fn record_names_round_trip() {
        let filter = Filter {
            ifindex: 7,
            hook: TcAttachType::Egress,
            priority: 1,
            handle: 0x4e41,
        };
        assert_eq!(filter.record_name(), "tc_filter_egress_1_20033_7");
        assert_eq!(Filter::parse(&filter.record_name()), Some(filter));
        assert_eq!(Filter::parse("tc_filter_sideways_1_2_7"), None);
        assert_eq!(Filter::parse("tc_filter_ingress_1_2_"), None);
        assert_eq!(Filter::parse("tc_filter_ingress_1_2_7_8"), None);
        assert_eq!(Filter::parse("link_egress"), None);
    }
}
