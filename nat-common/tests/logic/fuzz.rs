//! Fuzz targets for the host side of what parses packet bytes and values
//! read from maps (bolero). Under `cargo test` each runs for bolero's
//! default second of random inputs (a smoke run in CI); `cargo xtask fuzz
//! --target common-headers` or `common-state` runs one for longer
//! (BOLERO_RANDOM_TEST_TIME_MS, BOLERO_RANDOM_SEED). Every finding is kept
//! as a case in `regressions` below.

use nat_common::{
    config::{Config, PoolAddr},
    flow::{FlowKey, HopCache, seen},
    headers::{self, HeaderError},
    probe, seen_word, tcp_state,
};

/// `parse_ipv4` and the checks under it, on any bytes: never a panic, and
/// what it accepts is consistent with the bytes.
fn headers_case(pkt: &[u8]) {
    if let Ok(p) = headers::parse_ipv4(pkt) {
        assert!(p.ip.hdr_len >= headers::IPV4_MIN_HLEN && p.ip.hdr_len <= p.ip.total_len);
        assert!(p.ip.total_len <= pkt.len(), "total length past the bytes");
        assert!(
            p.l4_hdr_len <= p.ip.l4_len(),
            "transport header past the segment"
        );
        assert_eq!(pkt[0] >> 4, 4);
        if p.ip.later_fragment {
            assert!(p.ip.fragment);
        }
    }
    if pkt.len() >= 6 {
        let tot = u16::from_be_bytes([pkt[1], pkt[2]]);
        let frag = u16::from_be_bytes([pkt[3], pkt[4]]);
        let avail = usize::from(pkt[5]) * 8;
        match headers::check_ipv4(pkt[0], tot, frag, 0, avail) {
            Ok(m) => assert!(m.hdr_len <= m.total_len && m.total_len <= avail),
            Err(HeaderError::Truncated | HeaderError::NotIpv4 | HeaderError::BadIhl)
            | Err(HeaderError::BadTotalLen) => {}
            Err(e) => panic!("check_ipv4 gave a transport error {e:?}"),
        }
        if let Ok(h) = headers::check_tcp(pkt[0], avail) {
            assert!((headers::TCP_MIN_HLEN..=avail).contains(&h));
        }
        if headers::check_udp(tot, avail, frag & 1 == 0).is_ok() {
            assert!(usize::from(tot) >= headers::UDP_HLEN);
        }
    }
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, x) in w.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

/// Session state from any seen words, flags, sequence numbers and cached
/// routes (values a map or a packet may hold): never a panic, and the
/// transitions keep their promises.
fn state_case(b: &[u8]) {
    let (fwd, rev, epoch) = (word(b, 0), word(b, 8), word(b, 16) >> 8);
    let flags = b.get(24).copied().unwrap_or(0);
    let other_fin = b.get(25).is_some_and(|x| x & 1 != 0);
    let packet = tcp_state::seen_bits(flags);
    let cfg = Config::default();

    let rev_bits = seen_word::current_rev_bits(fwd, rev);
    let st = tcp_state::state_of(
        b.get(26).copied().unwrap_or(6),
        seen_word::bits(fwd),
        rev_bits,
    );
    let _ = st.name();
    let _ = tcp_state::idle_timeout_ms(st, &cfg);
    if let Some(kind) = tcp_state::close_kind(seen_word::bits(fwd), rev_bits) {
        let _ = (kind.name(), tcp_state::cooldown_ms(kind, &cfg));
    }
    let kind = tcp_state::expiry_kind(6, seen_word::bits(fwd), rev_bits);
    let _ = tcp_state::cooldown_ms(kind, &cfg);

    // A word only gains bits within its generation, and a reverse word
    // moved to the forward word's generation carries it.
    if let Some(next) = seen_word::forward_add(fwd, epoch, packet, other_fin)
        && seen_word::generation(next) == seen_word::generation(fwd)
    {
        let kept = seen_word::bits(next) & seen_word::bits(fwd);
        assert_eq!(
            kept,
            seen_word::bits(fwd),
            "a bit was lost within a generation"
        );
    }
    if let Some(next) = seen_word::reverse_add(rev, seen_word::generation(fwd), packet, other_fin) {
        assert_eq!(seen_word::generation(next), seen_word::generation(fwd));
        assert_eq!(
            seen_word::bits(next) & packet & !seen::FIN_FIRST,
            packet & !seen::FIN_FIRST
        );
    }
    let _ = seen_word::forward_reopen(fwd, epoch, seen_word::bits(rev));
    let added = seen_word::new_bits(packet, seen_word::bits(fwd), other_fin);
    assert_eq!(
        added & seen_word::bits(fwd) & !seen::FIN_FIRST,
        0,
        "re-adds an own bit"
    );
    let _ = seen_word::ended(seen_word::bits(fwd), seen_word::bits(rev));

    let (seq, acked) = (word(b, 27) as u32, word(b, 31) as u32);
    let window = word(b, 35) as u16;
    let receiver = tcp_state::Sent {
        seen: byte(b, 37),
        acked,
        window,
        wscale: byte(b, 38),
        sent_end: word(b, 8) as u32,
    };
    let sender = tcp_state::Sent {
        seen: byte(b, 39),
        acked: seq,
        window,
        wscale: byte(b, 36),
        sent_end: word(b, 12) as u32,
    };
    let flags = byte(b, 26);
    let verdict = tcp_state::rst_verdict(seq, acked, flags, &sender, &receiver);
    if receiver.seen & seen::ACK != 0 {
        assert_eq!(
            tcp_state::rst_verdict(acked, seq, flags, &sender, &receiver),
            tcp_state::RstVerdict::Exact,
            "the acknowledged edge is exact"
        );
    }
    if verdict == tcp_state::RstVerdict::Exact {
        assert!(
            seq == acked || seq == sender.sent_end || receiver.seen & seen::ACK == 0,
            "exact only at a number a host sent"
        );
    }
    let options = &b[..(byte(b, 40) as usize % 48).min(b.len())];
    let ws = tcp_state::wscale_option(options);
    assert!(ws == 0 || ws & !tcp_state::WSCALE_SENT <= tcp_state::WSCALE_MAX);

    let words = [word(b, 40), word(b, 48), word(b, 56), word(b, 64)];
    if let Some(hop) = HopCache::fresh(words, word(b, 72)) {
        assert_ne!(hop.ifindex, 0);
        let (h2, _) = HopCache::decode(words).expect("a fresh route decodes");
        assert_eq!(h2, hop);
    }
    let tag = (word(b, 80) as u16).max(1);
    let routed = HopCache::route_words(
        tag,
        &nat_common::flow::NextHop {
            ifindex: (word(b, 82) as u32).max(1),
            mtu: word(b, 86) as u16,
            macs: [b.get(88).copied().unwrap_or(0); 12],
        },
    );
    let stamp = HopCache::stamp_word(tag, word(b, 72));
    assert!(HopCache::decode([stamp, routed[0], routed[1], routed[2]]).is_some());
}

/// The probe walk and pool hashing from any pool, key and counters: never a
/// panic, and every port walked lies in the range.
fn probe_case(b: &[u8]) {
    let lo = word(b, 0) as u16;
    let hi = word(b, 2) as u16;
    let span = probe::span(lo, hi);
    let pool = PoolAddr {
        addr: word(b, 4) as u32,
        port_min: lo,
        port_max: hi,
        step: if b.get(8).is_some_and(|x| x & 1 == 0) {
            probe::stride_for(span)
        } else {
            word(b, 9) as u32
        },
        _pad: 0,
    };
    let start = word(b, 13) as u32;
    for i in [0, 1, word(b, 17) as u32, u32::MAX] {
        let p = probe::walk(&pool, start, i);
        if lo <= hi {
            assert!(
                (lo..=hi).contains(&p),
                "walk left the range: {p} of {lo}-{hi}"
            );
        }
    }
    let _ = probe::preservable(&pool, word(b, 21) as u16);
    let key = FlowKey::new(
        b.get(23).copied().unwrap_or(6),
        word(b, 24) as u32,
        word(b, 28) as u16,
        word(b, 30) as u32,
        word(b, 34) as u16,
    );
    let _ = probe::flow_hash(&key, word(b, 36) as u32);
    let len = word(b, 40) as u32 % 20;
    if len > 0 {
        assert!(probe::pool_index(word(b, 44) as u32, word(b, 48) as u32, len) < len);
    }
    let bucket = probe::probe_bucket(word(b, 52) as u32);
    assert!(!probe::probe_bucket_label(bucket).is_empty());
}

#[test]
fn fuzz_common_headers() {
    bolero::check!().for_each(headers_case);
}

#[test]
fn fuzz_common_state() {
    bolero::check!().for_each(|b: &[u8]| {
        state_case(b);
        probe_case(b);
    });
}

/// Inputs the targets were ever caught on, and edges worth keeping.
#[test]
fn fuzz_common_regressions() {
    let cases: &[&[u8]] = &[
        &[],
        &[0x45],
        &[0x4f, 0, 0, 0, 0, 0],
        &[
            0x45, 0, 20, 0x3f, 0xff, 3, 0, 0, 0, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    ];
    for c in cases {
        headers_case(c);
        state_case(c);
        probe_case(c);
    }
}
