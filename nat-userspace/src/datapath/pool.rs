//! The external address pool: its value types, the rules its addresses
//! follow (shared by `nat load`, `nat check-config` and a reload) and the
//! pool map's entries.

use std::{collections::HashSet, net::Ipv4Addr};

use nat_common::{
    config::{MAX_POOL, PoolAddr},
    probe::{span, stride_for},
};

/// An IPv4 prefix (host bits clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        };
        u32::from(addr) & mask == u32::from(self.addr)
    }
}

/// The external ports, host byte order, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// The rules the external addresses must follow, as one line.
pub fn check_addresses(external: &[Ipv4Addr], internal: &[Cidr]) -> Result<(), String> {
    if external.len() > MAX_POOL as usize {
        return Err(format!(
            "at most {MAX_POOL} external addresses are supported, {} given",
            external.len()
        ));
    }
    if let Some((addr, cidr)) = external
        .iter()
        .find_map(|a| internal.iter().find(|c| c.contains(*a)).map(|c| (a, c)))
    {
        return Err(format!(
            "external address {addr} lies inside internal prefix {}/{}: its own traffic would be translated",
            cidr.addr, cidr.len
        ));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = external.iter().find(|a| !seen.insert(**a)) {
        return Err(format!("external address {dup} is given twice"));
    }
    Ok(())
}

/// The pool map entries for `external` with `ports`.
pub fn entries(external: &[Ipv4Addr], ports: PortRange) -> Vec<PoolAddr> {
    let step = stride_for(span(ports.lo, ports.hi));
    external
        .iter()
        .map(|a| PoolAddr {
            addr: u32::from(*a).to_be(),
            port_min: ports.lo,
            port_max: ports.hi,
            step,
            _pad: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_rules() {
        let internal = [Cidr {
            addr: Ipv4Addr::new(10, 0, 0, 0),
            len: 8,
        }];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(check_addresses(&[ip("192.0.2.1")], &internal).is_ok());
        assert!(
            check_addresses(&[ip("10.1.2.3")], &internal)
                .unwrap_err()
                .contains("inside internal prefix 10.0.0.0/8")
        );
        assert!(
            check_addresses(&[ip("192.0.2.1"), ip("192.0.2.1")], &internal)
                .unwrap_err()
                .contains("twice")
        );
        let many: Vec<Ipv4Addr> = (1..=17).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        assert!(
            check_addresses(&many, &internal)
                .unwrap_err()
                .contains("at most 16")
        );
    }

    #[test]
    fn entries_cover_the_range() {
        let e = entries(
            &["192.0.2.1".parse().unwrap()],
            PortRange { lo: 1000, hi: 1999 },
        );
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].port_min, e[0].port_max), (1000, 1999));
        assert_eq!(e[0].step, stride_for(1000));
    }
}
