//! Bounds-checked packet access, in the bottom layer: the one way the
//! programs touch packet memory ([`ptr_at`], [`read`]), the Ethernet and
//! IPv4 parse every program starts with ([`ethernet`]), the transport
//! fields they parse, the endpoints they rewrite, and the refresh of a
//! session entry's `last_seen`.

use nat_common::headers::{ETH_HLEN, ETH_P_IP, is_vlan};

use super::outcome::{DropReason, decode};

/// A pointer to a `T` at `off` bytes into the packet, or `Malformed` when the
/// packet is shorter. The only way the programs touch packet memory.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Result<*mut T, DropReason> {
    if data + off + size_of::<T>() > data_end {
        return Err(DropReason::Malformed);
    }
    Ok((data + off) as *mut T)
}

/// [`ptr_at`] for deep variable offsets (inside ICMP errors): the pointer is
/// pinned so the compiler cannot recompute `data + off` later; the verifier
/// only knows the range of the very register it saw checked (a spilled
/// checked pointer keeps it, a recomputed one starts with none).
#[inline(always)]
pub fn pinned_ptr_at<T>(data: usize, data_end: usize, off: usize) -> Result<*mut T, DropReason> {
    let p = core::hint::black_box(data + off);
    if p + size_of::<T>() > data_end {
        return Err(DropReason::Malformed);
    }
    Ok(p as *mut T)
}

/// Bytes after the Ethernet header of an XDP frame (TC programs have the
/// skb's length); 0 for a runt, which then fails its first header read
/// instead of wrapping around to a huge length.
#[inline(always)]
pub fn frame_ip_len(data: usize, end: usize) -> usize {
    end.saturating_sub(data).saturating_sub(ETH_HLEN)
}

#[inline(always)]
pub fn read<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, DropReason> {
    let p = ptr_at::<T>(data, data_end, off)?;
    // SAFETY: bounds checked above; packet fields are not aligned.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Bytes of link, IPv4 and transport headers the programs need in linear memory.
pub const HEADERS_MAX: usize = 14 + 60 + 20;
/// The same for an ICMP error: its own headers plus the embedded IPv4 and transport headers.
pub const ICMP_HEADERS_MAX: usize = 14 + 60 + 8 + 60 + 20;

/// Fields of an IPv4 TCP/UDP header the programs work with, as read from the packet.
#[derive(Clone, Copy)]
pub struct Ipv4Fields {
    pub ver_ihl: u8,
    /// Identification, as loaded.
    pub id: u16,
    pub proto: u8,
    pub tot_len: u16,
    pub frag: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[inline(always)]
pub fn ipv4_fields(data: usize, data_end: usize, at: usize) -> Result<Ipv4Fields, DropReason> {
    use nat_common::headers::off;
    Ok(Ipv4Fields {
        ver_ihl: read::<u8>(data, data_end, at)?,
        id: read::<u16>(data, data_end, at + off::IP_ID)?,
        proto: read::<u8>(data, data_end, at + off::IP_PROTO)?,
        tot_len: u16::from_be(read::<u16>(data, data_end, at + off::IP_TOT_LEN)?),
        frag: u16::from_be(read::<u16>(data, data_end, at + off::IP_FRAG)?),
        saddr: read::<u32>(data, data_end, at + off::IP_SADDR)?,
        daddr: read::<u32>(data, data_end, at + off::IP_DADDR)?,
    })
}

/// Offset of the ethertype in an Ethernet header.
const ETH_TYPE: usize = 12;

/// What a frame holds, as its Ethernet header tells.
pub enum Ether {
    /// An untagged IPv4 packet, with the fields of its header.
    Ipv4(Ipv4Fields),
    /// A frame tagged for a VLAN in its bytes (802.1Q or 802.1ad): its
    /// outer ethertype, host order.
    Tagged(u16),
    /// Anything else, or a frame too short for an Ethernet header.
    Other,
}

/// The frame's ethertype, host order; `None` for a runt.
#[inline(always)]
pub fn ethertype(data: usize, end: usize) -> Option<u16> {
    read::<u16>(data, end, ETH_TYPE).ok().map(u16::from_be)
}

/// The one Ethernet/IPv4 parse every program starts with. `Malformed`
/// for an IPv4 frame too short for its header's fixed fields; what the
/// header says is checked by `check_ipv4` after it.
#[inline(always)]
pub fn ethernet(data: usize, end: usize) -> Result<Ether, DropReason> {
    match ethertype(data, end) {
        Some(ETH_P_IP) => ipv4_fields(data, end, ETH_HLEN).map(Ether::Ipv4),
        Some(t) if is_vlan(t) => Ok(Ether::Tagged(t)),
        _ => Ok(Ether::Other),
    }
}

/// An address and port in network byte order.
#[derive(Clone, Copy, Default)]
pub struct Endpoint {
    pub addr: u32,
    pub port: u16,
}

impl Endpoint {
    /// The endpoint a session entry maps to.
    #[inline(always)]
    pub fn of(s: &nat_common::flow::Session) -> Endpoint {
        Endpoint {
            addr: s.addr,
            port: s.port,
        }
    }
}

/// Which end of a packet a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    /// Offsets from the start of the frame of this side's IPv4 address and
    /// of its port in the transport header at `l4_at`.
    #[inline(always)]
    pub const fn offsets(self, l4_at: usize) -> (usize, usize) {
        use nat_common::headers::{ETH_HLEN, off};
        match self {
            Side::Source => (ETH_HLEN + off::IP_SADDR, l4_at + off::L4_SPORT),
            Side::Destination => (ETH_HLEN + off::IP_DADDR, l4_at + off::L4_DPORT),
        }
    }
}

/// Fields of a TCP or UDP header.
#[derive(Clone, Copy)]
pub struct L4Fields {
    /// Network byte order, as loaded.
    pub sport: u16,
    /// Network byte order, as loaded.
    pub dport: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
    /// TCP window field, as loaded; 0 for UDP.
    pub window: u16,
    /// TCP sequence and acknowledgment numbers, as loaded; 0 for UDP.
    pub seq: u32,
    pub ack: u32,
    /// Length of the transport header (TCP data offset, or 8 for UDP).
    pub hdr_len: u16,
    /// TCP payload bytes (the segment the IPv4 header claims, less the
    /// TCP header); 0 for UDP.
    pub payload: u16,
    /// A SYN's window scale option, once the program read it (through
    /// `session::track`, from above); 0 otherwise.
    pub wscale: u8,
    /// Offset of the checksum field from the start of the packet.
    pub check_off: usize,
}

/// Reads and checks the transport header at `at`; `l4_len` is the segment
/// length the IP header claims.
#[inline(always)]
pub fn l4_fields(
    data: usize,
    data_end: usize,
    at: usize,
    proto: u8,
    l4_len: usize,
    whole: bool,
) -> Result<L4Fields, DropReason> {
    use nat_common::{
        flow::{PROTO_TCP, PROTO_UDP},
        headers::{check_tcp, check_udp, off},
    };
    let sport = read::<u16>(data, data_end, at + off::L4_SPORT)?;
    let dport = read::<u16>(data, data_end, at + off::L4_DPORT)?;
    match proto {
        PROTO_TCP => {
            // Sequence and acknowledgment numbers, data offset, flags and
            // window in one checked read: separate reads let LLVM merge
            // the bounds checks and recompute a pointer the verifier has
            // no range for.
            let h = read::<[u8; 12]>(data, data_end, at + off::TCP_SEQ)?;
            let hdr_len = check_tcp(h[off::TCP_DOFF - off::TCP_SEQ], l4_len)?;
            Ok(L4Fields {
                sport,
                dport,
                tcp_flags: h[off::TCP_FLAGS - off::TCP_SEQ],
                window: u16::from_ne_bytes([h[10], h[11]]),
                seq: u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
                ack: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
                hdr_len: hdr_len as u16,
                payload: (l4_len - hdr_len) as u16,
                wscale: 0,
                check_off: at + off::TCP_CHECK,
            })
        }
        PROTO_UDP => {
            check_udp(
                u16::from_be(read::<u16>(data, data_end, at + off::UDP_LEN)?),
                l4_len,
                whole,
            )?;
            // The checksum field must be inside the packet for the rewrite.
            read::<u16>(data, data_end, at + off::UDP_CHECK)?;
            Ok(L4Fields {
                sport,
                dport,
                tcp_flags: 0,
                window: 0,
                seq: 0,
                ack: 0,
                hdr_len: nat_common::headers::UDP_HLEN as u16,
                payload: 0,
                wscale: 0,
                check_off: at + off::UDP_CHECK,
            })
        }
        _ => Err(DropReason::Unsupported),
    }
}

/// Refreshes `last_seen` of a session entry when it is older than the touch
/// granularity, so the established path rarely writes.
#[inline(always)]
pub fn touch(entry: *mut nat_common::flow::Session, now: u64) {
    use nat_common::config::TOUCH_GRANULARITY_NS;
    // SAFETY: `entry` is a live map value pointer from a lookup in this program run.
    unsafe {
        if now.wrapping_sub((*entry).last_seen) > TOUCH_GRANULARITY_NS {
            (*entry).last_seen = now;
        }
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}

/// An endpoint (or a drop) as the scalar a BPF global function returns:
/// address in bits 16..48, port in 0..16; a drop as in
/// [`encode`](super::outcome::encode).
#[inline(always)]
pub fn encode_endpoint(outcome: Result<Endpoint, DropReason>) -> i64 {
    match outcome {
        Ok(e) => ((e.addr as i64) << 16) | e.port as i64,
        Err(drop) => -1 - drop as i64,
    }
}

/// [`encode_endpoint`] undone.
#[inline(always)]
pub fn decode_endpoint(code: i64) -> Result<Endpoint, DropReason> {
    if code >= 0 {
        return Ok(Endpoint {
            addr: (code >> 16) as u32,
            port: code as u16,
        });
    }
    match decode(code) {
        Err(drop) => Err(drop),
        Ok(_) => Err(DropReason::Malformed),
    }
}
