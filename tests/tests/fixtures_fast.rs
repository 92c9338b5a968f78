//! Fixtures for the fast path: `nat_fast` and `nat_fast_tc` on the internal
//! side, and the reply redirect of `nat_ingress` and `nat_ingress_tc`. The
//! session's cached route is pre-filled and fresh, so no route lookup runs;
//! the expected frame has the translation, the TTL decrement and the next
//! hop's link addresses.

use std::net::SocketAddrV4;

use nat_common::seen_word::bits;
use nat_common::{counters::Counter, flow::seen};
use nat_tests::fixture::*;

const CLIENT_PORT: u16 = 33_333;

fn client() -> SocketAddrV4 {
    ep(CLIENT, CLIENT_PORT)
}

fn https() -> SocketAddrV4 {
    ep(REMOTE, 443)
}

fn ext() -> SocketAddrV4 {
    ep(EXTERNAL, PORT)
}

fn flow(proto: u8) -> Flow {
    Flow::new(proto, client(), ext(), https())
}

/// An established session whose forward entry routes to the external interface.
fn outbound_state(proto: u8) -> Maps {
    let f = flow(proto);
    let mut maps = Maps::nat().session(&f, seen::SYN, seen::SYN_ACK).route(
        &f,
        true,
        next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500),
    );
    // XDP test runs arrive on loopback, EXT_IF; TC runs need no MAC entry.
    maps.if_macs.push((EXT_IF, OWN_INT_MAC));
    maps.fast_devs.push(EXT_IF);
    maps
}

/// An outbound packet as the client sends it to the NAT's internal MAC.
fn outbound(proto: u8, to_mac: [u8; 6]) -> Pkt {
    let p = if proto == PROTO_TCP {
        Pkt::tcp(client(), https(), tcp_flags::ACK | tcp_flags::PSH)
    } else {
        Pkt::udp(client(), https())
    };
    p.payload(b"fast path payload")
        .ttl(64)
        .macs(to_mac, CLIENT_MAC)
}

/// The client's packet as the NAT forwards it: translated, one hop older,
/// new link addresses.
fn forwarded(p: &Pkt) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .with_source(ext())
        .ttl(ttl)
        .macs(NEXT_HOP_MAC, OWN_EXT_MAC)
        .frame()
}

#[test]
fn fixture_fast_xdp_translates_and_forwards() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let p = outbound(proto, OWN_INT_MAC);
        let out = run(Prog::Fast, &outbound_state(proto), &p.frame());
        out.expect(Verdict::Redirect, &forwarded(&p), &[(Counter::FastOut, 1)]);
        assert!(out.stamped_now(out.fwd[&flow(proto).fwd_key()].last_seen));
    }
}

#[test]
fn fixture_fast_tc_translates_and_forwards() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        // PACKET_HOST in a TC test run: sent to loopback's (zero) MAC.
        let p = outbound(proto, LOOPBACK_MAC).ip_options(&[0x94, 0x04, 0, 0]);
        let out = run(Prog::FastTc, &outbound_state(proto), &p.frame());
        out.expect(Verdict::Redirect, &forwarded(&p), &[(Counter::FastOut, 1)]);
    }
}

#[test]
fn fixture_fast_tracks_tcp_state() {
    let p = Pkt::tcp(client(), https(), tcp_flags::FIN | tcp_flags::ACK)
        .ttl(9)
        .macs(OWN_INT_MAC, CLIENT_MAC);
    let out = run(Prog::Fast, &outbound_state(PROTO_TCP), &p.frame());
    out.expect(Verdict::Redirect, &forwarded(&p), &[(Counter::FastOut, 1)]);
    assert_eq!(
        bits(out.fwd[&flow(PROTO_TCP).fwd_key()].seen),
        seen::SYN | seen::ACK | seen::FIN | seen::FIN_FIRST
    );
}

#[test]
fn fixture_fast_leaves_misses_to_the_stack() {
    let state = outbound_state(PROTO_TCP);
    let cases: Vec<(&str, Vec<u8>, Maps)> = vec![
        (
            "no session",
            Pkt::tcp(ep(CLIENT, 1), https(), tcp_flags::ACK)
                .macs(OWN_INT_MAC, CLIENT_MAC)
                .frame(),
            state.clone(),
        ),
        (
            "TTL 1 expires here",
            outbound(PROTO_TCP, OWN_INT_MAC).ttl(1).frame(),
            state.clone(),
        ),
        (
            "ICMP",
            Pkt::echo(CLIENT, REMOTE, true, 5)
                .macs(OWN_INT_MAC, CLIENT_MAC)
                .frame(),
            state.clone(),
        ),
        (
            "a fragment",
            outbound(PROTO_UDP, OWN_INT_MAC).fragments(8)[0].clone(),
            outbound_state(PROTO_UDP),
        ),
    ];
    for prog in [Prog::Fast, Prog::FastTc] {
        for (what, frame, maps) in &cases {
            let mut frame = frame.clone();
            if prog == Prog::FastTc {
                frame[..6].copy_from_slice(&LOOPBACK_MAC);
            }
            let out = run(prog, maps, &frame);
            assert_eq!(out.verdict, Verdict::Pass, "{prog:?}: {what}");
            assert_eq!(out.counters, [(Counter::FastMiss, 1)], "{prog:?}: {what}");
            assert_frame(&out.frame, &frame);
        }
    }
    // Sent to another host's MAC: not ours to forward.
    let other = outbound(PROTO_TCP, [0x02, 0x99, 0, 0, 0, 9]).frame();
    for prog in [Prog::Fast, Prog::FastTc] {
        let out = run(prog, &state, &other);
        out.expect(Verdict::Pass, &other, &[(Counter::FastMiss, 1)]);
    }
}

#[test]
fn fixture_fast_routed_elsewhere_goes_to_the_stack_untouched() {
    // The cached route leaves by an internal interface: not a NAT flow.
    let f = flow(PROTO_TCP);
    let mut hairpin = Maps::nat().session(&f, seen::SYN, seen::SYN_ACK).route(
        &f,
        true,
        next_hop(INT_IF, CLIENT_MAC, OWN_INT_MAC, 1500),
    );
    hairpin.if_macs.push((EXT_IF, OWN_INT_MAC));
    hairpin.fast_devs.extend([EXT_IF, INT_IF]);
    // The external interface is missing from the XDP device map.
    let mut no_dev = outbound_state(PROTO_TCP);
    no_dev.fast_devs.clear();
    let xdp = outbound(PROTO_TCP, OWN_INT_MAC).frame();
    let tc = outbound(PROTO_TCP, LOOPBACK_MAC).frame();
    for (prog, maps, frame) in [
        (Prog::Fast, &hairpin, &xdp),
        (Prog::FastTc, &hairpin, &tc),
        (Prog::Fast, &no_dev, &xdp),
    ] {
        let out = run(prog, maps, frame);
        out.expect(Verdict::Pass, frame, &[(Counter::FastRoute, 1)]);
        assert_eq!(
            bits(out.fwd[&f.fwd_key()].seen),
            seen::SYN,
            "{prog:?}: nothing tracked for a packet left to the stack"
        );
    }
}

/// An established session whose reverse entry routes to the internal interface.
fn inbound_state(proto: u8) -> Maps {
    let f = flow(proto);
    let mut maps = Maps::nat().session(&f, seen::SYN, seen::SYN_ACK).route(
        &f,
        false,
        next_hop(INT_IF, CLIENT_MAC, OWN_INT_MAC, 1500),
    );
    // XDP test runs arrive on loopback, which is EXT_IF.
    maps.if_macs.push((EXT_IF, OWN_EXT_MAC));
    maps.fast_devs.extend([EXT_IF, INT_IF]);
    maps
}

fn reply(proto: u8, to_mac: [u8; 6]) -> Pkt {
    let p = if proto == PROTO_TCP {
        Pkt::tcp(https(), ext(), tcp_flags::ACK)
    } else {
        Pkt::udp(https(), ext())
    };
    p.payload(b"reply payload")
        .ttl(57)
        .macs(to_mac, NEXT_HOP_MAC)
}

fn delivered(p: &Pkt) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .with_destination(client())
        .ttl(ttl)
        .macs(CLIENT_MAC, OWN_INT_MAC)
        .frame()
}

#[test]
fn fixture_fast_ingress_xdp_redirects_replies() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let p = reply(proto, OWN_EXT_MAC);
        let out = run(Prog::Ingress, &inbound_state(proto), &p.frame());
        out.expect(Verdict::Redirect, &delivered(&p), &[(Counter::FastIn, 1)]);
    }
}

#[test]
fn fixture_fast_ingress_tc_redirects_replies() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let p = reply(proto, LOOPBACK_MAC);
        let out = run(Prog::IngressTc, &inbound_state(proto), &p.frame());
        out.expect(Verdict::Redirect, &delivered(&p), &[(Counter::FastIn, 1)]);
    }
}

#[test]
fn fixture_fast_ingress_without_redirect_is_translated_only() {
    // TTL 1: translated, left to the stack, which answers time exceeded.
    for (prog, mac) in [
        (Prog::Ingress, OWN_EXT_MAC),
        (Prog::IngressTc, LOOPBACK_MAC),
    ] {
        let p = reply(PROTO_TCP, mac).ttl(1);
        let out = run(prog, &inbound_state(PROTO_TCP), &p.frame());
        out.expect(
            Verdict::Pass,
            &p.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1)],
        );
    }
    // The internal interface is not in the device map.
    let mut no_dev = inbound_state(PROTO_UDP);
    no_dev.fast_devs.retain(|&d| d != INT_IF);
    for (prog, mac) in [
        (Prog::Ingress, OWN_EXT_MAC),
        (Prog::IngressTc, LOOPBACK_MAC),
    ] {
        let p = reply(PROTO_UDP, mac);
        let out = run(prog, &no_dev, &p.frame());
        out.expect(
            Verdict::Pass,
            &p.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1)],
        );
    }
}
