//! Phase 1 of `nat load`: everything the command line says, checked before
//! anything is created in the kernel.

use anyhow::{Result, bail};
use log::warn;
use nat_common::config::Config;

use super::object::Globals;
use crate::{cli::LoadArgs, pins::PinDir};

/// What a checked command line resolves to.
pub struct Plan {
    /// " in network namespace NAME", or empty: for messages.
    pub scope: String,
    pub ext_ifindex: u32,
    /// Fast-path interfaces with their ifindexes.
    pub fast: Vec<(String, u32)>,
    pub pins: PinDir,
    pub globals: Globals,
    /// The live settings to write into the config map.
    pub config: Config,
    /// What `--ingress auto` and the fast-path default chose, and why.
    pub choices: Vec<String>,
}

/// Checks the command line and resolves its defaults into `args`.
pub fn check(args: &mut LoadArgs, netns: Option<&str>) -> Result<Plan> {
    let scope = netns
        .map(|ns| format!(" in network namespace {ns}"))
        .unwrap_or_default();
    let ifindex = |name: &str| {
        nix::net::if_::if_nametoindex(name)
            .map_err(|_| anyhow::anyhow!("no interface named '{name}'{scope}"))
    };
    let ext_ifindex = ifindex(&args.iface)?;
    // Explicit --fast-path names are checked before the defaults look at them.
    fast_path_interfaces(&args.iface, &args.fast_path, ifindex)?;
    let choices = crate::defaults::resolve(args)?;
    let fast = fast_path_interfaces(&args.iface, &args.fast_path, ifindex)?;
    check_pool(args)?;
    let globals = Globals {
        ext_ifindex,
        fast_path: !fast.is_empty(),
        ext_addr: args.external.first().map_or(0, |a| u32::from(*a).to_be()),
        ext_addrs: args.external.len() as u32,
    };
    Ok(Plan {
        pins: PinDir::new(netns, &args.iface),
        config: crate::pool::config_for(args)?,
        scope,
        ext_ifindex,
        fast,
        globals,
        choices,
    })
}

/// The rules `nat check-config` and a reload use too.
fn check_pool(args: &LoadArgs) -> Result<()> {
    crate::pool::check_addresses(&args.external, &args.internal).map_err(anyhow::Error::msg)?;
    crate::port_forward::check_all(&args.forward, &args.internal, &args.external)
        .map_err(anyhow::Error::msg)
}

/// The fast-path interfaces with their ifindexes, checked against the
/// external interface `iface`.
pub(super) fn fast_path_interfaces(
    iface: &str,
    names: &[String],
    ifindex: impl Fn(&str) -> Result<u32>,
) -> Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for name in names {
        if name == iface {
            bail!("--fast-path names the external interface {name}; give the internal ones");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--fast-path names {name} twice");
        }
        out.push((name.clone(), ifindex(name)?));
    }
    Ok(out)
}

/// The host's own connections take ports from ip_local_port_range; sharing
/// them with the NAT makes the two collide toward the same server.
pub fn warn_ephemeral_overlap(lo: u16, hi: u16) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    if let (Some(elo), Some(ehi)) = (it.next(), it.next())
        && lo <= ehi
        && elo <= hi
    {
        warn!(
            "port range {lo}-{hi} overlaps the host's ephemeral range {elo}-{ehi} (net.ipv4.ip_local_port_range); the host's own connections may collide with translated ones"
        );
    }
}
