//! Parsing rejects truncated and inconsistent headers, and accepts what is well formed.

use nat_common::headers::{HeaderError, check_ipv4, check_tcp, check_udp, parse_ipv4};
use proptest::prelude::*;

fn packet(proto: u8, ihl: u8, payload: usize) -> Vec<u8> {
    let hdr = ihl as usize * 4;
    let l4 = if proto == 6 { 20 } else { 8 };
    let total = hdr + l4 + payload;
    let mut b = vec![0u8; total];
    b[0] = 0x40 | ihl;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[9] = proto;
    b[hdr..hdr + 2].copy_from_slice(&1234u16.to_be_bytes());
    b[hdr + 2..hdr + 4].copy_from_slice(&80u16.to_be_bytes());
    if proto == 6 {
        b[hdr + 12] = 5 << 4;
    } else {
        b[hdr + 4..hdr + 6].copy_from_slice(&((l4 + payload) as u16).to_be_bytes());
    }
    b
}

#[test]
fn well_formed_packets_parse() {
    for proto in [6u8, 17] {
        for ihl in 5..=15 {
            let p = parse_ipv4(&packet(proto, ihl, 10)).unwrap();
            assert_eq!((p.sport, p.dport), (1234, 80));
            assert_eq!(p.ip.hdr_len, ihl as usize * 4);
            assert!(!p.ip.fragment);
        }
    }
}

#[test]
fn inconsistent_ipv4_headers_are_rejected() {
    assert_eq!(check_ipv4(0x45, 40, 0, 6, 40).map(|m| m.hdr_len), Ok(20));
    assert_eq!(check_ipv4(0x65, 40, 0, 6, 40), Err(HeaderError::NotIpv4));
    assert_eq!(check_ipv4(0x44, 40, 0, 6, 40), Err(HeaderError::BadIhl));
    assert_eq!(
        check_ipv4(0x4f, 40, 0, 6, 60),
        Err(HeaderError::BadTotalLen)
    ); // 60-byte header, total 40
    assert_eq!(check_ipv4(0x4f, 80, 0, 6, 40), Err(HeaderError::Truncated));
    assert_eq!(
        check_ipv4(0x45, 41, 0, 6, 40),
        Err(HeaderError::BadTotalLen)
    );
    assert_eq!(
        check_ipv4(0x45, 19, 0, 6, 40),
        Err(HeaderError::BadTotalLen)
    );
    // Link padding after the datagram is fine.
    assert!(check_ipv4(0x45, 40, 0, 6, 60).is_ok());
    assert!(check_ipv4(0x45, 40, 0x2000, 6, 40).unwrap().fragment); // MF
    assert!(check_ipv4(0x45, 40, 0x0001, 6, 40).unwrap().fragment); // offset
    assert!(!check_ipv4(0x45, 40, 0x4000, 6, 40).unwrap().fragment); // DF only
}

#[test]
fn inconsistent_transport_headers_are_rejected() {
    assert_eq!(check_tcp(5 << 4, 20), Ok(20));
    assert_eq!(check_tcp(4 << 4, 20), Err(HeaderError::BadTcpOffset));
    assert_eq!(check_tcp(6 << 4, 20), Err(HeaderError::BadTcpOffset));
    assert_eq!(check_tcp(15 << 4, 60), Ok(60));
    assert_eq!(check_udp(8, 8, true), Ok(()));
    assert_eq!(check_udp(7, 8, true), Err(HeaderError::BadUdpLen));
    assert_eq!(check_udp(9, 8, true), Err(HeaderError::BadUdpLen));
    // A first fragment carries only the start of the datagram.
    assert_eq!(check_udp(8000, 1472, false), Ok(()));
    assert_eq!(check_udp(7, 1472, false), Err(HeaderError::BadUdpLen));
}

proptest! {
    #[test]
    fn any_truncation_is_rejected(tcp in any::<bool>(), ihl in 5u8..=15, payload in 0usize..64, cut in 1usize..200) {
        let proto = if tcp { 6 } else { 17 };
        let full = packet(proto, ihl, payload);
        let keep = full.len().saturating_sub(cut);
        prop_assert!(parse_ipv4(&full[..keep]).is_err());
    }

    #[test]
    fn corrupted_lengths_are_rejected(tcp in any::<bool>(), ihl in 5u8..=15, payload in 0usize..64, bad in any::<u8>()) {
        let proto = if tcp { 6 } else { 17 };
        let mut p = packet(proto, ihl, payload);
        let hdr = ihl as usize * 4;
        let l4_len = p.len() - hdr;
        if tcp {
            p[hdr + 12] = bad & 0xf0;
            let doff = (bad >> 4) as usize * 4;
            prop_assert_eq!(parse_ipv4(&p).is_ok(), (20..=l4_len).contains(&doff));
        } else {
            let len = bad as usize;
            p[hdr + 4..hdr + 6].copy_from_slice(&(len as u16).to_be_bytes());
            prop_assert_eq!(parse_ipv4(&p).is_ok(), (8..=l4_len).contains(&len));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_ipv4(&bytes);
    }
}

/// The ethertype at `off` of `frame`, as the datapath reads it.
fn type_in(frame: &[u8]) -> impl Fn(usize) -> Option<u16> + '_ {
    |off| Some(u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]))
}

fn frame_with(types: &[u16]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    for (i, t) in types.iter().enumerate() {
        f.extend_from_slice(&t.to_be_bytes());
        if i + 1 < types.len() {
            f.extend_from_slice(&[0x00, 0x64]);
        }
    }
    f.extend_from_slice(&[0x45; 20]);
    f
}

#[test]
fn tagged_ipv4_is_found_under_one_or_two_tags() {
    use nat_common::headers::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, tagged_ipv4_at};
    let at = |types: &[u16]| {
        let f = frame_with(types);
        tagged_ipv4_at(types[0], type_in(&f))
    };
    assert_eq!(at(&[ETH_P_IP]), None, "untagged is not this function's");
    assert_eq!(at(&[ETH_P_8021Q, ETH_P_IP]), Some(18));
    assert_eq!(at(&[ETH_P_8021AD, ETH_P_IP]), Some(18));
    assert_eq!(at(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP]), Some(22));
    assert_eq!(at(&[ETH_P_8021Q, ETH_P_8021Q, ETH_P_IP]), Some(22));
    assert_eq!(at(&[ETH_P_8021Q, 0x86dd]), None);
    assert_eq!(
        at(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q, ETH_P_IP]),
        None,
        "a third tag is past what is looked through"
    );
    // Cut inside the tags: nothing to read.
    let f = frame_with(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP]);
    assert_eq!(tagged_ipv4_at(ETH_P_8021AD, type_in(&f[..19])), None);
}
