//! Static port forwards: `nat forward add|del|list` on the pinned map of a
//! running NAT, `nat load --forward` and the config file's `forward` list.
//!
//! Every check runs before the map changes, so a bad forward is one line
//! and no change; a range is inserted port by port with BPF_NOEXIST and
//! taken out again if any port of it is taken meanwhile.

use std::{fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use nat_common::{
    flow::{PROTO_TCP, PROTO_UDP},
    names::{MAP_FORWARD, MAP_INTERNAL},
    port_forward::{ForwardKey, ForwardTarget, MAX_FORWARD_RANGE},
};

use crate::{cli::Cidr, pins::PinDir, tables::Tables};

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

fn proto_name(proto: u8) -> &'static str {
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
    fn last_ext(&self) -> u32 {
        u32::from(self.ext_port) + u32::from(self.count) - 1
    }

    fn overlaps(&self, other: &Forward) -> bool {
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

pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        _ => Err(format!("'{s}' is not a protocol (tcp or udp)")),
    }
}

/// `IP:PORT` or `IP:LO-HI`, ports 1 to 65535: (address, first port, count).
pub fn parse_endpoint(s: &str) -> Result<(Ipv4Addr, u16, u16), String> {
    let s = s.trim();
    let (ip, range) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not IP:PORT or IP:PORT-PORT"))?;
    let ip = crate::cli::parse_ipv4(ip)?;
    let port = |p: &str| crate::cli::parse_port(p, s);
    let (lo, hi) = match range.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(range)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!(
            "port range in '{s}' is inverted (low end above high end)"
        ));
    }
    let count = u32::from(hi) - u32::from(lo) + 1;
    if count > MAX_FORWARD_RANGE {
        return Err(format!(
            "'{s}' spans {count} ports; a forward spans at most {MAX_FORWARD_RANGE}"
        ));
    }
    Ok((ip, lo, count as u16))
}

/// A forward from its three parts, as `nat forward add` takes them.
pub fn parse(proto: &str, external: &str, internal: &str) -> Result<Forward, String> {
    let proto = parse_proto(proto)?;
    let (ext, ext_port, count) = parse_endpoint(external)?;
    let (int, int_port, int_count) = parse_endpoint(internal)?;
    if int_count != count {
        return Err(format!(
            "{external} spans {count} port(s) and {internal} {int_count}: a range maps port by port"
        ));
    }
    Ok(Forward {
        proto,
        ext,
        ext_port,
        int,
        int_port,
        count,
    })
}

/// `PROTO,EXTERNAL,INTERNAL`, the value of `nat load --forward`.
pub fn parse_flag(s: &str) -> Result<Forward, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [proto, external, internal] = parts[..] else {
        return Err(format!(
            "'{s}' is not PROTO,EXTERNAL_IP:PORT[-PORT],INTERNAL_IP:PORT[-PORT] (e.g. tcp,203.0.113.7:8443,10.0.0.5:443)"
        ));
    };
    parse(proto, external, internal)
}

/// The rules a forward follows against the NAT's addresses: its internal
/// address inside an internal prefix (`internal`), its external one in the pool.
pub fn check_one(
    fwd: &Forward,
    internal: impl Fn(Ipv4Addr) -> bool,
    external: &[Ipv4Addr],
) -> Result<(), String> {
    if !internal(fwd.int) {
        return Err(format!(
            "forward {fwd}: {} is outside the internal prefixes",
            fwd.int
        ));
    }
    if !external.contains(&fwd.ext) {
        return Err(format!(
            "forward {fwd}: {} is not an external address of the pool",
            fwd.ext
        ));
    }
    Ok(())
}

/// Checks a whole set of forwards (the command line's and the file's).
pub fn check_all(
    forwards: &[Forward],
    internal: &[Cidr],
    external: &[Ipv4Addr],
) -> Result<(), String> {
    for (i, fwd) in forwards.iter().enumerate() {
        check_one(fwd, |a| internal.iter().any(|c| c.contains(a)), external)?;
        if let Some(other) = forwards[..i].iter().find(|o| o.overlaps(fwd)) {
            return Err(format!("forward {fwd} overlaps forward {other}"));
        }
    }
    Ok(())
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

    /// Makes the map hold exactly `want` (checked by [`check_all`]): the
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

/// `nat forward add`: checked against the running NAT's prefixes and pool.
pub fn add(pins: &PinDir, fwd: &Forward) -> Result<()> {
    let tables = Tables::open(pins)?;
    let external: Vec<Ipv4Addr> = tables
        .pool()?
        .iter()
        .map(|p| Ipv4Addr::from(u32::from_be(p.addr)))
        .collect();
    let prefixes = internal_prefixes(pins)?;
    let inside = |a: Ipv4Addr| prefixes.get(&Key::new(32, u32::from(a).to_be()), 0).is_ok();
    check_one(fwd, inside, &external).map_err(anyhow::Error::msg)?;
    ForwardTable::open(pins)?.add(fwd)?;
    println!("nat: forward {fwd} added");
    Ok(())
}

fn internal_prefixes(pins: &PinDir) -> Result<LpmTrie<MapData, u32, u8>> {
    let path = pins.path(MAP_INTERNAL);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {}", path.display()))?;
    Map::from_map_data(data)?
        .try_into()
        .context("internal prefix map")
}

/// `nat forward del`.
pub fn delete(pins: &PinDir, proto: u8, ext: Ipv4Addr, port: u16) -> Result<()> {
    let fwd = ForwardTable::open(pins)?.delete(proto, ext, port)?;
    println!("nat: forward {fwd} deleted (its open sessions run until they end)");
    Ok(())
}

/// `nat forward list [--json]`.
pub fn list(pins: &PinDir, json: bool) -> Result<()> {
    let forwards = ForwardTable::open(pins)?.list()?;
    if json {
        let items: Vec<serde_json::Value> = forwards
            .iter()
            .map(|f| {
                serde_json::json!({
                    "protocol": proto_name(f.proto),
                    "external": f.ext.to_string(),
                    "external_port": f.ext_port,
                    "internal": f.int.to_string(),
                    "internal_port": f.int_port,
                    "ports": f.count,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if forwards.is_empty() {
        println!("no port forwards");
    }
    for f in forwards {
        println!("{f}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        crate::cli::parse_cidr(s).unwrap()
    }

    #[test]
    fn parses_single_ports_and_ranges() {
        let f = parse("tcp", "203.0.113.7:8443", "10.0.0.5:443").unwrap();
        assert_eq!((f.ext_port, f.int_port, f.count), (8443, 443, 1));
        assert_eq!(f.to_string(), "tcp 203.0.113.7:8443 10.0.0.5:443");
        let f = parse_flag("udp,203.0.113.7:5000-5009,10.0.0.5:6000-6009").unwrap();
        assert_eq!((f.proto, f.count), (PROTO_UDP, 10));
        assert_eq!(
            f.to_string(),
            "udp 203.0.113.7:5000-5009 10.0.0.5:6000-6009"
        );
    }

    #[test]
    fn refuses_bad_forwards_in_one_line() {
        for (spec, want) in [
            ("tcp,1.2.3.4:0,10.0.0.5:80", "not a port"),
            ("tcp,1.2.3.4:65536,10.0.0.5:80", "not a port"),
            ("tcp,1.2.3.4:80-81,10.0.0.5:80", "port by port"),
            ("tcp,1.2.3.4:90-80,10.0.0.5:80", "inverted"),
            ("tcp,1.2.3.4:1000-3000,10.0.0.5:1000-3000", "at most 1024"),
            ("icmp,1.2.3.4:80,10.0.0.5:80", "not a protocol"),
            ("tcp,1.2.3.4,10.0.0.5:80", "IP:PORT"),
            ("tcp,1.2.3.4:80", "PROTO,EXTERNAL"),
        ] {
            let err = parse_flag(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn checks_addresses_and_overlaps() {
        let internal = [cidr("10.0.0.0/8")];
        let external = [Ipv4Addr::new(1, 2, 3, 4)];
        let ok = parse_flag("tcp,1.2.3.4:80-89,10.0.0.5:80-89").unwrap();
        let udp_same = parse_flag("udp,1.2.3.4:85,10.0.0.6:85").unwrap();
        assert!(check_all(&[ok, udp_same], &internal, &external).is_ok());
        let overlap = parse_flag("tcp,1.2.3.4:89-90,10.0.0.6:89-90").unwrap();
        let err = check_all(&[ok, overlap], &internal, &external).unwrap_err();
        assert!(err.contains("overlaps"), "{err}");
        let outside = parse_flag("tcp,1.2.3.4:90,192.168.0.5:90").unwrap();
        let err = check_all(&[outside], &internal, &external).unwrap_err();
        assert!(err.contains("outside the internal prefixes"), "{err}");
        let foreign = parse_flag("tcp,1.2.3.5:90,10.0.0.5:90").unwrap();
        let err = check_all(&[foreign], &internal, &external).unwrap_err();
        assert!(err.contains("not an external address"), "{err}");
    }

    #[test]
    fn a_range_is_one_entry_per_port() {
        let f = parse_flag("tcp,1.2.3.4:65534-65535,10.0.0.5:1-2").unwrap();
        let entries: Vec<_> = f.entries().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(u16::from_be(entries[1].0.port), 65535);
        assert_eq!(u16::from_be(entries[1].1.port), 2);
        assert_eq!(entries[1].1.first, 65534);
    }
}
