//! Fixtures for frames tagged for a VLAN (802.1Q, 802.1ad and QinQ, the
//! tag in the frame's bytes, as BPF_PROG_TEST_RUN and a VLAN sub-interface
//! with `reorder_hdr off` hand them over): egress never lets one with an
//! internal IPv4 source leave and translates none; ingress and the fast
//! path leave them to the stack untouched, even when the inner packet
//! belongs to a session.

use std::net::SocketAddrV4;

use nat_common::{counters::Counter, flow::seen};
use nat_tests::fixture::*;

const CLIENT_PORT: u16 = 33_333;

fn client() -> SocketAddrV4 {
    ep(CLIENT, CLIENT_PORT)
}

fn https() -> SocketAddrV4 {
    ep(REMOTE, 443)
}

fn flow() -> Flow {
    Flow::new(PROTO_TCP, client(), ep(EXTERNAL, PORT), https())
}

/// Each way a frame can be tagged: one 802.1Q tag, one 802.1ad tag, and
/// QinQ (802.1ad outside, 802.1Q inside).
fn tagged_forms(frame: &[u8]) -> [(&'static str, Vec<u8>); 3] {
    [
        ("802.1Q", vlan_tagged(frame, ETHERTYPE_8021Q, 100)),
        ("802.1ad", vlan_tagged(frame, ETHERTYPE_8021AD, 100)),
        (
            "QinQ",
            vlan_tagged(
                &vlan_tagged(frame, ETHERTYPE_8021Q, 100),
                ETHERTYPE_8021AD,
                20,
            ),
        ),
    ]
}

#[test]
fn fixture_vlan_egress_drops_a_tagged_internal_source() {
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let udp = Pkt::udp(client(), ep(REMOTE, 53)).payload(b"q").frame();
    for frame in [syn, udp] {
        for (form, tagged) in tagged_forms(&frame) {
            let out = run(Prog::Egress, &Maps::nat(), &tagged);
            assert_eq!(out.verdict, Verdict::Drop, "{form}");
            out.expect(Verdict::Drop, &tagged, &[(Counter::TaggedInternal, 1)]);
            assert!(out.fwd.is_empty(), "{form}: no session for a tagged frame");
        }
    }
}

#[test]
fn fixture_vlan_egress_neither_translates_nor_passes_a_tagged_session_packet() {
    let maps = Maps::nat().session(&flow(), seen::SYN, seen::SYN_ACK);
    let ack = Pkt::tcp(client(), https(), tcp_flags::ACK).frame();
    for (form, tagged) in tagged_forms(&ack) {
        let out = run(Prog::Egress, &maps, &tagged);
        assert_eq!(out.verdict, Verdict::Drop, "{form}");
        out.expect(Verdict::Drop, &tagged, &[(Counter::TaggedInternal, 1)]);
    }
}

#[test]
fn fixture_vlan_egress_passes_other_tagged_frames() {
    // The host's own address, and a source in no internal prefix.
    let own = Pkt::udp(ep(EXTERNAL, 5353), ep(REMOTE, 53)).frame();
    let foreign = Pkt::udp(ep(REMOTE, 5353), ep(REMOTE, 53)).frame();
    for frame in [own, foreign] {
        for (form, tagged) in tagged_forms(&frame) {
            let out = run(Prog::Egress, &Maps::nat(), &tagged);
            assert_eq!(out.verdict, Verdict::Pass, "{form}");
            out.expect(Verdict::Pass, &tagged, &[(Counter::NotOursOut, 1)]);
        }
    }
    // Not IPv4 inside, more tags than looked through, or cut before the source.
    let mut v6 = Pkt::udp(client(), https()).frame();
    v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let three = vlan_tagged(
        &vlan_tagged(&vlan_tagged(&syn, ETHERTYPE_8021Q, 1), ETHERTYPE_8021Q, 2),
        ETHERTYPE_8021AD,
        3,
    );
    let cut = vlan_tagged(&syn, ETHERTYPE_8021Q, 100)[..18 + 14].to_vec();
    for (what, frame) in [
        ("IPv6", vlan_tagged(&v6, ETHERTYPE_8021Q, 100)),
        ("three tags", three),
        ("cut", cut),
    ] {
        let out = run(Prog::Egress, &Maps::nat(), &frame);
        assert_eq!(out.verdict, Verdict::Pass, "{what}");
        out.expect(Verdict::Pass, &frame, &[(Counter::NotIpv4, 1)]);
    }
}

#[test]
fn fixture_vlan_ingress_leaves_a_tagged_reply_untouched() {
    let maps = Maps::nat().session(&flow(), seen::SYN, seen::SYN_ACK);
    let reply = Pkt::tcp(https(), ep(EXTERNAL, PORT), tcp_flags::ACK).frame();
    for prog in [Prog::Ingress, Prog::IngressTc] {
        for (form, tagged) in tagged_forms(&reply) {
            let out = run(prog, &maps, &tagged);
            assert_eq!(out.verdict, Verdict::Pass, "{prog:?} {form}");
            out.expect(Verdict::Pass, &tagged, &[(Counter::NotIpv4, 1)]);
        }
    }
}

#[test]
fn fixture_vlan_fast_path_leaves_a_tagged_session_packet_to_the_stack() {
    let f = flow();
    let mut maps = Maps::nat().session(&f, seen::SYN, seen::SYN_ACK).route(
        &f,
        true,
        next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500),
    );
    maps.if_macs.push((EXT_IF, OWN_INT_MAC));
    maps.fast_devs.push(EXT_IF);
    let p = Pkt::tcp(client(), https(), tcp_flags::ACK)
        .ttl(64)
        .macs(OWN_INT_MAC, CLIENT_MAC)
        .frame();
    for prog in [Prog::Fast, Prog::FastTc] {
        for (form, tagged) in tagged_forms(&p) {
            let out = run(prog, &maps, &tagged);
            assert_eq!(out.verdict, Verdict::Pass, "{prog:?} {form}");
            out.expect(Verdict::Pass, &tagged, &[(Counter::FastMiss, 1)]);
        }
    }
}
