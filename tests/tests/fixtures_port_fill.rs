//! Fixture for the allocator's probe walk on a nearly full range: many
//! flows toward ONE remote port (the bench's server-first load), every key
//! they took still claimed, until 90% of the range is in use. Each of them must
//! find one of the free ports within its probes: a flow that does not is
//! dropped (`drop_alloc_failed`), and so are its SYN retransmissions, which
//! walk the same candidates, so the client's connect times out.

use std::net::Ipv4Addr;

use nat_common::{counters::Counter, probe::PROBE_BUCKETS};
use nat_tests::fixture::*;

/// The bench's range: 64,512 ports toward one destination.
const LO: u16 = 1024;
const HI: u16 = 65535;
/// The bench's server-first budget: 90% of the range.
const FLOWS: u32 = 58_060;
/// Source ports below the range, so that no flow keeps its own port
/// (preservation) and every one of them walks.
const PORTS_PER_HOST: u32 = 1000;

#[test]
fn fixture_port_fill_ninety_percent_of_one_destinations_range_leaves_no_flow_without_a_port() {
    let mut h = Harness::load_sized(2 * FLOWS.next_power_of_two());
    h.set(&Maps {
        ports: (LO, HI),
        ..Maps::nat()
    });
    let before = h.counters();
    let remote = ep(REMOTE, 80);
    let mut dropped = Vec::new();
    for i in 0..FLOWS {
        let host = i / PORTS_PER_HOST;
        let client = Ipv4Addr::new(10, 1, (host / 250) as u8, (host % 250 + 1) as u8);
        let sport = (i % PORTS_PER_HOST + 1) as u16;
        let syn = Pkt::tcp(ep(client, sport), remote, tcp_flags::SYN);
        if h.run_verdict(Prog::Egress, &syn.frame()) != Verdict::Pass {
            dropped.push((i, ep(client, sport)));
        }
    }
    let after = h.counters();
    let moved = |c: Counter| after[c as usize] - before[c as usize];
    assert_eq!(
        (moved(Counter::AllocFail), dropped.len()),
        (0, 0),
        "SYNs that found no free port among {} still free (first: {:?}); probe histogram: {:?}",
        (HI - LO + 1) as u32 - FLOWS,
        dropped.first(),
        probe_histogram(&h)
    );
    assert_eq!(moved(Counter::Opened), u64::from(FLOWS));
    assert_eq!(moved(Counter::Fallback), 0, "no flow took a cooling port");
}

/// Allocations per probe bucket (all CPUs).
fn probe_histogram(h: &Harness) -> Vec<u64> {
    (0..PROBE_BUCKETS).map(|b| h.probes(b)).collect()
}
