//! The allocator's probe walk reaches every port of the range and none outside it.

use nat_common::{
    config::PoolAddr,
    flow::FlowKey,
    probe::{flow_hash, pool_index, preservable, span, stride_for, walk},
};
use proptest::prelude::*;

fn pool(lo: u16, hi: u16) -> PoolAddr {
    PoolAddr {
        addr: 0,
        port_min: lo,
        port_max: hi,
        step: stride_for(span(lo, hi)),
        _pad: 0,
    }
}

proptest! {
    #[test]
    fn one_lap_visits_each_port_once(lo in 1u16..=65535, len in 1u32..3000, start in any::<u32>()) {
        let hi = (lo as u32 + len - 1).min(65535) as u16;
        let p = pool(lo, hi);
        let n = span(lo, hi) as usize;
        let mut seen = vec![false; n];
        for i in 0..n as u32 {
            let port = walk(&p, start, i);
            prop_assert!(port >= lo && port <= hi);
            let slot = (port - lo) as usize;
            prop_assert!(!seen[slot], "port {} visited twice", port);
            seen[slot] = true;
        }
    }

    #[test]
    fn pool_index_in_bounds(addr in any::<u32>(), seed in any::<u32>(), len in 1u32..=16) {
        prop_assert!(pool_index(addr, seed, len) < len);
    }
}

#[test]
fn full_range_is_covered() {
    let p = pool(1, 65535);
    let mut seen = vec![false; 65536];
    for i in 0..65535 {
        seen[walk(&p, 12345, i) as usize] = true;
    }
    assert!(!seen[0]);
    assert!(seen[1..].iter().all(|s| *s));
}

#[test]
fn preservation_only_inside_range() {
    let p = pool(1000, 2000);
    assert!(preservable(&p, 1000) && preservable(&p, 2000));
    assert!(!preservable(&p, 999) && !preservable(&p, 2001));
}

#[test]
fn start_points_spread_out() {
    // Flows that differ only in their source port must not share start points.
    let mut starts = std::collections::HashSet::new();
    for sport in 0..1000u16 {
        let k = FlowKey::new(6, 0x0a00_0001, sport.to_be(), 0xc612_0002, 80u16.to_be());
        starts.insert(flow_hash(&k, 7) % 4096);
    }
    assert!(
        starts.len() > 800,
        "only {} distinct start points",
        starts.len()
    );
    assert_eq!(stride_for(1), 1);
    assert_eq!(span(10, 9), 0);
}
