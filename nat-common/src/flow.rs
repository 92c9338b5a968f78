//! Session table keys and values.

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// A flow as the egress direction sees it: source, destination, protocol.
///
/// In the forward map the source is the internal host. In the reverse map the
/// source is the external address and port the NAT chose, so the reverse key is
/// exactly (protocol, external ip, external port, destination ip, destination
/// port), the key a cooldown entry needs. Ingress builds it by swapping the
/// inbound packet's source and destination. All fields are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// Built as four 32-bit words: the field-wise form left LLVM's bpf
    /// backend a 3-byte zeroing of `_pad` at an odd offset, which it emits
    /// as a call to `memset`, a global function to the verifier, and
    /// Linux 6.1 rejects such a call with a global function's pointer
    /// argument ("reg type unsupported for arg#0 function memset").
    pub const fn new(proto: u8, saddr: u32, sport: u16, daddr: u32, dport: u16) -> Self {
        let s = sport.to_ne_bytes();
        let d = dport.to_ne_bytes();
        let words = [
            saddr,
            daddr,
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C), 16 bytes of plain integers laid out
        // as these words (saddr, daddr, sport then dport, proto then the
        // padding), and every bit pattern is a valid FlowKey.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey>(words) }
    }

    /// The reverse-map key of this forward flow once it is translated to `ext`.
    pub const fn translated(&self, ext_addr: u32, ext_port: u16) -> Self {
        Self::new(self.proto, ext_addr, ext_port, self.daddr, self.dport)
    }
}

/// How long the fast path uses a session's cached route lookup
/// ([`HopCache`]) before it asks the kernel again: route and
/// neighbour changes reach established flows within this time.
pub const ROUTE_TTL_NS: u64 = 1_000_000_000;

/// What a packet of this direction has shown, one bit each.
pub mod seen {
    pub const SYN: u8 = 1;
    pub const FIN: u8 = 2;
    pub const RST: u8 = 4;
    /// A SYN with ACK: the opening was answered.
    pub const SYN_ACK: u8 = 8;
    /// This direction sent its FIN while the other had not sent one yet.
    pub const FIN_FIRST: u8 = 16;
    /// Reverse entry: the remote answered the internal host's SYN with
    /// something other than a SYN-ACK (counted once: `collisions` for an
    /// ACK, `syn_refused` for a reset).
    pub const ODD_ANSWER: u8 = 32;
    /// A segment with ACK (a SYN-ACK too): the entry's `acked` and
    /// `window` hold this connection's numbers, so a reset toward this
    /// direction's host is judged by its window
    /// ([`crate::tcp_state::rst_verdict`]). Without it the host has
    /// acknowledged nothing yet, at most sent its SYN.
    pub const ACK: u8 = 64;
}

/// One direction of a session.
///
/// The forward entry is written only by egress and the internal side's
/// fast path, the reverse entry only by ingress, so the two directions
/// never write the same cache line. The session's state is derived from
/// both entries' `seen` words ([`crate::seen_word::current_rev_bits`],
/// [`crate::tcp_state::state_of`]) and its idle time from the later of the
/// two `last_seen`.
///
/// TCP fields (`acked`, `window`, `sent_end`, `wscale`): what this
/// direction's host last sent, for judging resets
/// ([`crate::tcp_state::rst_verdict`]): the forward entry holds the
/// internal host's, the reverse entry the remote's, each written only by
/// the programs of its direction, with plain stores of one field each
/// (single-copy atomic), before the segment's seen bits are exchanged.
/// Packets of one direction on several CPUs may interleave their stores,
/// so a reader may pair one segment's acknowledgment with a window or end
/// of another segment of the same host, a few microseconds apart. That is
/// harmless: every value alone is one the host sent; the exact tests
/// compare one field each with the reset's sequence number (the train's
/// end must lie inside the window besides, which a window of the same
/// host's next segment holds as well); and a window edge off by what two
/// such segments differ in can only turn a reset at that very edge from
/// passed to dropped or back, neither of which changes the session. The
/// fields are valid only while the seen bits of the connection say so:
/// [`seen::ACK`] for `acked` and `window`, any bit for `sent_end`, the SYN
/// bits for `wscale`; a reopen starts the bits afresh, so numbers of the
/// connection before are never read as this one's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Forward entry: the external address. Reverse entry: the internal address.
    pub addr: u32,
    /// Forward entry: the external port. Reverse entry: the internal port.
    pub port: u16,
    /// Forward entry, a set of marks: [`crate::mapping::SESSION_MAPPED`]
    /// when the session holds a reference on its endpoint's
    /// endpoint-independent mapping (without it, its port was chosen for
    /// this destination alone), [`crate::mapping::SESSION_INBOUND`] when it
    /// was opened from outside. 0 in the reverse entry.
    pub mapping: u16,
    /// Generation and [`seen`] bits of this entry's direction
    /// ([`crate::seen_word`]); changed only by compare-and-exchange.
    pub seen: u64,
    /// The latest TCP acknowledgment number this direction's host sent
    /// (host order).
    pub acked: u32,
    /// The window field of that segment (host order, unscaled; from a
    /// SYN-ACK, whose window is never scaled, divided by the scale,
    /// rounded up: [`crate::tcp_state::recorded_window`]).
    pub window: u16,
    /// Forward entry: until when the expiry sweep's last full check proves
    /// the session live, in [`crate::sweep::LIVE_UNIT_SHIFT`] units (0:
    /// no proof), so later sweeps need not read the reverse entry
    /// ([`crate::sweep::live_stamp`]). Written only by the sweep, with one
    /// 16-bit store; no datapath program reads or writes it. Unused in the
    /// reverse entry.
    pub live_until: u16,
    /// Boot-clock nanoseconds of the last packet, refreshed at most every
    /// [`crate::config::TOUCH_GRANULARITY_NS`].
    pub last_seen: u64,
    /// Where the fast path sends this direction's packets.
    pub hop: HopCache,
    /// The end of the last segment this direction's host sent, in sequence
    /// space: its sequence number plus its payload length, plus 1 for SYN
    /// and for FIN ([`crate::tcp_state::segment_end`]; host order). A
    /// reset carrying exactly this number ends a train of the sender's own
    /// segments. Resets, and SYNs once the host has sent an ACK, leave it.
    pub sent_end: u32,
    /// The window scale option of this direction's SYN: its shift, at most
    /// [`crate::tcp_state::WSCALE_MAX`], with [`crate::tcp_state::WSCALE_SENT`];
    /// 0 when the SYN had none.
    pub wscale: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<Session>() == 72 && size_of::<Session>().is_multiple_of(8));

/// Where the fast path sends a packet: the kernel's route and neighbour
/// lookup, or a session's cached copy of it ([`HopCache`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Interface the packets leave by.
    pub ifindex: u32,
    /// MTU of the route, checked against each packet.
    pub mtu: u16,
    /// Destination then source MAC address, as the Ethernet header has them.
    pub macs: [u8; 12],
}

/// The fast path's cached route lookup for one direction of a session, so
/// that an established flow pays for the kernel's route and neighbour lookup
/// once per [`ROUTE_TTL_NS`] and not per packet.
///
/// Readers on other CPUs must see one lookup whole, never a fresh stamp with
/// stale MACs, and BPF on Linux 6.1 has no load-acquire to order a sequence
/// counter's reads. So each of the four words is written and read with one
/// 64-bit access (single-copy atomic) and carries in its top 16 bits the tag
/// of the write it came from; a reader takes the entry only when all four
/// tags agree and are not 0 (never written). Writers are told apart by the
/// tag: a writer first advances word 0's tag by compare-and-exchange, and
/// only the winner writes the other words, so no two writes share a tag
/// until 65535 writes later (a write happens at most once per stale
/// [`ROUTE_TTL_NS`] per waiting packet). Two winners in a
/// row may interleave their last three words; the tags then disagree, and
/// readers look the route up again and rewrite it, as for a stale entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCache {
    /// Tag and: the lookup time in units of 2^16 ns; the destination MAC;
    /// the source MAC; the ifindex and MTU.
    pub words: [u64; 4],
}

const TAG_SHIFT: u32 = 48;
const PAYLOAD: u64 = (1 << TAG_SHIFT) - 1;
/// Lookup times are kept in units of 2^16 ns (65.5 µs): 48 bits last 584 years.
const STAMP_SHIFT: u32 = 16;

const fn mac48(m: &[u8; 12], at: usize) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < 6 {
        v |= (m[at + i] as u64) << (8 * i);
        i += 1;
    }
    v
}

impl HopCache {
    pub const fn tag(word: u64) -> u16 {
        (word >> TAG_SHIFT) as u16
    }

    /// The tag the next write after one tagged `tag` uses; 0 means "never written".
    pub const fn next_tag(tag: u16) -> u16 {
        if tag == u16::MAX { 1 } else { tag + 1 }
    }

    /// Word 0 of a write tagged `tag` of a lookup made at `now`.
    pub const fn stamp_word(tag: u16, now: u64) -> u64 {
        ((tag as u64) << TAG_SHIFT) | ((now >> STAMP_SHIFT) & PAYLOAD)
    }

    /// Words 1 to 3 of a write tagged `tag`.
    pub const fn route_words(tag: u16, hop: &NextHop) -> [u64; 3] {
        let t = (tag as u64) << TAG_SHIFT;
        [
            t | mac48(&hop.macs, 0),
            t | mac48(&hop.macs, 6),
            t | hop.ifindex as u64 | ((hop.mtu as u64) << 32),
        ]
    }

    /// The cached lookup and when it was made, if the four words are one
    /// whole write.
    pub const fn decode(words: [u64; 4]) -> Option<(NextHop, u64)> {
        let tag = Self::tag(words[0]);
        if tag == 0
            || Self::tag(words[1]) != tag
            || Self::tag(words[2]) != tag
            || Self::tag(words[3]) != tag
        {
            return None;
        }
        let mut macs = [0u8; 12];
        let mut i = 0;
        while i < 6 {
            macs[i] = (words[1] >> (8 * i)) as u8;
            macs[6 + i] = (words[2] >> (8 * i)) as u8;
            i += 1;
        }
        let hop = NextHop {
            ifindex: words[3] as u32,
            mtu: (words[3] >> 32) as u16,
            macs,
        };
        Some((hop, (words[0] & PAYLOAD) << STAMP_SHIFT))
    }

    /// The cached lookup if it is whole and may still be used at `now`.
    pub const fn fresh(words: [u64; 4], now: u64) -> Option<NextHop> {
        match Self::decode(words) {
            Some((hop, checked))
                if hop.ifindex != 0 && now.wrapping_sub(checked) < ROUTE_TTL_NS =>
            {
                Some(hop)
            }
            _ => None,
        }
    }
}

/// Identifies the fragments of one IPv4 datagram crossing the NAT one way.
/// All fields as in the packet (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// [`FRAG_OUT`] or [`FRAG_IN`].
    pub dir: u8,
}

/// Where the fragments of a datagram go, and since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// The translated address (network byte order).
    pub addr: u32,
    pub _pad: u32,
    /// Boot-clock ns when the first fragment was translated.
    pub at: u64,
}

/// Fragments of one datagram arrive within this long of each other (Linux
/// gives up reassembly after 30 s, net.ipv4.ipfrag_time); an older entry is
/// a previous datagram that happened to have the same IP id.
pub const FRAG_TTL_NS: u64 = 30_000_000_000;

pub const FRAG_OUT: u8 = 0;
pub const FRAG_IN: u8 = 1;

#[cfg(test)]
mod flow_key_tests {
    use super::*;

    #[test]
    fn new_puts_every_field_in_place_and_zeroes_the_padding() {
        const _: () = assert!(size_of::<FlowKey>() == 16);
        let k = FlowKey::new(17, 0x0102_0304, 0xa1b2, 0x0506_0708, 0xc3d4);
        assert_eq!(
            (k.proto, k.saddr, k.sport, k.daddr, k.dport, k._pad),
            (17, 0x0102_0304, 0xa1b2, 0x0506_0708, 0xc3d4, [0; 3])
        );
    }
}
