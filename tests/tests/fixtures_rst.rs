//! Fixtures for resets (RFC 5961 as a middlebox applies it) and the
//! window scale options they are judged by: for each window scale 0, 7 and
//! 14, a reset that is exact, ends the sender's train, lies in the window
//! without being exact, lies just past it, or answers a SYN, from outside
//! through both ingress programs and from inside through egress and both
//! fast paths. Each case checks the verdict, the frame, the counters that
//! moved and the session afterwards: only an exact reset closes it and
//! cools its key; an inexact one passes and leaves both entries as they
//! were, not even refreshed; one outside the window is dropped.

use std::net::SocketAddrV4;

use nat_common::{
    config::Config,
    counters::Counter,
    flow::{Session, seen},
    seen_word::{bits, current_rev_bits},
    tcp_state::{State, WSCALE_SENT, state_of},
};
use nat_tests::fixture::*;

const CLIENT_PORT: u16 = 33_333;
const OUTSIDE: [Prog; 2] = [Prog::Ingress, Prog::IngressTc];
const INSIDE: [Prog; 3] = [Prog::Egress, Prog::Fast, Prog::FastTc];
const SCALES: [u8; 3] = [0, 7, 14];

/// What the internal host acknowledged last, and where the remote's last
/// segment ended: 200 bytes on their way, inside the internal host's window.
const INTERNAL_ACKED: u32 = 0x4000_0000;
const REMOTE_END: u32 = INTERNAL_ACKED + 200;
/// The same the other way, across the wrap of the sequence space.
const REMOTE_ACKED: u32 = 0xffff_ff00;
const INTERNAL_END: u32 = REMOTE_ACKED.wrapping_add(0x300);
/// Both hosts' window field.
const WINDOW: u16 = 1000;

fn client() -> SocketAddrV4 {
    ep(CLIENT, CLIENT_PORT)
}

fn https() -> SocketAddrV4 {
    ep(REMOTE, 443)
}

fn ext() -> SocketAddrV4 {
    ep(EXTERNAL, PORT)
}

fn flow() -> Flow {
    Flow::new(PROTO_TCP, client(), ext(), https())
}

fn established(scale: u8) -> Maps {
    let f = flow();
    let ws = WSCALE_SENT | scale;
    let mut maps = Maps::nat()
        .session(&f, seen::SYN | seen::ACK, seen::SYN_ACK | seen::ACK)
        .sent(
            &f,
            true,
            Sent {
                acked: INTERNAL_ACKED,
                window: WINDOW,
                wscale: ws,
                sent_end: INTERNAL_END,
                ..Sent::default()
            },
        )
        .sent(
            &f,
            false,
            Sent {
                acked: REMOTE_ACKED,
                window: WINDOW,
                wscale: ws,
                sent_end: REMOTE_END,
                ..Sent::default()
            },
        )
        .route(&f, true, next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500));
    // The fast path's: XDP runs arrive on loopback (EXT_IF).
    maps.if_macs.push((EXT_IF, OWN_INT_MAC));
    maps.fast_devs.push(EXT_IF);
    maps
}

/// A reset from the remote, and the frame the ingress programs pass.
fn from_outside(seq: u32, ack: Option<u32>) -> (Pkt, Vec<u8>) {
    let flags = tcp_flags::RST | ack.map_or(0, |_| tcp_flags::ACK);
    let p = Pkt::tcp(https(), ext(), flags).seq_ack(seq, ack.unwrap_or(0));
    let want = p.clone().with_destination(client()).frame();
    (p, want)
}

/// A reset from the internal host as `prog` gets it, and the frame it
/// passes (egress) or redirects (the fast paths).
fn from_inside(prog: Prog, seq: u32, ack: Option<u32>) -> (Pkt, Vec<u8>) {
    let flags = tcp_flags::RST | ack.map_or(0, |_| tcp_flags::ACK);
    let p = Pkt::tcp(client(), https(), flags)
        .seq_ack(seq, ack.unwrap_or(0))
        .ttl(64);
    match prog {
        Prog::Egress => {
            let want = p.clone().with_source(ext()).frame();
            (p, want)
        }
        _ => {
            let to = if prog == Prog::Fast {
                OWN_INT_MAC
            } else {
                LOOPBACK_MAC
            };
            let p = p.macs(to, CLIENT_MAC);
            let want = p
                .clone()
                .with_source(ext())
                .ttl(63)
                .macs(NEXT_HOP_MAC, OWN_EXT_MAC)
                .frame();
            (p, want)
        }
    }
}

/// The outcome counter of a packet `prog` lets through.
fn passed(prog: Prog) -> Counter {
    match prog {
        Prog::Egress => Counter::XlateOut,
        Prog::Fast | Prog::FastTc => Counter::FastOut,
        _ => Counter::XlateIn,
    }
}

fn verdict_passed(prog: Prog) -> Verdict {
    match prog {
        Prog::Fast | Prog::FastTc => Verdict::Redirect,
        _ => Verdict::Pass,
    }
}

fn state(out: &Outcome) -> State {
    let f = flow();
    let (fwd, rev) = (out.fwd[&f.fwd_key()].seen, out.rev[&f.rev_key()].seen);
    state_of(PROTO_TCP, bits(fwd), current_rev_bits(fwd, rev))
}

fn entry(
    entries: &[(nat_common::flow::FlowKey, Session)],
    key: nat_common::flow::FlowKey,
) -> Session {
    entries
        .iter()
        .find(|(k, _)| *k == key)
        .expect("the case's session")
        .1
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Closes the session: state reset, the reset cooldown from now.
    Exact,
    /// Passes; the session as it was, not even refreshed.
    Inexact,
    /// Dropped and counted; the session as it was.
    OutOfWindow,
}

#[track_caller]
fn check(
    prog: Prog,
    maps: &Maps,
    p: &Pkt,
    passed_frame: &[u8],
    want: Want,
    events: &[Counter],
    what: &str,
) {
    let out = run(prog, maps, &p.frame());
    let ctx = format!("{prog:?}, {what}");
    let f = flow();
    let mut counters: Vec<(Counter, u64)> = events.iter().map(|&c| (c, 1)).collect();
    match want {
        Want::Exact | Want::Inexact => counters.push((passed(prog), 1)),
        Want::OutOfWindow => counters.push((Counter::RstOutOfWindow, 1)),
    }
    if want == Want::Inexact {
        counters.push((Counter::RstInexact, 1));
    }
    let (verdict, frame) = match want {
        Want::OutOfWindow => (Verdict::Drop, p.frame()),
        _ => (verdict_passed(prog), passed_frame.to_vec()),
    };
    assert_eq!(out.verdict, verdict, "{ctx}: verdict");
    let mut sorted = counters.clone();
    sorted.sort_by_key(|&(c, _)| c as u32);
    assert_eq!(out.counters, sorted, "{ctx}: counters");
    assert_frame(&out.frame, &frame);
    match want {
        Want::Exact => {
            assert_eq!(state(&out), State::Reset, "{ctx}: the reset closes");
            let ms = Config::default().cooldown_rst_ms * 1_000_000;
            let until = out.cooldown[&f.rev_key()];
            assert!(
                (out.before_ns + ms..=out.after_ns + ms).contains(&until),
                "{ctx}: the reset cooldown from now"
            );
        }
        Want::Inexact | Want::OutOfWindow => {
            // Both entries byte for byte, last_seen included (the fast
            // path's cached route aside, which its lookup may refresh).
            let strip = |mut s: Session| {
                s.hop = Default::default();
                s
            };
            assert_eq!(
                strip(out.fwd[&f.fwd_key()]),
                strip(entry(&maps.fwd, f.fwd_key())),
                "{ctx}: forward entry untouched"
            );
            assert_eq!(
                strip(out.rev[&f.rev_key()]),
                strip(entry(&maps.rev, f.rev_key())),
                "{ctx}: reverse entry untouched"
            );
            assert!(out.cooldown.is_empty(), "{ctx}: no cooldown");
        }
    }
}

#[test]
fn fixture_rst_from_outside_counts_only_when_exact() {
    for scale in SCALES {
        let maps = established(scale);
        let size = u32::from(WINDOW) << scale;
        let cases = [
            (
                "exact: the internal host's acknowledgment",
                INTERNAL_ACKED,
                Want::Exact,
            ),
            ("the end of the remote's own train", REMOTE_END, Want::Exact),
            (
                "in window, inexact, at its far edge",
                INTERNAL_ACKED + size - 1,
                Want::Inexact,
            ),
            ("in window, inexact", INTERNAL_ACKED + 1, Want::Inexact),
            (
                "just past the window",
                INTERNAL_ACKED + size,
                Want::OutOfWindow,
            ),
            (
                "just before the window",
                INTERNAL_ACKED - 1,
                Want::OutOfWindow,
            ),
        ];
        for (what, seq, want) in cases {
            let (p, passed) = from_outside(seq, None);
            for prog in OUTSIDE {
                check(
                    prog,
                    &maps,
                    &p,
                    &passed,
                    want,
                    &[],
                    &format!("scale {scale}, {what}"),
                );
            }
        }
    }
}

#[test]
fn fixture_rst_from_inside_counts_only_when_exact() {
    for scale in SCALES {
        let maps = established(scale);
        let size = u32::from(WINDOW) << scale;
        let cases = [
            (
                "exact: the remote's acknowledgment",
                REMOTE_ACKED,
                Want::Exact,
            ),
            (
                "the end of the internal host's own train",
                INTERNAL_END,
                Want::Exact,
            ),
            (
                "in window, inexact, at its far edge",
                REMOTE_ACKED.wrapping_add(size - 1),
                Want::Inexact,
            ),
            (
                "just past the window",
                REMOTE_ACKED.wrapping_add(size),
                Want::OutOfWindow,
            ),
            (
                "half the sequence space away",
                REMOTE_ACKED.wrapping_add(1 << 31),
                Want::OutOfWindow,
            ),
        ];
        for (what, seq, want) in cases {
            for prog in INSIDE {
                let (p, passed) = from_inside(prog, seq, Some(INTERNAL_ACKED));
                check(
                    prog,
                    &maps,
                    &p,
                    &passed,
                    want,
                    &[],
                    &format!("scale {scale}, {what}"),
                );
            }
        }
    }
}

/// A reset answering the internal host's SYN counts when it acknowledges
/// exactly that SYN (RFC 793, SYN-SENT), whatever its sequence number.
#[test]
fn fixture_rst_answering_a_syn_from_outside() {
    const ISN: u32 = 0x1234_5678;
    for scale in SCALES {
        let f = flow();
        let maps = Maps::nat().session(&f, seen::SYN, 0).sent(
            &f,
            true,
            Sent {
                wscale: WSCALE_SENT | scale,
                sent_end: ISN + 1,
                ..Sent::default()
            },
        );
        let what = format!("scale {scale}");
        let (p, passed) = from_outside(0, Some(ISN + 1));
        for prog in OUTSIDE {
            check(
                prog,
                &maps,
                &p,
                &passed,
                Want::Exact,
                &[Counter::SynRefused],
                &what,
            );
        }
        for (seq, ack) in [(0, Some(ISN + 2)), (0, Some(ISN)), (ISN + 1, None)] {
            let (p, passed) = from_outside(seq, ack);
            for prog in OUTSIDE {
                check(prog, &maps, &p, &passed, Want::OutOfWindow, &[], &what);
            }
        }
    }
}

/// The internal server of a port forward refuses the remote's SYN: the
/// reset acknowledges that SYN exactly, or it is dropped.
#[test]
fn fixture_rst_answering_a_syn_from_inside() {
    const ISN: u32 = 0xfedc_ba98;
    for scale in SCALES {
        let f = flow();
        let maps = Maps::nat()
            .session(&f, 0, seen::SYN)
            .sent(
                &f,
                false,
                Sent {
                    wscale: WSCALE_SENT | scale,
                    sent_end: ISN + 1,
                    ..Sent::default()
                },
            )
            .route(&f, true, next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500));
        let mut maps = maps;
        maps.if_macs.push((EXT_IF, OWN_INT_MAC));
        maps.fast_devs.push(EXT_IF);
        let what = format!("scale {scale}");
        for prog in INSIDE {
            let (p, passed) = from_inside(prog, 0, Some(ISN + 1));
            check(prog, &maps, &p, &passed, Want::Exact, &[], &what);
            let (p, passed) = from_inside(prog, 0, Some(ISN + 7));
            check(prog, &maps, &p, &passed, Want::OutOfWindow, &[], &what);
        }
    }
}

/// Toward a host the NAT has seen nothing of in this connection (a port
/// forward's internal host before it answered), a reset can be judged by
/// no window: it passes untouched and changes nothing.
#[test]
fn fixture_rst_toward_a_silent_host_changes_nothing() {
    let f = flow();
    let maps = Maps::nat().session(&f, 0, seen::SYN).sent(
        &f,
        false,
        Sent {
            sent_end: 77,
            ..Sent::default()
        },
    );
    for seq in [0, 76, 12_345] {
        let (p, passed) = from_outside(seq, None);
        for prog in OUTSIDE {
            check(
                prog,
                &maps,
                &p,
                &passed,
                Want::Inexact,
                &[],
                &format!("seq {seq}"),
            );
        }
    }
}

/// Linux's SYN options with a window scale option of `shift`.
fn syn_options(shift: u8) -> [u8; 20] {
    [
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, shift,
    ]
}

/// The window scale option of the opening SYN and SYN-ACK is read by every
/// program that sees them and kept in the session, with where the SYN
/// ended and what the SYN-ACK acknowledged; a shift above 14 is taken as
/// 14, a SYN without the option has none.
#[test]
fn fixture_rst_syns_window_scales_are_kept() {
    let f = flow();
    for (shift, kept) in [
        (0, WSCALE_SENT),
        (7, WSCALE_SENT | 7),
        (15, WSCALE_SENT | 14),
    ] {
        let syn = Pkt::tcp(client(), https(), tcp_flags::SYN)
            .seq_ack(0x1000, 0)
            .tcp_options(&syn_options(shift));
        let out = run(Prog::Egress, &Maps::nat(), &syn.frame());
        assert_eq!(out.verdict, Verdict::Pass);
        let fwd = out.fwd[&f.fwd_key()];
        assert_eq!(
            (fwd.wscale, fwd.sent_end),
            (kept, 0x1001),
            "egress SYN, shift {shift}"
        );
        assert_eq!(bits(fwd.seen), seen::SYN);

        let synack = Pkt::tcp(https(), ext(), tcp_flags::SYN | tcp_flags::ACK)
            .seq_ack(0x9000, 0x1001)
            .window(64_240)
            .tcp_options(&syn_options(shift));
        let maps = Maps::nat().session(&f, seen::SYN, 0).sent(
            &f,
            true,
            Sent {
                wscale: WSCALE_SENT | 7,
                sent_end: 0x1001,
                ..Sent::default()
            },
        );
        for prog in OUTSIDE {
            let out = run(prog, &maps, &synack.frame());
            assert_eq!(out.verdict, Verdict::Pass, "{prog:?}");
            let rev = out.rev[&f.rev_key()];
            let s = u32::from(kept & !WSCALE_SENT);
            // A SYN-ACK's window is never scaled: kept at the scale of the
            // windows after it, rounded up.
            let window = (64_240u32).div_ceil(1 << s) as u16;
            assert_eq!(
                (rev.wscale, rev.acked, rev.window, rev.sent_end),
                (kept, 0x1001, window, 0x9001),
                "{prog:?}, shift {shift}"
            );
            assert_eq!(bits(rev.seen), seen::SYN_ACK | seen::ACK);
        }
    }
    // Without the option: none, and the SYN-ACK's window as it is.
    let syn = Pkt::tcp(client(), https(), tcp_flags::SYN).seq_ack(5, 0);
    let out = run(Prog::Egress, &Maps::nat(), &syn.frame());
    assert_eq!(out.fwd[&f.fwd_key()].wscale, 0);
}

/// A port forward's internal server answers through the fast path: its
/// SYN-ACK's window scale option is kept too.
#[test]
fn fixture_rst_fast_path_keeps_the_syn_acks_window_scale() {
    let f = flow();
    let mut maps = Maps::nat().session(&f, 0, seen::SYN).route(
        &f,
        true,
        next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500),
    );
    maps.if_macs.push((EXT_IF, OWN_INT_MAC));
    maps.fast_devs.push(EXT_IF);
    for (prog, mac) in [(Prog::Fast, OWN_INT_MAC), (Prog::FastTc, LOOPBACK_MAC)] {
        let synack = Pkt::tcp(client(), https(), tcp_flags::SYN | tcp_flags::ACK)
            .seq_ack(0x500, 0x77)
            .tcp_options(&syn_options(9))
            .ttl(64)
            .macs(mac, CLIENT_MAC);
        let out = run(prog, &maps, &synack.frame());
        assert_eq!(out.verdict, Verdict::Redirect, "{prog:?}");
        let fwd = out.fwd[&f.fwd_key()];
        assert_eq!(
            (fwd.wscale, fwd.acked, fwd.sent_end),
            (WSCALE_SENT | 9, 0x77, 0x501),
            "{prog:?}"
        );
    }
}

/// A SYN on an open connection (a blind one from outside, or the internal
/// host's stray one) is no reopen: it changes neither the option kept nor
/// where the sender's train ends, so it cannot plant an end for a reset.
#[test]
fn fixture_rst_a_syn_on_an_open_session_plants_nothing() {
    let f = flow();
    let maps = established(7);
    let blind = Pkt::tcp(https(), ext(), tcp_flags::SYN)
        .seq_ack(0x5555_0000, 0)
        .tcp_options(&syn_options(14));
    for prog in OUTSIDE {
        let out = run(prog, &maps, &blind.frame());
        assert_eq!(out.verdict, Verdict::Pass);
        let rev = out.rev[&f.rev_key()];
        assert_eq!(
            (rev.wscale, rev.sent_end),
            (WSCALE_SENT | 7, REMOTE_END),
            "{prog:?}"
        );
        // And the reset at the SYN's end is judged as before: out of window.
        let (p, _) = from_outside(0x5555_0001, None);
        let out = run(prog, &maps, &p.frame());
        assert_eq!(out.verdict, Verdict::Drop, "{prog:?}");
    }
    let stray = Pkt::tcp(client(), https(), tcp_flags::SYN)
        .seq_ack(0x6666_0000, 0)
        .tcp_options(&syn_options(0));
    let out = run(Prog::Egress, &maps, &stray.frame());
    let fwd = out.fwd[&f.fwd_key()];
    assert_eq!((fwd.wscale, fwd.sent_end), (WSCALE_SENT | 7, INTERNAL_END));
}
