//! Resets as RFC 5961 has a middlebox judge them (`rst_verdict`), and the
//! numbers they are judged by: the window scale option of a SYN, the
//! recorded window and the end of a segment.

use nat_common::{
    flow::seen,
    headers::tcp_flags::{ACK, FIN, RST, SYN},
    tcp_state::{
        RstVerdict, Sent, TCP_OPTIONS_MAX, WSCALE_MAX, WSCALE_SENT, recorded_window, records,
        rst_verdict, segment_end, window_shift, wscale_option,
    },
};
use proptest::prelude::*;

fn wscale(options: &[u8]) -> u8 {
    wscale_option(options)
}

/// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale.
const LINUX_SYN: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

#[test]
fn the_window_scale_option_is_found_as_linux_parses_it() {
    assert_eq!(wscale(&LINUX_SYN), WSCALE_SENT | 7);
    assert_eq!(wscale(&LINUX_SYN[..16]), 0, "no window scale option");
    assert_eq!(wscale(&[]), 0);
    assert_eq!(
        wscale(&[3, 3, 0, 0]),
        WSCALE_SENT,
        "shift 0 is an option too"
    );
    assert_eq!(
        wscale(&[3, 3, 15, 0]),
        WSCALE_SENT | WSCALE_MAX,
        "capped at 14"
    );
    assert_eq!(wscale(&[3, 3, 255, 0]), WSCALE_SENT | WSCALE_MAX);
    // Another length is not a window scale option; parsing goes on.
    assert_eq!(wscale(&[3, 4, 9, 9, 3, 3, 5, 0]), WSCALE_SENT | 5);
    assert_eq!(wscale(&[3, 4, 9, 9]), 0);
    // Of two, the last counts.
    assert_eq!(wscale(&[3, 3, 2, 3, 3, 9, 0, 0]), WSCALE_SENT | 9);
    // The end of the list, a silly length or one past the options stops it.
    assert_eq!(wscale(&[0, 3, 3, 7]), 0);
    assert_eq!(wscale(&[1, 1, 1, 1, 3, 3, 7, 0]), WSCALE_SENT | 7);
    assert_eq!(wscale(&[5, 1, 3, 3, 7, 0]), 0);
    assert_eq!(wscale(&[5, 0, 3, 3, 7, 0]), 0);
    assert_eq!(wscale(&[1, 3, 3]), 0, "option cut by the header's end");
    assert_eq!(wscale(&[1, 1, 1, 3]), 0);
    // No more than 40 bytes are looked at.
    let mut long = vec![1u8; 44];
    long[40..43].copy_from_slice(&[3, 3, 7]);
    assert_eq!(wscale(&long), 0);
    long[37..40].copy_from_slice(&[3, 3, 6]);
    assert_eq!(wscale(&long), WSCALE_SENT | 6);
}

/// tcp_parse_options of Linux, over a slice, for the property below.
fn reference(options: &[u8]) -> u8 {
    let options = &options[..options.len().min(TCP_OPTIONS_MAX)];
    let mut found = 0;
    let mut rest = options;
    while let Some((&kind, tail)) = rest.split_first() {
        match kind {
            0 => break,
            1 => rest = tail,
            _ => {
                let Some(&size) = tail.first() else { break };
                let size = usize::from(size);
                if size < 2 || size > rest.len() {
                    break;
                }
                if kind == 3 && size == 3 {
                    found = WSCALE_SENT | rest[2].min(14);
                }
                rest = &rest[size..];
            }
        }
    }
    found
}

#[test]
fn window_scales_apply_only_when_both_syns_carried_the_option() {
    assert_eq!(window_shift(WSCALE_SENT | 7, WSCALE_SENT), 7);
    assert_eq!(window_shift(WSCALE_SENT | 7, WSCALE_SENT | 14), 7);
    assert_eq!(window_shift(WSCALE_SENT | 7, 0), 0);
    assert_eq!(window_shift(0, WSCALE_SENT | 7), 0);
    assert_eq!(window_shift(WSCALE_SENT | 14, WSCALE_SENT), 14);
}

#[test]
fn a_syn_acks_window_is_kept_at_the_scale_of_the_later_ones() {
    assert_eq!(recorded_window(ACK, 502, WSCALE_SENT | 7), 502);
    assert_eq!(recorded_window(SYN | ACK, 64_240, 0), 64_240);
    // 64,240 / 128 = 501.9: rounded up, never narrower than the real window.
    assert_eq!(recorded_window(SYN | ACK, 64_240, WSCALE_SENT | 7), 502);
    assert_eq!(recorded_window(SYN | ACK, 65_535, WSCALE_SENT | 14), 4);
    assert_eq!(recorded_window(SYN | ACK, 0, WSCALE_SENT | 14), 0);
}

#[test]
fn a_segment_ends_after_its_payload_and_its_syn_and_fin() {
    assert_eq!(segment_end(100, ACK, 0), 100);
    assert_eq!(segment_end(100, ACK, 1448), 1548);
    assert_eq!(segment_end(100, SYN, 0), 101);
    assert_eq!(segment_end(100, FIN | ACK, 10), 111);
    assert_eq!(segment_end(u32::MAX, SYN | FIN, 3), 4);
}

#[test]
fn resets_and_blind_syns_are_not_recorded() {
    assert!(records(ACK, seen::SYN | seen::ACK));
    assert!(records(FIN | ACK, seen::SYN | seen::ACK));
    assert!(records(SYN, 0), "the opening SYN");
    assert!(records(SYN, seen::SYN), "its retransmission");
    assert!(records(SYN | ACK, seen::SYN), "the SYN-ACK of a forward");
    assert!(
        !records(SYN, seen::SYN | seen::ACK),
        "a SYN on an open connection"
    );
    assert!(!records(SYN | ACK, seen::SYN_ACK | seen::ACK));
    assert!(!records(RST, seen::SYN | seen::ACK));
    assert!(!records(RST | ACK, 0));
}

const ISN: u32 = 0x8000_0000 - 1000;
const ACKED: u32 = 0xffff_ff00;

/// A host that answered: its last acknowledgment `ACKED`, window field
/// 1000, and the option of `scale` (`None`: its SYN had none).
fn established(scale: Option<u8>) -> Sent {
    Sent {
        seen: seen::SYN | seen::ACK,
        acked: ACKED,
        window: 1000,
        wscale: scale.map_or(0, |s| WSCALE_SENT | s),
        sent_end: ISN + 500,
    }
}

fn sender(scale: Option<u8>) -> Sent {
    Sent {
        seen: seen::SYN_ACK | seen::ACK,
        acked: ISN + 500,
        window: 2000,
        wscale: scale.map_or(0, |s| WSCALE_SENT | s),
        // Wraps: the window crosses 2^32.
        sent_end: ACKED.wrapping_add(300),
    }
}

#[test]
fn only_exact_resets_count_for_every_scale() {
    for scale in [0u8, 7, 14] {
        let (tx, rx) = (sender(Some(scale)), established(Some(scale)));
        let size = 1000u32 << scale;
        let v = |seq| rst_verdict(seq, 0, RST, &tx, &rx);
        assert_eq!(
            v(ACKED),
            RstVerdict::Exact,
            "scale {scale}: the acknowledgment"
        );
        assert_eq!(
            v(tx.sent_end),
            RstVerdict::Exact,
            "scale {scale}: the train"
        );
        assert_eq!(v(ACKED.wrapping_add(1)), RstVerdict::InWindow);
        assert_eq!(
            v(ACKED.wrapping_add(size - 1)),
            RstVerdict::InWindow,
            "{scale}"
        );
        assert_eq!(
            v(ACKED.wrapping_add(size)),
            RstVerdict::OutOfWindow,
            "{scale}"
        );
        assert_eq!(v(ACKED.wrapping_sub(1)), RstVerdict::OutOfWindow, "{scale}");
        assert_eq!(v(ACKED.wrapping_add(1 << 31)), RstVerdict::OutOfWindow);
        // With ACK the acknowledgment number plays no part.
        assert_eq!(
            rst_verdict(ACKED, 7, RST | ACK, &tx, &rx),
            RstVerdict::Exact
        );
        // A train end a blind host planted outside the window is no train.
        let planted = Sent {
            sent_end: ACKED.wrapping_add(size + 10),
            ..tx
        };
        assert_eq!(
            rst_verdict(planted.sent_end, 0, RST, &planted, &rx),
            RstVerdict::OutOfWindow
        );
        // Filled to the right edge, the train still ends there.
        let full = Sent {
            sent_end: ACKED.wrapping_add(size),
            ..tx
        };
        assert_eq!(
            rst_verdict(full.sent_end, 0, RST, &full, &rx),
            RstVerdict::Exact
        );
    }
}

#[test]
fn a_scale_counts_only_when_both_syns_carried_one() {
    let rx = established(Some(7));
    let seq = ACKED.wrapping_add(5000);
    assert_eq!(
        rst_verdict(seq, 0, RST, &sender(Some(0)), &rx),
        RstVerdict::InWindow
    );
    assert_eq!(
        rst_verdict(seq, 0, RST, &sender(None), &rx),
        RstVerdict::OutOfWindow,
        "the window is 1000 unscaled"
    );
    // A sender the NAT saw nothing of in this connection: its option is
    // the connection's before, and no train is its own.
    let unseen = Sent {
        seen: 0,
        ..sender(Some(7))
    };
    assert_eq!(
        rst_verdict(seq, 0, RST, &unseen, &rx),
        RstVerdict::OutOfWindow
    );
    assert_eq!(
        rst_verdict(unseen.sent_end, 0, RST, &unseen, &rx),
        RstVerdict::InWindow
    );
}

#[test]
fn a_reset_answering_a_syn_must_acknowledge_it() {
    for scale in [0u8, 7, 14] {
        let syn_sent = Sent {
            seen: seen::SYN,
            acked: 0,
            window: 0,
            wscale: WSCALE_SENT | scale,
            sent_end: ISN + 1,
        };
        let tx = Sent::default();
        let v = |seq, ack, flags| rst_verdict(seq, ack, flags, &tx, &syn_sent);
        assert_eq!(v(0, ISN + 1, RST | ACK), RstVerdict::Exact, "{scale}");
        assert_eq!(v(0, ISN + 2, RST | ACK), RstVerdict::OutOfWindow);
        assert_eq!(v(0, ISN, RST | ACK), RstVerdict::OutOfWindow);
        assert_eq!(v(ISN + 1, ISN + 1, RST), RstVerdict::OutOfWindow, "no ACK");
        assert_eq!(v(0, 0, RST), RstVerdict::OutOfWindow);
    }
}

#[test]
fn a_reset_toward_a_host_the_nat_saw_nothing_of_changes_nothing() {
    let tx = Sent {
        seen: seen::SYN,
        sent_end: ISN + 1,
        ..Sent::default()
    };
    let silent = Sent::default();
    for seq in [0, ISN, ISN + 1, ISN + 2] {
        assert_eq!(rst_verdict(seq, 0, RST, &tx, &silent), RstVerdict::InWindow);
    }
}

fn sent() -> impl Strategy<Value = Sent> {
    (
        any::<u8>(),
        any::<u32>(),
        any::<u16>(),
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(|(seen, acked, window, wscale, sent_end)| Sent {
            seen,
            acked,
            window,
            wscale,
            sent_end,
        })
}

proptest! {
    #[test]
    fn the_option_parse_matches_linux(
        options in proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(2), Just(3), Just(4), Just(8), any::<u8>()],
            0..48,
        ),
    ) {
        prop_assert_eq!(wscale(&options), reference(&options));
    }

    /// Exact means one of the numbers the hosts sent: the receiver's
    /// acknowledgment, the sender's own end, or for a SYN the end it
    /// acknowledges; in window means inside the real window; a reset the
    /// NAT lets change nothing is never out of window, and nothing that
    /// is exact lies outside.
    #[test]
    fn verdicts_follow_the_numbers(
        seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(),
        tx in sent(), rx in sent(), near in any::<bool>(), off in 0u32..70_000,
    ) {
        // Half the cases near the edge, where the interesting answers are.
        let seq = if near { rx.acked.wrapping_add(off).wrapping_sub(4) } else { seq };
        let v = rst_verdict(seq, ack, flags | RST, &tx, &rx);
        if rx.seen == 0 {
            prop_assert_eq!(v, RstVerdict::InWindow);
            return Ok(());
        }
        if rx.seen & seen::ACK == 0 {
            let exact = flags & ACK != 0 && ack == rx.sent_end;
            prop_assert_eq!(v == RstVerdict::Exact, exact);
            prop_assert!(v != RstVerdict::InWindow);
            return Ok(());
        }
        let size = u64::from(rx.window) << window_shift(rx.syn_wscale(), tx.syn_wscale());
        let from = u64::from(seq.wrapping_sub(rx.acked));
        match v {
            RstVerdict::Exact => {
                prop_assert!(seq == rx.acked || (seq == tx.sent_end && tx.seen != 0));
                prop_assert!(from <= size);
            }
            RstVerdict::InWindow => prop_assert!(from < size && from != 0),
            RstVerdict::OutOfWindow => prop_assert!(from >= size && from != 0),
        }
        if seq == rx.acked {
            prop_assert_eq!(v, RstVerdict::Exact);
        }
    }
}
