//! Fixtures for ICMP (RFC 5508): echo identifiers translated like ports, and
//! errors translated inside and out, with whole and truncated quotes. The
//! expected quote is the packet as it was on the other side of the NAT,
//! built independently, so every checksum inside it is a full recompute.

use std::net::SocketAddrV4;

use nat_common::{counters::Counter, flow::seen};
use nat_tests::fixture::*;

const INGRESS: [Prog; 2] = [Prog::Ingress, Prog::IngressTc];
const ECHO_ID: u16 = 777;
/// An IPv4 header and the 8 bytes of transport header RFC 792 asks for.
const SHORT_QUOTE: usize = 28;
const PORT_UNREACHABLE: u8 = 3;

fn ext() -> SocketAddrV4 {
    ep(EXTERNAL, PORT)
}

#[test]
fn fixture_icmp_echo_request_opens_a_session() {
    let ping = Pkt::echo(CLIENT, REMOTE, true, ECHO_ID);
    let out = run(Prog::Egress, &Maps::nat(), &ping.frame());
    out.expect(
        Verdict::Pass,
        &ping.clone().with_source(ext()).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    let flow = Flow::new(PROTO_ICMP, ep(CLIENT, ECHO_ID), ext(), ep(REMOTE, 0));
    assert_eq!(out.fwd[&flow.fwd_key()].port, PORT.to_be());
    assert_eq!(out.rev[&flow.rev_key()].port, ECHO_ID.to_be());
}

#[test]
fn fixture_icmp_echo_reply_is_translated_back() {
    let flow = Flow::new(PROTO_ICMP, ep(CLIENT, ECHO_ID), ext(), ep(REMOTE, 0));
    let maps = Maps::nat().session(&flow, 0, 0);
    let pong = Pkt::echo(REMOTE, EXTERNAL, false, PORT);
    let want = pong.clone().with_destination(ep(CLIENT, ECHO_ID)).frame();
    for prog in INGRESS {
        let out = run(prog, &maps, &pong.frame());
        out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        // An echo request from outside is not ours.
        let req = Pkt::echo(REMOTE, EXTERNAL, true, PORT).frame();
        let out = run(prog, &maps, &req);
        out.expect(Verdict::Pass, &req, &[(Counter::NotOursIn, 1)]);
    }
}

/// A UDP flow and its packet as it left (external) and as the client sent it.
fn udp_case() -> (Flow, Pkt, Pkt) {
    let internal = ep(CLIENT, 5353);
    let dns = ep(REMOTE, 53);
    let sent = Pkt::udp(internal, dns)
        .payload(b"a query of some length")
        .ttl(3);
    let left = sent.clone().with_source(ext());
    (Flow::new(PROTO_UDP, internal, ext(), dns), sent, left)
}

fn tcp_case() -> (Flow, Pkt, Pkt) {
    let internal = ep(CLIENT, 33_333);
    let https = ep(REMOTE, 443);
    let sent = Pkt::tcp(internal, https, tcp_flags::ACK | tcp_flags::PSH)
        .payload(b"request bytes")
        .ip_options(&[0x94, 0x04, 0, 0]);
    let left = sent.clone().with_source(ext());
    (Flow::new(PROTO_TCP, internal, ext(), https), sent, left)
}

#[test]
fn fixture_icmp_error_inbound_whole_and_truncated_quotes() {
    for (flow, sent, left) in [udp_case(), tcp_case()] {
        let maps = Maps::nat().session(&flow, seen::SYN, seen::SYN_ACK);
        // A whole quote, one that stops inside the transport header past
        // the ports, and the RFC 792 minimum (for TCP: no checksum in it).
        let whole = left.datagram().len();
        let opts = left.ip_options.len();
        for quote in [whole, opts + 20 + 12, opts + SHORT_QUOTE] {
            for (from, kind, code) in [
                (ROUTER, ICMP_TIME_EXCEEDED, 0),
                (*flow.remote.ip(), ICMP_DEST_UNREACH, PORT_UNREACHABLE),
            ] {
                let error = Pkt::icmp_error(from, EXTERNAL, kind, code, &left, quote);
                let want = Pkt::icmp_error(from, CLIENT, kind, code, &sent, quote).frame();
                for prog in INGRESS {
                    let out = run(prog, &maps, &error.frame());
                    assert_eq!(
                        out.verdict,
                        Verdict::Pass,
                        "{prog:?} proto {} quote {quote}",
                        flow.proto
                    );
                    assert_eq!(out.counters, [(Counter::XlateIn, 1)]);
                    assert_frame(&out.frame, &want);
                }
            }
        }
    }
}

#[test]
fn fixture_icmp_error_about_an_echo() {
    let flow = Flow::new(PROTO_ICMP, ep(CLIENT, ECHO_ID), ext(), ep(REMOTE, 0));
    let maps = Maps::nat().session(&flow, 0, 0);
    let sent = Pkt::echo(CLIENT, REMOTE, true, ECHO_ID).ttl(1);
    let left = sent.clone().with_source(ext());
    for quote in [left.datagram().len(), SHORT_QUOTE] {
        let error = Pkt::icmp_error(ROUTER, EXTERNAL, ICMP_TIME_EXCEEDED, 0, &left, quote);
        let want = Pkt::icmp_error(ROUTER, CLIENT, ICMP_TIME_EXCEEDED, 0, &sent, quote).frame();
        for prog in INGRESS {
            let out = run(prog, &maps, &error.frame());
            out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        }
    }
}

#[test]
fn fixture_icmp_error_inbound_unmatched_passes() {
    let (flow, _, left) = udp_case();
    let error = Pkt::icmp_error(ROUTER, EXTERNAL, ICMP_TIME_EXCEEDED, 0, &left, 100).frame();
    // Addressed to another host than the session's external address.
    let elsewhere = Pkt::icmp_error(
        ROUTER,
        std::net::Ipv4Addr::new(203, 0, 113, 99),
        ICMP_TIME_EXCEEDED,
        0,
        &left,
        100,
    )
    .frame();
    let with_session = Maps::nat().session(&flow, 0, 0);
    for prog in INGRESS {
        for (frame, maps) in [(&error, &Maps::nat()), (&elsewhere, &with_session)] {
            let out = run(prog, maps, frame);
            out.expect(Verdict::Pass, frame, &[(Counter::IcmpUnmatched, 1)]);
        }
    }
}

/// An inbound UDP packet as delivered inside, and as it arrived outside.
fn inbound_udp() -> (Flow, Pkt, Pkt) {
    let (flow, _, _) = udp_case();
    let delivered = Pkt::udp(flow.remote, flow.internal).payload(b"unwanted answer");
    let arrived = delivered.clone().with_destination(ext());
    (flow, delivered, arrived)
}

#[test]
fn fixture_icmp_error_outbound_from_the_client() {
    let (flow, delivered, arrived) = inbound_udp();
    let maps = Maps::nat().session(&flow, 0, 0);
    for quote in [delivered.datagram().len(), SHORT_QUOTE] {
        let error = Pkt::icmp_error(
            CLIENT,
            REMOTE,
            ICMP_DEST_UNREACH,
            PORT_UNREACHABLE,
            &delivered,
            quote,
        );
        let want = Pkt::icmp_error(
            EXTERNAL,
            REMOTE,
            ICMP_DEST_UNREACH,
            PORT_UNREACHABLE,
            &arrived,
            quote,
        );
        let out = run(Prog::Egress, &maps, &error.frame());
        out.expect(Verdict::Pass, &want.frame(), &[(Counter::XlateOut, 1)]);
    }
}

#[test]
fn fixture_icmp_error_outbound_unmatched() {
    let (_, delivered, _) = inbound_udp();
    let from_inside = Pkt::icmp_error(
        CLIENT,
        REMOTE,
        ICMP_DEST_UNREACH,
        PORT_UNREACHABLE,
        &delivered,
        64,
    )
    .frame();
    let out = run(Prog::Egress, &Maps::nat(), &from_inside);
    out.expect(Verdict::Drop, &from_inside, &[(Counter::IcmpUnmatched, 1)]);
    // The NAT host's own error about something else: passed.
    let own = Pkt::icmp_error(
        std::net::Ipv4Addr::new(192, 0, 2, 1),
        REMOTE,
        ICMP_DEST_UNREACH,
        PORT_UNREACHABLE,
        &delivered,
        64,
    )
    .frame();
    let out = run(Prog::Egress, &Maps::nat(), &own);
    out.expect(Verdict::Pass, &own, &[(Counter::NotOursOut, 1)]);
}
