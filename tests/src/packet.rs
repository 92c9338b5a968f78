//! A small host-side packet builder for the datapath fixtures: Ethernet,
//! IPv4 (with options and fragments), TCP, UDP, ICMP echo and ICMP errors
//! quoting an inner packet.
//!
//! Every checksum is a full recompute over the finished bytes, written here
//! on its own (big-endian words, no incremental arithmetic) and sharing no
//! code with `nat_common::csum`, so a fixture's expected frame does not
//! depend on the datapath's arithmetic being right.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// VLAN tag protocol identifiers: 802.1Q and 802.1ad (QinQ's outer tag).
pub const ETHERTYPE_8021Q: u16 = 0x8100;
pub const ETHERTYPE_8021AD: u16 = 0x88a8;

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// Where the frame's IPv4 header starts.
pub const L3_AT: usize = 14;

/// The transport part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        /// The window field.
        window: u16,
        /// TCP options, a multiple of 4 bytes.
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// false: the checksum field is zero ("none", RFC 768).
        checksum: bool,
    },
    /// ICMP echo request or reply.
    Echo { request: bool, id: u16, seq: u16 },
    /// An ICMP error whose body is `quote`: the start of the packet it is about.
    Error { kind: u8, code: u8, quote: Vec<u8> },
    /// Any other protocol: the payload is sent as is.
    Other { proto: u8 },
}

/// A packet, described field by field; [`Pkt::frame`] lays it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ethertype: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    /// IPv4 options, a multiple of 4 bytes, at most 40.
    pub ip_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    fn ip(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0xd0],
            eth_src: [0x02, 0, 0, 0, 0, 0x50],
            ethertype: ETHERTYPE_IPV4,
            src,
            dst,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            df: true,
            ip_options: Vec::new(),
            l4,
            payload: Vec::new(),
        }
    }

    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self::ip(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags,
                seq: 0x0102_0304,
                ack: if flags & tcp_flags::ACK != 0 {
                    0x0a0b_0c0d
                } else {
                    0
                },
                window: 64240,
                options: Vec::new(),
            },
        )
    }

    /// A TCP packet with these sequence and acknowledgment numbers.
    pub fn seq_ack(mut self, to_seq: u32, to_ack: u32) -> Self {
        if let L4::Tcp { seq, ack, .. } = &mut self.l4 {
            (*seq, *ack) = (to_seq, to_ack);
        }
        self
    }

    /// A TCP packet with this window field.
    pub fn window(mut self, to: u16) -> Self {
        if let L4::Tcp { window, .. } = &mut self.l4 {
            *window = to;
        }
        self
    }

    /// A TCP packet with these options (a multiple of 4 bytes, at most 40).
    pub fn tcp_options(mut self, to: &[u8]) -> Self {
        assert!(to.len().is_multiple_of(4) && to.len() <= 40);
        if let L4::Tcp { options, .. } = &mut self.l4 {
            *options = to.to_vec();
        }
        self
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::ip(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                checksum: true,
            },
        )
    }

    pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, id: u16) -> Self {
        Self::ip(
            src,
            dst,
            L4::Echo {
                request,
                id,
                seq: 7,
            },
        )
        .payload(b"ping-payload")
    }

    /// An ICMP error from `src` to `dst` quoting the first `quote_len`
    /// bytes of `about`'s IPv4 datagram (all of it if shorter).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        kind: u8,
        code: u8,
        about: &Pkt,
        quote_len: usize,
    ) -> Self {
        let mut quote = about.datagram();
        quote.truncate(quote_len);
        let mut p = Self::ip(src, dst, L4::Error { kind, code, quote });
        p.df = false;
        p
    }

    pub fn other(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self::ip(src, dst, L4::Other { proto }).payload(b"opaque")
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn ip_options(mut self, options: &[u8]) -> Self {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40);
        self.ip_options = options.to_vec();
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.eth_dst = dst;
        self.eth_src = src;
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Echo { .. } | L4::Error { .. } => PROTO_ICMP,
            L4::Other { proto } => proto,
        }
    }

    /// Source address and port (the echo identifier for ICMP echo).
    pub fn source(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, self.ports().0)
    }

    pub fn destination(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, self.ports().1)
    }

    fn ports(&self) -> (u16, u16) {
        match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (sport, dport),
            L4::Echo { id, .. } => (id, 0),
            _ => (0, 0),
        }
    }

    /// The packet with its source endpoint replaced (address, and port or
    /// echo identifier where the protocol has one).
    pub fn with_source(mut self, to: SocketAddrV4) -> Self {
        self.src = *to.ip();
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = to.port(),
            L4::Echo { id, .. } => *id = to.port(),
            _ => {}
        }
        self
    }

    pub fn with_destination(mut self, to: SocketAddrV4) -> Self {
        self.dst = *to.ip();
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to.port(),
            L4::Echo { id, .. } => *id = to.port(),
            _ => {}
        }
        self
    }

    /// The answer the other end would send: addresses and ports swapped,
    /// MACs swapped, the rest kept.
    pub fn mirrored(mut self) -> Self {
        std::mem::swap(&mut self.src, &mut self.dst);
        std::mem::swap(&mut self.eth_src, &mut self.eth_dst);
        match &mut self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                std::mem::swap(sport, dport)
            }
            L4::Echo { request, .. } => *request = !*request,
            _ => {}
        }
        self
    }

    /// The transport segment with its checksum (over the whole datagram).
    fn segment(&self) -> Vec<u8> {
        let mut s = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
                options,
            } => {
                assert!(options.len().is_multiple_of(4) && options.len() <= 40);
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&seq.to_be_bytes());
                s.extend_from_slice(&ack.to_be_bytes());
                s.push((((20 + options.len()) / 4) as u8) << 4);
                s.push(*flags);
                s.extend_from_slice(&window.to_be_bytes());
                s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                s.extend_from_slice(options);
                s.extend_from_slice(&self.payload);
                let c = transport_checksum(self.src, self.dst, PROTO_TCP, &s);
                s[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp {
                sport,
                dport,
                checksum,
            } => {
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(&self.payload);
                if *checksum {
                    let c = match transport_checksum(self.src, self.dst, PROTO_UDP, &s) {
                        0 => 0xffff,
                        c => c,
                    };
                    s[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Echo { request, id, seq } => {
                s.push(if *request {
                    ICMP_ECHO_REQUEST
                } else {
                    ICMP_ECHO_REPLY
                });
                s.push(0);
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(&id.to_be_bytes());
                s.extend_from_slice(&seq.to_be_bytes());
                s.extend_from_slice(&self.payload);
                let c = checksum(&[&s]);
                s[2..4].copy_from_slice(&c.to_be_bytes());
            }
            L4::Error { kind, code, quote } => {
                s.push(*kind);
                s.push(*code);
                s.extend_from_slice(&[0; 6]); // checksum, unused
                s.extend_from_slice(quote);
                let c = checksum(&[&s]);
                s[2..4].copy_from_slice(&c.to_be_bytes());
            }
            L4::Other { .. } => s.extend_from_slice(&self.payload),
        }
        s
    }

    fn ip_header(&self, payload_len: usize, more_fragments: bool, offset_units: u16) -> Vec<u8> {
        assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
        let hdr_len = 20 + self.ip_options.len();
        let mut h = Vec::with_capacity(hdr_len);
        h.push(0x40 | (hdr_len / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&((hdr_len + payload_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        let frag = (u16::from(self.df) << 14) | (u16::from(more_fragments) << 13) | offset_units;
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.ip_options);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// The IPv4 datagram (no link header).
    pub fn datagram(&self) -> Vec<u8> {
        let seg = self.segment();
        let mut d = self.ip_header(seg.len(), false, 0);
        d.extend_from_slice(&seg);
        d
    }

    fn link(&self, datagram: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + datagram.len());
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        f.extend_from_slice(datagram);
        f
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        self.link(&self.datagram())
    }

    /// The datagram as two fragment frames: the first carries the first
    /// `first_len` bytes of the transport segment (a multiple of 8), the
    /// second the rest. The transport checksum covers the whole segment.
    pub fn fragments(&self, first_len: usize) -> [Vec<u8>; 2] {
        assert!(
            first_len.is_multiple_of(8),
            "fragment data is cut at 8-byte units"
        );
        let seg = self.segment();
        assert!(first_len < seg.len());
        let mut unfragmented = self.clone();
        unfragmented.df = false;
        let mut first = unfragmented.ip_header(first_len, true, 0);
        first.extend_from_slice(&seg[..first_len]);
        let mut later =
            unfragmented.ip_header(seg.len() - first_len, false, (first_len / 8) as u16);
        later.extend_from_slice(&seg[first_len..]);
        [self.link(&first), self.link(&later)]
    }
}

/// `frame` with a VLAN tag (`tpid`, VLAN id `vid`) inserted after its MAC
/// addresses, outside any tag it already has: tag twice for QinQ.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`, each
/// of even length except possibly the last, by a plain big-endian sum.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u64::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP or UDP checksum: pseudo-header and segment (checksum field zero).
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = (segment.len() as u16).to_be_bytes();
    checksum(&[&src.octets(), &dst.octets(), &[0, proto], &len, segment])
}

/// Problems [`verify_checksums`] finds in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadChecksum {
    Ip,
    Transport,
    InnerIp,
    Icmp,
}

/// Checks the checksums of an unfragmented IPv4 frame by full recompute:
/// the IPv4 header, and the TCP, UDP (zero means none) or ICMP checksum.
pub fn verify_checksums(frame: &[u8]) -> Result<(), BadChecksum> {
    let ip = &frame[L3_AT..];
    let hdr_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if checksum(&[&ip[..hdr_len]]) != 0 {
        return Err(BadChecksum::Ip);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &ip[hdr_len..total];
    match ip[9] {
        PROTO_TCP if transport_checksum(src, dst, PROTO_TCP, seg) != 0 => {
            return Err(BadChecksum::Transport);
        }
        PROTO_UDP if seg[6..8] != [0, 0] && transport_checksum(src, dst, PROTO_UDP, seg) != 0 => {
            return Err(BadChecksum::Transport);
        }
        PROTO_ICMP => {
            if checksum(&[seg]) != 0 {
                return Err(BadChecksum::Icmp);
            }
            if matches!(seg[0], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) && seg.len() >= 28 {
                let inner = &seg[8..];
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner.len() >= ihl && checksum(&[&inner[..ihl]]) != 0 {
                    return Err(BadChecksum::InnerIp);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3's words sum to 0xddf2 (end-around carry included).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&bytes]), !0xddf2);
        // An odd length pads with zero.
        assert_eq!(checksum(&[&[0x12]]), !0x1200);
    }

    #[test]
    fn built_frames_verify() {
        let a = ep([10, 0, 0, 2], 40000);
        let b = ep([198, 51, 100, 7], 443);
        let frames = [
            Pkt::tcp(a, b, tcp_flags::SYN).frame(),
            Pkt::tcp(a, b, tcp_flags::ACK)
                .payload(b"hello")
                .ip_options(&[1, 1, 1, 0])
                .frame(),
            Pkt::udp(a, b).payload(b"odd").frame(),
            Pkt::echo(*a.ip(), *b.ip(), true, 9).frame(),
        ];
        for f in &frames {
            assert_eq!(verify_checksums(f), Ok(()));
        }
        let mut broken = frames[1].clone();
        broken[L3_AT + 24 + 20] ^= 1;
        assert_eq!(verify_checksums(&broken), Err(BadChecksum::Transport));
    }

    #[test]
    fn fragments_split_the_segment() {
        let p = Pkt::udp(ep([10, 0, 0, 2], 5000), ep([198, 51, 100, 7], 53)).payload(&[7; 40]);
        let [first, later] = p.fragments(16);
        assert_eq!(first[L3_AT + 6] & 0x20, 0x20, "first has MF");
        assert_eq!(u16::from_be_bytes([later[L3_AT + 6], later[L3_AT + 7]]), 2);
        let whole = p.datagram();
        assert_eq!(&first[L3_AT + 20..], &whole[20..36]);
        assert_eq!(&later[L3_AT + 20..], &whole[36..]);
    }
}
