//! Blind resets against a live transfer (RFC 5961 as a middlebox applies
//! it): 3,000 resets from the server's address to the transfer's external
//! port, every one inside the receiving internal host's real window and
//! none exact, pass to the endpoint, which answers with challenge ACKs, and
//! end nothing: the session stays established and the transfer goes on
//! without a stall. An exact reset afterwards still closes a session and
//! cools its key. Bounded: one 8 s transfer, 3,000 crafted frames.

use std::{
    net::SocketAddrV4,
    thread,
    time::{Duration, Instant},
};

use crate::common::*;
use nat_tests::{
    EXT_IFACE, EXTERNAL_IP, EchoConnection, NatProcess, PacedFlows, SERVER_IFACE, SERVER_IP, Side,
    Topology, TopologyOpts, nat_json,
    packet::{Pkt, tcp_flags},
    raw::{Capture, link_address, send_frames},
    run_in_ns,
    serde_json::Value,
    tcp_echo_server, tcp_ext, udp_echo_server,
};

const TCP_PORT: u16 = 9100;
const UDP_PORT: u16 = 9101;
const ECHO_PORT: u16 = 9102;
const BYTES: usize = 1_200_000;
const FLOW: Duration = Duration::from_secs(8);
const RESETS: u32 = 3000;
const MAX_GAP: Duration = Duration::from_secs(1);

/// The TCP session toward `port` on the server, once `nat sessions` has it
/// in `state` with both hosts' numbers.
fn session(topo: &Topology, port: u16, state: &str) -> Value {
    let remote = SocketAddrV4::new(SERVER_IP, port).to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = sessions(topo).into_iter().find(|s| {
            s["proto"] == "tcp"
                && s["remote"] == remote.as_str()
                && s["state"] == state
                && s["tcp"]["internal"]["acked"].is_u64()
        });
        if let Some(s) = found {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no {state} session toward {remote}: {:#?}",
            sessions(topo)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn number(v: &Value) -> u32 {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("not a 32-bit number: {v}"))
}

fn external_port(s: &Value) -> u16 {
    let ext: SocketAddrV4 = s["external"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no external endpoint in {s}"));
    ext.port()
}

/// The link addresses of a frame from the server's link to the NAT's
/// external interface: destination, source.
fn server_link(topo: &Topology) -> ([u8; 6], [u8; 6]) {
    (
        link_address(topo.ns_name(Side::Nat), EXT_IFACE),
        link_address(topo.ns_name(Side::Server), SERVER_IFACE),
    )
}

/// A reset from the server's `port` to the NAT's external `ext_port`, as a
/// frame on the server's link (`link`: [`server_link`]).
fn reset_frame(link: ([u8; 6], [u8; 6]), port: u16, ext_port: u16, seq: u32) -> Vec<u8> {
    let mut p = Pkt::tcp(
        SocketAddrV4::new(SERVER_IP, port),
        SocketAddrV4::new(EXTERNAL_IP, ext_port),
        tcp_flags::RST,
    )
    .seq_ack(seq, 0);
    (p.eth_dst, p.eth_src) = link;
    p.frame()
}

#[test]
fn blind_resets_inside_the_window_end_nothing() {
    let started = Instant::now();
    let topo = Topology::new("rstblind", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &[]);
    let (client_ns, server_ns) = (
        topo.ns_name(Side::Client).to_owned(),
        topo.ns_name(Side::Server).to_owned(),
    );
    let _udp = udp_echo_server(&server_ns, UDP_PORT);
    let _echo = tcp_echo_server(&server_ns, ECHO_PORT);
    let link = server_link(&topo);
    let flows = PacedFlows::start(&topo, TCP_PORT, UDP_PORT, BYTES, FLOW);

    // The internal host receives nothing but ACKs: its acknowledgment and
    // window stay where the handshake left them, as `nat sessions` shows.
    let s = session(&topo, TCP_PORT, "established");
    let ext_port = external_port(&s);
    let internal = &s["tcp"]["internal"];
    let acked = number(&internal["acked"]);
    let window = internal["window_bytes"].as_u64().expect("a window") as u32;
    let train_end = number(&s["tcp"]["remote"]["sent_end"]);
    assert!(window >= 2 * RESETS, "a window of {window} bytes: {s}");
    // Spread over the window's first half, so that the real window, which
    // only grows, holds every one; none at either exact number.
    let step = window / 2 / RESETS;
    let seqs: Vec<u32> = (1..=RESETS).map(|i| acked.wrapping_add(i * step)).collect();
    assert!(seqs.iter().all(|&q| q != acked && q != train_end));
    let frames: Vec<Vec<u8>> = seqs
        .iter()
        .map(|&q| reset_frame(link, TCP_PORT, ext_port, q))
        .collect();

    let before = stats(&topo);
    let challenges_before = tcp_ext(&client_ns, "TCPChallengeACK");
    let pcap = format!("/tmp/nat-rstblind-{}.pcap", std::process::id());
    let mut capture = Capture::start(&server_ns, SERVER_IFACE, &pcap);
    for batch in frames.chunks(100) {
        let batch = batch.to_vec();
        run_in_ns(&server_ns, move || send_frames(SERVER_IFACE, &batch));
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(600));
    // Pure ACKs of the internal host, translated: the transfer's own
    // segments all carry data, so these answer the resets.
    let (_, challenge_acks) = capture.stop_and_read(&format!(
        "tcp and src host {EXTERNAL_IP} and src port {ext_port} and tcp[13] == 16 \
         and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) == 0"
    ));
    let challenges = tcp_ext(&client_ns, "TCPChallengeACK") - challenges_before;
    let after = stats(&topo);
    let moved = |name: &str| counter(&after, name) - counter(&before, name);

    assert_eq!(moved("rst_inexact"), u64::from(RESETS), "{after}");
    assert_eq!(moved("rst_out_of_window"), 0, "{after}");
    let s = session(&topo, TCP_PORT, "established");
    assert_eq!(external_port(&s), ext_port, "the same session: {s}");
    assert!(
        challenges > 0 && !challenge_acks.is_empty(),
        "the internal host answers with challenge ACKs (its stack counted \
         {challenges}), and they cross the NAT: {challenge_acks:?}"
    );

    eprintln!(
        "{RESETS} resets in [{acked} + 1, + {}] of a {window}-byte window: \
         {challenges} challenge ACKs sent, {} seen leaving the NAT",
        RESETS * step,
        challenge_acks.len()
    );

    let report = flows
        .finish()
        .unwrap_or_else(|e| panic!("the flows broke: {e}"));
    assert_eq!(report.tcp_bytes, BYTES, "{report:?}");
    assert!(report.tcp_max_gap < MAX_GAP, "TCP stalled: {report:?}");
    eprintln!("transfer: {report:?}");

    // An exact reset (the internal host's acknowledgment) still closes a
    // session and cools its key.
    let mut echo = EchoConnection::open(&client_ns, None, SocketAddrV4::new(SERVER_IP, ECHO_PORT))
        .unwrap_or_else(|e| panic!("echo connection: {e}"));
    echo.roundtrip(100, Duration::from_secs(2))
        .expect("an echo through the NAT");
    let s = session(&topo, ECHO_PORT, "established");
    let (echo_port, acked) = (external_port(&s), number(&s["tcp"]["internal"]["acked"]));
    let before = stats(&topo);
    let frame = reset_frame(link, ECHO_PORT, echo_port, acked);
    run_in_ns(&server_ns, move || send_frames(SERVER_IFACE, &[frame]));
    session(&topo, ECHO_PORT, "reset");
    let after = stats(&topo);
    for name in ["rst_inexact", "rst_out_of_window"] {
        assert_eq!(
            counter(&after, name),
            counter(&before, name),
            "{name}: {after}"
        );
    }
    let key = (
        SocketAddrV4::new(EXTERNAL_IP, echo_port).to_string(),
        SocketAddrV4::new(SERVER_IP, ECHO_PORT).to_string(),
    );
    let cooling = nat_json(&topo, &["cooldowns", "--json"]);
    assert!(
        cooling.as_array().is_some_and(|c| c
            .iter()
            .any(|e| e["external"] == key.0.as_str() && e["remote"] == key.1.as_str())),
        "the reset cools {key:?}: {cooling}"
    );
    assert!(
        echo.roundtrip(100, Duration::from_secs(1)).is_err(),
        "the reset reached the internal host"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
}
