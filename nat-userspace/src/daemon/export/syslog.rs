//! RFC 5424 syslog lines, one per event, for UDP (RFC 5426):
//!
//! ```text
//! <134>1 2026-05-04T10:00:00.123Z gw nat 4242 BLOCK-ALLOCATED [nat@32473 natEvent="16" sourceIPv4Address="10.0.0.7" postNATSourceIPv4Address="203.0.113.9" portRangeStart="16384" portRangeEnd="16639" portRangeStepSize="1" portRangeNumPorts="256"] port block 203.0.113.9:16384-16639 allocated to 10.0.0.7
//! ```
//!
//! The timestamp is the event's, not the send's; the structured data
//! carries the fields of the IPFIX record under the same names (RFC 8158's
//! information elements), so one collector's reading of the other is
//! mechanical. Formatted by `syslog_fmt` (formatting only, no transport,
//! no dependency); the `syslog` crate stamps lines with the time of the
//! send, which a log of past events cannot use. The SD-ID is `nat@32473`:
//! an SD-ID of one's own must carry a private enterprise number, and 32473
//! is the one RFC 5612 sets aside for documentation and examples, which
//! the NAT uses rather than claim another's. Facility local0; severity
//! informational for blocks and sessions, warning for exhaustion, quotas
//! and thresholds (something to act on).

use std::fmt::Write as _;

use syslog_fmt::{
    Facility, Severity,
    v5424::{Config, Formatter},
};

use super::event::{Event, Kind};
use crate::datapath::clock::rfc3339_ms;
use crate::datapath::tables::proto_name;

/// The SD-ID of the structured data element of every line.
pub const SD_ID: &str = "nat@32473";
pub const APP_NAME: &str = "nat";

/// Lines for one host and process.
pub struct LineFormat {
    formatter: Formatter,
}

impl LineFormat {
    /// `hostname` as RFC 5424 section 6.2.4 allows it (printable ASCII,
    /// at most 255 characters; anything else is left out).
    pub fn new(hostname: &str, pid: u32) -> Self {
        let host: String = hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let pid = pid.to_string();
        let formatter = Config {
            facility: Facility::Local0,
            hostname: (!host.is_empty()).then_some(host.as_str()),
            app_name: Some(APP_NAME),
            proc_id: Some(pid.as_str()),
        }
        .into_formatter();
        Self { formatter }
    }

    /// The line for `ev`.
    pub fn line(&self, ev: &Event) -> Vec<u8> {
        let params = params(ev);
        let sd = params.iter().map(|(k, v)| (*k, v.as_str()));
        let mut out = Vec::with_capacity(320);
        self.formatter
            .write_with_data(
                &mut out,
                severity(ev.kind),
                rfc3339_ms(ev.time_ms),
                message(ev),
                Some(ev.kind.msgid()),
                [(SD_ID, sd)],
            )
            .expect("writing to a Vec does not fail");
        out
    }
}

fn severity(kind: Kind) -> Severity {
    match kind {
        Kind::BlockAllocated | Kind::BlockReleased => Severity::Info,
        Kind::SessionCreated | Kind::SessionDeleted => Severity::Info,
        Kind::AddressesExhausted
        | Kind::PortsExhausted
        | Kind::QuotaReached
        | Kind::ThresholdReached => Severity::Warning,
    }
}

/// The structured data's parameters: the IPFIX record's fields.
fn params(ev: &Event) -> Vec<(&'static str, String)> {
    let mut p = vec![("natEvent", ev.kind.nat_event().to_string())];
    let proto = ("protocolIdentifier", ev.raw.proto.to_string());
    let internal = ("sourceIPv4Address", ev.internal().to_string());
    let external = ("postNATSourceIPv4Address", ev.external().to_string());
    match ev.kind {
        Kind::BlockAllocated | Kind::BlockReleased => {
            let (first, last, ports) = ev.block();
            p.extend([
                internal,
                external,
                ("portRangeStart", first.to_string()),
                ("portRangeEnd", last.to_string()),
                ("portRangeStepSize", "1".to_owned()),
                ("portRangeNumPorts", ports.to_string()),
            ]);
        }
        Kind::SessionCreated | Kind::SessionDeleted => p.extend([
            proto,
            internal,
            ("sourceTransportPort", ev.internal_port().to_string()),
            external,
            (
                "postNAPTSourceTransportPort",
                ev.external_port().to_string(),
            ),
            ("destinationIPv4Address", ev.remote().to_string()),
            ("destinationTransportPort", ev.remote_port().to_string()),
        ]),
        Kind::AddressesExhausted => p.extend([proto, internal]),
        Kind::PortsExhausted => p.extend([proto, internal, external]),
        Kind::QuotaReached => p.extend([
            ("natQuotaExceededEvent", "3".to_owned()),
            ("maxEntriesPerUser", ev.raw.value.to_string()),
            internal,
        ]),
        Kind::ThresholdReached => p.extend([
            ("natThresholdEvent", "3".to_owned()),
            ("addressPortMappingHighThreshold", ev.raw.value.to_string()),
            external,
        ]),
    }
    p
}

/// The free-form message: the event in words.
fn message(ev: &Event) -> String {
    let mut m = String::new();
    let proto = proto_name(ev.raw.proto);
    let (int, ext) = (ev.internal(), ev.external());
    // Writing to a String does not fail.
    let _ = match ev.kind {
        Kind::BlockAllocated | Kind::BlockReleased => {
            let (first, last, _) = ev.block();
            let what = if ev.kind == Kind::BlockAllocated {
                "allocated to"
            } else {
                "released by"
            };
            write!(m, "port block {ext}:{first}-{last} {what} {int}")
        }
        Kind::SessionCreated | Kind::SessionDeleted => {
            let what = if ev.kind == Kind::SessionCreated {
                "created"
            } else {
                "deleted"
            };
            write!(
                m,
                "{proto} session {int}:{} -> {}:{} as {ext}:{} {what}",
                ev.internal_port(),
                ev.remote(),
                ev.remote_port(),
                ev.external_port()
            )
        }
        Kind::AddressesExhausted => write!(
            m,
            "addresses exhausted: no external address had room for a {proto} flow of {int}"
        ),
        Kind::PortsExhausted => write!(
            m,
            "ports exhausted: {int} had no usable port on {ext} for a {proto} flow"
        ),
        Kind::QuotaReached => write!(m, "{int} reached its quota of {}", ev.raw.value),
        Kind::ThresholdReached => write!(
            m,
            "{}% of the port blocks of {ext} are in use",
            ev.raw.value
        ),
    };
    m
}

#[cfg(test)]
mod tests {
    use nat_common::nat_event::NatEvent;

    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn ev(kind: Kind) -> Event {
        Event {
            kind,
            // 2026-05-04T10:00:00.123Z
            time_ms: 1_777_888_800_123,
            raw: NatEvent {
                proto: 6,
                value: 90,
                internal: be([10, 0, 0, 7]),
                external: be([203, 0, 113, 9]),
                remote: be([198, 51, 100, 1]),
                internal_port: 40000u16.to_be(),
                external_port: 20000u16.to_be(),
                remote_port: 443u16.to_be(),
                block_first: 16384,
                block_ports: 256,
                ..NatEvent::default()
            },
        }
    }

    fn line(kind: Kind) -> String {
        String::from_utf8(LineFormat::new("gw", 4242).line(&ev(kind))).unwrap()
    }

    const BOM: &str = "\u{feff}";

    #[test]
    fn a_block_allocation_line_is_exact() {
        assert_eq!(
            line(Kind::BlockAllocated),
            format!(
                "<134>1 2026-05-04T10:00:00.123Z gw nat 4242 BLOCK-ALLOCATED [nat@32473 natEvent=\"16\" sourceIPv4Address=\"10.0.0.7\" postNATSourceIPv4Address=\"203.0.113.9\" portRangeStart=\"16384\" portRangeEnd=\"16639\" portRangeStepSize=\"1\" portRangeNumPorts=\"256\"] {BOM}port block 203.0.113.9:16384-16639 allocated to 10.0.0.7"
            )
        );
    }

    #[test]
    fn a_session_line_is_exact() {
        assert_eq!(
            line(Kind::SessionDeleted),
            format!(
                "<134>1 2026-05-04T10:00:00.123Z gw nat 4242 SESSION-DELETED [nat@32473 natEvent=\"5\" protocolIdentifier=\"6\" sourceIPv4Address=\"10.0.0.7\" sourceTransportPort=\"40000\" postNATSourceIPv4Address=\"203.0.113.9\" postNAPTSourceTransportPort=\"20000\" destinationIPv4Address=\"198.51.100.1\" destinationTransportPort=\"443\"] {BOM}tcp session 10.0.0.7:40000 -> 198.51.100.1:443 as 203.0.113.9:20000 deleted"
            )
        );
    }

    #[test]
    fn warnings_carry_their_subtype_and_severity() {
        let quota = line(Kind::QuotaReached);
        assert!(quota.starts_with("<132>1 "), "local0.warning: {quota}");
        assert!(quota.contains(
            "QUOTA-REACHED [nat@32473 natEvent=\"13\" natQuotaExceededEvent=\"3\" maxEntriesPerUser=\"90\" sourceIPv4Address=\"10.0.0.7\"]"
        ));
        let threshold = line(Kind::ThresholdReached);
        assert!(threshold.contains(
            "[nat@32473 natEvent=\"18\" natThresholdEvent=\"3\" addressPortMappingHighThreshold=\"90\" postNATSourceIPv4Address=\"203.0.113.9\"]"
        ));
        assert!(line(Kind::AddressesExhausted).contains("natEvent=\"3\" protocolIdentifier=\"6\""));
        assert!(line(Kind::PortsExhausted).contains("natEvent=\"12\""));
    }

    #[test]
    fn hostnames_are_cut_to_what_rfc_5424_allows() {
        let f = LineFormat::new("my host\n", 1);
        let l = String::from_utf8(f.line(&ev(Kind::BlockReleased))).unwrap();
        assert!(l.contains(" myhost nat 1 BLOCK-RELEASED "), "{l}");
        let f = LineFormat::new("", 1);
        let l = String::from_utf8(f.line(&ev(Kind::BlockReleased))).unwrap();
        assert!(l.contains("Z - nat 1 "), "{l}");
    }
}
