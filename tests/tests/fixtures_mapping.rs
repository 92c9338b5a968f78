//! Fixtures for endpoint-independent mappings in the real programs: flows of
//! one internal endpoint share its external port, the TIME_WAIT rule wins
//! over the mapping, and the ingress miss path filters as `filtering-udp`
//! says, in XDP and TC alike.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::*;
use nat_common::{
    counters::Counter,
    mapping::{SESSION_INBOUND, SESSION_MAPPED, filtering},
};

const INGRESS: [Prog; 2] = [Prog::Ingress, Prog::IngressTc];
/// A second and a third host on the outside.
const REMOTE2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const REMOTE3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn client() -> SocketAddrV4 {
    ep(CLIENT, 5000)
}

/// A NAT with 100 ports, so that a port per destination could differ.
fn maps() -> Maps {
    let mut maps = Maps::nat();
    maps.ports = (PORT, PORT + 99);
    maps
}

/// Sends a datagram from the client to `to` and returns the external
/// endpoint it left from, checking the frame, counters and mapping mark.
fn send(h: &mut Harness, to: SocketAddrV4, mapped: bool) -> SocketAddrV4 {
    let pkt = Pkt::udp(client(), to).payload(b"query");
    let out = h.run_frame(Prog::Egress, &pkt.frame());
    let flow_key = Flow::new(PROTO_UDP, client(), ep(EXTERNAL, 0), to).fwd_key();
    let fwd = out.fwd[&flow_key];
    let ext = ep(EXTERNAL, u16::from_be(fwd.port));
    let mark = if mapped { SESSION_MAPPED } else { 0 };
    assert_eq!(fwd.mapping, mark, "mapping mark of the session to {to}");
    let want = pkt.with_source(ext).frame();
    assert_frame(&out.frame, &want);
    assert!(
        out.counters.contains(&(Counter::XlateOut, 1))
            && out.counters.contains(&(Counter::Opened, 1)),
        "{:?}",
        out.counters
    );
    ext
}

#[test]
fn fixture_mapping_flows_of_one_endpoint_share_its_port() {
    let mut h = harness();
    h.set(&maps());
    let ext = send(&mut h, ep(REMOTE, 53), true);
    assert_eq!(send(&mut h, ep(REMOTE, 123), true), ext);
    assert_eq!(send(&mut h, ep(REMOTE2, 53), true), ext);
}

#[test]
fn fixture_mapping_port_dependent_mode_marks_nothing() {
    let mut h = harness();
    let mut m = maps();
    m.config.mapping_udp = nat_common::mapping::mode::ADDRESS_PORT_DEPENDENT;
    h.set(&m);
    send(&mut h, ep(REMOTE, 53), false);
    send(&mut h, ep(REMOTE2, 53), false);
}

#[test]
fn fixture_mapping_yields_to_a_cooling_key() {
    let mut h = harness();
    h.set(&maps());
    let ext = send(&mut h, ep(REMOTE, 53), true);
    // The same first flow again, with the mapping's key toward REMOTE2:53 cooling.
    let cooling = Flow::new(PROTO_UDP, client(), ext, ep(REMOTE2, 53));
    h.set(&maps().cooling(&cooling));
    assert_eq!(send(&mut h, ep(REMOTE, 53), true), ext);
    let pkt = Pkt::udp(client(), ep(REMOTE2, 53)).payload(b"query");
    let out = h.run_frame(Prog::Egress, &pkt.frame());
    let fwd = out.fwd[&Flow::new(PROTO_UDP, client(), ext, ep(REMOTE2, 53)).fwd_key()];
    let other = ep(EXTERNAL, u16::from_be(fwd.port));
    assert_ne!(other, ext, "the cooling key was handed out");
    assert_eq!(fwd.mapping, 0, "a port for this destination alone");
    assert!(
        out.counters.contains(&(Counter::EimConflict, 1))
            && out.counters.contains(&(Counter::XlateOut, 1)),
        "{:?}",
        out.counters
    );
    assert_frame(&out.frame, &pkt.with_source(other).frame());
}

/// From `from` to the mapping of the client's first flow (to REMOTE:53).
fn inbound(prog: Prog, filter: u32, from: SocketAddrV4) -> (Outcome, SocketAddrV4, Pkt) {
    let mut h = harness();
    let mut m = maps();
    m.config.filtering_udp = filter;
    h.set(&m);
    let ext = send(&mut h, ep(REMOTE, 53), true);
    let pkt = Pkt::udp(from, ext).payload(b"hello");
    (h.run_frame(prog, &pkt.frame()), ext, pkt)
}

#[test]
fn fixture_mapping_filter_admits_a_known_address() {
    for prog in INGRESS {
        let (out, ext, pkt) = inbound(prog, filtering::ADDRESS_DEPENDENT, ep(REMOTE, 54));
        out.expect(
            Verdict::Pass,
            &pkt.with_destination(client()).frame(),
            &[(Counter::EimInbound, 1), (Counter::XlateIn, 1)],
        );
        let opened = Flow::new(PROTO_UDP, client(), ext, ep(REMOTE, 54));
        assert_eq!(
            out.fwd[&opened.fwd_key()].mapping,
            SESSION_MAPPED | SESSION_INBOUND,
            "{prog:?}"
        );
        let rev = out.rev[&opened.rev_key()];
        assert_eq!(ep_of(rev.addr, rev.port), client(), "{prog:?}");
    }
}

#[test]
fn fixture_mapping_filter_refuses_an_unknown_address() {
    for prog in INGRESS {
        let (out, _, pkt) = inbound(prog, filtering::ADDRESS_DEPENDENT, ep(REMOTE3, 53));
        out.expect(Verdict::Pass, &pkt.frame(), &[(Counter::Filtered, 1)]);
        assert_eq!(out.fwd.len(), 1, "{prog:?}: no session opened");
    }
}

#[test]
fn fixture_mapping_filter_values() {
    for prog in INGRESS {
        let (out, _, _) = inbound(prog, filtering::ENDPOINT_INDEPENDENT, ep(REMOTE3, 53));
        assert!(out.counters.contains(&(Counter::EimInbound, 1)), "{prog:?}");
        let (out, _, pkt) = inbound(prog, filtering::ADDRESS_PORT_DEPENDENT, ep(REMOTE, 54));
        out.expect(Verdict::Pass, &pkt.frame(), &[(Counter::Filtered, 1)]);
    }
}

fn ep_of(addr_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr_be)), u16::from_be(port_be))
}
