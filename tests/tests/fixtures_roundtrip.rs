//! The checksum properties, tested on the programs themselves: random TCP and
//! UDP packets (IP options, ports, payloads, UDP without checksum) go out
//! through `nat_egress` and their answers back through both ingress
//! programs. Every output must equal the builder's frame with the
//! translated fields, so its checksums are a full recompute, and the answer
//! must reach the client exactly as the mirror of what it sent.

use std::net::{Ipv4Addr, SocketAddrV4};

use nat_common::counters::Counter;
use nat_tests::fixture::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    pkt: Pkt,
    /// The NAT's port range: the allocated port is whatever the hash picks.
    ports: (u16, u16),
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        (1u8..=254, 1024u16..=65535),
        (any::<[u8; 4]>(), 1u16..=65535),
        (0usize..=10, any::<u8>()),
        proptest::collection::vec(any::<u8>(), 0..300),
        (any::<bool>(), any::<u16>(), any::<u8>(), 2u8..=255),
        (1024u16..=60000, 0u16..=500),
    )
        .prop_map(
            |(
                tcp,
                (host, sport),
                (remote, dport),
                (opt_words, opt_byte),
                payload,
                (udp_sum, id, tos, ttl),
                (lo, extra),
            )| {
                let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, host), sport);
                // Outside every internal prefix and not the external address.
                let remote = SocketAddrV4::new(
                    Ipv4Addr::new(198, 18 | (remote[1] & 1), remote[2], remote[3]),
                    dport,
                );
                let mut pkt = if tcp {
                    Pkt::tcp(client, remote, tcp_flags::SYN)
                } else {
                    let mut p = Pkt::udp(client, remote);
                    p.l4 = L4::Udp {
                        sport,
                        dport,
                        checksum: udp_sum,
                    };
                    p
                };
                // Options are opaque to the NAT: any bytes will do.
                let options: Vec<u8> = (0..opt_words * 4)
                    .map(|i| opt_byte.wrapping_add(i as u8))
                    .collect();
                pkt = pkt.payload(&payload).ip_options(&options).ttl(ttl);
                pkt.id = id;
                pkt.tos = tos;
                pkt.df = id % 2 == 0;
                Case {
                    pkt,
                    ports: (lo, lo.saturating_add(extra)),
                }
            },
        )
}

fn translated_source(frame: &[u8], hdr_len: usize) -> SocketAddrV4 {
    let ip = &frame[L3_AT..];
    let l4 = &ip[hdr_len..];
    SocketAddrV4::new(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([l4[0], l4[1]]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn fixture_roundtrip_checksums_and_bytes(c in case()) {
        let mut maps = Maps::nat();
        maps.ports = c.ports;
        let mut h = harness();
        h.set(&maps);
        let out = h.run_frame(Prog::Egress, &c.pkt.frame());
        prop_assert_eq!(out.verdict, Verdict::Pass);
        prop_assert_eq!(&out.counters, &vec![(Counter::XlateOut, 1), (Counter::Opened, 1)]);
        let ext = translated_source(&out.frame, 20 + c.pkt.ip_options.len());
        prop_assert_eq!(*ext.ip(), EXTERNAL);
        prop_assert!((c.ports.0..=c.ports.1).contains(&ext.port()));
        prop_assert_eq!(verify_checksums(&out.frame), Ok(()));
        assert_frame(&out.frame, &c.pkt.clone().with_source(ext).frame());

        // The answer, built from scratch by the builder, comes back through
        // both ingress programs to the client as the mirror of its packet.
        let answer = c.pkt.clone().with_source(ext).mirrored();
        let want = c.pkt.clone().mirrored().frame();
        for prog in [Prog::Ingress, Prog::IngressTc] {
            let back = h.run_frame(prog, &answer.frame());
            prop_assert_eq!(back.verdict, Verdict::Pass);
            prop_assert_eq!(&back.counters, &vec![(Counter::XlateIn, 1)]);
            prop_assert_eq!(verify_checksums(&back.frame), Ok(()));
            assert_frame(&back.frame, &want);
        }
    }
}
