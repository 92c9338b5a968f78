//! Compliance logging, end to end from the daemon's side: port block
//! events written into the running daemon's NAT_EVENTS ring buffer (as the
//! datapath writes them, `nat_tests::event_ring`) reach two IPFIX
//! collectors and a syslog server in the server's namespace, and real
//! decoders read them back: Wireshark's IPFIX dissector (tshark) every
//! field, nfcapd and nfdump what nfdump 1.7 keeps of them (events,
//! addresses, times), and the syslog lines as RFC 5424 has them. Every
//! event written is there once, with its addresses, ports and time, and
//! nothing else is. A reload re-targets the export.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::ops::*;
use nat_common::nat_event::{NatEvent, kind};
use nat_tests::collectors::{
    BlockRecord, Capture, Nfcapd, UdpInbox, days_from_civil, ipfix_messages,
};
use nat_tests::event_ring::EventRing;
use nat_tests::{EXTERNAL_IP, NatProcess, SERVER_IFACE, SERVER_IP, Side, Topology, TopologyOpts};

const BLOCK_SIZE: u32 = 256;
const FIRST_PORT: u16 = 16384;

/// Wall-clock milliseconds of a boot-clock time, as the daemon computes them.
fn wall_ms(boot_ns: u64) -> u64 {
    let ns = |id| {
        let ts = nix::time::clock_gettime(id).unwrap();
        i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
    };
    let offset = ns(nix::time::ClockId::CLOCK_REALTIME) - ns(nix::time::ClockId::CLOCK_BOOTTIME);
    ((i128::from(boot_ns) + offset) / 1_000_000) as u64
}

fn boot_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A port block event of `host` for block `index` of the external address.
fn block_event(kind: u16, host: Ipv4Addr, index: u16, time_ns: u64) -> NatEvent {
    NatEvent {
        time_ns,
        kind,
        internal: u32::from(host).to_be(),
        external: u32::from(EXTERNAL_IP).to_be(),
        block_first: FIRST_PORT + index * BLOCK_SIZE as u16,
        block_ports: BLOCK_SIZE,
        ..NatEvent::default()
    }
}

/// What a decoder should show for `ev` sent to collector port `port`.
fn expected(ev: &NatEvent, port: u16) -> BlockRecord {
    BlockRecord {
        port,
        nat_event: if ev.kind == kind::BLOCK_ALLOCATED {
            16
        } else {
            17
        },
        internal: Ipv4Addr::from(u32::from_be(ev.internal)).to_string(),
        external: Ipv4Addr::from(u32::from_be(ev.external)).to_string(),
        first: ev.block_first,
        last: ev.block_first + BLOCK_SIZE as u16 - 1,
        step: 1,
        ports: BLOCK_SIZE as u16,
        time_ms: wall_ms(ev.time_ns),
    }
}

/// Two hosts taking blocks and giving them back, in the order of the ring.
fn scenario() -> Vec<NatEvent> {
    let (a, b) = (Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(10, 200, 1, 3));
    // Ten seconds ago onward, 1.234567 s apart: distinct milliseconds.
    let t0 = boot_ns() - 10_000_000_000;
    let at = |i: u64| t0 + i * 1_234_567_000;
    vec![
        block_event(kind::BLOCK_ALLOCATED, a, 0, at(0)),
        block_event(kind::BLOCK_ALLOCATED, b, 1, at(1)),
        block_event(kind::BLOCK_ALLOCATED, a, 2, at(2)),
        block_event(kind::BLOCK_RELEASED, a, 0, at(3)),
        block_event(kind::BLOCK_RELEASED, b, 1, at(4)),
        block_event(kind::BLOCK_RELEASED, a, 2, at(5)),
    ]
}

/// Times match to the millisecond, give or take the clock reads of the
/// test and of the daemon (each reads CLOCK_REALTIME minus CLOCK_BOOTTIME).
fn same_time(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= 2
}

fn assert_records(got: &[BlockRecord], want: &[BlockRecord], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:#?}\nwanted {want:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            same_time(g.time_ms, w.time_ms),
            "{what}: time {} for {}",
            g.time_ms,
            w.time_ms
        );
        let g = BlockRecord {
            time_ms: w.time_ms,
            ..g.clone()
        };
        assert_eq!(&g, w, "{what}");
    }
}

/// Checks one collector's stream: templates first (all six, the first
/// message), the observation domain, sequence numbers counting the data
/// records before each message, and exactly the `want` records.
fn assert_stream(
    messages: &[nat_tests::collectors::Message],
    port: u16,
    domain: u32,
    want: &[BlockRecord],
) {
    let stream: Vec<_> = messages.iter().filter(|m| m.port == port).collect();
    assert!(!stream.is_empty(), "nothing reached port {port}");
    assert_eq!(
        stream[0].templates,
        [256, 257, 258, 259, 260, 261],
        "the first message to {port} is not the template set: {:?}",
        stream[0]
    );
    let mut records = Vec::new();
    for m in &stream {
        assert_eq!(m.domain, domain, "observation domain of {m:?}");
        assert_eq!(
            m.sequence as usize,
            records.len(),
            "sequence number of {m:?} after {} records",
            records.len()
        );
        records.extend(m.blocks.iter().cloned());
    }
    assert_records(&records, want, &format!("collector :{port}"));
}

/// nfdump's `t_event` (`2026-12-07T01:33:28.459`, UTC) as Unix milliseconds.
fn nfdump_time_ms(s: &str) -> u64 {
    let bad = || -> ! { panic!("not an nfdump time: {s:?}") };
    let (date, time) = s.split_once('T').unwrap_or_else(|| bad());
    let d: Vec<i64> = date
        .split('-')
        .map(|v| v.parse().unwrap_or_else(|_| bad()))
        .collect();
    let (hms, ms) = time.split_once('.').unwrap_or_else(|| bad());
    let t: Vec<u64> = hms
        .split(':')
        .map(|v| v.parse().unwrap_or_else(|_| bad()))
        .collect();
    let days = days_from_civil(d[0], d[1] as u32, d[2] as u32) as u64;
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000
        + ms.parse::<u64>().unwrap_or_else(|_| bad())
}

/// An RFC 5424 line: (PRI, TIMESTAMP, MSGID, STRUCTURED-DATA, MSG).
fn syslog_parts(line: &[u8]) -> (String, String, String, String, String) {
    let text = std::str::from_utf8(line).expect("syslog lines are UTF-8");
    let mut it = text.splitn(7, ' ');
    let pri = it.next().unwrap().to_owned();
    let ts = it.next().unwrap().to_owned();
    let _host = it.next().unwrap();
    assert_eq!(it.next(), Some("nat"), "APP-NAME of {text}");
    let _pid = it.next().unwrap();
    let msgid = it.next().unwrap().to_owned();
    let rest = it.next().unwrap();
    let end = rest.find("] ").expect("structured data, then the message") + 1;
    let msg = rest[end + 1..].trim_start_matches('\u{feff}').to_owned();
    (pri, ts, msgid, rest[..end].to_owned(), msg)
}

/// The RFC 3339 UTC time of Unix milliseconds, as the syslog lines write it.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    // Inverse of days_from_civil, by search from the epoch's year: the
    // test's times are this year's.
    let mut y = 1970;
    while days_from_civil(y + 1, 1, 1) <= days {
        y += 1;
    }
    let mut m = 1;
    while m < 12 && days_from_civil(y, m + 1, 1) <= days {
        m += 1;
    }
    let d = days - days_from_civil(y, m, 1) + 1;
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

fn assert_syslog(lines: &[Vec<u8>], want: &[NatEvent]) {
    assert_eq!(lines.len(), want.len(), "syslog lines: {lines:?}");
    for (line, ev) in lines.iter().zip(want) {
        let (pri, ts, msgid, sd, msg) = syslog_parts(line);
        let rec = expected(ev, 0);
        assert_eq!(pri, "<134>1", "local0.info, version 1");
        let got_ms = nfdump_time_ms(ts.trim_end_matches('Z'));
        assert!(
            same_time(got_ms, rec.time_ms),
            "timestamp {ts} for {}",
            rfc3339(rec.time_ms)
        );
        let (word, event) = if rec.nat_event == 16 {
            ("BLOCK-ALLOCATED", "allocated to")
        } else {
            ("BLOCK-RELEASED", "released by")
        };
        assert_eq!(msgid, word);
        assert_eq!(
            sd,
            format!(
                "[nat@32473 natEvent=\"{}\" sourceIPv4Address=\"{}\" postNATSourceIPv4Address=\"{}\" portRangeStart=\"{}\" portRangeEnd=\"{}\" portRangeStepSize=\"1\" portRangeNumPorts=\"{}\"]",
                rec.nat_event, rec.internal, rec.external, rec.first, rec.last, rec.ports
            )
        );
        assert_eq!(
            msg,
            format!(
                "port block {}:{}-{} {event} {}",
                rec.external, rec.first, rec.last, rec.internal
            )
        );
    }
}

#[test]
fn export_block_events_reach_tshark_nfdump_and_syslog_exactly() {
    let topo = Topology::new("cgn-export", TopologyOpts::default());
    let server = topo.ns_name(Side::Server).to_owned();
    let mut capture = Capture::start(&server, SERVER_IFACE, "udp and (port 4739 or port 4740)");
    let mut nfcapd = Nfcapd::start(&server, SocketAddr::from((SERVER_IP, 4739)));
    let syslog = UdpInbox::start(&server, SocketAddr::from((SERVER_IP, 5514)));
    let nat = NatProcess::start(
        &topo,
        &[
            "--ipfix-collector",
            "198.18.0.2:4739,198.18.0.2:4740",
            "--ipfix-observation-domain",
            "42",
            "--syslog-server",
            "198.18.0.2:5514",
            "--metrics",
            "127.0.0.1:9109",
        ],
    );
    let events = scenario();
    let ring = EventRing::of_daemon(nat.pid());
    let started = Instant::now();
    for ev in &events {
        ring.write(ev);
    }
    // The daemon sends IPFIX before syslog, batch by batch.
    let lines = syslog.wait_for(events.len(), Duration::from_secs(10));
    println!(
        "{} events from the ring buffer to the syslog server in {:?}",
        events.len(),
        started.elapsed()
    );
    assert_syslog(&lines, &events);

    let scrape = {
        let metrics: SocketAddr = "127.0.0.1:9109".parse().unwrap();
        let (status, body, _) = http_get(topo.ns_name(Side::Nat), metrics, "/metrics")
            .unwrap_or_else(|e| panic!("scrape: {e}"));
        assert_eq!(status, 200, "{body}");
        body
    };
    let n = events.len() as f64;
    assert_eq!(
        sample(&scrape, "nat_events_read_total"),
        Some(n),
        "{scrape}"
    );
    for (exporter, to) in [
        ("ipfix", "198.18.0.2:4739"),
        ("ipfix", "198.18.0.2:4740"),
        ("syslog", "198.18.0.2:5514"),
    ] {
        let labels = format!("{{destination=\"{to}\",exporter=\"{exporter}\"}}");
        assert_eq!(
            sample(&scrape, &format!("nat_events_exported_total{labels}")),
            Some(n),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, &format!("nat_export_errors_total{labels}")),
            Some(0.0),
            "{scrape}"
        );
    }

    // Stopping the daemon is prompt with its export thread.
    let stopping = Instant::now();
    nat.stop();
    println!("daemon stopped in {:?}", stopping.elapsed());

    let messages = ipfix_messages(capture.stop(), &[4739, 4740]);
    for port in [4739, 4740] {
        let want: Vec<BlockRecord> = events.iter().map(|e| expected(e, port)).collect();
        assert_stream(&messages, port, 42, &want);
    }

    let stored = nfcapd.stop();
    assert_eq!(stored.len(), events.len(), "nfdump: {stored:#?}");
    for (record, ev) in stored.iter().zip(&events) {
        let want = expected(ev, 4739);
        let field = |k: &str| record[k].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            field("nat_event_id"),
            want.nat_event.to_string(),
            "{record}"
        );
        assert_eq!(field("src4_addr"), want.internal, "{record}");
        assert_eq!(field("src4_xlt_ip"), want.external, "{record}");
        assert!(
            same_time(nfdump_time_ms(&field("t_event")), want.time_ms),
            "{record} at {}",
            rfc3339(want.time_ms)
        );
    }
}

fn config(collector: u16, syslog: u16) -> String {
    format!(
        "iface = \"veth-ext\"\nexternal = [\"{EXTERNAL_IP}\"]\ninternal = [\"10.200.1.0/25\"]\n\
         ipfix-collector = [\"{SERVER_IP}:{collector}\"]\nipfix-template-refresh = \"600s\"\n\
         syslog-server = [\"{SERVER_IP}:{syslog}\"]\n"
    )
}

#[test]
fn export_reload_moves_the_export_to_the_new_collectors() {
    let topo = Topology::new("cgn-retarget", TopologyOpts::default());
    let server = topo.ns_name(Side::Server).to_owned();
    let mut capture = Capture::start(&server, SERVER_IFACE, "udp and (port 4739 or port 4740)");
    let before = UdpInbox::start(&server, SocketAddr::from((SERVER_IP, 5514)));
    let after = UdpInbox::start(&server, SocketAddr::from((SERVER_IP, 5515)));
    let dir = TempDir::new("export-reload");
    let file = dir.file("nat.toml", &config(4739, 5514));
    let daemon = NatProcess::start_load(&topo, &["--config", path_str(&file)], &[]);
    let ring = EventRing::of_daemon(daemon.pid());
    let host = Ipv4Addr::new(10, 200, 1, 2);
    let first = block_event(kind::BLOCK_ALLOCATED, host, 0, boot_ns() - 2_000_000_000);
    ring.write(&first);
    assert_eq!(before.wait_for(1, Duration::from_secs(10)).len(), 1);

    std::fs::write(&file, config(4740, 5515)).unwrap();
    let (ok, out, err) = nat(&topo, &["reload", "--iface", "veth-ext"]);
    assert!(ok, "nat reload: {out} {err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log()
        .iter()
        .any(|l| l.contains("compliance events now IPFIX to 198.18.0.2:4740"))
    {
        assert!(
            Instant::now() < deadline,
            "no re-target in the log: {:#?}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = block_event(kind::BLOCK_RELEASED, host, 0, boot_ns() - 1_000_000_000);
    ring.write(&second);
    assert_eq!(after.wait_for(1, Duration::from_secs(10)).len(), 1);
    daemon.stop();

    assert_syslog(&before.received(), &[first]);
    assert_syslog(&after.received(), &[second]);
    let messages = ipfix_messages(capture.stop(), &[4739, 4740]);
    // The new collector's session starts afresh: templates, then sequence 0.
    assert_stream(&messages, 4739, 1, &[expected(&first, 4739)]);
    assert_stream(&messages, 4740, 1, &[expected(&second, 4740)]);
}

/// Events the datapath writes while no daemon runs (between a stop and the
/// next load) wait in the pinned ring buffer: the next daemon exports them,
/// after nothing it had sent already, and the first daemon's are not sent
/// twice.
#[test]
fn export_events_written_between_two_daemons_reach_the_second() {
    let topo = Topology::new("cgn-gap", TopologyOpts::default());
    let server = topo.ns_name(Side::Server).to_owned();
    let syslog = UdpInbox::start(&server, SocketAddr::from((SERVER_IP, 5516)));
    let args = ["--syslog-server", "198.18.0.2:5516"];
    let mut first = NatProcess::start(&topo, &args);
    let host = Ipv4Addr::new(10, 200, 1, 2);
    let before = block_event(kind::BLOCK_ALLOCATED, host, 0, boot_ns() - 3_000_000_000);
    EventRing::of_daemon(first.pid()).write(&before);
    assert_eq!(syslog.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert!(
        first
            .stop_daemon(nix::sys::signal::Signal::SIGTERM)
            .success()
    );

    let pin = format!(
        "{}/{}/veth-ext/NAT_EVENTS_v{}",
        nat_common::names::PIN_ROOT,
        topo.ns_name(Side::Nat),
        nat_common::names::LAYOUT_VERSION
    );
    let ring = EventRing::pinned(std::path::Path::new(&pin));
    let between = [
        block_event(kind::BLOCK_RELEASED, host, 0, boot_ns() - 2_000_000_000),
        block_event(kind::BLOCK_ALLOCATED, host, 1, boot_ns() - 1_000_000_000),
    ];
    for ev in &between {
        ring.write(ev);
    }
    let second = NatProcess::start(&topo, &args);
    let lines = syslog.wait_for(3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    second.stop();
    let mut want = vec![before];
    want.extend(between);
    assert_eq!(syslog.received().len(), 3, "nothing sent twice");
    assert_syslog(&lines, &want);
}
