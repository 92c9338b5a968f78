//! Fixtures for the ingress programs, XDP (`nat_ingress`) and TC
//! (`nat_ingress_tc`): every case runs through both and must give the same
//! bytes, verdict and counters.

use std::net::SocketAddrV4;

use nat_common::seen_word::bits;
use nat_common::{
    config::Config,
    counters::Counter,
    flow::{FRAG_IN, FragEntry, FragKey, seen},
};
use nat_tests::fixture::*;
use nat_userspace::datapath::tables::boot_ns;

const INGRESS: [Prog; 2] = [Prog::Ingress, Prog::IngressTc];
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

fn tcp_flow() -> Flow {
    Flow::new(PROTO_TCP, client(), ext(), https())
}

#[test]
fn fixture_ingress_reply_is_translated_back() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(&flow, seen::SYN | seen::ACK, seen::SYN_ACK | seen::ACK);
    let reply =
        Pkt::tcp(https(), ext(), tcp_flags::ACK | tcp_flags::PSH).payload(b"HTTP/1.1 200 OK");
    let want = reply.clone().with_destination(client()).frame();
    for prog in INGRESS {
        let out = run(prog, &maps, &reply.frame());
        out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        let rev = out.rev[&flow.rev_key()];
        assert_eq!(bits(rev.seen), seen::SYN_ACK | seen::ACK, "{prog:?}");
        assert!(out.stamped_now(rev.last_seen), "{prog:?}: touched");
        // The remote's numbers, host order, in its own entry.
        assert_eq!(
            (rev.acked, rev.window, rev.sent_end),
            (0x0a0b_0c0d, 64240, 0x0102_0304 + 15),
            "{prog:?}"
        );
    }
}

#[test]
fn fixture_ingress_syn_ack_establishes() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(&flow, seen::SYN, 0);
    let synack = Pkt::tcp(https(), ext(), tcp_flags::SYN | tcp_flags::ACK);
    for prog in INGRESS {
        let out = run(prog, &maps, &synack.frame());
        out.expect(
            Verdict::Pass,
            &synack.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1)],
        );
        let rev = out.rev[&flow.rev_key()];
        assert_eq!(bits(rev.seen), seen::SYN_ACK | seen::ACK, "{prog:?}");
        assert_eq!(
            (rev.acked, rev.window, rev.sent_end, rev.wscale),
            (0x0a0b_0c0d, 64240, 0x0102_0304 + 1, 0),
            "{prog:?}: a SYN-ACK without options"
        );
    }
}

#[test]
fn fixture_ingress_udp_with_ip_options_and_zero_checksum() {
    let dns = ep(REMOTE, 53);
    let flow = Flow::new(PROTO_UDP, ep(CLIENT, 5353), ext(), dns);
    let maps = Maps::nat().session(&flow, 0, 0);
    for checksum in [true, false] {
        let mut answer = Pkt::udp(dns, ext())
            .payload(b"answer!")
            .ip_options(&[0x01, 0x01, 0x01, 0x00, 0x94, 0x04, 0x00, 0x00]);
        answer.l4 = L4::Udp {
            sport: 53,
            dport: PORT,
            checksum,
        };
        let want = answer.clone().with_destination(ep(CLIENT, 5353)).frame();
        for prog in INGRESS {
            let out = run(prog, &maps, &answer.frame());
            out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        }
    }
}

#[test]
fn fixture_ingress_pass_no_session() {
    let stray = Pkt::tcp(https(), ext(), tcp_flags::ACK).frame();
    let gre = Pkt::other(REMOTE, EXTERNAL, 47).frame();
    for prog in INGRESS {
        for frame in [&stray, &gre] {
            let out = run(prog, &Maps::nat(), frame);
            out.expect(Verdict::Pass, frame, &[(Counter::NotOursIn, 1)]);
        }
    }
}

#[test]
fn fixture_ingress_pass_not_ipv4() {
    let mut frame = Pkt::tcp(https(), ext(), tcp_flags::ACK).frame();
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    for prog in INGRESS {
        let out = run(prog, &Maps::nat(), &frame);
        out.expect(Verdict::Pass, &frame, &[(Counter::NotIpv4, 1)]);
    }
}

#[test]
fn fixture_ingress_drop_malformed() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(&flow, seen::SYN, seen::SYN_ACK);
    let good = Pkt::tcp(https(), ext(), tcp_flags::ACK).frame();
    let mut long = good.clone();
    long[L3_AT + 2..L3_AT + 4].copy_from_slice(&100u16.to_be_bytes());
    let mut doff = good.clone();
    doff[L3_AT + 20 + 12] = 15 << 4;
    for prog in INGRESS {
        for bad in [&long, &doff] {
            let out = run(prog, &maps, bad);
            out.expect(Verdict::Drop, bad, &[(Counter::Malformed, 1)]);
        }
    }
}

/// The remote answers the first FIN, which the internal host sent.
#[test]
fn fixture_ingress_close_starts_the_cooldown() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(
        &flow,
        seen::SYN | seen::ACK | seen::FIN | seen::FIN_FIRST,
        seen::SYN_ACK | seen::ACK,
    );
    let fin = Pkt::tcp(https(), ext(), tcp_flags::FIN | tcp_flags::ACK);
    let ms = Config::default().cooldown_local_close_ms * 1_000_000;
    for prog in INGRESS {
        let out = run(prog, &maps, &fin.frame());
        out.expect(
            Verdict::Pass,
            &fin.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1)],
        );
        assert_eq!(
            bits(out.rev[&flow.rev_key()].seen),
            seen::SYN_ACK | seen::ACK | seen::FIN
        );
        let until = out.cooldown[&flow.rev_key()];
        assert!(
            (out.before_ns + ms..=out.after_ns + ms).contains(&until),
            "{prog:?}: cooldown of the internal-first close from the close"
        );
    }
}

#[test]
fn fixture_ingress_reset_starts_the_reset_cooldown() {
    let flow = tcp_flow();
    let client_sent = Sent {
        acked: 0x0102_0304,
        window: 1000,
        ..Sent::default()
    };
    let maps = Maps::nat()
        .session(&flow, seen::SYN | seen::ACK, seen::SYN_ACK | seen::ACK)
        .sent(&flow, true, client_sent);
    // Exact: its sequence number is the internal host's acknowledgment.
    let rst = Pkt::tcp(https(), ext(), tcp_flags::RST);
    let ms = Config::default().cooldown_rst_ms * 1_000_000;
    for prog in INGRESS {
        let out = run(prog, &maps, &rst.frame());
        out.expect(
            Verdict::Pass,
            &rst.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1)],
        );
        let until = out.cooldown[&flow.rev_key()];
        assert!((out.before_ns + ms..=out.after_ns + ms).contains(&until));
    }
}

#[test]
fn fixture_ingress_ack_to_a_syn_is_a_collision() {
    let flow = tcp_flow();
    // The SYN ended one before what the answers acknowledge.
    let syn = Sent {
        sent_end: 0x0a0b_0c0d,
        ..Sent::default()
    };
    let maps = Maps::nat()
        .session(&flow, seen::SYN, 0)
        .sent(&flow, true, syn);
    let ack = Pkt::tcp(https(), ext(), tcp_flags::ACK);
    let rst = Pkt::tcp(https(), ext(), tcp_flags::RST | tcp_flags::ACK);
    for prog in INGRESS {
        let out = run(prog, &maps, &ack.frame());
        out.expect(
            Verdict::Pass,
            &ack.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1), (Counter::Collision, 1)],
        );
        assert_eq!(
            bits(out.rev[&flow.rev_key()].seen),
            seen::ODD_ANSWER | seen::ACK
        );
        let out = run(prog, &maps, &rst.frame());
        out.expect(
            Verdict::Pass,
            &rst.clone().with_destination(client()).frame(),
            &[(Counter::XlateIn, 1), (Counter::SynRefused, 1)],
        );
        assert_eq!(
            bits(out.rev[&flow.rev_key()].seen),
            seen::ODD_ANSWER | seen::RST | seen::ACK
        );
    }
}

fn answer_datagram() -> Pkt {
    Pkt::udp(ep(REMOTE, 53), ext()).payload(&[0xa5; 48])
}

fn udp_flow() -> Flow {
    Flow::new(PROTO_UDP, ep(CLIENT, 5353), ext(), ep(REMOTE, 53))
}

#[test]
fn fixture_ingress_first_fragment_is_translated_and_remembered() {
    let dgram = answer_datagram();
    let maps = Maps::nat().session(&udp_flow(), 0, 0);
    let [first, _] = dgram.fragments(16);
    let [want, _] = dgram
        .clone()
        .with_destination(ep(CLIENT, 5353))
        .fragments(16);
    let key = FragKey {
        saddr: u32::from(REMOTE).to_be(),
        daddr: u32::from(EXTERNAL).to_be(),
        id: dgram.id.to_be(),
        proto: PROTO_UDP,
        dir: FRAG_IN,
    };
    for prog in INGRESS {
        let out = run(prog, &maps, &first);
        out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        let entry = out.frags.get(&key).expect("fragment entry");
        assert_eq!(entry.addr, u32::from(CLIENT).to_be());
    }
}

#[test]
fn fixture_ingress_later_fragment() {
    let dgram = answer_datagram();
    let [_, later] = dgram.fragments(16);
    let [_, want] = dgram
        .clone()
        .with_destination(ep(CLIENT, 5353))
        .fragments(16);
    let mut known = Maps::nat();
    known.frags.push((
        FragKey {
            saddr: u32::from(REMOTE).to_be(),
            daddr: u32::from(EXTERNAL).to_be(),
            id: dgram.id.to_be(),
            proto: PROTO_UDP,
            dir: FRAG_IN,
        },
        FragEntry {
            addr: u32::from(CLIENT).to_be(),
            _pad: 0,
            at: boot_ns(),
        },
    ));
    for prog in INGRESS {
        let out = run(prog, &known, &later);
        out.expect(Verdict::Pass, &want, &[(Counter::XlateIn, 1)]);
        // Unknown from outside: possibly the host's own, passed as it came.
        let out = run(prog, &Maps::nat(), &later);
        out.expect(Verdict::Pass, &later, &[(Counter::FragUnknown, 1)]);
    }
}

/// A SYN from outside to a port forward opens the pair toward the forward's
/// internal endpoint and is translated there; a segment without SYN finds
/// nothing and passes, as to any port without a session.
#[test]
fn fixture_ingress_port_forward_opens_a_session() {
    let remote = ep(REMOTE, 5555);
    let public = ep(EXTERNAL, 8443);
    let server = ep(CLIENT, 443);
    let maps = Maps::nat().forward(PROTO_TCP, public, server);
    let flow = Flow::new(PROTO_TCP, server, public, remote);
    let syn = Pkt::tcp(remote, public, tcp_flags::SYN);
    let want = syn.clone().with_destination(server).frame();
    for prog in INGRESS {
        let out = run(prog, &maps, &syn.frame());
        out.expect(
            Verdict::Pass,
            &want,
            &[(Counter::XlateIn, 1), (Counter::ForwardOpened, 1)],
        );
        let rev = out.rev[&flow.rev_key()];
        assert_eq!(
            (rev.addr, rev.port),
            (flow.rev_entry(0, 0).addr, 443u16.to_be())
        );
        assert_eq!(bits(rev.seen), seen::SYN, "{prog:?}");
        let fwd = out.fwd[&flow.fwd_key()];
        assert_eq!(
            (fwd.addr, fwd.port),
            (flow.fwd_entry(0, 0).addr, 8443u16.to_be())
        );
        assert_eq!(bits(fwd.seen), 0, "{prog:?}");
        let ack = Pkt::tcp(remote, public, tcp_flags::ACK).frame();
        let out = run(prog, &maps, &ack);
        out.expect(Verdict::Pass, &ack, &[(Counter::NotOursIn, 1)]);
        assert!(out.rev.is_empty() && out.fwd.is_empty(), "{prog:?}");
    }
    // UDP opens with any datagram.
    let dns = ep(CLIENT, 53);
    let maps = Maps::nat().forward(PROTO_UDP, public, dns);
    let query = Pkt::udp(remote, public).payload(b"query");
    for prog in INGRESS {
        let out = run(prog, &maps, &query.frame());
        out.expect(
            Verdict::Pass,
            &query.clone().with_destination(dns).frame(),
            &[(Counter::XlateIn, 1), (Counter::ForwardOpened, 1)],
        );
        assert_eq!((out.rev.len(), out.fwd.len()), (1, 1), "{prog:?}");
    }
}

/// A port forward's remote connects again from the same port while its
/// last connection is closed or reset (the session still lingers for
/// `timeout-tcp-closed`): its SYN reopens the session in a new
/// generation, as a SYN from inside reopens an outbound one, instead of
/// counting as a segment of the dead connection, whose state would expire
/// the new one. The internal server's SYN-ACK then establishes it.
#[test]
fn fixture_ingress_port_forward_reopens_a_closed_session() {
    use nat_common::{
        mapping::SESSION_INBOUND,
        seen_word::{current_rev_bits, generation},
        tcp_state::{State, state_of},
    };
    let remote = ep(REMOTE, 5555);
    let public = ep(EXTERNAL, 8443);
    let server = ep(CLIENT, 443);
    let flow = Flow::new(PROTO_TCP, server, public, remote);
    let ended = [
        // A FIN each way, the remote's first.
        (
            seen::SYN_ACK | seen::ACK | seen::FIN,
            seen::SYN | seen::ACK | seen::FIN | seen::FIN_FIRST,
        ),
        // Reset by the internal server.
        (seen::SYN_ACK | seen::ACK | seen::RST, seen::SYN | seen::ACK),
        // Reset by the remote.
        (seen::SYN_ACK | seen::ACK, seen::SYN | seen::ACK | seen::RST),
    ];
    let state = |fwd: u64, rev: u64| state_of(PROTO_TCP, bits(fwd), current_rev_bits(fwd, rev));
    for (fwd_seen, rev_seen) in ended {
        let mut maps = Maps::nat()
            .forward(PROTO_TCP, public, server)
            .session(&flow, fwd_seen, rev_seen);
        maps.fwd[0].1.mapping = SESSION_INBOUND;
        let syn = Pkt::tcp(remote, public, tcp_flags::SYN).seq_ack(0x3000, 0);
        for prog in INGRESS {
            let out = run(prog, &maps, &syn.frame());
            out.expect(
                Verdict::Pass,
                &syn.clone().with_destination(server).frame(),
                &[(Counter::XlateIn, 1), (Counter::Reopened, 1)],
            );
            let (fwd, rev) = (out.fwd[&flow.fwd_key()], out.rev[&flow.rev_key()]);
            assert_eq!(generation(fwd.seen), 1, "{prog:?}: a new generation");
            assert_eq!(
                (bits(fwd.seen), generation(rev.seen), bits(rev.seen)),
                (0, 1, seen::SYN)
            );
            assert_eq!(state(fwd.seen, rev.seen), State::SynSent, "{prog:?}");
            assert_eq!(rev.sent_end, 0x3001, "{prog:?}: the new SYN's end");
            assert!(out.stamped_now(rev.last_seen), "{prog:?}");
        }
        // The server's answer through egress establishes the new connection.
        let mut harness = harness();
        harness.run(Prog::Ingress, &maps, &syn.frame());
        let synack =
            Pkt::tcp(server, remote, tcp_flags::SYN | tcp_flags::ACK).seq_ack(0x8000, 0x3001);
        let out = harness.run_frame(Prog::Egress, &synack.frame());
        out.expect(
            Verdict::Pass,
            &synack.clone().with_source(public).frame(),
            &[(Counter::XlateOut, 1)],
        );
        let (fwd, rev) = (out.fwd[&flow.fwd_key()], out.rev[&flow.rev_key()]);
        assert_eq!(state(fwd.seen, rev.seen), State::Established);
        assert_eq!((fwd.acked, fwd.sent_end), (0x3001, 0x8001));
    }
    // An outbound session is the internal host's to reopen: a remote's SYN
    // on it when closed is a segment of the closed connection.
    let (fwd_seen, rev_seen) = ended[1];
    let maps = Maps::nat().session(&tcp_flow(), fwd_seen, rev_seen);
    let syn = Pkt::tcp(https(), ext(), tcp_flags::SYN);
    for prog in INGRESS {
        let out = run(prog, &maps, &syn.frame());
        assert!(
            !out.counters.iter().any(|(c, _)| *c == Counter::Reopened),
            "{prog:?}"
        );
        assert_eq!(generation(out.fwd[&tcp_flow().fwd_key()].seen), 0);
    }
}
