//! Fixtures for `nat_egress`: byte-exact output, verdict, counters and map
//! side effects of the real program for each way a packet can go.

use nat_common::seen_word::bits;
use nat_common::{
    config::{exhaustion, policy},
    counters::Counter,
    flow::{FRAG_OUT, FragEntry, FragKey, seen},
};
use nat_tests::fixture::*;
use nat_userspace::datapath::tables::boot_ns;

const CLIENT_PORT: u16 = 33_333;

fn client() -> std::net::SocketAddrV4 {
    ep(CLIENT, CLIENT_PORT)
}

fn https() -> std::net::SocketAddrV4 {
    ep(REMOTE, 443)
}

fn tcp_flow() -> Flow {
    Flow::new(PROTO_TCP, client(), ep(EXTERNAL, PORT), https())
}

#[test]
fn fixture_egress_syn_opens_a_session() {
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN);
    let out = run(Prog::Egress, &Maps::nat(), &syn.frame());
    let want = syn.clone().with_source(ep(EXTERNAL, PORT));
    out.expect(
        Verdict::Pass,
        &want.frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    let flow = tcp_flow();
    let fwd = out.fwd[&flow.fwd_key()];
    assert_eq!((fwd.addr, fwd.port, fwd.seen), {
        let e = flow.fwd_entry(seen::SYN, 0);
        (e.addr, e.port, e.seen)
    });
    assert!(out.stamped_now(fwd.last_seen));
    let rev = out.rev[&flow.rev_key()];
    assert_eq!((rev.addr, rev.port, rev.seen), {
        let e = flow.rev_entry(0, 0);
        (e.addr, e.port, e.seen)
    });
    assert_eq!((out.fwd.len(), out.rev.len()), (1, 1));
}

#[test]
fn fixture_egress_established_segment_with_ip_options() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(&flow, seen::SYN | seen::ACK, seen::SYN_ACK | seen::ACK);
    // Router alert and a NOP-padded timestamp-style option: 12 bytes.
    let opts = [
        0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x44, 0x06, 0x05, 0x00, 0x00, 0x00,
    ];
    let seg = Pkt::tcp(client(), https(), tcp_flags::ACK | tcp_flags::PSH)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .ip_options(&opts);
    let out = run(Prog::Egress, &maps, &seg.frame());
    let want = seg.clone().with_source(ep(EXTERNAL, PORT));
    out.expect(Verdict::Pass, &want.frame(), &[(Counter::XlateOut, 1)]);
    let fwd = out.fwd[&flow.fwd_key()];
    assert_eq!(
        bits(fwd.seen),
        seen::SYN | seen::ACK,
        "an established segment adds no state bit"
    );
    // What the internal host sent is recorded, host order: its last
    // acknowledgment and window, and where its segment ended.
    assert_eq!((fwd.acked, fwd.window), (0x0a0b_0c0d, 64240));
    assert_eq!(fwd.sent_end, 0x0102_0304 + 18);
    assert!(
        out.stamped_now(fwd.last_seen),
        "the 5 s old entry is touched"
    );
}

#[test]
fn fixture_egress_udp_zero_checksum_stays_zero() {
    let dns = ep(REMOTE, 53);
    let mut q = Pkt::udp(client(), dns).payload(b"odd-length query");
    q.l4 = L4::Udp {
        sport: CLIENT_PORT,
        dport: 53,
        checksum: false,
    };
    let out = run(Prog::Egress, &Maps::nat(), &q.frame());
    let want = q.clone().with_source(ep(EXTERNAL, PORT));
    out.expect(
        Verdict::Pass,
        &want.frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    let flow = Flow::new(PROTO_UDP, client(), ep(EXTERNAL, PORT), dns);
    assert_eq!(out.rev[&flow.rev_key()].port, CLIENT_PORT.to_be());
}

#[test]
fn fixture_egress_internal_fin_marks_the_session() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(&flow, seen::SYN, seen::SYN_ACK);
    let fin = Pkt::tcp(client(), https(), tcp_flags::FIN | tcp_flags::ACK);
    let out = run(Prog::Egress, &maps, &fin.frame());
    out.expect(
        Verdict::Pass,
        &fin.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1)],
    );
    assert_eq!(
        bits(out.fwd[&flow.fwd_key()].seen),
        seen::SYN | seen::ACK | seen::FIN | seen::FIN_FIRST
    );
    assert_eq!(
        out.fwd[&flow.fwd_key()].sent_end,
        0x0102_0304 + 1,
        "a FIN takes a number"
    );
    assert!(out.cooldown.is_empty(), "half a close starts no cooldown");
}

#[test]
fn fixture_egress_drop_no_session() {
    let ack = Pkt::tcp(client(), https(), tcp_flags::ACK).frame();
    let out = run(Prog::Egress, &Maps::nat(), &ack);
    out.expect(Verdict::Drop, &ack, &[(Counter::NoSession, 1)]);
    assert!(out.fwd.is_empty() && out.rev.is_empty());
}

/// Another host holds the only port toward the same destination.
fn port_taken() -> Maps {
    let holder = Flow::new(PROTO_TCP, ep(CLIENT2, 5555), ep(EXTERNAL, PORT), https());
    Maps::nat().session(&holder, seen::SYN, seen::SYN_ACK)
}

#[test]
fn fixture_egress_drop_alloc_failed() {
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let maps = port_taken();
    let out = run(Prog::Egress, &maps, &syn);
    out.expect(Verdict::Drop, &syn, &[(Counter::AllocFail, 1)]);
    assert!(!out.fwd.contains_key(&tcp_flow().fwd_key()));
    assert_eq!(
        (out.fwd.len(), out.rev.len()),
        (1, 1),
        "the holder's pair is untouched"
    );
}

#[test]
fn fixture_egress_same_port_toward_another_destination() {
    // The port is taken toward :443 only; toward :80 it is free.
    let http = ep(REMOTE, 80);
    let syn = Pkt::tcp(client(), http, tcp_flags::SYN);
    let out = run(Prog::Egress, &port_taken(), &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
}

#[test]
fn fixture_egress_drop_strict_cooling() {
    let mut maps = Maps::nat().cooling(&tcp_flow());
    maps.config.policy = policy::STRICT;
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let out = run(Prog::Egress, &maps, &syn);
    // A one-port range: the walk looks at its one port once.
    out.expect(
        Verdict::Drop,
        &syn,
        &[(Counter::CooldownSkip, 1), (Counter::StrictCooling, 1)],
    );
    assert!(out.fwd.is_empty() && out.rev.is_empty());
    assert!(out.cooldown.contains_key(&tcp_flow().rev_key()));
}

#[test]
fn fixture_egress_a_small_range_is_walked_once() {
    // Four ports, each cooling toward the destination: four probes, then the
    // strict policy refuses, where a walk of MAX_PROBES would count 256.
    let mut maps = Maps::nat();
    maps.ports = (PORT, PORT + 3);
    maps.config.policy = policy::STRICT;
    for port in PORT..=PORT + 3 {
        let cooled = Flow::new(PROTO_TCP, client(), ep(EXTERNAL, port), https());
        maps = maps.cooling(&cooled);
    }
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let out = run(Prog::Egress, &maps, &syn);
    out.expect(
        Verdict::Drop,
        &syn,
        &[(Counter::CooldownSkip, 4), (Counter::StrictCooling, 1)],
    );
}

#[test]
fn fixture_egress_fallback_takes_the_cooling_port() {
    let maps = Maps::nat().cooling(&tcp_flow());
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[
            (Counter::XlateOut, 1),
            (Counter::Opened, 1),
            (Counter::CooldownSkip, 1),
            (Counter::Fallback, 1),
        ],
    );
    assert!(
        out.cooldown.is_empty(),
        "the claimed key's cooldown is removed"
    );
    assert!(out.rev.contains_key(&tcp_flow().rev_key()));
}

#[test]
fn fixture_egress_ended_cooldown_is_reused_and_removed() {
    let mut maps = Maps::nat();
    maps.cooldown.push((tcp_flow().rev_key(), boot_ns() - 1));
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    assert!(out.cooldown.is_empty());
}

#[test]
fn fixture_egress_drop_malformed() {
    let good = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    // Total length past the end of the frame.
    let mut long = good.clone();
    long[L3_AT + 2..L3_AT + 4].copy_from_slice(&200u16.to_be_bytes());
    // TCP data offset 4 (16 bytes): below the minimum.
    let mut doff = good.clone();
    doff[L3_AT + 20 + 12] = 4 << 4;
    // IHL 4.
    let mut ihl = good.clone();
    ihl[L3_AT] = 0x44;
    for bad in [long, doff, ihl] {
        let out = run(Prog::Egress, &Maps::nat(), &bad);
        out.expect(Verdict::Drop, &bad, &[(Counter::Malformed, 1)]);
    }
}

#[test]
fn fixture_egress_drop_unsupported() {
    let gre = Pkt::other(CLIENT, REMOTE, 47).frame();
    let out = run(Prog::Egress, &Maps::nat(), &gre);
    out.expect(Verdict::Drop, &gre, &[(Counter::Unsupported, 1)]);
    // ICMP other than echo and the errors, from inside: a timestamp request.
    let mut ts = Pkt::echo(CLIENT, REMOTE, true, 9);
    ts.payload = vec![0; 12];
    let mut frame = ts.frame();
    frame[L3_AT + 20] = 13;
    let out = run(Prog::Egress, &Maps::nat(), &frame);
    out.expect(Verdict::Drop, &frame, &[(Counter::Unsupported, 1)]);
}

#[test]
fn fixture_egress_pass_not_internal() {
    let outsider = ep(std::net::Ipv4Addr::new(192, 0, 2, 10), 4000);
    for frame in [
        Pkt::udp(outsider, ep(REMOTE, 53)).payload(b"x").frame(),
        Pkt::other(*outsider.ip(), REMOTE, 47).frame(),
        Pkt::tcp(outsider, https(), tcp_flags::ACK).frame(),
    ] {
        let out = run(Prog::Egress, &Maps::nat(), &frame);
        out.expect(Verdict::Pass, &frame, &[(Counter::NotOursOut, 1)]);
    }
}

#[test]
fn fixture_egress_pass_not_ipv4() {
    let frame = ipv6_udp_frame();
    let out = run(Prog::Egress, &Maps::nat(), &frame);
    out.expect(Verdict::Pass, &frame, &[(Counter::NotIpv4, 1)]);
}

/// An IPv6 UDP datagram (the test run checks the header it is labelled with).
fn ipv6_udp_frame() -> Vec<u8> {
    let mut f = Pkt::udp(client(), ep(REMOTE, 53)).frame()[..14].to_vec();
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64]);
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0x20; 16]);
    f.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    f
}

#[test]
fn fixture_egress_pass_external_source() {
    // What the TC fast path sent on is translated already.
    let frame = Pkt::tcp(ep(EXTERNAL, PORT), https(), tcp_flags::ACK).frame();
    let out = run(Prog::Egress, &Maps::nat(), &frame);
    out.expect(Verdict::Pass, &frame, &[(Counter::PassExternal, 1)]);
}

fn dns_datagram() -> Pkt {
    Pkt::udp(client(), ep(REMOTE, 53)).payload(&[0x5a; 40])
}

#[test]
fn fixture_egress_first_fragment_is_translated_and_remembered() {
    let dgram = dns_datagram();
    let [first, _] = dgram.fragments(24);
    let out = run(Prog::Egress, &Maps::nat(), &first);
    let [want, _] = dgram.clone().with_source(ep(EXTERNAL, PORT)).fragments(24);
    out.expect(
        Verdict::Pass,
        &want,
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
    let key = FragKey {
        saddr: u32::from(CLIENT).to_be(),
        daddr: u32::from(REMOTE).to_be(),
        id: dgram.id.to_be(),
        proto: PROTO_UDP,
        dir: FRAG_OUT,
    };
    let entry = out.frags.get(&key).expect("fragment entry recorded");
    assert_eq!(entry.addr, u32::from(EXTERNAL).to_be());
    assert!(out.stamped_now(entry.at));
}

fn frag_key(dgram: &Pkt, dir: u8) -> FragKey {
    FragKey {
        saddr: u32::from(dgram.src).to_be(),
        daddr: u32::from(dgram.dst).to_be(),
        id: dgram.id.to_be(),
        proto: dgram.proto(),
        dir,
    }
}

#[test]
fn fixture_egress_later_fragment_follows_the_first() {
    let dgram = dns_datagram();
    let [_, later] = dgram.fragments(24);
    let mut maps = Maps::nat();
    maps.frags.push((
        frag_key(&dgram, FRAG_OUT),
        FragEntry {
            addr: u32::from(EXTERNAL).to_be(),
            _pad: 0,
            at: boot_ns(),
        },
    ));
    let out = run(Prog::Egress, &maps, &later);
    let [_, want] = dgram.clone().with_source(ep(EXTERNAL, PORT)).fragments(24);
    out.expect(Verdict::Pass, &want, &[(Counter::XlateOut, 1)]);
}

#[test]
fn fixture_egress_drop_fragment_unknown() {
    let [_, later] = dns_datagram().fragments(24);
    let out = run(Prog::Egress, &Maps::nat(), &later);
    out.expect(Verdict::Drop, &later, &[(Counter::FragUnknown, 1)]);
    // A stale entry (older than the fragment lifetime) is no better.
    let dgram = dns_datagram();
    let mut maps = Maps::nat();
    maps.frags.push((
        frag_key(&dgram, FRAG_OUT),
        FragEntry {
            addr: u32::from(EXTERNAL).to_be(),
            _pad: 0,
            at: boot_ns() - 31_000_000_000,
        },
    ));
    let out = run(Prog::Egress, &maps, &later);
    out.expect(Verdict::Drop, &later, &[(Counter::FragUnknown, 1)]);
}

#[test]
fn fixture_egress_reject_queues_the_refused_syn() {
    let mut maps = port_taken();
    maps.config.on_exhaustion = exhaustion::REJECT;
    let frame = Pkt::tcp(client(), https(), tcp_flags::SYN)
        .ip_options(&[0x01, 0x01, 0x01, 0x00])
        .frame();
    let out = run(Prog::Egress, &maps, &frame);
    out.expect(
        Verdict::Drop,
        &frame,
        &[(Counter::Rejected, 1), (Counter::AllocFail, 1)],
    );
    // What the daemon's ICMP error quotes: the IPv4 header with its options
    // and the first 8 bytes of TCP.
    assert_eq!(out.rejects, [frame[L3_AT..L3_AT + 24 + 8].to_vec()]);
    // Under the default, nothing is queued.
    let out = run(Prog::Egress, &port_taken(), &frame);
    out.expect(Verdict::Drop, &frame, &[(Counter::AllocFail, 1)]);
    assert!(out.rejects.is_empty());
}

#[test]
fn fixture_egress_syn_after_a_close_reopens_the_mapping() {
    let flow = tcp_flow();
    let maps = Maps::nat().session(
        &flow,
        seen::SYN | seen::FIN | seen::FIN_FIRST,
        seen::SYN_ACK | seen::FIN,
    );
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN);
    let out = run(Prog::Egress, &maps, &syn.frame());
    out.expect(
        Verdict::Pass,
        &syn.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Reopened, 1)],
    );
    let fwd = out.fwd[&flow.fwd_key()];
    assert_eq!(bits(fwd.seen), seen::SYN, "the state starts afresh");
    assert!(out.stamped_now(fwd.last_seen));
}

/// The only port of the range is forwarded for TCP: a new TCP flow gets
/// none, a UDP flow still gets it (a forward is per protocol).
#[test]
fn fixture_egress_never_hands_out_a_forwarded_port() {
    let maps = Maps::nat().forward(PROTO_TCP, ep(EXTERNAL, PORT), ep(CLIENT2, 80));
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).frame();
    let out = run(Prog::Egress, &maps, &syn);
    out.expect(Verdict::Drop, &syn, &[(Counter::AllocFail, 1)]);
    assert!(out.fwd.is_empty() && out.rev.is_empty());
    let datagram = Pkt::udp(client(), https()).payload(b"x");
    let out = run(Prog::Egress, &maps, &datagram.frame());
    out.expect(
        Verdict::Pass,
        &datagram.clone().with_source(ep(EXTERNAL, PORT)).frame(),
        &[(Counter::XlateOut, 1), (Counter::Opened, 1)],
    );
}
