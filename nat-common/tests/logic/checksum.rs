//! The incremental rewrite the datapath does must equal a full recompute.

use nat_common::{
    csum::{add, apply, apply_udp, endpoint_diff, ipv4_header_checksum, l4_checksum},
    flow::{PROTO_TCP, PROTO_UDP},
    forward::ttl_decrement_diff,
    headers::{off, parse_ipv4},
};
use proptest::prelude::*;

/// A well-formed IPv4 packet with correct checksums.
#[derive(Clone, Debug)]
struct Pkt {
    bytes: Vec<u8>,
    hdr_len: usize,
}

/// Endpoints of a test packet: (address, port) of source and destination.
type Ends = ([u8; 4], u16, [u8; 4], u16);

fn build(
    proto: u8,
    (src, sport, dst, dport): Ends,
    options: &[u8],
    payload: &[u8],
    udp_no_csum: bool,
) -> Pkt {
    let hdr_len = 20 + options.len();
    let l4_hdr = if proto == PROTO_TCP { 20 } else { 8 };
    let total = hdr_len + l4_hdr + payload.len();
    let mut b = vec![0u8; total];
    b[0] = 0x40 | (hdr_len / 4) as u8;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    b[6] = 0x40; // DF
    b[8] = 64;
    b[9] = proto;
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    b[20..hdr_len].copy_from_slice(options);
    let ck = ipv4_header_checksum(&b[..hdr_len]);
    b[10..12].copy_from_slice(&ck.to_ne_bytes());
    let l4 = hdr_len;
    b[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    b[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
    if proto == PROTO_TCP {
        b[l4 + 12] = 5 << 4;
        b[l4 + 13] = 0x18;
    } else {
        b[l4 + 4..l4 + 6].copy_from_slice(&((l4_hdr + payload.len()) as u16).to_be_bytes());
    }
    b[l4 + l4_hdr..].copy_from_slice(payload);
    if !(proto == PROTO_UDP && udp_no_csum) {
        let mut c = l4_checksum(src, dst, proto, &b[l4..]);
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        let at = l4
            + if proto == PROTO_TCP {
                off::TCP_CHECK
            } else {
                off::UDP_CHECK
            };
        b[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    }
    Pkt { bytes: b, hdr_len }
}

fn field16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn field32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Rewrites the source (egress) or destination (ingress) endpoint the way the datapath does.
fn rewrite(p: &mut Pkt, source: bool, new_addr: [u8; 4], new_port: u16) {
    rewrite_hop(p, source, new_addr, new_port, false);
}

/// [`rewrite`], and with `forward` also the TTL decrement of the XDP fast
/// path, folded into the same header-checksum update.
fn rewrite_hop(p: &mut Pkt, source: bool, new_addr: [u8; 4], new_port: u16, forward: bool) {
    let proto = p.bytes[9];
    let (addr_at, port_at) = if source {
        (off::IP_SADDR, p.hdr_len)
    } else {
        (off::IP_DADDR, p.hdr_len + 2)
    };
    let check_at = p.hdr_len
        + if proto == PROTO_TCP {
            off::TCP_CHECK
        } else {
            off::UDP_CHECK
        };
    let b = &mut p.bytes;
    let d = endpoint_diff(
        field32(b, addr_at),
        u32::from_ne_bytes(new_addr),
        field16(b, port_at),
        new_port.to_be(),
    );
    let ttl = b[8];
    let l3 = if forward {
        add(d.l3, ttl_decrement_diff(ttl, proto))
    } else {
        d.l3
    };
    let ip = apply(field16(b, off::IP_CHECK), l3);
    b[off::IP_CHECK..off::IP_CHECK + 2].copy_from_slice(&ip.to_ne_bytes());
    if forward {
        b[8] = ttl - 1;
    }
    let old = field16(b, check_at);
    let l4 = if proto == PROTO_UDP {
        apply_udp(old, d.l4)
    } else {
        apply(old, d.l4)
    };
    b[check_at..check_at + 2].copy_from_slice(&l4.to_ne_bytes());
    b[addr_at..addr_at + 4].copy_from_slice(&new_addr);
    b[port_at..port_at + 2].copy_from_slice(&new_port.to_be_bytes());
}

/// Recomputes both checksums from scratch and says whether the packet carries them.
fn verify(p: &Pkt) -> (bool, bool) {
    let b = &p.bytes;
    let mut hdr = b[..p.hdr_len].to_vec();
    let stored_ip = field16(&hdr, off::IP_CHECK);
    hdr[off::IP_CHECK] = 0;
    hdr[off::IP_CHECK + 1] = 0;
    let ip_ok = ipv4_header_checksum(&hdr) == stored_ip;
    let proto = b[9];
    let at = p.hdr_len
        + if proto == PROTO_TCP {
            off::TCP_CHECK
        } else {
            off::UDP_CHECK
        };
    let stored = field16(b, at);
    let mut seg = b[p.hdr_len..].to_vec();
    seg[at - p.hdr_len] = 0;
    seg[at - p.hdr_len + 1] = 0;
    let src = [b[12], b[13], b[14], b[15]];
    let dst = [b[16], b[17], b[18], b[19]];
    let mut full = l4_checksum(src, dst, proto, &seg);
    if proto == PROTO_UDP && full == 0 {
        full = 0xffff;
    }
    // A checksum and its negative zero are the same value to a receiver.
    let l4_ok = stored == full
        || (stored == 0xffff && full == 0)
        || (stored == 0 && full == 0xffff && proto == PROTO_TCP);
    (ip_ok, l4_ok)
}

/// Sets the TTL and recomputes the header checksum from scratch.
fn set_ttl(p: &mut Pkt, ttl: u8) {
    let b = &mut p.bytes;
    b[8] = ttl;
    b[off::IP_CHECK] = 0;
    b[off::IP_CHECK + 1] = 0;
    let ck = ipv4_header_checksum(&b[..p.hdr_len]);
    b[off::IP_CHECK..off::IP_CHECK + 2].copy_from_slice(&ck.to_ne_bytes());
}

fn options() -> impl Strategy<Value = Vec<u8>> {
    (0usize..=10).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn incremental_equals_full_recompute(
        tcp in any::<bool>(),
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        opts in options(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        source in any::<bool>(),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
    ) {
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        let mut p = build(proto, (src, sport, dst, dport), &opts, &payload, false);
        prop_assert_eq!(verify(&p), (true, true));
        rewrite(&mut p, source, new_addr, new_port);
        prop_assert_eq!(verify(&p), (true, true));
        let parsed = parse_ipv4(&p.bytes).unwrap();
        if source {
            prop_assert_eq!(parsed.sport, new_port);
        } else {
            prop_assert_eq!(parsed.dport, new_port);
        }
    }

    #[test]
    fn forwarded_rewrite_equals_full_recompute(
        tcp in any::<bool>(),
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        opts in options(),
        ttl in 2u8..=255,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        source in any::<bool>(),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
    ) {
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        let mut p = build(proto, (src, sport, dst, dport), &opts, &payload, false);
        set_ttl(&mut p, ttl);
        prop_assert_eq!(verify(&p), (true, true));
        rewrite_hop(&mut p, source, new_addr, new_port, true);
        prop_assert_eq!(verify(&p), (true, true));
        prop_assert_eq!(p.bytes[8], ttl - 1);
    }

    #[test]
    fn udp_zero_checksum_stays_zero(
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
    ) {
        let mut p = build(PROTO_UDP, (src, 1000, dst, 53), &[], &payload, true);
        rewrite(&mut p, true, new_addr, new_port);
        prop_assert_eq!(field16(&p.bytes, 20 + off::UDP_CHECK), 0);
        prop_assert!(verify(&p).0);
    }
}

#[test]
fn rewrite_that_sums_to_zero_is_sent_as_ffff() {
    // Search a rewrite whose UDP result is zero and check it goes out as 0xffff.
    let mut found = false;
    for port in 0..=u16::MAX {
        let mut p = build(
            PROTO_UDP,
            ([10, 0, 0, 1], 1000, [10, 0, 0, 2], 53),
            &[],
            b"abcd",
            false,
        );
        rewrite(&mut p, true, [10, 0, 0, 1], port);
        let c = field16(&p.bytes, 20 + off::UDP_CHECK);
        assert_ne!(
            c, 0,
            "a UDP checksum must never become 0 (no checksum) by rewriting"
        );
        if c == 0xffff {
            found = true;
            assert_eq!(verify(&p), (true, true));
        }
    }
    assert!(found, "some port must give a 0xffff checksum");
}
