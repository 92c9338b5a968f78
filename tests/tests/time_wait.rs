//! The problem this NAT exists for: a busy server closes first and holds each
//! connection in TIME_WAIT for 60 s; a NAT that hands the same external port
//! to a new connection toward it within that time gets its SYN answered with
//! an ACK for the old connection (PAWS), and the connection is reset.
//!
//! 8 internal hosts, a 64-port range, 60 new connections at 3 per second to
//! one server port. Linux gives each (source, destination) address pair its
//! own TCP timestamp offset, so a reused port from another internal host
//! looks like an old duplicate to the server about half the time.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::*;
use nat_tests::{NatProcess, SERVER_IP, Side, Topology, TopologyOpts, spawn_in_ns};

const CONNECTIONS: usize = 60;
const INTERVAL: Duration = Duration::from_millis(333);
const STALL: Duration = Duration::from_millis(900);
const SERVER_PORT: u16 = 80;

/// Accepts, reads the request, answers and closes first, so every
/// connection ends in TIME_WAIT on the server.
struct ClosingServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ClosingServer {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = spawn_in_ns(ns, move || {
            let listener =
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, SERVER_PORT)).expect("bind server");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let mut req = [0u8; 16];
                            if conn.read(&mut req).is_ok() {
                                let _ = conn.write_all(b"bye");
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ClosingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: Vec<String>,
    collisions: u64,
    reopened: u64,
    paws_timewait: u64,
}

impl Outcome {
    fn stalls(&self) -> usize {
        self.latencies.iter().filter(|l| **l > STALL).count()
    }
}

fn one_connection(src: Ipv4Addr) -> Result<Duration, String> {
    let sock = nix_socket(src)?;
    let start = Instant::now();
    let dst = SocketAddrV4::new(SERVER_IP, SERVER_PORT);
    let mut stream = connect_within(sock, dst, Duration::from_secs(5))
        .map_err(|e| format!("{src}: connect: {e}"))?;
    let latency = start.elapsed();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"hello")
        .map_err(|e| format!("{src}: write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("{src}: read: {e}"))?;
    if reply != b"bye" {
        return Err(format!("{src}: reply {reply:?}"));
    }
    Ok(latency)
}

/// A TCP socket bound to `src` (std cannot bind before connecting).
fn nix_socket(src: Ipv4Addr) -> Result<std::os::fd::OwnedFd, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| e.to_string())?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(src, 0)),
    )
    .map_err(|e| e.to_string())?;
    Ok(fd)
}

fn connect_within(
    fd: std::os::fd::OwnedFd,
    dst: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{SockaddrIn, connect, setsockopt, sockopt};
    // SO_SNDTIMEO bounds a blocking connect, SYN retransmissions included.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as i64, 0),
    )?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

fn scenario(tag: &str, extra: &[&str]) -> Outcome {
    let topo = Topology::new(tag, TopologyOpts::default());
    let mut args = vec![
        "--ports",
        "20000-20063",
        "--timeout-tcp-closed",
        "1s",
        "--reap-interval-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    let _nat = NatProcess::start(&topo, &args);
    let _server = ClosingServer::start(topo.ns_name(Side::Server));
    let sources = topo.client_ips();
    let paws_before = tcp_ext(topo.ns_name(Side::Server), "PAWSTimewait");

    let results = spawn_in_ns(topo.ns_name(Side::Client), move || {
        let mut workers = Vec::new();
        for i in 0..CONNECTIONS {
            let src = sources[i % sources.len()];
            workers.push(thread::spawn(move || one_connection(src)));
            thread::sleep(INTERVAL);
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();

    let st = stats(&topo);
    let (latencies, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    Outcome {
        latencies: latencies.into_iter().map(Result::unwrap).collect(),
        errors: errors.into_iter().map(|e| e.unwrap_err()).collect(),
        collisions: counter(&st, "collisions"),
        reopened: counter(&st, "sessions_reopened"),
        paws_timewait: tcp_ext(topo.ns_name(Side::Server), "PAWSTimewait") - paws_before,
    }
}

/// Without cooldown the NAT reuses ports toward the server while it still
/// holds them in TIME_WAIT: the server rejects those SYNs (PAWS) and answers
/// with an ACK for the old connection, the NAT counts a collision, and the
/// client resets and retries on the same mapping. If this test fails, the
/// scenario no longer reproduces the problem and proves nothing below.
#[test]
fn without_cooldown_ports_collide_with_time_wait() {
    let o = scenario("tw-off", &["--cooldown-enabled", "off"]);
    println!("cooldown off: {o:?}");
    assert!(
        o.paws_timewait > 0,
        "server saw no SYN hit a TIME_WAIT connection: {o:?}"
    );
    assert!(o.collisions > 0, "the NAT counted no collision: {o:?}");
    assert!(o.reopened > 0, "no connection was reset and retried: {o:?}");
}

/// With cooldown (the default 240 s) and a load that 64 cool ports can carry,
/// no port is handed out toward the server while its old connection may be
/// in TIME_WAIT: no collision, no reset, no stall, no failure.
#[test]
fn with_cooldown_no_connection_collides_stalls_or_fails() {
    let o = scenario("tw-on", &["--policy", "strict"]);
    println!("cooldown on: {o:?}");
    assert!(o.errors.is_empty(), "failed connections: {:?}", o.errors);
    assert_eq!(o.latencies.len(), CONNECTIONS);
    assert_eq!(
        o.stalls(),
        0,
        "connects slower than {STALL:?}: {:?}",
        o.latencies
    );
    assert_eq!(o.paws_timewait, 0, "{o:?}");
    assert_eq!(o.collisions, 0, "{o:?}");
    assert_eq!(o.reopened, 0, "{o:?}");
}
