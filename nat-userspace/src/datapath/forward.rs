//! Static port forwards in the datapath: the forward type and the pinned
//! forward map. A range is inserted port by port with BPF_NOEXIST and
//! taken out again if any port of it is taken meanwhile.

use std::{fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use nat_common::{
    flow::PROTO_TCP,
    names::MAP_FORWARD,
    port_forward::{ForwardKey, ForwardTarget},
};

use crate::datapath::pins::PinDir;

/// One forward: `count` consecutive external ports from `ext_port` lead to
/// as many internal ports from `int_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub proto: u8,
    pub ext: Ipv4Addr,
    pub ext_port: u16,
    pub int: Ipv4Addr,
    pub int_port: u16,
    pub count: u16,
}

pub fn proto_name(proto: u8) -> &'static str {
    if proto == PROTO_TCP { "tcp" } else { "udp" }
}

fn ports(first: u16, count: u16) -> String {
    if count <= 1 {
        first.to_string()
    } else {
        format!("{first}-{}", u32::from(first) + u32::from(count) - 1)
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} {}:{}",
            proto_name(self.proto),
            self.ext,
            ports(self.ext_port, self.count),
            self.int,
            ports(self.int_port, self.count)
        )
    }
}

impl Forward {
    pub fn last_ext(&self) -> u32 {
        u32::from(self.ext_port) + u32::from(self.count) - 1
    }

    pub fn overlaps(&self, other: &Forward) -> bool {
        self.proto == other.proto
            && self.ext == other.ext
            && u32::from(self.ext_port) <= other.last_ext()
            && u32::from(other.ext_port) <= self.last_ext()
    }

    /// The map entries, one per port.
    fn entries(&self) -> impl Iterator<Item = (ForwardKey, ForwardTarget)> + '_ {
        (0..self.count).map(move |i| {
            (
                ForwardKey::new(
                    self.proto,
                    u32::from(self.ext).to_be(),
                    (self.ext_port + i).to_be(),
                ),
                ForwardTarget {
                    addr: u32::from(self.int).to_be(),
                    port: (self.int_port + i).to_be(),
                    first: self.ext_port,
                    count: self.count,
                    _pad: 0,
                },
            )
        })
    }
}

/// The forward map of an instance.
pub struct ForwardTable {
    map: HashMap<MapData, ForwardKey, ForwardTarget>,
}

impl ForwardTable {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let path = pins.path(MAP_FORWARD);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("cannot open pinned map {}", path.display()))?;
        Self::from_map(Map::from_map_data(data)?)
    }

    pub fn from_map(map: Map) -> Result<Self> {
        Ok(Self {
            map: map.try_into().context("forward map")?,
        })
    }

    /// The forwards, each range once, in port order.
    pub fn list(&self) -> Result<Vec<Forward>> {
        let mut out: Vec<Forward> = Vec::new();
        for item in self.map.iter() {
            let (key, target) = item.context("cannot read the forward map")?;
            if u16::from_be(key.port) != target.first {
                continue;
            }
            out.push(Forward {
                proto: key.proto,
                ext: Ipv4Addr::from(u32::from_be(key.addr)),
                ext_port: target.first,
                int: Ipv4Addr::from(u32::from_be(target.addr)),
                int_port: u16::from_be(target.port),
                count: target.count.max(1),
            });
        }
        out.sort_by_key(|f| (f.proto, f.ext, f.ext_port));
        Ok(out)
    }

    /// Adds a checked forward; fails without a change when it overlaps one.
    pub fn add(&mut self, fwd: &Forward) -> Result<()> {
        if let Some(other) = self.list()?.iter().find(|o| o.overlaps(fwd)) {
            bail!("forward {fwd} overlaps forward {other}");
        }
        let mut added = Vec::new();
        for (key, target) in fwd.entries() {
            if let Err(e) = self.map.insert(key, target, aya_ebpf_noexist()) {
                for key in added {
                    let _ = self.map.remove(&key);
                }
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("cannot add forward {fwd}"));
            }
            added.push(key);
        }
        Ok(())
    }

    /// Removes the forward holding (`proto`, `ext`, `port`), its whole range.
    pub fn delete(&mut self, proto: u8, ext: Ipv4Addr, port: u16) -> Result<Forward> {
        let Some(fwd) = self.list()?.into_iter().find(|f| {
            f.proto == proto
                && f.ext == ext
                && f.ext_port <= port
                && u32::from(port) <= f.last_ext()
        }) else {
            bail!("no {} forward holds {ext}:{port}", proto_name(proto));
        };
        for (key, _) in fwd.entries() {
            self.map
                .remove(&key)
                .with_context(|| format!("cannot remove forward {fwd}"))?;
        }
        Ok(fwd)
    }

    /// Makes the map hold exactly `want` (checked against the NAT's
    /// addresses and each other by the caller): the
    /// forwards no longer wanted go first, so a changed one never overlaps
    /// its old self. Returns (added, removed).
    pub fn replace_all(&mut self, want: &[Forward]) -> Result<(usize, usize)> {
        let have = self.list()?;
        let mut removed = 0;
        for fwd in have.iter().filter(|f| !want.contains(f)) {
            self.delete(fwd.proto, fwd.ext, fwd.ext_port)?;
            removed += 1;
        }
        let mut added = 0;
        for fwd in want.iter().filter(|f| !have.contains(f)) {
            self.add(fwd)?;
            added += 1;
        }
        Ok((added, removed))
    }
}

/// BPF_NOEXIST: a port taken by another `nat forward add` meanwhile fails.
const fn aya_ebpf_noexist() -> u64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_one_entry_per_port() {
        let f = Forward {
            proto: PROTO_TCP,
            ext: Ipv4Addr::new(1, 2, 3, 4),
            ext_port: 65534,
            int: Ipv4Addr::new(10, 0, 0, 5),
            int_port: 1,
            count: 2,
        };
        let entries: Vec<_> = f.entries().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(u16::from_be(entries[1].0.port), 65535);
        assert_eq!(u16::from_be(entries[1].1.port), 2);
        assert_eq!(entries[1].1.first, 65534);
    }
}
