//! The allocator's probe walk reaches every port of the range and none
//! outside it, with the pool's stride and with every flow's own, and finds a
//! free port in a nearly full range within its bound.

use nat_common::{
    config::{MAX_PROBES, PoolAddr, SPILL_PROBES},
    flow::FlowKey,
    probe::{Tour, flow_hash, for_flow, pool_index, preservable, span, stride_for, walk},
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

/// One lap of the walk from `start` stays in `p`'s range and visits each
/// of its ports once.
fn one_lap(p: &PoolAddr, start: u32) -> Result<(), TestCaseError> {
    let (lo, hi) = (p.port_min, p.port_max);
    let n = span(lo, hi) as usize;
    let mut seen = vec![false; n];
    for i in 0..n as u32 {
        let port = walk(p, start, i);
        prop_assert!(port >= lo && port <= hi);
        let slot = (port - lo) as usize;
        prop_assert!(!seen[slot], "port {} visited twice", port);
        seen[slot] = true;
    }
    Ok(())
}

proptest! {
    #[test]
    fn one_lap_visits_each_port_once(lo in 1u16..=65535, len in 1u32..3000, start in any::<u32>()) {
        let hi = (lo as u32 + len - 1).min(65535) as u16;
        one_lap(&pool(lo, hi), start)?;
    }

    #[test]
    fn one_lap_of_a_flows_own_walk_visits_each_port_once(lo in 1u16..=65535, len in 1u32..3000, start in any::<u32>()) {
        let hi = (lo as u32 + len - 1).min(65535) as u16;
        one_lap(&for_flow(&pool(lo, hi), start), start)?;
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

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[test]
fn every_flows_stride_is_coprime_with_every_range_size() {
    for len in 1..=65535u32 {
        let p = pool(1, len as u16);
        for start in [0, 1, 0xdead_beef, u32::MAX, len.wrapping_mul(2_654_435_761)] {
            let step = for_flow(&p, start).step;
            assert_eq!(
                gcd(step, len),
                1,
                "span {len}, start {start:#x}: stride {step}"
            );
        }
    }
}

#[test]
fn flows_get_many_strides() {
    let p = pool(1024, 65535);
    let strides: std::collections::HashSet<u32> = (0..10_000u32)
        .map(|i| for_flow(&p, i.wrapping_mul(0x9e37_79b9)).step)
        .collect();
    assert!(
        strides.len() > 500,
        "only {} distinct strides",
        strides.len()
    );
}

/// The bench's mission load in the allocator's terms: flows toward ONE
/// destination, every port they took still claimed, until 90% of the
/// 64,512 ports of 1024-65535 are taken. One stride for all flows gathered
/// the taken ports into long runs, and dozens of flows met MAX_PROBES taken
/// candidates in a row with one port in ten still free.
#[test]
fn ninety_percent_of_one_destinations_range_leaves_every_flow_a_port_within_its_probes() {
    let p = pool(1024, 65535);
    let n = span(1024, 65535);
    let flows = n * 9 / 10;
    let mut taken = vec![false; n as usize];
    let mut longest = 0;
    for i in 0..flows {
        let client = 0x0a01_0000 + i / 1000;
        let key = FlowKey::new(
            6,
            client.to_be(),
            ((i % 1000) as u16 + 1).to_be(),
            0xc633_6407u32.to_be(),
            80u16.to_be(),
        );
        let start = flow_hash(&key, 0x5eed_1234);
        let flow = for_flow(&p, start);
        let found = (0..MAX_PROBES).find(|&j| {
            let slot = (walk(&flow, start, j) - 1024) as usize;
            !std::mem::replace(&mut taken[slot], true)
        });
        let Some(j) = found else {
            panic!("flow {i} of {flows} found no free port in {MAX_PROBES} candidates");
        };
        longest = longest.max(j + 1);
    }
    assert!(
        longest < MAX_PROBES / 2,
        "the longest walk took {longest} candidates"
    );
}

proptest! {
    /// The tour numbers every (address, index) it visits once: the host's
    /// own address for min(256, span) candidates, each other one for
    /// min(64, span), in pool order, and nothing past its length.
    #[test]
    fn the_tour_visits_each_candidate_once(span in 0u32..70_000, addresses in 0u32..=16) {
        let tour = Tour::new(span, addresses);
        let mut expected = Vec::new();
        for a in 0..addresses {
            let window = if a == 0 { span.min(MAX_PROBES) } else { span.min(SPILL_PROBES) };
            expected.extend((0..window).map(|j| (a, j)));
        }
        let visited: Vec<(u32, u32)> = (0..tour.len()).map(|i| tour.at(i).expect("inside the tour")).collect();
        prop_assert_eq!(visited, expected);
        prop_assert_eq!(tour.at(tour.len()), None);
    }
}
