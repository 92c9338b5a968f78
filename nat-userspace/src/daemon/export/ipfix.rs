//! IPFIX (RFC 7011) messages carrying RFC 8158's NAT events, for UDP.
//!
//! Encoded here with `bytes` rather than a crate: the one maintained IPFIX
//! crate that writes messages, netgauze-flow-pkt (0.13), generates its
//! information elements at build time from IANA's registry through a code
//! generator that brings reqwest and rustls as build dependencies (117
//! crates in all, more than this whole package's 102), and models
//! messages for collectors (templates decoded into maps, every element an
//! enum variant). What the NAT sends is six fixed templates of fixed-length
//! elements, about two hundred lines here, tested byte for byte; ipfixrw
//! (0.1.0, 2023) is not maintained.
//!
//! One template per record shape (template ids 256 to 261), each with
//! the elements RFC 8158's template for its event lists, led by
//! observationTimeMilliseconds and natEvent, plus the addresses the
//! datapath gives where RFC 8158's template has none:
//!
//! | natEvent | template | elements after time and event |
//! | --- | --- | --- |
//! | 16, 17 port block allocation, de-allocation | 256 | sourceIPv4Address, postNATSourceIPv4Address, portRangeStart, portRangeEnd, portRangeStepSize (1), portRangeNumPorts |
//! | 4, 5 NAT44 session create, delete | 257 | protocolIdentifier, sourceIPv4Address, sourceTransportPort, postNATSourceIPv4Address, postNAPTSourceTransportPort, destinationIPv4Address, destinationTransportPort |
//! | 3 addresses exhausted | 258 | natPoolId (0: an instance has one pool), protocolIdentifier, sourceIPv4Address |
//! | 12 ports exhausted | 259 | protocolIdentifier, sourceIPv4Address, postNATSourceIPv4Address |
//! | 13 quota exceeded | 260 | natQuotaExceededEvent 3 (maximum entries per user), maxEntriesPerUser (the limit the host reached: sessions or blocks), sourceIPv4Address |
//! | 18 threshold reached | 261 | natThresholdEvent 3 (address and port mapping high threshold), addressPortMappingHighThreshold (the percent of the address's blocks in use as it passed `pool-threshold`), postNATSourceIPv4Address |
//!
//! The sequence number counts the data records sent in a session (one per
//! collector and observation domain) before the message, as RFC 7011
//! section 3.1 has it. Over UDP a collector that restarts has lost the
//! templates, so they are sent again (section 8.4): when a session starts,
//! every `ipfix-template-refresh`, and before every
//! [`TEMPLATE_EVERY_MESSAGES`]th data message. No message exceeds
//! [`MAX_MESSAGE`] bytes: RFC 7011 keeps UDP messages within the
//! path MTU, which the exporter does not know, and 512 bytes fit any path.

use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};

use super::event::{Event, Kind};

/// The version field of every IPFIX message header.
pub const VERSION: u16 = 10;
/// Set id of a template set.
const TEMPLATE_SET: u16 = 2;
/// Largest message: small enough for any path MTU, so no collector sees
/// a fragment.
pub const MAX_MESSAGE: usize = 512;
/// Data messages between two sends of the templates, besides the timer.
pub const TEMPLATE_EVERY_MESSAGES: u32 = 100;

const HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;

/// Information elements (RFC 7012 and RFC 8158 numbers), with the length
/// each is sent in.
mod ie {
    pub const PROTOCOL_IDENTIFIER: (u16, u16) = (4, 1);
    pub const SOURCE_TRANSPORT_PORT: (u16, u16) = (7, 2);
    pub const SOURCE_IPV4_ADDRESS: (u16, u16) = (8, 4);
    pub const DESTINATION_TRANSPORT_PORT: (u16, u16) = (11, 2);
    pub const DESTINATION_IPV4_ADDRESS: (u16, u16) = (12, 4);
    pub const POST_NAT_SOURCE_IPV4_ADDRESS: (u16, u16) = (225, 4);
    pub const POST_NAPT_SOURCE_TRANSPORT_PORT: (u16, u16) = (227, 2);
    pub const NAT_EVENT: (u16, u16) = (230, 1);
    pub const NAT_POOL_ID: (u16, u16) = (283, 4);
    pub const OBSERVATION_TIME_MILLISECONDS: (u16, u16) = (323, 8);
    pub const PORT_RANGE_START: (u16, u16) = (361, 2);
    pub const PORT_RANGE_END: (u16, u16) = (362, 2);
    pub const PORT_RANGE_STEP_SIZE: (u16, u16) = (363, 2);
    pub const PORT_RANGE_NUM_PORTS: (u16, u16) = (364, 2);
    pub const NAT_QUOTA_EXCEEDED_EVENT: (u16, u16) = (466, 4);
    pub const NAT_THRESHOLD_EVENT: (u16, u16) = (467, 4);
    pub const MAX_ENTRIES_PER_USER: (u16, u16) = (473, 4);
    pub const ADDRESS_PORT_MAPPING_HIGH_THRESHOLD: (u16, u16) = (478, 4);
}

/// natQuotaExceededEvent: maximum entries per user (IANA registry of IE 466).
const QUOTA_ENTRIES_PER_USER: u32 = 3;
/// natThresholdEvent: address and port mapping high threshold (IANA registry of IE 467).
const THRESHOLD_MAPPING_HIGH: u32 = 3;

/// A template: its id and its elements in order.
#[derive(Debug)]
pub struct Template {
    pub id: u16,
    pub fields: &'static [(u16, u16)],
}

impl Template {
    /// Bytes of one data record.
    pub fn record_len(&self) -> usize {
        self.fields.iter().map(|(_, len)| usize::from(*len)).sum()
    }

    /// Bytes of the template record.
    fn len(&self) -> usize {
        4 + 4 * self.fields.len()
    }
}

use ie::*;

pub const BLOCK: Template = Template {
    id: 256,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        SOURCE_IPV4_ADDRESS,
        POST_NAT_SOURCE_IPV4_ADDRESS,
        PORT_RANGE_START,
        PORT_RANGE_END,
        PORT_RANGE_STEP_SIZE,
        PORT_RANGE_NUM_PORTS,
    ],
};

pub const SESSION: Template = Template {
    id: 257,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        PROTOCOL_IDENTIFIER,
        SOURCE_IPV4_ADDRESS,
        SOURCE_TRANSPORT_PORT,
        POST_NAT_SOURCE_IPV4_ADDRESS,
        POST_NAPT_SOURCE_TRANSPORT_PORT,
        DESTINATION_IPV4_ADDRESS,
        DESTINATION_TRANSPORT_PORT,
    ],
};

pub const ADDRESSES_EXHAUSTED: Template = Template {
    id: 258,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        NAT_POOL_ID,
        PROTOCOL_IDENTIFIER,
        SOURCE_IPV4_ADDRESS,
    ],
};

pub const PORTS_EXHAUSTED: Template = Template {
    id: 259,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        PROTOCOL_IDENTIFIER,
        SOURCE_IPV4_ADDRESS,
        POST_NAT_SOURCE_IPV4_ADDRESS,
    ],
};

pub const QUOTA: Template = Template {
    id: 260,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        NAT_QUOTA_EXCEEDED_EVENT,
        MAX_ENTRIES_PER_USER,
        SOURCE_IPV4_ADDRESS,
    ],
};

pub const THRESHOLD: Template = Template {
    id: 261,
    fields: &[
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        NAT_THRESHOLD_EVENT,
        ADDRESS_PORT_MAPPING_HIGH_THRESHOLD,
        POST_NAT_SOURCE_IPV4_ADDRESS,
    ],
};

pub const TEMPLATES: [&Template; 6] = [
    &BLOCK,
    &SESSION,
    &ADDRESSES_EXHAUSTED,
    &PORTS_EXHAUSTED,
    &QUOTA,
    &THRESHOLD,
];

/// The template an event's record follows.
pub fn template(kind: Kind) -> &'static Template {
    match kind {
        Kind::BlockAllocated | Kind::BlockReleased => &BLOCK,
        Kind::SessionCreated | Kind::SessionDeleted => &SESSION,
        Kind::AddressesExhausted => &ADDRESSES_EXHAUSTED,
        Kind::PortsExhausted => &PORTS_EXHAUSTED,
        Kind::QuotaReached => &QUOTA,
        Kind::ThresholdReached => &THRESHOLD,
    }
}

/// Appends `ev`'s data record, in its template's order.
fn put_record(buf: &mut BytesMut, ev: &Event) {
    buf.put_u64(ev.time_ms);
    buf.put_u8(ev.kind.nat_event());
    let ip = |buf: &mut BytesMut, a: std::net::Ipv4Addr| buf.put_slice(&a.octets());
    match ev.kind {
        Kind::BlockAllocated | Kind::BlockReleased => {
            let (first, last, ports) = ev.block();
            ip(buf, ev.internal());
            ip(buf, ev.external());
            buf.put_u16(first);
            buf.put_u16(last);
            buf.put_u16(1);
            buf.put_u16(ports);
        }
        Kind::SessionCreated | Kind::SessionDeleted => {
            buf.put_u8(ev.raw.proto);
            ip(buf, ev.internal());
            buf.put_u16(ev.internal_port());
            ip(buf, ev.external());
            buf.put_u16(ev.external_port());
            ip(buf, ev.remote());
            buf.put_u16(ev.remote_port());
        }
        Kind::AddressesExhausted => {
            buf.put_u32(0);
            buf.put_u8(ev.raw.proto);
            ip(buf, ev.internal());
        }
        Kind::PortsExhausted => {
            buf.put_u8(ev.raw.proto);
            ip(buf, ev.internal());
            ip(buf, ev.external());
        }
        Kind::QuotaReached => {
            buf.put_u32(QUOTA_ENTRIES_PER_USER);
            buf.put_u32(ev.raw.value);
            ip(buf, ev.internal());
        }
        Kind::ThresholdReached => {
            buf.put_u32(THRESHOLD_MAPPING_HIGH);
            buf.put_u32(ev.raw.value);
            ip(buf, ev.external());
        }
    }
}

/// The message header; its length is patched in by [`finish`].
fn put_header(buf: &mut BytesMut, export_secs: u32, sequence: u32, domain: u32) {
    buf.put_u16(VERSION);
    buf.put_u16(0);
    buf.put_u32(export_secs);
    buf.put_u32(sequence);
    buf.put_u32(domain);
}

fn finish(mut buf: BytesMut) -> Bytes {
    let len = u16::try_from(buf.len()).expect("messages are kept under MAX_MESSAGE");
    buf[2..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// A message holding one template set with every template.
pub fn template_message(export_secs: u32, sequence: u32, domain: u32) -> Bytes {
    let set_len = SET_HEADER_LEN + TEMPLATES.iter().map(|t| t.len()).sum::<usize>();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + set_len);
    put_header(&mut buf, export_secs, sequence, domain);
    buf.put_u16(TEMPLATE_SET);
    buf.put_u16(u16::try_from(set_len).expect("six small templates"));
    for t in TEMPLATES {
        buf.put_u16(t.id);
        buf.put_u16(t.fields.len() as u16);
        for (id, len) in t.fields {
            buf.put_u16(*id);
            buf.put_u16(*len);
        }
    }
    finish(buf)
}

/// The exporting side of one transport session: one collector, one
/// observation domain.
#[derive(Debug)]
pub struct Session {
    domain: u32,
    /// Data records sent so far, modulo 2^32.
    sequence: u32,
    /// Data messages since the templates were last sent.
    since_templates: u32,
    /// When the templates were last sent; `None` before the first time.
    templates_sent: Option<Instant>,
}

impl Session {
    pub fn new(domain: u32) -> Self {
        Self {
            domain,
            sequence: 0,
            since_templates: 0,
            templates_sent: None,
        }
    }

    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// When the templates are next due by time alone.
    pub fn templates_due_at(&self, refresh: Duration) -> Option<Instant> {
        self.templates_sent.map(|t| t + refresh)
    }

    fn templates_due(&self, now: Instant, refresh: Duration) -> bool {
        match self.templates_sent {
            None => true,
            Some(sent) => now >= sent + refresh || self.since_templates >= TEMPLATE_EVERY_MESSAGES,
        }
    }

    /// The templates, if they are due at `now` (the first call, the timer).
    pub fn refresh(&mut self, now: Instant, refresh: Duration, export_secs: u32) -> Option<Bytes> {
        self.templates_due(now, refresh)
            .then(|| self.templates(now, export_secs))
    }

    fn templates(&mut self, now: Instant, export_secs: u32) -> Bytes {
        self.templates_sent = Some(now);
        self.since_templates = 0;
        template_message(export_secs, self.sequence, self.domain)
    }

    /// The messages carrying `events` in order, each at most
    /// [`MAX_MESSAGE`] bytes, preceded by the templates where they are due.
    pub fn messages(
        &mut self,
        events: &[Event],
        now: Instant,
        refresh: Duration,
        export_secs: u32,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut rest = events;
        while !rest.is_empty() {
            if self.templates_due(now, refresh) {
                out.push(self.templates(now, export_secs));
            }
            let (message, taken) = self.data_message(rest, export_secs);
            out.push(message);
            rest = &rest[taken..];
        }
        out
    }

    /// One data message with as many of `events` as fit (at least one);
    /// consecutive records of one template share a set.
    fn data_message(&mut self, events: &[Event], export_secs: u32) -> (Bytes, usize) {
        let mut buf = BytesMut::with_capacity(MAX_MESSAGE);
        put_header(&mut buf, export_secs, self.sequence, self.domain);
        // (template id, offset of its set header)
        let mut set: Option<(u16, usize)> = None;
        let mut taken = 0;
        for ev in events {
            let t = template(ev.kind);
            let opens_set = set.is_none_or(|(id, _)| id != t.id);
            let need = t.record_len() + if opens_set { SET_HEADER_LEN } else { 0 };
            if taken > 0 && buf.len() + need > MAX_MESSAGE {
                break;
            }
            if opens_set {
                close_set(&mut buf, set);
                set = Some((t.id, buf.len()));
                buf.put_u16(t.id);
                buf.put_u16(0);
            }
            put_record(&mut buf, ev);
            taken += 1;
        }
        close_set(&mut buf, set);
        self.sequence = self.sequence.wrapping_add(taken as u32);
        self.since_templates += 1;
        (finish(buf), taken)
    }
}

/// Writes the length of the set that starts at `set`'s offset.
fn close_set(buf: &mut BytesMut, set: Option<(u16, usize)>) {
    if let Some((_, at)) = set {
        let len = u16::try_from(buf.len() - at).expect("sets are kept under MAX_MESSAGE");
        buf[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use nat_common::nat_event::NatEvent;

    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn block(kind: Kind, time_ms: u64) -> Event {
        Event {
            kind,
            time_ms,
            raw: NatEvent {
                internal: be([10, 0, 0, 7]),
                external: be([203, 0, 113, 9]),
                block_first: 16384,
                block_ports: 256,
                ..NatEvent::default()
            },
        }
    }

    #[test]
    fn the_template_set_is_byte_exact() {
        let msg = template_message(0x6000_0000, 5, 42);
        let want: Vec<u8> = vec![
            0x00, 0x0a, 0x00, 0xc0, // version 10, length 192
            0x60, 0x00, 0x00, 0x00, // export time
            0x00, 0x00, 0x00, 0x05, // sequence: templates do not count
            0x00, 0x00, 0x00, 0x2a, // observation domain 42
            0x00, 0x02, 0x00, 0xb0, // template set, 176 bytes
            // 256: port blocks, 8 fields
            0x01, 0x00, 0x00, 0x08, //
            0x01, 0x43, 0x00, 0x08, // observationTimeMilliseconds (323), 8
            0x00, 0xe6, 0x00, 0x01, // natEvent (230), 1
            0x00, 0x08, 0x00, 0x04, // sourceIPv4Address (8), 4
            0x00, 0xe1, 0x00, 0x04, // postNATSourceIPv4Address (225), 4
            0x01, 0x69, 0x00, 0x02, // portRangeStart (361), 2
            0x01, 0x6a, 0x00, 0x02, // portRangeEnd (362), 2
            0x01, 0x6b, 0x00, 0x02, // portRangeStepSize (363), 2
            0x01, 0x6c, 0x00, 0x02, // portRangeNumPorts (364), 2
            // 257: sessions, 9 fields
            0x01, 0x01, 0x00, 0x09, //
            0x01, 0x43, 0x00, 0x08, 0x00, 0xe6, 0x00, 0x01, //
            0x00, 0x04, 0x00, 0x01, // protocolIdentifier (4), 1
            0x00, 0x08, 0x00, 0x04, //
            0x00, 0x07, 0x00, 0x02, // sourceTransportPort (7), 2
            0x00, 0xe1, 0x00, 0x04, //
            0x00, 0xe3, 0x00, 0x02, // postNAPTSourceTransportPort (227), 2
            0x00, 0x0c, 0x00, 0x04, // destinationIPv4Address (12), 4
            0x00, 0x0b, 0x00, 0x02, // destinationTransportPort (11), 2
            // 258: addresses exhausted
            0x01, 0x02, 0x00, 0x05, //
            0x01, 0x43, 0x00, 0x08, 0x00, 0xe6, 0x00, 0x01, //
            0x01, 0x1b, 0x00, 0x04, // natPoolId (283), 4
            0x00, 0x04, 0x00, 0x01, 0x00, 0x08, 0x00, 0x04, //
            // 259: ports exhausted
            0x01, 0x03, 0x00, 0x05, //
            0x01, 0x43, 0x00, 0x08, 0x00, 0xe6, 0x00, 0x01, //
            0x00, 0x04, 0x00, 0x01, 0x00, 0x08, 0x00, 0x04, 0x00, 0xe1, 0x00, 0x04, //
            // 260: quota exceeded
            0x01, 0x04, 0x00, 0x05, //
            0x01, 0x43, 0x00, 0x08, 0x00, 0xe6, 0x00, 0x01, //
            0x01, 0xd2, 0x00, 0x04, // natQuotaExceededEvent (466), 4
            0x01, 0xd9, 0x00, 0x04, // maxEntriesPerUser (473), 4
            0x00, 0x08, 0x00, 0x04, //
            // 261: threshold reached
            0x01, 0x05, 0x00, 0x05, //
            0x01, 0x43, 0x00, 0x08, 0x00, 0xe6, 0x00, 0x01, //
            0x01, 0xd3, 0x00, 0x04, // natThresholdEvent (467), 4
            0x01, 0xde, 0x00, 0x04, // addressPortMappingHighThreshold (478), 4
            0x00, 0xe1, 0x00, 0x04, //
        ];
        assert_eq!(msg.len(), want.len());
        assert_eq!(&msg[..], &want[..]);
    }

    #[test]
    fn a_block_allocation_is_byte_exact() {
        let mut s = Session::new(7);
        let now = Instant::now();
        let refresh = Duration::from_secs(60);
        let msgs = s.messages(
            &[block(Kind::BlockAllocated, 0x0000_018d_0000_1234)],
            now,
            refresh,
            0x6543_2100,
        );
        assert_eq!(msgs.len(), 2, "templates first, then the data");
        assert_eq!(&msgs[0][..], &template_message(0x6543_2100, 0, 7)[..]);
        let want: [u8; 45] = [
            0x00, 0x0a, 0x00, 0x2d, // version 10, length 45
            0x65, 0x43, 0x21, 0x00, // export time
            0x00, 0x00, 0x00, 0x00, // sequence: no record before this one
            0x00, 0x00, 0x00, 0x07, // observation domain
            0x01, 0x00, 0x00, 0x1d, // data set of template 256, 29 bytes
            0x00, 0x00, 0x01, 0x8d, 0x00, 0x00, 0x12, 0x34, // time (ms)
            0x10, // natEvent 16: port block allocation
            10, 0, 0, 7, // sourceIPv4Address
            203, 0, 113, 9, // postNATSourceIPv4Address
            0x40, 0x00, // portRangeStart 16384
            0x40, 0xff, // portRangeEnd 16639
            0x00, 0x01, // portRangeStepSize 1
            0x01, 0x00, // portRangeNumPorts 256
        ];
        assert_eq!(&msgs[1][..], &want[..]);

        // The release: no templates (sent just now), sequence 1, natEvent 17.
        let msgs = s.messages(&[block(Kind::BlockReleased, 1)], now, refresh, 0);
        assert_eq!(msgs.len(), 1);
        assert_eq!(&msgs[0][8..12], &[0, 0, 0, 1]);
        assert_eq!(msgs[0][28], 17);
    }

    #[test]
    fn a_session_record_is_byte_exact() {
        let ev = Event {
            kind: Kind::SessionCreated,
            time_ms: 1,
            raw: NatEvent {
                proto: 6,
                internal: be([10, 0, 0, 7]),
                external: be([203, 0, 113, 9]),
                remote: be([198, 51, 100, 1]),
                internal_port: 40000u16.to_be(),
                external_port: 20000u16.to_be(),
                remote_port: 443u16.to_be(),
                ..NatEvent::default()
            },
        };
        let mut buf = BytesMut::new();
        put_record(&mut buf, &ev);
        assert_eq!(buf.len(), SESSION.record_len());
        let want: [u8; 28] = [
            0, 0, 0, 0, 0, 0, 0, 1, // time
            4, // natEvent 4: NAT44 session create
            6, // TCP
            10, 0, 0, 7, 0x9c, 0x40, // 10.0.0.7:40000
            203, 0, 113, 9, 0x4e, 0x20, // 203.0.113.9:20000
            198, 51, 100, 1, 0x01, 0xbb, // 198.51.100.1:443
        ];
        assert_eq!(&buf[..], &want[..]);
    }

    #[test]
    fn quota_threshold_and_exhaustion_records_are_byte_exact() {
        let raw = NatEvent {
            proto: 17,
            value: 85,
            internal: be([10, 0, 0, 7]),
            external: be([203, 0, 113, 9]),
            ..NatEvent::default()
        };
        let rec = |kind| {
            let mut buf = BytesMut::new();
            put_record(
                &mut buf,
                &Event {
                    kind,
                    time_ms: 0,
                    raw,
                },
            );
            assert_eq!(buf.len(), template(kind).record_len());
            buf[8..].to_vec()
        };
        assert_eq!(
            rec(Kind::QuotaReached),
            [13, 0, 0, 0, 3, 0, 0, 0, 85, 10, 0, 0, 7]
        );
        assert_eq!(
            rec(Kind::ThresholdReached),
            [18, 0, 0, 0, 3, 0, 0, 0, 85, 203, 0, 113, 9]
        );
        assert_eq!(
            rec(Kind::AddressesExhausted),
            [3, 0, 0, 0, 0, 17, 10, 0, 0, 7]
        );
        assert_eq!(
            rec(Kind::PortsExhausted),
            [12, 17, 10, 0, 0, 7, 203, 0, 113, 9]
        );
    }

    #[test]
    fn messages_stay_under_the_limit_and_number_every_record() {
        let mut s = Session::new(1);
        let now = Instant::now();
        let refresh = Duration::from_secs(60);
        let events: Vec<Event> = (0..100)
            .map(|i| {
                let kind = if i % 3 == 0 {
                    Kind::BlockReleased
                } else {
                    Kind::SessionDeleted
                };
                let mut ev = block(kind, i);
                ev.raw.proto = 6;
                ev
            })
            .collect();
        let msgs = s.messages(&events, now, refresh, 0);
        assert_eq!(&msgs[0][..], &template_message(0, 0, 1)[..]);
        let mut seen = 0u32;
        for m in &msgs[1..] {
            assert!(m.len() <= MAX_MESSAGE);
            assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len());
            assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), seen);
            // Walk the sets: their lengths add up to the message.
            let mut at = HEADER_LEN;
            while at < m.len() {
                let id = u16::from_be_bytes([m[at], m[at + 1]]);
                let len = u16::from_be_bytes([m[at + 2], m[at + 3]]) as usize;
                let rec = TEMPLATES.iter().find(|t| t.id == id).unwrap().record_len();
                assert_eq!((len - SET_HEADER_LEN) % rec, 0);
                seen += ((len - SET_HEADER_LEN) / rec) as u32;
                at += len;
            }
            assert_eq!(at, m.len());
        }
        assert_eq!(seen, 100);
        assert_eq!(s.sequence, 100);
    }

    #[test]
    fn templates_are_sent_again_by_time_and_by_count() {
        let mut s = Session::new(1);
        let t0 = Instant::now();
        let refresh = Duration::from_secs(30);
        assert!(s.refresh(t0, refresh, 0).is_some(), "first thing");
        assert!(s.refresh(t0, refresh, 0).is_none());
        assert_eq!(s.templates_due_at(refresh), Some(t0 + refresh));
        assert!(s.refresh(t0 + refresh, refresh, 0).is_some(), "by time");
        let one = [block(Kind::BlockAllocated, 0)];
        let t1 = t0 + refresh;
        for _ in 0..TEMPLATE_EVERY_MESSAGES {
            let msgs = s.messages(&one, t1, refresh, 0);
            assert_eq!(msgs.len(), 1);
        }
        let msgs = s.messages(&one, t1, refresh, 0);
        assert_eq!(msgs.len(), 2, "by count");
        assert_eq!(u16::from_be_bytes([msgs[0][16], msgs[0][17]]), TEMPLATE_SET);
        assert_eq!(
            u32::from_be_bytes([msgs[0][8], msgs[0][9], msgs[0][10], msgs[0][11]]),
            TEMPLATE_EVERY_MESSAGES
        );
    }
}
