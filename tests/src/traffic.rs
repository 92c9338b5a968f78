//! Client-side traffic that verifies what came back.
//!
//! Every helper runs its sockets in the given namespace and returns
//! `Err(description)` instead of panicking, because "the transfer failed" is
//! what NAT tests assert on (or against).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::lock::lock;
use crate::netns::{run_in_ns, spawn_in_ns};
use crate::protocol::{CHUNK, Fnv1a, Payload, REPLY_LEN, SHORT_REPLY, SHORT_REQUEST, decode_reply};
use crate::sockets::connect_from;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds a single transfer so that a black-holed connection fails the test
/// instead of hanging it.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(20);
const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const UDP_ATTEMPTS: usize = 3;
const MAX_UDP_PAYLOAD: usize = 65507;
const MAX_CLIENT_THREADS: usize = 256;
const CONCURRENT_DEADLINE: Duration = Duration::from_secs(30);

/// Sends `bytes` pseudo-random bytes over TCP from `src_ip` (or the default
/// source) in `ns` to the sink server at `dst`, and checks its length+hash reply.
pub fn tcp_transfer(
    ns: &str,
    src_ip: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    bytes: usize,
) -> Result<(), String> {
    tcp_exchange(ns, src_ip, dst, bytes).map(|_| ())
}

/// [`tcp_transfer`] that also returns the client's own (pre-NAT) address,
/// to compare with what the server saw.
pub fn tcp_exchange(
    ns: &str,
    src_ip: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    bytes: usize,
) -> Result<SocketAddrV4, String> {
    run_in_ns(ns, move || {
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let stream = connect_from(src_ip, dst, CONNECT_TIMEOUT)?;
        let local = local_v4(&stream)?;
        send_and_verify(&stream, bytes, local.port().into(), deadline)
            .map_err(|e| format!("TCP {local} -> {dst}: {e}"))?;
        Ok(local)
    })
}

/// One exchange with the [`short_connection_server`](crate::short_connection_server) at `dst`
/// from `src`, in the calling thread's namespace; returns how long the
/// connect took. A SYN the server takes for an old duplicate of a connection
/// in TIME_WAIT is answered with an ACK of that old connection: the client
/// resets it, and its next SYN gets through (about 10 ms later here).
pub fn short_connection(src: Ipv4Addr, dst: SocketAddrV4) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = connect_from(Some(src), dst, CONNECT_TIMEOUT)?;
    let latency = start.elapsed();
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| format!("{src}: set a read timeout: {e}"))?;
    stream
        .write_all(SHORT_REQUEST)
        .map_err(|e| format!("{src}: write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("{src}: read: {e}"))?;
    if reply != SHORT_REPLY {
        return Err(format!("{src}: reply {reply:?}"));
    }
    Ok(latency)
}

/// `count` [`short_connection`]s from `ns` to `dst`, one started every
/// `interval` whatever the others do, from `sources` in turn; their results in
/// the order they were started.
pub fn short_connection_burst(
    ns: &str,
    sources: &[Ipv4Addr],
    dst: SocketAddrV4,
    count: usize,
    interval: Duration,
) -> Vec<Result<Duration, String>> {
    assert!(!sources.is_empty(), "a burst needs a source address");
    let sources = sources.to_vec();
    run_in_ns(ns, move || {
        let workers: Vec<_> = (0..count)
            .map(|i| {
                let src = sources[i % sources.len()];
                let spawned = thread::Builder::new()
                    .name(format!("short-{i}"))
                    .stack_size(128 * 1024)
                    .spawn(move || short_connection(src, dst));
                thread::sleep(interval);
                spawned
            })
            .collect();
        workers
            .into_iter()
            .map(|w| match w {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err("the client thread panicked".to_owned())),
                Err(e) => Err(format!("cannot spawn a client thread: {e}")),
            })
            .collect()
    })
}

/// Sends one datagram of `payload_len` bytes from `src_ip` (or the default
/// source) in `ns` to the echo server at `dst`, and expects the identical
/// datagram back from `dst`; retries a lost datagram twice.
pub fn udp_roundtrip(
    ns: &str,
    src_ip: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    payload_len: usize,
) -> Result<(), String> {
    udp_exchange(ns, src_ip, dst, payload_len).map(|_| ())
}

/// [`udp_roundtrip`] that also returns the client's own (pre-NAT) address.
pub fn udp_exchange(
    ns: &str,
    src_ip: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    payload_len: usize,
) -> Result<SocketAddrV4, String> {
    if payload_len > MAX_UDP_PAYLOAD {
        return Err(format!(
            "UDP payload of {payload_len} bytes exceeds {MAX_UDP_PAYLOAD}"
        ));
    }
    run_in_ns(ns, move || {
        let bind_ip = src_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let socket =
            UdpSocket::bind((bind_ip, 0)).map_err(|e| format!("UDP bind {bind_ip}: {e}"))?;
        socket
            .set_read_timeout(Some(UDP_REPLY_TIMEOUT))
            .map_err(|e| format!("UDP set timeout: {e}"))?;
        let mut payload = vec![0; payload_len];
        Payload::new(payload_len as u64).fill(&mut payload);
        let mut buf = vec![0; MAX_UDP_PAYLOAD + 1];
        let mut failures = Vec::new();
        for _ in 0..UDP_ATTEMPTS {
            socket
                .send_to(&payload, dst)
                .map_err(|e| format!("UDP send to {dst}: {e}"))?;
            // The local address is only fixed once the first datagram is sent.
            let local = match socket.local_addr() {
                Ok(SocketAddr::V4(local)) => local,
                other => return Err(format!("UDP socket has no IPv4 address: {other:?}")),
            };
            let deadline = Instant::now() + UDP_REPLY_TIMEOUT;
            // Skips strays (e.g. late echoes of an earlier attempt) until the deadline.
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    failures.push(format!("no echo within {UDP_REPLY_TIMEOUT:?}"));
                    break;
                }
                socket
                    .set_read_timeout(Some(remaining))
                    .map_err(|e| format!("UDP set timeout: {e}"))?;
                match socket.recv_from(&mut buf) {
                    Ok((len, from)) if from == SocketAddr::V4(dst) && buf[..len] == payload[..] => {
                        return Ok(local);
                    }
                    Ok((len, from)) => failures.push(format!(
                        "unexpected {len}-byte datagram from {from} (sent {payload_len} bytes)"
                    )),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        failures.push(format!("no echo within {UDP_REPLY_TIMEOUT:?}"));
                        break;
                    }
                    Err(e) => {
                        failures.push(format!("receive: {e}"));
                        break;
                    }
                }
            }
        }
        Err(format!(
            "UDP {bind_ip} -> {dst}: no matching echo after {UDP_ATTEMPTS} attempts: {}",
            failures.join("; ")
        ))
    })
}

/// Opens `connections` TCP connections from `ns` to the sink server at `dst`,
/// spreading them round-robin over `src_ips` (default source if empty),
/// holds them all open until every one is connected, then sends `bytes_each`
/// over each and verifies it. Returns one result per connection, in order.
pub fn concurrent_tcp(
    ns: &str,
    src_ips: &[Ipv4Addr],
    dst: SocketAddrV4,
    connections: usize,
    bytes_each: usize,
) -> Vec<Result<(), String>> {
    concurrent(ns, src_ips, dst, connections, bytes_each, false)
}

/// [`concurrent_tcp`] against a [`tcp_closing_server`](crate::tcp_closing_server):
/// each client reads on after the reply until the server's FIN, and only
/// then closes, so every connection is closed by the server first and ends
/// in TIME_WAIT on the server.
pub fn concurrent_tcp_server_closes(
    ns: &str,
    src_ips: &[Ipv4Addr],
    dst: SocketAddrV4,
    connections: usize,
    bytes_each: usize,
) -> Vec<Result<(), String>> {
    concurrent(ns, src_ips, dst, connections, bytes_each, true)
}

fn concurrent(
    ns: &str,
    src_ips: &[Ipv4Addr],
    dst: SocketAddrV4,
    connections: usize,
    bytes_each: usize,
    await_server_close: bool,
) -> Vec<Result<(), String>> {
    if connections == 0 {
        return Vec::new();
    }
    let deadline = Instant::now() + CONCURRENT_DEADLINE;
    let workers = connections.min(MAX_CLIENT_THREADS);
    let gate = Arc::new(Gate::new(workers));
    // Worker w owns connections w, w + workers, w + 2*workers, ...
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let jobs: Vec<(usize, Option<Ipv4Addr>)> = (worker..connections)
                .step_by(workers)
                .map(|i| {
                    let src = (!src_ips.is_empty()).then(|| src_ips[i % src_ips.len()]);
                    (i, src)
                })
                .collect();
            let gate = Arc::clone(&gate);
            spawn_in_ns(ns, move || {
                let streams: Vec<_> = jobs
                    .iter()
                    .map(|&(i, src)| {
                        let timeout = CONNECT_TIMEOUT.min(remaining(deadline)?);
                        connect_from(src, dst, timeout).map(|s| (i, s))
                    })
                    .collect();
                gate.arrive_and_wait(deadline);
                streams
                    .into_iter()
                    .zip(&jobs)
                    .map(|(stream, &(i, _))| {
                        let result = stream.and_then(|(_, stream)| {
                            let local = local_v4(&stream)?;
                            send_and_verify(&stream, bytes_each, i as u64, deadline)
                                .and_then(|()| {
                                    if await_server_close {
                                        read_until_closed(&stream)
                                    } else {
                                        Ok(())
                                    }
                                })
                                .map_err(|e| format!("TCP {local} -> {dst}: {e}"))
                        });
                        (i, result)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let mut results: Vec<Result<(), String>> =
        vec![Err("worker thread panicked".to_owned()); connections];
    for handle in handles {
        if let Ok(worker_results) = handle.join() {
            for (i, result) in worker_results {
                results[i] = result;
            }
        }
    }
    results
}

/// Sends the request over a connected stream and checks the reply.
fn send_and_verify(
    mut stream: &TcpStream,
    bytes: usize,
    seed: u64,
    deadline: Instant,
) -> Result<(), String> {
    let timeout = remaining(deadline)?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.set_read_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;

    stream
        .write_all(&(bytes as u64).to_be_bytes())
        .map_err(|e| format!("send header: {e}"))?;
    let mut payload = Payload::new(seed);
    let mut hash = Fnv1a::new();
    let mut buf = vec![0; CHUNK.min(bytes)];
    let mut sent = 0;
    while sent < bytes {
        let n = buf.len().min(bytes - sent);
        payload.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("send after {sent} of {bytes} bytes: {e}"))?;
        sent += n;
    }

    let mut reply = [0; REPLY_LEN];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read reply after sending {bytes} bytes: {e}"))?;
    let (len, server_hash) = decode_reply(&reply);
    if len != bytes as u64 {
        return Err(format!("server saw a length of {len}, sent {bytes}"));
    }
    if server_hash != hash.finish() {
        return Err(format!(
            "payload hash mismatch: server {server_hash:08x}, client {:08x}",
            hash.finish()
        ));
    }
    Ok(())
}

/// Waits (within the read timeout [`send_and_verify`] set) for the peer's
/// FIN, refusing anything but the end of the stream.
fn read_until_closed(mut stream: &TcpStream) -> Result<(), String> {
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err("data after the reply, expected the server to close".to_owned()),
        Err(e) => Err(format!("waiting for the server to close: {e}")),
    }
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("deadline exceeded".to_owned())
    } else {
        Ok(left)
    }
}

fn local_v4(stream: &TcpStream) -> Result<SocketAddrV4, String> {
    match stream.local_addr() {
        Ok(SocketAddr::V4(local)) => Ok(local),
        other => Err(format!("TCP socket has no IPv4 local address: {other:?}")),
    }
}

/// Lets the concurrent workers start transferring only once all of them are
/// connected, so the connections really coexist in the NAT's table. Unlike
/// `std::sync::Barrier` it gives up at a deadline, so one stuck worker cannot
/// hang the rest.
struct Gate {
    expected: usize,
    arrived: Mutex<usize>,
    all_arrived: Condvar,
}

impl Gate {
    fn new(expected: usize) -> Self {
        Gate {
            expected,
            arrived: Mutex::new(0),
            all_arrived: Condvar::new(),
        }
    }

    fn arrive_and_wait(&self, deadline: Instant) {
        let mut arrived = lock(&self.arrived);
        *arrived += 1;
        if *arrived >= self.expected {
            self.all_arrived.notify_all();
            return;
        }
        while *arrived < self.expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            arrived = self
                .all_arrived
                .wait_timeout(arrived, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A TCP connection to a [`tcp_echo_server`](crate::tcp_echo_server) that
/// stays open for round trips over time: a long-lived flow whose fate can be
/// followed while the path under it changes.
#[derive(Debug)]
pub struct EchoConnection {
    stream: TcpStream,
    local: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Payload,
    failed: bool,
}

impl EchoConnection {
    /// Connects from `src_ip` (or the default source) in `ns` to `dst`.
    pub fn open(ns: &str, src_ip: Option<Ipv4Addr>, dst: SocketAddrV4) -> Result<Self, String> {
        // The socket keeps the namespace it was made in, so the connection
        // can be used from any thread afterwards.
        let stream = run_in_ns(ns, move || connect_from(src_ip, dst, CONNECT_TIMEOUT))?;
        let local = local_v4(&stream)?;
        Ok(EchoConnection {
            stream,
            local,
            dst,
            payload: Payload::new(local.port().into()),
            failed: false,
        })
    }

    /// The client's own (pre-NAT) address.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Sends `bytes` pseudo-random bytes and waits up to `timeout` for the
    /// same bytes back; returns how long that took. The error keeps the
    /// socket's error kind (`WouldBlock` for a timeout, `ConnectionReset`
    /// for an RST), which is what a test asserts on. After an error the
    /// stream's position is unknown, so every later call fails at once.
    pub fn roundtrip(&mut self, bytes: usize, timeout: Duration) -> std::io::Result<Duration> {
        let context = |what: &str, e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("TCP echo {} -> {}: {what}: {e}", self.local, self.dst),
            )
        };
        if self.failed {
            return Err(std::io::Error::other(format!(
                "TCP echo {} -> {}: an earlier round trip failed",
                self.local, self.dst
            )));
        }
        self.failed = true;
        let start = Instant::now();
        let mut sent = vec![0; bytes];
        self.payload.fill(&mut sent);
        self.stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| self.stream.set_read_timeout(Some(timeout)))
            .map_err(|e| context("set timeouts", e))?;
        (&self.stream)
            .write_all(&sent)
            .map_err(|e| context("send", e))?;
        let mut received = vec![0; bytes];
        let mut got = 0;
        while got < bytes {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(context(
                    &format!("{got} of {bytes} bytes echoed"),
                    std::io::Error::from(ErrorKind::WouldBlock),
                ));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| context("set timeout", e))?;
            match (&self.stream).read(&mut received[got..]) {
                Ok(0) => {
                    return Err(context(
                        &format!("{got} of {bytes} bytes echoed"),
                        std::io::Error::from(ErrorKind::UnexpectedEof),
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(context(&format!("{got} of {bytes} bytes echoed"), e)),
            }
        }
        if received != sent {
            return Err(context(
                "echo differs from what was sent",
                std::io::Error::from(ErrorKind::InvalidData),
            ));
        }
        self.failed = false;
        Ok(start.elapsed())
    }
}
