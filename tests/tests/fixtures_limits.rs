//! Fixtures for per-host limits and table pressure in `nat_egress`: the
//! host's count, the refusal at its limit, and the eviction of an idle
//! unanswered opening of the same host when the session table is nearly full.

use std::net::{Ipv4Addr, SocketAddrV4};

use nat_common::{
    config::exhaustion,
    counters::Counter,
    flow::{FlowKey, PROTO_UDP, Session, seen},
    hosts::{HOST_OPENINGS, HostEntry, Opening},
    mapping::{EndpointKey, Mapping, Owner},
    names::{MAP_EIM, MAP_EIM_OWNER, MAP_FWD, MAP_HOSTS, MAP_REV},
};
use nat_tests::fixture::*;
use nat_userspace::datapath::tables::boot_ns;

fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

/// A host entry holding `sessions`, with `openings` remembered.
fn host(addr: Ipv4Addr, sessions: u64, openings: &[SocketAddrV4]) -> (u32, HostEntry) {
    let mut e = HostEntry {
        sessions,
        next: openings.len() as u32,
        addr: be(addr),
        openings: [0; HOST_OPENINGS],
    };
    for (slot, o) in e.openings.iter_mut().zip(openings) {
        *slot = opening(*o).pack();
    }
    (be(addr), e)
}

/// An opening of [`CLIENT`] from `from`'s port toward [`REMOTE`]:80.
fn opening(from: SocketAddrV4) -> Opening {
    Opening {
        daddr: be(REMOTE),
        sport: from.port().to_be(),
        dport: 80u16.to_be(),
    }
}

fn web() -> SocketAddrV4 {
    ep(REMOTE, 80)
}

#[test]
fn fixture_limits_a_new_session_is_counted_and_remembered() {
    let client = ep(CLIENT, 1111);
    let syn = Pkt::tcp(client, web(), tcp_flags::SYN);
    let maps = Maps {
        live: 7,
        ..Maps::nat()
    };
    let out = run(Prog::Egress, &maps, &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    let e = out.hosts[&be(CLIENT)];
    assert_eq!((e.sessions, e.addr, e.next), (1, be(CLIENT), 1));
    assert_eq!(e.openings[0], opening(client).pack());
    assert_eq!(out.live, 8);
    // UDP is counted but is no opening to evict.
    let dns = Pkt::udp(ep(CLIENT, 5353), ep(REMOTE, 53));
    let out = run(Prog::Egress, &Maps::nat(), &dns.frame());
    assert_eq!(out.verdict, Verdict::Pass);
    let e = out.hosts[&be(CLIENT)];
    assert_eq!((e.sessions, e.openings), (1, [0; HOST_OPENINGS]));
}

#[test]
fn fixture_limits_a_flow_joining_its_endpoints_mapping_is_counted() {
    // UDP is endpoint-independent by default: the second destination's
    // flow joins the first one's mapping, and is a session of the host
    // like any other (its end takes one off the count).
    let mut h = harness();
    h.set(&Maps::nat());
    for dst in [ep(REMOTE, 53), ep(REMOTE, 54)] {
        let out = h.run_frame(Prog::Egress, &Pkt::udp(ep(CLIENT, 5353), dst).frame());
        assert_eq!(out.verdict, Verdict::Pass, "{dst}");
    }
    let out = h.run_frame(
        Prog::Egress,
        &Pkt::udp(ep(CLIENT, 5353), ep(REMOTE, 53)).frame(),
    );
    assert_eq!(out.fwd.len(), 2, "{:?}", out.fwd);
    assert_eq!(out.hosts[&be(CLIENT)].sessions, 2);
}

#[test]
fn fixture_limits_a_host_at_its_limit_is_refused_others_are_not() {
    let mut maps = Maps::nat();
    maps.config.max_sessions_per_host = 2;
    maps.hosts.push(host(CLIENT, 2, &[]));
    maps.live = 2;
    let syn = Pkt::tcp(ep(CLIENT, 1111), web(), tcp_flags::SYN).frame();
    let out = run(Prog::Egress, &maps, &syn);
    out.expect(Verdict::Drop, &syn, &[(Counter::HostLimit, 1)]);
    assert!(out.fwd.is_empty() && out.rev.is_empty());
    assert_eq!(
        out.hosts[&be(CLIENT)].sessions,
        2,
        "the refusal gave its slot back"
    );
    assert_eq!(out.live, 2);
    assert!(out.rejects.is_empty());

    // Under on-exhaustion reject it is answered, as exhaustion is.
    let mut rejecting = maps.clone();
    rejecting.config.on_exhaustion = exhaustion::REJECT;
    let out = run(Prog::Egress, &rejecting, &syn);
    out.expect(
        Verdict::Drop,
        &syn,
        &[(Counter::HostLimit, 1), (Counter::Rejected, 1)],
    );
    assert_eq!(out.rejects.len(), 1);

    // Another host is untouched by the first one's limit.
    let other = Pkt::tcp(ep(CLIENT2, 1111), web(), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &other.frame());
    out.expect(
        Verdict::Pass,
        &other.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    assert_eq!(out.hosts[&be(CLIENT2)].sessions, 1);
    assert_eq!(out.hosts[&be(CLIENT)].sessions, 2);

    // The limited host's existing flow goes on.
    let flow = Flow::new(PROTO_TCP, ep(CLIENT, 2222), ep(EXTERNAL, PORT), web());
    let with_flow = maps.clone().session(&flow, seen::SYN, seen::SYN_ACK);
    let ack = Pkt::tcp(ep(CLIENT, 2222), web(), tcp_flags::ACK);
    let out = run(Prog::Egress, &with_flow, &ack.frame());
    out.expect(
        Verdict::Pass,
        &ack.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1)],
    );

    // 0 is no limit.
    let mut unlimited = maps.clone();
    unlimited.config.max_sessions_per_host = 0;
    let out = run(Prog::Egress, &unlimited, &syn);
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(out.hosts[&be(CLIENT)].sessions, 3);
}

#[test]
fn fixture_limits_a_failed_allocation_gives_its_slot_back() {
    // The one port toward the destination is held by another host.
    let holder = Flow::new(PROTO_TCP, ep(CLIENT2, 9999), ep(EXTERNAL, PORT), web());
    let mut maps = Maps::nat().session(&holder, seen::SYN, seen::SYN_ACK);
    maps.live = 1;
    maps.hosts.push(host(CLIENT, 3, &[]));
    let syn = Pkt::tcp(ep(CLIENT, 1111), web(), tcp_flags::SYN).frame();
    let out = run(Prog::Egress, &maps, &syn);
    out.expect(Verdict::Drop, &syn, &[(Counter::AllocFail, 1)]);
    assert_eq!(out.hosts[&be(CLIENT)].sessions, 3);
    assert_eq!(out.live, 1);
    // A host whose only reservation was given back has no entry left.
    maps.hosts.clear();
    let out = run(Prog::Egress, &maps, &syn);
    assert_eq!(out.verdict, Verdict::Drop);
    assert!(!out.hosts.contains_key(&be(CLIENT)), "{:?}", out.hosts);
    assert_eq!(out.live, 1);
}

/// CLIENT's opening from port 1111 toward REMOTE:80 holding the one port,
/// idle `idle_s` seconds, its reverse entry having seen `rev_seen`; the
/// table nearly full (`live` pairs of [`SESSIONS`]).
fn pressure(idle_s: u64, rev_seen: u8, live: u64) -> (Maps, Flow) {
    let flow = Flow::new(PROTO_TCP, ep(CLIENT, 1111), ep(EXTERNAL, PORT), web());
    let ago = boot_ns() - idle_s * 1_000_000_000;
    let mut maps = Maps::nat();
    maps.fwd
        .push((flow.fwd_key(), flow.fwd_entry(seen::SYN, ago)));
    maps.rev
        .push((flow.rev_key(), flow.rev_entry(rev_seen, ago)));
    maps.hosts.push(host(CLIENT, 1, &[ep(CLIENT, 1111)]));
    maps.live = live;
    (maps, flow)
}

#[test]
fn fixture_limits_pressure_evicts_the_hosts_idle_unanswered_opening() {
    let (maps, old) = pressure(5, 0, u64::from(SESSIONS) - 100);
    // A new flow of the same host toward another destination port.
    let syn = Pkt::tcp(ep(CLIENT, 3333), ep(REMOTE, 443), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[
            (Counter::XlateOut, 1),
            (Counter::Opened, 1),
            (Counter::Evicted, 1),
        ],
    );
    // Both halves of the old pair are gone, its key cooling.
    assert!(!out.fwd.contains_key(&old.fwd_key()));
    assert!(!out.rev.contains_key(&old.rev_key()));
    assert!(out.cooldown[&old.rev_key()] > out.after_ns);
    assert_eq!((out.fwd.len(), out.rev.len()), (1, 1));
    let e = out.hosts[&be(CLIENT)];
    assert_eq!(e.sessions, 1, "one evicted, one opened");
    assert_eq!(out.live, u64::from(SESSIONS) - 100);
    assert!(!e.openings.contains(&opening(ep(CLIENT, 1111)).pack()));
}

#[test]
fn fixture_limits_pressure_never_evicts_answered_recent_or_other_hosts_sessions() {
    let full = u64::from(SESSIONS) - 100;
    let syn = Pkt::tcp(ep(CLIENT, 3333), ep(REMOTE, 443), tcp_flags::SYN);
    let cases = [
        ("answered", pressure(5, seen::SYN_ACK, full).0),
        ("refused by a reset", pressure(5, seen::RST, full).0),
        ("idle under 3 s", pressure(1, 0, full).0),
        ("no pressure", pressure(5, 0, 10).0),
    ];
    for (what, maps) in cases {
        let out = run(Prog::Egress, &maps, &syn.frame());
        assert_eq!(out.verdict, Verdict::Pass, "{what}");
        assert!(
            !out.counters.iter().any(|(c, _)| *c == Counter::Evicted),
            "{what}: {:?}",
            out.counters
        );
        assert_eq!((out.fwd.len(), out.rev.len()), (2, 2), "{what}");
        assert_eq!(out.hosts[&be(CLIENT)].sessions, 2, "{what}");
    }
    // Another host's flow never evicts CLIENT's opening.
    let (maps, old) = pressure(5, 0, full);
    let other = Pkt::tcp(ep(CLIENT2, 3333), ep(REMOTE, 443), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &other.frame());
    assert_eq!(out.verdict, Verdict::Pass);
    assert!(out.fwd.contains_key(&old.fwd_key()));
    assert!(!out.counters.iter().any(|(c, _)| *c == Counter::Evicted));
}

#[test]
fn fixture_limits_a_session_released_from_user_space_is_counted_off() {
    // Two UDP flows of one endpoint: one mapping (two references), two
    // sessions of the host. User space frees them as the sweep would.
    let mut h = harness();
    h.set(&Maps {
        live: 0,
        ..Maps::nat()
    });
    let from = ep(CLIENT, 5353);
    let mut keys = Vec::new();
    for dst in [ep(REMOTE, 53), ep(REMOTE, 54)] {
        let out = h.run_frame(Prog::Egress, &Pkt::udp(from, dst).frame());
        assert_eq!(out.verdict, Verdict::Pass, "{dst}");
        let key = FlowKey::new(
            PROTO_UDP,
            be(CLIENT),
            from.port().to_be(),
            be(REMOTE),
            dst.port().to_be(),
        );
        let s = out.fwd[&key];
        keys.push((key, key.translated(s.addr, s.port)));
    }
    let mut tables = h.tables();
    let counts = |h: &Harness| {
        let hosts: std::collections::HashMap<u32, HostEntry> = h.snapshot(MAP_HOSTS);
        let eim: std::collections::HashMap<EndpointKey, Mapping> = h.snapshot(MAP_EIM);
        let owners: std::collections::HashMap<EndpointKey, Owner> = h.snapshot(MAP_EIM_OWNER);
        (
            hosts.get(&be(CLIENT)).map(|e| e.sessions),
            eim.values().map(|m| m.refs).collect::<Vec<_>>(),
            owners.len(),
            h.live(),
        )
    };
    assert_eq!(counts(&h), (Some(2), vec![2], 1, 2));
    let (key, rev_key) = keys[0];
    tables.release_session(&key, &rev_key).expect("release");
    assert_eq!(counts(&h), (Some(1), vec![1], 1, 1));
    // A second release of the same session finds nothing and counts nothing.
    assert!(tables.release_session(&key, &rev_key).is_err());
    assert_eq!(counts(&h), (Some(1), vec![1], 1, 1));
    let (key, rev_key) = keys[1];
    tables.release_session(&key, &rev_key).expect("release");
    assert_eq!(counts(&h), (None, vec![], 0, 0));
    let fwd: std::collections::HashMap<FlowKey, Session> = h.snapshot(MAP_FWD);
    let rev: std::collections::HashMap<FlowKey, Session> = h.snapshot(MAP_REV);
    assert!(fwd.is_empty() && rev.is_empty(), "{fwd:?} {rev:?}");
}
