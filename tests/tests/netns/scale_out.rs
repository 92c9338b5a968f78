//! Scale-out: two NAT nodes side by side behind an internal router that
//! spreads flows over them with a resilient nexthop group hashing on the L4
//! ports, each node translating to its own external address, and a server
//! that routes each address back to its node (see `nat_tests::ScaleOut`).
//! No state is shared between the nodes: the routing layer does all of it.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{counter, snmp, tcp_ext, v4};
use nat_tests::{
    EchoConnection, GROUP_BUCKETS, NatProcess, SERVER_IP, ScaleOut, ScaleOutOpts, concurrent_tcp,
    concurrent_tcp_server_closes, nat_json_in, run_in_ns, serde_json::Value, tcp_closing_server,
    tcp_echo_server, tcp_sink_server, udp_echo_server,
};

/// 128 ports per node: fewer than the flows of a phase, so the two nodes
/// must hand out some of the same port numbers toward the same destination.
const SMALL_RANGE: &str = "20000-20127";
const SMALL_RANGE_LEN: usize = 128;
const FLOWS: usize = 160;

fn start_nodes(testbed: &ScaleOut, args: &[&str]) -> Vec<NatProcess> {
    (0..testbed.node_count())
        .map(|n| testbed.start_nat(n, args))
        .collect()
}

fn node_stats(testbed: &ScaleOut, node: usize) -> Value {
    nat_json_in(testbed.node_ns(node), &["stats", "--json"])
}

fn node_counter(testbed: &ScaleOut, node: usize, name: &str) -> u64 {
    counter(&node_stats(testbed, node), name)
}

fn node_counters(testbed: &ScaleOut, name: &str) -> Vec<u64> {
    (0..testbed.node_count())
        .map(|n| node_counter(testbed, n, name))
        .collect()
}

fn node_json_list(testbed: &ScaleOut, node: usize, what: &str) -> Vec<Value> {
    nat_json_in(testbed.node_ns(node), &[what, "--json"])
        .as_array()
        .unwrap_or_else(|| panic!("{what} --json prints an array"))
        .clone()
}

fn field<T: std::str::FromStr>(value: &Value, name: &str) -> T {
    let text = value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string {name} in {value}"));
    text.parse()
        .unwrap_or_else(|_| panic!("{name} {text:?} does not parse"))
}

fn peer_v4(peer: SocketAddr) -> SocketAddrV4 {
    match peer {
        SocketAddr::V4(peer) => peer,
        SocketAddr::V6(peer) => panic!("server saw an IPv6 peer {peer}"),
    }
}

/// Which node translated each server-side peer, by its external address;
/// panics on an address no node owns (an untranslated or foreign source).
fn peers_by_node(testbed: &ScaleOut, peers: &[SocketAddr]) -> Vec<Vec<SocketAddrV4>> {
    let mut by_node = vec![Vec::new(); testbed.node_count()];
    for peer in peers.iter().copied().map(peer_v4) {
        let node = testbed.node_of(*peer.ip()).unwrap_or_else(|| {
            panic!("server saw {peer}, which is no node's external address: a flow left untranslated or mistranslated")
        });
        by_node[node].push(peer);
    }
    by_node
}

/// Port numbers both nodes have handed out toward the same destination.
fn shared_ports(by_node: &[Vec<SocketAddrV4>]) -> usize {
    let ports: Vec<HashSet<u16>> = by_node
        .iter()
        .map(|peers| peers.iter().map(SocketAddrV4::port).collect())
        .collect();
    ports[0].intersection(&ports[1]).count()
}

/// The peers of the server's TIME_WAIT sockets on `port`.
fn server_time_wait(testbed: &ScaleOut, port: u16) -> HashSet<SocketAddr> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            testbed.server_ns(),
            "ss",
            "-Htn",
            "state",
            "time-wait",
        ])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss runs");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let peer = line
                .split_whitespace()
                .last()
                .unwrap_or_else(|| panic!("ss line without a peer: {line:?}"));
            peer.parse()
                .unwrap_or_else(|e| panic!("ss peer {peer:?} does not parse: {e}"))
        })
        .collect()
}

fn assert_all_ok(what: &str, results: &[Result<(), String>]) {
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} failed: {failed:?}",
        failed.len(),
        results.len()
    );
}

/// Many flows from many clients spread over both nodes; each is translated
/// by exactly one node, to that node's address, and its replies come back
/// through that node. With 128 ports per node and 160 flows toward one
/// destination, the nodes necessarily reuse each other's port numbers: they
/// never collide, because a key (and its cooldown) includes the node's own
/// external address. Servers that close first hold every connection in
/// TIME_WAIT, and no node hands a key out again while it cools.
#[test]
fn scale_out_flows_spread_over_nodes_each_translated_by_one() {
    let testbed = ScaleOut::new("so-spread", ScaleOutOpts::default());
    let nats = start_nodes(
        &testbed,
        &[
            "--ports",
            SMALL_RANGE,
            // Keeps closed sessions listed until the checks below have read them.
            "--timeout-tcp-closed",
            "120s",
            // A node without a cool port drops the SYN rather than reuse one.
            "--policy",
            "strict",
        ],
    );
    let sink = tcp_sink_server(testbed.server_ns(), 8080);
    let closing = tcp_closing_server(testbed.server_ns(), 80);
    let client = testbed.client_ns();
    let sources = testbed.client_ips();
    assert_eq!(sources.len(), 32);

    // 160 concurrent connections from 32 addresses, the client closing first.
    let results = concurrent_tcp(client, &sources, v4(SERVER_IP, 8080), FLOWS, 16 * 1024);
    assert_all_ok("connections to the sink", &results);
    let peers = sink.peers();
    assert_eq!(
        peers.len(),
        FLOWS,
        "the server accepted every connection once"
    );
    let by_node = peers_by_node(&testbed, &peers);
    let per_node: Vec<usize> = by_node.iter().map(Vec::len).collect();
    println!("sink flows per node: {per_node:?}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "the group must spread flows over both nodes: {per_node:?}"
    );
    // A node translates in TC or XDP through its stack, or on its fast path
    // (on by default toward the router): either counts as its own.
    let both = |stack: &str, fast: &str| -> Vec<u64> {
        node_counters(&testbed, stack)
            .iter()
            .zip(node_counters(&testbed, fast))
            .map(|(a, b)| a + b)
            .collect()
    };
    let translated_out = both("translated_out", "fast_out");
    let translated_in = both("translated_in", "fast_in");
    println!("translated_out {translated_out:?}, translated_in {translated_in:?}");
    assert!(translated_out.iter().all(|&n| n > 0), "{translated_out:?}");
    assert!(translated_in.iter().all(|&n| n > 0), "{translated_in:?}");

    // Each flow is in exactly one node's table, under that node's address,
    // and together the tables hold exactly what the server saw.
    let mut internal_owner: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut externals: HashSet<SocketAddrV4> = HashSet::new();
    for (node, &flows) in per_node.iter().enumerate() {
        let sessions: Vec<Value> = node_json_list(&testbed, node, "sessions")
            .into_iter()
            .filter(|s| s["remote"] == v4(SERVER_IP, 8080).to_string())
            .collect();
        assert_eq!(
            sessions.len(),
            flows,
            "node {node} lists one session per flow the server saw from it: {sessions:#?}"
        );
        for s in &sessions {
            let internal: SocketAddrV4 = field(s, "internal");
            let external: SocketAddrV4 = field(s, "external");
            assert_eq!(
                *external.ip(),
                testbed.external_ip(node),
                "node {node} translated to another node's address: {s}"
            );
            if let Some(other) = internal_owner.insert(internal, node) {
                panic!("flow {internal} is in the tables of nodes {other} and {node}");
            }
            externals.insert(external);
        }
    }
    assert_eq!(internal_owner.len(), FLOWS);
    let seen: HashSet<SocketAddrV4> = peers.iter().copied().map(peer_v4).collect();
    assert_eq!(
        externals, seen,
        "the nodes' tables and the server disagree on the external endpoints"
    );
    // A reply reaching a node without its session would be passed untouched
    // (and the flow would have failed): none did, on either node.
    assert_eq!(node_counters(&testbed, "pass_no_session"), [0, 0]);
    assert_eq!(node_counters(&testbed, "drop_no_session"), [0, 0]);
    let shared = shared_ports(&by_node);
    println!("port numbers both nodes use toward {SERVER_IP}:8080: {shared}");
    assert!(
        shared >= FLOWS - SMALL_RANGE_LEN,
        "{FLOWS} flows over two {SMALL_RANGE_LEN}-port ranges must share at least {} port numbers, saw {shared}",
        FLOWS - SMALL_RANGE_LEN
    );

    // The TIME_WAIT guarantee, per node: two rounds of 80 connections to a
    // server that closes first, the second while the first's are in
    // TIME_WAIT on the server and cooling (240 s) on their node.
    let paws_before = tcp_ext(testbed.server_ns(), nat_tests::PAWS_TIMEWAIT);
    for round in 0..2 {
        let results =
            concurrent_tcp_server_closes(client, &sources, v4(SERVER_IP, 80), FLOWS / 2, 1024);
        assert_all_ok(&format!("round {round} to the closing server"), &results);
    }
    let peers = closing.peers();
    assert_eq!(peers.len(), FLOWS);
    let distinct: HashSet<SocketAddr> = peers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        FLOWS,
        "a node handed out a key toward the server while it was cooling"
    );
    let time_wait = server_time_wait(&testbed, 80);
    assert_eq!(
        time_wait, distinct,
        "the server holds every connection in TIME_WAIT"
    );
    let by_node = peers_by_node(&testbed, &peers);
    let shared = shared_ports(&by_node);
    println!(
        "closing-server flows per node: {:?}; port numbers cooling on both nodes toward {SERVER_IP}:80: {shared}",
        by_node.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(shared >= FLOWS - SMALL_RANGE_LEN, "{shared}");
    for (node, node_peers) in by_node.iter().enumerate() {
        let cooling: Vec<Value> = node_json_list(&testbed, node, "cooldowns")
            .into_iter()
            .filter(|c| c["remote"] == v4(SERVER_IP, 80).to_string())
            .collect();
        let cooling_keys: HashSet<SocketAddrV4> =
            cooling.iter().map(|c| field(c, "external")).collect();
        let expected: HashSet<SocketAddrV4> = node_peers.iter().copied().collect();
        assert_eq!(
            cooling_keys, expected,
            "node {node} cools exactly the keys it handed out, under its own address"
        );
        for c in &cooling {
            let left = c["left_ms"].as_u64().expect("left_ms");
            assert!(
                left > 200_000,
                "a server-closed key cools for the 240 s default: {c}"
            );
        }
    }
    assert_eq!(
        tcp_ext(testbed.server_ns(), nat_tests::PAWS_TIMEWAIT) - paws_before,
        0,
        "a SYN hit one of the server's TIME_WAIT connections"
    );
    assert_eq!(node_counters(&testbed, "collisions"), [0, 0]);
    assert_eq!(node_counters(&testbed, "sessions_reopened"), [0, 0]);
    assert_eq!(node_counters(&testbed, "drop_strict_cooling"), [0, 0]);

    for nat in nats {
        assert!(nat.stop().success());
    }
}

/// An echo connection and which node carries it.
struct Tracked {
    conn: EchoConnection,
    node: usize,
}

/// Opens echo connections from the client addresses in turn until every
/// node carries at least `per_node`, and returns them with their node.
fn connections_on_every_node(testbed: &ScaleOut, port: u16, per_node: usize) -> Vec<Tracked> {
    let sources = testbed.client_ips();
    let mut open = Vec::new();
    let mut tracked: Vec<Tracked> = Vec::new();
    for batch in 0..8 {
        for i in 0..8 {
            let src = sources[(batch * 8 + i) % sources.len()];
            let mut conn =
                EchoConnection::open(testbed.client_ns(), Some(src), v4(SERVER_IP, port))
                    .unwrap_or_else(|e| panic!("echo connection: {e}"));
            conn.roundtrip(256, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("first echo: {e}"));
            open.push(conn);
        }
        let owner: HashMap<SocketAddrV4, usize> = (0..testbed.node_count())
            .flat_map(|node| {
                node_json_list(testbed, node, "sessions")
                    .into_iter()
                    .map(move |s| (field::<SocketAddrV4>(&s, "internal"), node))
            })
            .collect();
        for conn in open.drain(..) {
            let node = *owner
                .get(&conn.local())
                .unwrap_or_else(|| panic!("no node has a session for {}", conn.local()));
            tracked.push(Tracked { conn, node });
        }
        let counts: Vec<usize> = (0..testbed.node_count())
            .map(|n| tracked.iter().filter(|t| t.node == n).count())
            .collect();
        if counts.iter().all(|&c| c >= per_node) {
            return tracked;
        }
    }
    panic!("64 connections did not give every node {per_node}: the group does not spread flows");
}

/// Exchanges data on every connection every 100 ms until stopped or one
/// fails; counts the completed rounds (each connection once).
struct Pinger {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: thread::JoinHandle<(Vec<EchoConnection>, Option<String>)>,
}

impl Pinger {
    fn start(mut conns: Vec<EchoConnection>) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let rounds = Arc::clone(&rounds);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for conn in &mut conns {
                        if let Err(e) = conn.roundtrip(512, Duration::from_secs(10)) {
                            return (conns, Some(e.to_string()));
                        }
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(100));
                }
                (conns, None)
            })
        };
        Pinger {
            stop,
            rounds,
            thread,
        }
    }

    /// Waits (at most 20 s) until `more` rounds have completed after now:
    /// proof that every connection exchanged data after whatever just
    /// happened. False if they did not, e.g. because one failed.
    fn exchanged_more(&self, more: usize) -> bool {
        let target = self.rounds.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !self.thread.is_finished() {
            if self.rounds.load(Ordering::Relaxed) >= target {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.rounds.load(Ordering::Relaxed) >= target
    }

    /// Stops it; returns the connections and the first failure.
    fn finish(self) -> (Vec<EchoConnection>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the pinger thread panicked")
    }
}

/// A UDP socket in the client namespace that keeps its local port, and the
/// peer the echo server saw for it.
fn udp_echo(socket: &UdpSocket, server: &nat_tests::ServerHandle, payload: &[u8]) -> SocketAddrV4 {
    let before = server.peers().len();
    let mut buf = [0; 2048];
    for _ in 0..5 {
        socket
            .send_to(payload, v4(SERVER_IP, server.port()))
            .expect("UDP send");
        match socket.recv_from(&mut buf) {
            Ok((len, from)) if from == SocketAddr::V4(v4(SERVER_IP, server.port())) => {
                assert_eq!(&buf[..len], payload, "the echo differs");
                let peers = server.peers();
                assert!(peers.len() > before);
                return peer_v4(*peers.last().expect("a peer"));
            }
            Ok((_, from)) => panic!("UDP datagram from {from}"),
            Err(_) => {}
        }
    }
    panic!("no UDP echo after 5 attempts");
}

/// A node removed from the group: the survivor's established flows keep
/// exchanging data (resilient hashing moves only the removed node's
/// buckets); the removed node's TCP flows now reach the survivor, which has
/// no session for them and drops them (`drop_no_session`, no RST), so their
/// clients time out; its UDP flows continue at once from a new mapping on
/// the survivor; every new flow goes to the survivor. Taken back, the node
/// gets the buckets that were idle, and new flows again, while the
/// survivor's busy flows stay where they are.
#[test]
fn scale_out_removed_node_loses_only_its_own_flows() {
    let testbed = ScaleOut::new("so-remove", ScaleOutOpts::default());
    let nats = start_nodes(&testbed, &["--ports", "20000-20999"]);
    let echo = tcp_echo_server(testbed.server_ns(), 7000);
    let sink = tcp_sink_server(testbed.server_ns(), 8080);
    let udp = udp_echo_server(testbed.server_ns(), 5353);
    let client = testbed.client_ns();
    let sources = testbed.client_ips();
    const SURVIVOR: usize = 0;
    const REMOVED: usize = 1;

    let tracked = connections_on_every_node(&testbed, 7000, 2);
    let (survivors, mut removed): (Vec<_>, Vec<_>) =
        tracked.into_iter().partition(|t| t.node == SURVIVOR);
    println!(
        "long-lived connections: {} on the survivor, {} on the removed node",
        survivors.len(),
        removed.len()
    );
    // A UDP flow on the removed node, from a socket that keeps its port.
    let (udp_socket, udp_before) = (0..64)
        .find_map(|i| {
            let src = sources[i % sources.len()];
            let socket = run_in_ns(client, move || UdpSocket::bind((src, 0)).expect("UDP bind"));
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("UDP timeout");
            let peer = udp_echo(&socket, &udp, b"before the removal");
            (testbed.node_of(*peer.ip()) == Some(REMOVED)).then_some((socket, peer))
        })
        .expect("one of 64 UDP flows lands on the removed node");

    let pinger = Pinger::start(survivors.into_iter().map(|t| t.conn).collect());
    let no_session_before = node_counter(&testbed, SURVIVOR, "drop_no_session");
    let resets_before = snmp(client, "Tcp", "EstabResets");
    let retrans_before = snmp(client, "Tcp", "RetransSegs");
    let opened_before = node_counter(&testbed, REMOVED, "sessions_opened");

    testbed.set_group(&[SURVIVOR]);
    assert_eq!(
        testbed.buckets_per_node(),
        [usize::from(GROUP_BUCKETS), 0],
        "a node that leaves the group gives up all its buckets at once"
    );

    assert!(
        pinger.exchanged_more(3),
        "the survivor's flows stopped exchanging data after the removal"
    );

    // The removed node's TCP flows: each round trip gets no answer.
    const REMOVED_WAIT: Duration = Duration::from_secs(3);
    let failures: Vec<std::io::Error> = thread::scope(|scope| {
        let handles: Vec<_> = removed
            .iter_mut()
            .map(|t| scope.spawn(move || t.conn.roundtrip(1024, REMOVED_WAIT)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join().expect("round trip thread") {
                Ok(took) => panic!("a removed node's flow still got its echo, in {took:?}"),
                Err(e) => e,
            })
            .collect()
    });
    for e in &failures {
        println!("removed node's flow: {e}");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a removed node's flow must time out (no RST, no data), got {e}"
        );
    }
    let dropped = node_counter(&testbed, SURVIVOR, "drop_no_session") - no_session_before;
    let resets = snmp(client, "Tcp", "EstabResets") - resets_before;
    let retrans = snmp(client, "Tcp", "RetransSegs") - retrans_before;
    println!(
        "removed node's flows after {REMOVED_WAIT:?}: survivor dropped {dropped} segments without a session, client retransmitted {retrans}, {resets} resets"
    );
    assert!(
        dropped > 0,
        "the survivor must see and drop the removed node's flows' segments"
    );
    assert!(retrans > 0, "the client must be retransmitting");
    assert_eq!(
        resets, 0,
        "no RST reaches the client of a removed node's flow"
    );

    // The removed node's UDP flow continues at once, from the survivor.
    let udp_after = udp_echo(&udp_socket, &udp, b"after the removal");
    println!("UDP flow: server saw {udp_before} before the removal, {udp_after} after");
    assert_eq!(
        testbed.node_of(*udp_after.ip()),
        Some(SURVIVOR),
        "the UDP flow must continue through the survivor, with a new mapping"
    );

    // Every new flow goes to the survivor.
    let already = sink.peers().len();
    let results = concurrent_tcp(client, &sources, v4(SERVER_IP, 8080), 40, 4096);
    assert_all_ok("new flows while removed", &results);
    let by_node = peers_by_node(&testbed, &sink.peers()[already..]);
    assert_eq!(
        by_node[REMOVED].len(),
        0,
        "a removed node got new flows: {by_node:?}"
    );
    assert_eq!(by_node[SURVIVOR].len(), 40);
    assert_eq!(
        node_counter(&testbed, REMOVED, "sessions_opened"),
        opened_before,
        "the removed node opened sessions"
    );

    // Taken back: idle buckets move to it after the group's idle timer.
    testbed.set_group(&[SURVIVOR, REMOVED]);
    let back_at = Instant::now();
    let deadline = back_at + Duration::from_secs(30);
    let buckets = loop {
        let buckets = testbed.buckets_per_node();
        if buckets[REMOVED] >= usize::from(GROUP_BUCKETS) / 4 || Instant::now() >= deadline {
            break buckets;
        }
        thread::sleep(Duration::from_millis(200));
    };
    println!(
        "buckets {:?} after {:?} back in the group",
        buckets,
        back_at.elapsed()
    );
    assert!(
        buckets[REMOVED] >= usize::from(GROUP_BUCKETS) / 4,
        "idle buckets must move to the node taken back: {buckets:?}"
    );
    let already = sink.peers().len();
    let results = concurrent_tcp(client, &sources, v4(SERVER_IP, 8080), 40, 4096);
    assert_all_ok("new flows after the node is back", &results);
    let by_node = peers_by_node(&testbed, &sink.peers()[already..]);
    let per_node: Vec<usize> = by_node.iter().map(Vec::len).collect();
    println!("new flows per node after it is back: {per_node:?}");
    assert!(
        per_node[REMOVED] > 0,
        "the node taken back gets new flows again: {per_node:?}"
    );

    // The survivor's long-lived flows exchanged data all along: through the
    // removal and through the rebalancing.
    assert!(
        pinger.exchanged_more(3),
        "the survivor's flows stopped exchanging data after the rebalancing"
    );
    let (mut conns, failure) = pinger.finish();
    assert_eq!(failure, None, "a survivor's flow broke");
    for conn in &mut conns {
        conn.roundtrip(4096, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("survivor's flow after the rebalancing: {e}"));
    }
    drop(echo);
    for nat in nats {
        assert!(nat.stop().success());
    }
}

/// Polls the group until `done` holds for its buckets per node, for at most
/// 30 s; returns the last counts and how long it took.
fn wait_for_buckets(testbed: &ScaleOut, done: impl Fn(&[usize]) -> bool) -> (Vec<usize>, Duration) {
    let start = Instant::now();
    loop {
        let buckets = testbed.buckets_per_node();
        if done(&buckets) || start.elapsed() >= Duration::from_secs(30) {
            return (buckets, start.elapsed());
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A planned drain loses nothing: the node's weight drops to 1 of 256, so
/// it wants no bucket; its idle buckets move to the other node at once, its
/// busy ones stay while its flows run. Once those flows have ended and
/// their buckets have been idle for `idle_timer`, the node holds no bucket
/// and leaves the group without a single flow cut.
#[test]
fn scale_out_weight_drain_cuts_no_flow() {
    let testbed = ScaleOut::new("so-weight", ScaleOutOpts::default());
    let nats = start_nodes(&testbed, &["--ports", "20000-20999"]);
    let _echo = tcp_echo_server(testbed.server_ns(), 7000);
    let sink = tcp_sink_server(testbed.server_ns(), 8080);
    let client = testbed.client_ns();
    const STAYING: usize = 0;
    const LEAVING: usize = 1;

    let tracked = connections_on_every_node(&testbed, 7000, 2);
    let (staying, leaving): (Vec<_>, Vec<_>) = tracked.into_iter().partition(|t| t.node == STAYING);
    let leaving_flows = leaving.len();
    let staying_pinger = Pinger::start(staying.into_iter().map(|t| t.conn).collect());
    let leaving_pinger = Pinger::start(leaving.into_iter().map(|t| t.conn).collect());
    let no_session_before = node_counters(&testbed, "drop_no_session");

    testbed.set_group_weighted(&[(STAYING, 255), (LEAVING, 1)]);
    let (buckets, took) = wait_for_buckets(&testbed, |b| b[LEAVING] <= leaving_flows);
    println!(
        "weight 255/1: buckets {buckets:?} after {took:?}, with {leaving_flows} live flows on the leaving node"
    );
    assert!(
        (1..=leaving_flows).contains(&buckets[LEAVING]),
        "the leaving node keeps only the buckets of its {leaving_flows} busy flows: {buckets:?}"
    );

    // New flows go where the buckets are; the few that hash into the leaving
    // node's busy buckets are served there, as its NAT still runs.
    let results = concurrent_tcp(client, &testbed.client_ips(), v4(SERVER_IP, 8080), 40, 4096);
    assert_all_ok("new flows while draining", &results);
    let by_node = peers_by_node(&testbed, &sink.peers());
    println!(
        "new flows per node while draining: {:?}",
        by_node.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // The leaving node's flows end on their own (their clients close them).
    assert!(
        leaving_pinger.exchanged_more(3),
        "the draining node's flows stopped exchanging data"
    );
    let (conns, failure) = leaving_pinger.finish();
    assert_eq!(failure, None, "a flow on the draining node broke");
    drop(conns);
    let (buckets, took) = wait_for_buckets(&testbed, |b| b[LEAVING] == 0);
    println!("after its flows ended: buckets {buckets:?} after {took:?}");
    assert_eq!(
        buckets[LEAVING], 0,
        "the leaving node's buckets move once idle: {buckets:?}"
    );
    testbed.set_group(&[STAYING]);

    assert!(
        staying_pinger.exchanged_more(3),
        "the staying node's flows stopped exchanging data"
    );
    let (mut conns, failure) = staying_pinger.finish();
    assert_eq!(failure, None, "a flow on the staying node broke");
    for conn in &mut conns {
        conn.roundtrip(4096, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("staying node's flow after the drain: {e}"));
    }
    assert_eq!(
        node_counters(&testbed, "drop_no_session"),
        no_session_before,
        "no segment of a live flow reached a node without its session"
    );
    for nat in nats {
        assert!(nat.stop().success());
    }
}
