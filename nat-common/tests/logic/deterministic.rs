//! Deterministic NAT's formula is exact both ways: every port of every
//! share maps back to its host, and every port that maps to a host lies in
//! that host's share.

use nat_common::deterministic::{Layout, Numbering, Prefix};
use proptest::prelude::*;

/// Both directions over every port of every pool address.
fn exact(l: &Layout) -> Result<(), TestCaseError> {
    for address in 0..l.addresses {
        for port in 0..=u16::MAX {
            if let Some(host) = l.host(address, port) {
                let share = l.share(host).expect("a host the reverse names has a share");
                prop_assert_eq!(share.address, address);
                prop_assert!(share.port_min <= port && port <= share.port_max);
            }
        }
    }
    for host in 0..l.hosts {
        let Some(share) = l.share(host) else {
            prop_assert_eq!(l.range(), 0);
            continue;
        };
        prop_assert!(share.port_min >= l.port_min && share.port_max <= l.port_max);
        for port in share.port_min..=share.port_max {
            prop_assert_eq!(l.host(share.address, port), Some(host));
        }
    }
    Ok(())
}

#[test]
fn a_slash_24_on_four_addresses_is_exact_for_every_port() {
    let prefixes = [Prefix {
        network: 0x0a00_0100,
        len: 24,
    }];
    let n = Numbering {
        prefixes: &prefixes,
    };
    let l = Layout {
        hosts: n.hosts(),
        addresses: 4,
        port_min: 1024,
        port_max: 65535,
    };
    exact(&l).unwrap();
    for host in 0..n.hosts() {
        let addr = n.address(host).unwrap();
        assert_eq!(n.index(addr), Some(host));
    }
}

proptest! {
    #[test]
    fn any_layout_is_exact(hosts in 1u64..600, addresses in 1u32..6, lo in 1u16..60000, len in 0u32..5000) {
        let hi = (lo as u32 + len).min(u16::MAX as u32) as u16;
        exact(&Layout { hosts, addresses, port_min: lo, port_max: hi })?;
    }

    #[test]
    fn numbering_round_trips(a in 0u32..1 << 20, b in 0u32..1 << 20, la in 20u8..=32, lb in 20u8..=32) {
        let mask = |len: u8| if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
        let pa = Prefix { network: (0x0a00_0000 | a) & mask(la), len: la };
        let pb = Prefix { network: (0x6440_0000 | b) & mask(lb), len: lb };
        let prefixes = [pa, pb];
        let n = Numbering { prefixes: &prefixes };
        for index in 0..n.hosts() {
            let addr = n.address(index).unwrap();
            prop_assert_eq!(n.index(addr), Some(index));
        }
    }
}
