//! A structure-aware mutator for Ethernet/IPv4 frames.
//!
//! The kernel programs cannot be instrumented for coverage, so instead of
//! coverage feedback the mutator knows where the fields are that the
//! datapath decides on (IHL, lengths, fragment bits, protocol, addresses,
//! ports, TCP flags and data offset, UDP length, ICMP type, the quoted
//! header of an ICMP error) and sets them to the values that matter (the
//! session's, the pool's, boundaries), besides blind bit flips, truncation,
//! padding and splicing; it also tags frames for a VLAN (802.1Q, 802.1ad,
//! QinQ) and takes tags off, and finds the fields of a tagged frame's
//! IPv4 header behind its tags. Half the frames get their checksums recomputed
//! afterwards, so that the checksum oracle sees many valid inputs.

use std::net::Ipv4Addr;

use rand::{RngExt, rngs::StdRng};

use super::corpus::{FOREIGN, PORTS, REMOTE2};
use crate::fixture::{CLIENT, CLIENT2, EXTERNAL, REMOTE, ROUTER};
use crate::packet::{L3_AT, PROTO_ICMP, PROTO_TCP, PROTO_UDP, checksum, transport_checksum};

const INTERESTING_U8: [u8; 9] = [0, 1, 0x0f, 0x10, 0x45, 0x7f, 0x80, 0xfe, 0xff];
const FLAG_COMBOS: [u8; 12] = [
    0, 0x01, 0x02, 0x04, 0x10, 0x03, 0x06, 0x12, 0x14, 0x11, 0x18, 0x3f,
];

fn addr(rng: &mut StdRng) -> Ipv4Addr {
    match rng.random_range(0..9) {
        0 => CLIENT,
        1 => CLIENT2,
        2 => EXTERNAL,
        3 => REMOTE,
        4 => REMOTE2,
        5 => ROUTER,
        6 => FOREIGN,
        7 => Ipv4Addr::new(10, rng.random(), rng.random(), rng.random()),
        _ => Ipv4Addr::from(rng.random::<u32>()),
    }
}

fn port(rng: &mut StdRng) -> u16 {
    match rng.random_range(0..8) {
        0 => rng.random_range(PORTS.0..=PORTS.1),
        1 => 33_333,
        2 => 5_353,
        3 => 443,
        4 => 53,
        5 => 0,
        6 => 77,
        _ => rng.random(),
    }
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn put_addr(f: &mut [u8], at: usize, a: Ipv4Addr) {
    if at + 4 <= f.len() {
        f[at..at + 4].copy_from_slice(&a.octets());
    }
}

/// VLAN tag protocol identifiers the datapath looks through.
const TPIDS: [u16; 2] = [0x8100, 0x88a8];

/// Where the frame's IPv4 header is: behind up to two VLAN tags, else
/// where an untagged frame has it.
fn ip_at(f: &[u8]) -> usize {
    let mut at = L3_AT;
    for _ in 0..2 {
        match f.get(at - 2..at) {
            Some(t) if TPIDS.contains(&u16::from_be_bytes([t[0], t[1]])) => at += 4,
            _ => break,
        }
    }
    at
}

fn ihl(f: &[u8], at: usize) -> usize {
    f.get(at).map_or(20, |b| usize::from(b & 0x0f) * 4)
}

/// One field-aware change of an IPv4 header at `ip` (the outer header, or
/// the one an ICMP error quotes) and of the transport header behind it.
fn mutate_field(rng: &mut StdRng, f: &mut [u8], ip: usize) {
    let l4 = ip + ihl(f, ip);
    let len = f.len();
    let set = |f: &mut [u8], at: usize, v: u8| {
        if at < len {
            f[at] = v;
        }
    };
    match rng.random_range(0..16) {
        0 => set(f, ip, 0x40 | rng.random_range(0..16u8)),
        1 => set(f, ip, rng.random::<u8>()),
        2 => {
            let tot = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => (len - ip.min(len)) as u16,
                2 => (len - ip.min(len)) as u16 + rng.random_range(1..16),
                _ => (len - ip.min(len)).saturating_sub(rng.random_range(1..24)) as u16,
            };
            put16(f, ip + 2, tot)
        }
        3 => {
            let frag = match rng.random_range(0..5) {
                0 => 0x2000,                               // MF, first fragment
                1 => rng.random_range(1..0x2000),          // a later fragment
                2 => 0x2000 | rng.random_range(1..0x2000), // a middle one
                3 => 0x4000,                               // DF
                _ => rng.random(),
            };
            put16(f, ip + 6, frag)
        }
        4 => set(
            f,
            ip + 8,
            INTERESTING_U8[rng.random_range(0..INTERESTING_U8.len())],
        ),
        5 => {
            let p = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, 0, 47, 255][rng.random_range(0..6)];
            set(f, ip + 9, p)
        }
        6 => put_addr(f, ip + 12, addr(rng)),
        7 => put_addr(f, ip + 16, addr(rng)),
        8 => put16(f, l4, port(rng)),
        9 => put16(f, l4 + 2, port(rng)),
        // TCP flags, data offset, sequence and acknowledgment numbers.
        10 => set(
            f,
            l4 + 13,
            FLAG_COMBOS[rng.random_range(0..FLAG_COMBOS.len())],
        ),
        11 => set(f, l4 + 12, rng.random_range(0..16u8) << 4),
        12 => {
            let at = l4 + if rng.random_bool(0.5) { 4 } else { 8 };
            if at + 4 <= len {
                f[at..at + 4].copy_from_slice(&rng.random::<u32>().to_be_bytes());
            }
        }
        // UDP length; ICMP type and code; the echo identifier.
        13 => put16(f, l4 + 4, rng.random_range(0..64)),
        14 => {
            let t = [0, 3, 4, 5, 8, 11, 12, 13, rng.random()][rng.random_range(0..9)];
            set(f, l4, t);
            set(f, l4 + 1, rng.random_range(0..16));
        }
        _ => put16(f, l4 + 4, port(rng)),
    }
}

/// Returns a mutant of `seed`, sometimes spliced with `other`.
pub fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    if rng.random_bool(0.08) {
        return f;
    }
    let n = 1 + rng.random_range(0..4) * rng.random_range(0..2);
    for _ in 0..n {
        if f.is_empty() {
            f.push(rng.random());
        }
        match rng.random_range(0..21) {
            0..=7 => {
                let ip = ip_at(&f);
                mutate_field(rng, &mut f, ip)
            }
            // The header an ICMP error quotes starts 8 bytes into the ICMP message.
            8 | 9 => {
                let ip = ip_at(&f);
                let at = ip + ihl(&f, ip) + 8;
                mutate_field(rng, &mut f, at)
            }
            10 => {
                let at = rng.random_range(0..f.len());
                f[at] ^= 1 << rng.random_range(0..8);
            }
            11 => {
                let at = rng.random_range(0..f.len());
                f[at] = INTERESTING_U8[rng.random_range(0..INTERESTING_U8.len())];
            }
            12 => {
                let at = rng.random_range(0..f.len());
                f[at] = rng.random();
            }
            13 | 14 => {
                // Often cut at or near a header boundary.
                let cut = match rng.random_range(0..3) {
                    0 => rng.random_range(0..=f.len()),
                    _ => [14, 20, 33, 34, 38, 41, 42, 46, 54, 62, 70][rng.random_range(0..11)],
                };
                f.truncate(cut.min(f.len()));
            }
            15 => {
                let pad = rng.random_range(1..64);
                f.extend((0..pad).map(|_| rng.random::<u8>()));
            }
            16 => {
                let at = rng.random_range(0..=f.len());
                let n = rng.random_range(1..8);
                f.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
            }
            17 => {
                let at = rng.random_range(0..f.len());
                let end = (at + rng.random_range(1..8)).min(f.len());
                f.drain(at..end);
            }
            18 => {
                let at = rng.random_range(0..=f.len().min(other.len()));
                f.truncate(at);
                f.extend_from_slice(&other[at..]);
            }
            19 => {
                let t =
                    [0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, rng.random()][rng.random_range(0..6)];
                put16(&mut f, 12, t);
            }
            _ => {
                // A tag more (outside the others) or one less (the outer one).
                if f.len() >= 16 && ip_at(&f) > L3_AT && rng.random_bool(0.4) {
                    f.drain(12..16);
                } else if f.len() >= 12 {
                    let tpid = TPIDS[rng.random_range(0..TPIDS.len())];
                    let tci: u16 = rng.random();
                    let tag = [tpid.to_be_bytes(), tci.to_be_bytes()].concat();
                    f.splice(12..12, tag);
                }
            }
        }
    }
    if rng.random_bool(0.5) {
        fix_checksums(&mut f);
    }
    f
}

/// Recomputes what checksums the frame's lengths allow (behind its VLAN
/// tags, if it has any): the quoted IPv4 header of an ICMP error, then the
/// transport checksum (TCP, UDP unless it is zero, ICMP) of an unfragmented
/// packet, then the IPv4 header. Uses the
/// packet builder's full recompute, not the nat-common arithmetic that the
/// oracle checks the outputs with.
pub fn fix_checksums(f: &mut [u8]) {
    let ip = ip_at(f);
    if f.len() < ip + 20 || f[ip - 2..ip] != [0x08, 0x00] {
        return;
    }
    let hl = ihl(f, ip);
    if hl < 20 || f.len() < ip + hl {
        return;
    }
    let tot = usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]));
    let frag = u16::from_be_bytes([f[ip + 6], f[ip + 7]]);
    if tot >= hl && ip + tot <= f.len() && frag & 0x3fff == 0 {
        let (l4, end) = (ip + hl, ip + tot);
        let src = Ipv4Addr::new(f[ip + 12], f[ip + 13], f[ip + 14], f[ip + 15]);
        let dst = Ipv4Addr::new(f[ip + 16], f[ip + 17], f[ip + 18], f[ip + 19]);
        match f[ip + 9] {
            PROTO_TCP if end - l4 >= 20 => {
                f[l4 + 16..l4 + 18].fill(0);
                let c = transport_checksum(src, dst, PROTO_TCP, &f[l4..end]);
                f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
            }
            PROTO_UDP if end - l4 >= 8 && f[l4 + 6..l4 + 8] != [0, 0] => {
                f[l4 + 6..l4 + 8].fill(0);
                let c = match transport_checksum(src, dst, PROTO_UDP, &f[l4..end]) {
                    0 => 0xffff,
                    c => c,
                };
                f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
            }
            PROTO_ICMP if end - l4 >= 8 => {
                let inner = l4 + 8;
                let ihl_in = ihl(f, inner);
                if end - inner >= 20 && ihl_in >= 20 && inner + ihl_in <= end {
                    f[inner + 10..inner + 12].fill(0);
                    let c = checksum(&[&f[inner..inner + ihl_in]]);
                    f[inner + 10..inner + 12].copy_from_slice(&c.to_be_bytes());
                }
                f[l4 + 2..l4 + 4].fill(0);
                let c = checksum(&[&f[l4..end]]);
                f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
    }
    f[ip + 10..ip + 12].fill(0);
    let c = checksum(&[&f[ip..ip + hl]]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}
