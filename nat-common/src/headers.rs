//! Header consistency rules, shared by the datapath (which reads the fields
//! from packet memory) and host code (which parses byte slices).

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
/// VLAN tags: 802.1Q (C-tag) and 802.1ad (S-tag, the outer one of QinQ).
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const VLAN_HLEN: usize = 4;
/// Tags the datapath looks through to find a tagged frame's IPv4 header:
/// one, or two stacked (QinQ), what a VLAN sub-interface (on another one)
/// of the external interface sends.
pub const VLAN_MAX_TAGS: usize = 2;
pub const IPV4_MIN_HLEN: usize = 20;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

/// ICMP message types the NAT translates (RFC 5508).
pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;

    /// Errors that carry the header of the packet that caused them.
    pub const fn is_error(t: u8) -> bool {
        matches!(t, DEST_UNREACH | TIME_EXCEEDED | PARAM_PROBLEM)
    }
}

pub const fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD)
}

/// Where the IPv4 header of a frame tagged for a VLAN starts: `outer` is
/// the frame's ethertype (offset 12), `type_at(off)` reads the ethertype
/// (host order) at `off` of the frame, `None` past its end. `None`: not
/// tagged, not IPv4 inside, or more than [`VLAN_MAX_TAGS`] tags.
#[inline(always)]
pub fn tagged_ipv4_at(outer: u16, type_at: impl Fn(usize) -> Option<u16>) -> Option<usize> {
    if !is_vlan(outer) {
        return None;
    }
    // Each tag is 2 bytes of TCI and the 2-byte type of what follows it.
    let mut at = ETH_HLEN + VLAN_HLEN;
    let mut inner = type_at(at - 2)?;
    if is_vlan(inner) {
        at += VLAN_HLEN;
        inner = type_at(at - 2)?;
    }
    if inner == ETH_P_IP { Some(at) } else { None }
}

/// Offsets of fields inside the headers.
pub mod off {
    pub const IP_TOT_LEN: usize = 2;
    pub const IP_ID: usize = 4;
    pub const IP_FRAG: usize = 6;
    pub const IP_PROTO: usize = 9;
    pub const IP_CHECK: usize = 10;
    pub const IP_SADDR: usize = 12;
    pub const IP_DADDR: usize = 16;
    pub const L4_SPORT: usize = 0;
    pub const L4_DPORT: usize = 2;
    pub const TCP_SEQ: usize = 4;
    pub const TCP_ACK: usize = 8;
    pub const TCP_DOFF: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_WINDOW: usize = 14;
    pub const TCP_CHECK: usize = 16;
    pub const UDP_LEN: usize = 4;
    pub const UDP_CHECK: usize = 6;
    pub const ICMP_TYPE: usize = 0;
    pub const ICMP_CHECK: usize = 2;
    /// Echo identifier, translated like a port.
    pub const ICMP_ID: usize = 4;
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than the header claims or needs.
    Truncated,
    /// IP version is not 4.
    NotIpv4,
    /// IHL below 5.
    BadIhl,
    /// Total length smaller than the header or larger than the packet.
    BadTotalLen,
    /// TCP data offset below 5 or past the segment.
    BadTcpOffset,
    /// UDP length below 8 or past the datagram.
    BadUdpLen,
}

/// What the IPv4 header says about the packet, once found consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Meta {
    /// Header length in bytes, options included.
    pub hdr_len: usize,
    /// Total length from the header.
    pub total_len: usize,
    pub proto: u8,
    /// Any fragment: more-fragments set or a non-zero offset.
    pub fragment: bool,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
}

impl Ipv4Meta {
    /// Bytes of the transport segment.
    pub const fn l4_len(&self) -> usize {
        self.total_len - self.hdr_len
    }
}

/// Checks an IPv4 header. `tot_len` and `frag` are in host order; `avail` is
/// the number of bytes from the start of the IP header to the end of the packet
/// (link padding may make it larger than `tot_len`).
#[inline(always)]
pub const fn check_ipv4(
    ver_ihl: u8,
    tot_len: u16,
    frag: u16,
    proto: u8,
    avail: usize,
) -> Result<Ipv4Meta, HeaderError> {
    if ver_ihl >> 4 != 4 {
        return Err(HeaderError::NotIpv4);
    }
    let hdr_len = ((ver_ihl & 0x0f) as usize) * 4;
    if hdr_len < IPV4_MIN_HLEN {
        return Err(HeaderError::BadIhl);
    }
    if avail < hdr_len {
        return Err(HeaderError::Truncated);
    }
    let total_len = tot_len as usize;
    if total_len < hdr_len || total_len > avail {
        return Err(HeaderError::BadTotalLen);
    }
    Ok(Ipv4Meta {
        hdr_len,
        total_len,
        proto,
        // MF bit or a fragment offset; DF (0x4000) alone is not a fragment.
        fragment: frag & 0x3fff != 0,
        later_fragment: frag & 0x1fff != 0,
    })
}

/// Checks a TCP header's data offset against the segment length; returns the header length.
#[inline(always)]
pub const fn check_tcp(doff_byte: u8, l4_len: usize) -> Result<usize, HeaderError> {
    let hdr_len = ((doff_byte >> 4) as usize) * 4;
    if hdr_len < TCP_MIN_HLEN || hdr_len > l4_len {
        return Err(HeaderError::BadTcpOffset);
    }
    Ok(hdr_len)
}

/// Checks a UDP length field (host order) against the datagram length; in a
/// first fragment (`whole` false) the datagram continues in later fragments.
#[inline(always)]
pub const fn check_udp(udp_len: u16, l4_len: usize, whole: bool) -> Result<(), HeaderError> {
    let len = udp_len as usize;
    if len < UDP_HLEN || (whole && len > l4_len) {
        return Err(HeaderError::BadUdpLen);
    }
    Ok(())
}

/// A parsed IPv4 TCP/UDP packet (host side: tests and tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub ip: Ipv4Meta,
    /// Transport header length (0 for protocols other than TCP and UDP).
    pub l4_hdr_len: usize,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an IPv4 packet (no link header) with the same rules as the datapath.
pub fn parse_ipv4(pkt: &[u8]) -> Result<Parsed, HeaderError> {
    if pkt.len() < IPV4_MIN_HLEN {
        return Err(HeaderError::Truncated);
    }
    let be16 = |at: usize| u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    let ip = check_ipv4(
        pkt[0],
        be16(off::IP_TOT_LEN),
        be16(off::IP_FRAG),
        pkt[off::IP_PROTO],
        pkt.len(),
    )?;
    let l4 = &pkt[ip.hdr_len..ip.total_len];
    let need = match ip.proto {
        crate::flow::PROTO_TCP => TCP_MIN_HLEN,
        crate::flow::PROTO_UDP => UDP_HLEN,
        _ => 0,
    };
    if need == 0 || ip.fragment {
        return Ok(Parsed {
            ip,
            l4_hdr_len: 0,
            sport: 0,
            dport: 0,
        });
    }
    if l4.len() < need {
        return Err(HeaderError::Truncated);
    }
    let l4_hdr_len = if ip.proto == crate::flow::PROTO_TCP {
        check_tcp(l4[off::TCP_DOFF], l4.len())?
    } else {
        check_udp(
            u16::from_be_bytes([l4[off::UDP_LEN], l4[off::UDP_LEN + 1]]),
            l4.len(),
            !ip.fragment,
        )?;
        UDP_HLEN
    };
    Ok(Parsed {
        ip,
        l4_hdr_len,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    })
}
