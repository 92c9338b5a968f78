//! One compliance event as the exporters see it: the datapath's
//! [`NatEvent`] read from the ring buffer, its kind named, its boot-clock
//! time turned into wall-clock milliseconds.

use std::net::Ipv4Addr;

use nat_common::nat_event::{NatEvent, kind};

/// The kinds of [`nat_common::nat_event::kind`], with what each exporter
/// calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    BlockAllocated,
    BlockReleased,
    AddressesExhausted,
    PortsExhausted,
    QuotaReached,
    ThresholdReached,
    SessionCreated,
    SessionDeleted,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::BlockAllocated,
        Kind::BlockReleased,
        Kind::AddressesExhausted,
        Kind::PortsExhausted,
        Kind::QuotaReached,
        Kind::ThresholdReached,
        Kind::SessionCreated,
        Kind::SessionDeleted,
    ];

    /// `None` for a kind this build does not know: a datapath newer than
    /// the daemon reading it.
    pub fn of(raw: u16) -> Option<Self> {
        Some(match raw {
            kind::BLOCK_ALLOCATED => Kind::BlockAllocated,
            kind::BLOCK_RELEASED => Kind::BlockReleased,
            kind::ADDRESSES_EXHAUSTED => Kind::AddressesExhausted,
            kind::PORTS_EXHAUSTED => Kind::PortsExhausted,
            kind::QUOTA_REACHED => Kind::QuotaReached,
            kind::THRESHOLD_REACHED => Kind::ThresholdReached,
            kind::SESSION_CREATED => Kind::SessionCreated,
            kind::SESSION_DELETED => Kind::SessionDeleted,
            _ => return None,
        })
    }

    /// The value of natEvent (IPFIX element 230) in IANA's "NAT Event
    /// Type" registry (values 4 to 18 from RFC 8158).
    pub fn nat_event(self) -> u8 {
        match self {
            Kind::AddressesExhausted => 3,
            Kind::SessionCreated => 4,
            Kind::SessionDeleted => 5,
            Kind::PortsExhausted => 12,
            Kind::QuotaReached => 13,
            Kind::BlockAllocated => 16,
            Kind::BlockReleased => 17,
            Kind::ThresholdReached => 18,
        }
    }

    /// The syslog MSGID (RFC 5424 section 6.2.7: at most 32 printable characters).
    pub fn msgid(self) -> &'static str {
        match self {
            Kind::BlockAllocated => "BLOCK-ALLOCATED",
            Kind::BlockReleased => "BLOCK-RELEASED",
            Kind::AddressesExhausted => "ADDRESSES-EXHAUSTED",
            Kind::PortsExhausted => "PORTS-EXHAUSTED",
            Kind::QuotaReached => "QUOTA-REACHED",
            Kind::ThresholdReached => "THRESHOLD-REACHED",
            Kind::SessionCreated => "SESSION-CREATED",
            Kind::SessionDeleted => "SESSION-DELETED",
        }
    }
}

/// A [`NatEvent`] with its kind known and its time on the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// Milliseconds since the Unix epoch (UTC).
    pub time_ms: u64,
    pub raw: NatEvent,
}

impl Event {
    /// The event in a ring buffer record; `None` for a record too short to
    /// hold one or of an unknown kind.
    pub fn parse(record: &[u8], clock: &WallClock) -> Option<Self> {
        let raw = decode(record)?;
        Some(Self {
            kind: Kind::of(raw.kind)?,
            time_ms: clock.unix_ms(raw.time_ns),
            raw,
        })
    }

    /// The internal host.
    pub fn internal(&self) -> Ipv4Addr {
        addr(self.raw.internal)
    }

    /// The external address.
    pub fn external(&self) -> Ipv4Addr {
        addr(self.raw.external)
    }

    /// A session's remote address.
    pub fn remote(&self) -> Ipv4Addr {
        addr(self.raw.remote)
    }

    pub fn internal_port(&self) -> u16 {
        u16::from_be(self.raw.internal_port)
    }

    pub fn external_port(&self) -> u16 {
        u16::from_be(self.raw.external_port)
    }

    pub fn remote_port(&self) -> u16 {
        u16::from_be(self.raw.remote_port)
    }

    /// A block's first and last port and its number of ports (the last
    /// clamped to 65535, the count to what portRangeNumPorts holds).
    pub fn block(&self) -> (u16, u16, u16) {
        let first = self.raw.block_first;
        let ports = self.raw.block_ports.max(1);
        let last = (u32::from(first) + ports - 1).min(u32::from(u16::MAX)) as u16;
        (first, last, ports.min(u32::from(u16::MAX)) as u16)
    }
}

/// The datapath's record, copied out of the ring buffer (which gives no
/// alignment guarantee beyond 8 bytes, and a record of another layout
/// must not be read past its end).
pub fn decode(record: &[u8]) -> Option<NatEvent> {
    if record.len() < size_of::<NatEvent>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<NatEvent>() bytes, NatEvent
    // is plain old data (every bit pattern valid), and the read is unaligned.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<NatEvent>()) })
}

/// An address as the maps hold it (network byte order in a u32).
fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

/// Boot-clock nanoseconds (bpf_ktime_get_boot_ns) to wall-clock time: the
/// offset between CLOCK_REALTIME and CLOCK_BOOTTIME, read again for every
/// batch so that a step of the wall clock (NTP, an operator) is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let ns = |id| {
            let ts = nix::time::clock_gettime(id).expect("the realtime and boot clocks exist");
            i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
        };
        // Boot clock read on both sides of the wall clock, their midpoint
        // taken: the offset is off by half the time between two reads at most.
        let before = ns(nix::time::ClockId::CLOCK_BOOTTIME);
        let real = ns(nix::time::ClockId::CLOCK_REALTIME);
        let after = ns(nix::time::ClockId::CLOCK_BOOTTIME);
        Self {
            offset_ns: real - (before + after) / 2,
        }
    }

    /// A clock with a given offset, for tests.
    pub const fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Milliseconds since the Unix epoch of the boot-clock time `boot_ns`.
    pub fn unix_ms(&self, boot_ns: u64) -> u64 {
        let ns = i128::from(boot_ns) + self.offset_ns;
        u64::try_from(ns.max(0) / 1_000_000).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_has_its_rfc_8158_value() {
        let values: Vec<u8> = Kind::ALL.iter().map(|k| k.nat_event()).collect();
        assert_eq!(values, [16, 17, 3, 12, 13, 18, 4, 5]);
        for raw in 1..=8 {
            let k = Kind::of(raw).expect("known kind");
            assert!(k.msgid().len() <= 32 && k.msgid().is_ascii());
        }
        assert_eq!(Kind::of(0), None);
        assert_eq!(Kind::of(9), None);
    }

    #[test]
    fn records_shorter_than_an_event_are_refused() {
        let clock = WallClock::with_offset_ns(0);
        let ev = NatEvent {
            kind: kind::BLOCK_ALLOCATED,
            ..NatEvent::default()
        };
        // SAFETY: NatEvent is plain old data; its bytes are read, not kept.
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const NatEvent).cast::<u8>(), size_of::<NatEvent>())
        };
        assert!(Event::parse(bytes, &clock).is_some());
        assert!(Event::parse(&bytes[..bytes.len() - 1], &clock).is_none());
        let mut unknown = ev;
        unknown.kind = 99;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&unknown as *const NatEvent).cast::<u8>(),
                size_of::<NatEvent>(),
            )
        };
        assert!(Event::parse(bytes, &clock).is_none());
    }

    #[test]
    fn boot_time_becomes_wall_time() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(clock.unix_ms(5_123_456_789), 1_700_000_005_123);
        let now = WallClock::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let boot = crate::datapath::tables::boot_ns();
        assert!(now.unix_ms(boot).abs_diff(wall) < 1000);
    }

    #[test]
    fn a_block_gives_its_range() {
        let ev = Event {
            kind: Kind::BlockAllocated,
            time_ms: 0,
            raw: NatEvent {
                block_first: 16384,
                block_ports: 256,
                ..NatEvent::default()
            },
        };
        assert_eq!(ev.block(), (16384, 16639, 256));
        let top = Event {
            raw: NatEvent {
                block_first: 65500,
                block_ports: 100,
                ..NatEvent::default()
            },
            ..ev
        };
        assert_eq!(top.block(), (65500, 65535, 100));
    }
}
