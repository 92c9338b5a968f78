//! The maps a load fills from what the operator gave: prefixes, pool,
//! settings, the fast path's interfaces (`nat load`'s fourth phase, and the
//! fixtures' and benches' maps).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, LpmTrie, lpm_trie::Key},
};
use nat_common::{
    config::{Config, PoolAddr},
    deterministic::DetPrefix,
    names::{
        MAP_CONFIG, MAP_DET_PREFIXES, MAP_EXT_ADDRS, MAP_FAST_DEVS, MAP_IF_MACS, MAP_INTERNAL,
        MAP_POOL,
    },
    probe::{span, stride_for},
};

use crate::datapath::pool::{Cidr, PortRange};

/// Fills deterministic NAT's numbering of the internal prefixes: each
/// prefix and the number of its first address (empty in other modes).
pub fn populate_numbering(ebpf: &mut Ebpf, numbering: &[(Cidr, u32)]) -> Result<()> {
    let mut map: LpmTrie<_, u32, DetPrefix> = ebpf
        .map_mut(MAP_DET_PREFIXES)
        .context("deterministic prefix map")?
        .try_into()?;
    let stale: Vec<Key<u32>> = map.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        map.remove(&key)
            .context("cannot clear the deterministic prefix map")?;
    }
    for (cidr, base) in numbering {
        let value = DetPrefix {
            network: u32::from(cidr.addr),
            base: *base,
        };
        map.insert(
            &Key::new(cidr.len.into(), u32::from(cidr.addr).to_be()),
            value,
            0,
        )
        .with_context(|| format!("cannot number internal prefix {}/{}", cidr.addr, cidr.len))?;
    }
    Ok(())
}

/// Fills the prefix, pool and config maps: a fresh instance's, or an adopted
/// one's, whose prefixes, pool and settings become the ones given now.
pub fn populate(
    ebpf: &mut Ebpf,
    internal: &[Cidr],
    external: &[Ipv4Addr],
    ports: PortRange,
    cfg: Config,
) -> Result<()> {
    let mut prefixes: LpmTrie<_, u32, u8> = ebpf
        .map_mut(MAP_INTERNAL)
        .context("internal map")?
        .try_into()?;
    for cidr in internal {
        prefixes
            .insert(
                &Key::new(cidr.len.into(), u32::from(cidr.addr).to_be()),
                1,
                0,
            )
            .with_context(|| format!("cannot add internal prefix {}/{}", cidr.addr, cidr.len))?;
    }
    // An adopted instance may hold prefixes no longer given: added first,
    // removed after, so a prefix given again is never missing in between.
    let stale: Vec<Key<u32>> = prefixes
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| {
            !internal.iter().any(|c| {
                u32::from(c.len) == k.prefix_len() && u32::from(c.addr).to_be() == k.data()
            })
        })
        .collect();
    for key in stale {
        prefixes
            .remove(&key)
            .context("cannot remove an internal prefix no longer given")?;
    }
    let mut addrs: HashMap<_, u32, u32> = ebpf
        .map_mut(MAP_EXT_ADDRS)
        .context("external address map")?
        .try_into()?;
    for (i, addr) in external.iter().enumerate() {
        addrs
            .insert(u32::from(*addr).to_be(), i as u32, 0)
            .context("cannot fill the external address map")?;
    }
    let mut pool: Array<_, PoolAddr> = ebpf.map_mut(MAP_POOL).context("pool map")?.try_into()?;
    let span = span(ports.lo, ports.hi);
    for (i, addr) in external.iter().enumerate() {
        let entry = PoolAddr {
            addr: u32::from(*addr).to_be(),
            port_min: ports.lo,
            port_max: ports.hi,
            step: stride_for(span),
            _pad: 0,
        };
        pool.set(i as u32, entry, 0)
            .context("cannot fill the pool map")?;
    }
    let mut config: Array<_, Config> =
        ebpf.map_mut(MAP_CONFIG).context("config map")?.try_into()?;
    config
        .set(0, cfg, 0)
        .context("cannot write the config map")?;
    Ok(())
}

/// Fills the fast path's redirect and MAC maps: the fast-path interfaces and
/// the external one.
pub fn populate_fast_path(
    ebpf: &mut Ebpf,
    iface: &str,
    ext_ifindex: u32,
    fast: &[(String, u32)],
) -> Result<()> {
    if fast.is_empty() {
        return Ok(());
    }
    let all = || {
        fast.iter()
            .map(|(n, i)| (n.as_str(), *i))
            .chain([(iface, ext_ifindex)])
    };
    let mut devs: DevMapHash<_> = ebpf
        .map_mut(MAP_FAST_DEVS)
        .context("map NAT_FAST_DEVS missing from the object")?
        .try_into()?;
    for (_, index) in all() {
        devs.insert(index, index, None, 0)
            .context("cannot fill the fast path's redirect map")?;
    }
    // XDP sees frames addressed to other hosts too (a promiscuous
    // interface); the fast path takes only those sent to the interface.
    let mut macs: HashMap<_, u32, [u8; 8]> = ebpf
        .map_mut(MAP_IF_MACS)
        .context("map NAT_IF_MACS missing from the object")?
        .try_into()?;
    for (name, index) in all() {
        let mac = crate::datapath::iface::hw_addr(name)?;
        let mut value = [0u8; 8];
        value[..6].copy_from_slice(&mac);
        macs.insert(index, value, 0)
            .context("cannot fill the fast path's MAC map")?;
    }
    Ok(())
}
