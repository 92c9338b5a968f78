//! Internet checksum arithmetic (RFC 1071, incremental updates after RFC 1624).
//!
//! 16-bit words are taken from memory in native byte order, the way the
//! datapath loads them; the ones'-complement sum is byte-order independent as
//! long as loads and stores agree, so no conversion is ever needed.

/// Ones'-complement addition with end-around carry.
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum + carry as u32
}

/// Folds a 32-bit accumulator to 16 bits.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The difference that replacing the 32-bit word `old` by `new` makes to a sum.
#[inline(always)]
pub const fn diff32(old: u32, new: u32) -> u32 {
    add(!old, new)
}

/// The difference that replacing the 16-bit word `old` by `new` makes to a sum.
#[inline(always)]
pub const fn diff16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// Applies a difference to a stored (complemented) checksum: HC' = ~(~HC + diff).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    !fold(add((!check) as u32, diff))
}

/// Applies a difference to a UDP checksum: zero means "no checksum" and stays
/// zero, and a computed zero is sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn apply_udp(check: u16, diff: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, diff) {
        0 => 0xffff,
        c => c,
    }
}

/// Differences for rewriting one endpoint (address and port) of a packet:
/// the address part goes into the IPv4 header checksum, both parts into the
/// TCP/UDP checksum, whose pseudo-header covers the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointDiff {
    pub l3: u32,
    pub l4: u32,
}

#[inline(always)]
pub const fn endpoint_diff(
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> EndpointDiff {
    let l3 = diff32(old_addr, new_addr);
    EndpointDiff {
        l3,
        l4: add(l3, diff16(old_port, new_port)),
    }
}

/// Sum of 16-bit native-order words of `data`, an odd last byte padded with zero.
pub fn sum_bytes(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = add(acc, u16::from_ne_bytes([c[0], c[1]]) as u32);
    }
    if let [last] = chunks.remainder() {
        acc = add(acc, u16::from_ne_bytes([*last, 0]) as u32);
    }
    acc
}

/// Full checksum of an IPv4 header whose checksum field is already zero.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    !fold(sum_bytes(header, 0))
}

/// Full TCP or UDP checksum over the pseudo-header and `segment` (whose
/// checksum field is zero). `saddr`/`daddr` are the raw 4 header bytes.
pub fn l4_checksum(saddr: [u8; 4], daddr: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum_bytes(&saddr, 0);
    acc = sum_bytes(&daddr, acc);
    acc = sum_bytes(&[0, proto], acc);
    acc = sum_bytes(&(segment.len() as u16).to_be_bytes(), acc);
    acc = sum_bytes(segment, acc);
    !fold(acc)
}
