//! New TCP connections per second: many blocking workers in the client
//! namespace (connect, one small request, read the reply, close), and an
//! epoll server in the server namespace. Every connect is timed.
//!
//! Two loads ([`Load`]):
//! - spread: to [`PORT_COUNT`] server ports, the client closing first: the
//!   server replies, then waits for the client's FIN. The client's side ends
//!   in TIME_WAIT (which tcp_tw_reuse lets it reuse), and the NAT cools a key
//!   for its client-first cooldown (15 s by default).
//! - server-first: to ONE server port, the server closing first right after
//!   its reply, so the server holds TIME_WAIT and the NAT cools each key for
//!   its full server-first cooldown (240 s by default): the load this NAT
//!   exists for. Each run gets a server port of its own
//!   ([`SERVER_FIRST_PORTS`] of them), so no run meets the TIME_WAIT a
//!   previous run left on the server.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nat_tests::{
    EXTERNAL_IP, SERVER_IP, Side, Topology, in_internal_prefix, run_in_ns, spawn_in_ns,
};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, connect, listen, setsockopt,
    socket, sockopt,
};

use super::cpu::{self, Snapshot, Window};

pub const FIRST_PORT: u16 = 20_000;
/// Each server port is its own destination for the NAT, with its own 64k
/// external ports and its own cooling keys.
pub const PORT_COUNT: u16 = 32;
pub const WORKERS: usize = 64;
/// Server-first listeners, one per server-first run, after the spread ones.
pub const SERVER_FIRST_BASE_PORT: u16 = 21_000;
pub const SERVER_FIRST_PORTS: u16 = 64;
const REQUEST: &[u8; 32] = b"GET /bench HTTP/1.0\r\nX: 0123\r\n\r\n";
const REPLY: &[u8; 32] = b"HTTP/1.0 200 OK\r\nX: 01234567\r\n\r\n";
/// Bounds connect (SYN retransmits at 1 s and 3 s fit in it) and each read/write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection slower than this had a SYN (or SYN-ACK) retransmitted.
const SLOW: Duration = Duration::from_millis(900);
const LISTEN_BACKLOG: i32 = 4096;
const LISTENER_TAG: u64 = 1 << 63;

/// Where the accepted connections came from, to check what each mode did.
#[derive(Debug, Default)]
struct PeerCounts {
    /// From the NAT's external address: translated.
    external: AtomicU64,
    /// From inside the internal prefix: not translated.
    internal: AtomicU64,
    other: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Peers {
    pub external: u64,
    pub internal: u64,
    pub other: u64,
}

/// The accept server; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    peers: Arc<PeerCounts>,
}

impl Server {
    pub fn start(server_ns: &str, cpu: usize) -> Result<Server> {
        let listeners = run_in_ns(server_ns, || {
            (FIRST_PORT..FIRST_PORT + PORT_COUNT)
                .chain(SERVER_FIRST_BASE_PORT..SERVER_FIRST_BASE_PORT + SERVER_FIRST_PORTS)
                .map(listen_tcp)
                .collect::<Result<Vec<_>>>()
        })?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        for (i, listener) in listeners.iter().enumerate() {
            epoll
                .add(
                    listener,
                    EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TAG | i as u64),
                )
                .context("epoll_ctl on a listener")?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(PeerCounts::default());
        let thread = {
            let stop = Arc::clone(&stop);
            let peers = Arc::clone(&peers);
            thread::Builder::new()
                .name("conn-server".to_owned())
                .spawn(move || {
                    let _ = cpu::pin_current_thread(cpu);
                    serve(&epoll, &listeners, &stop, &peers);
                })
                .context("cannot spawn the connection server")?
        };
        Ok(Server {
            stop,
            thread: Some(thread),
            peers,
        })
    }

    pub fn peers(&self) -> Peers {
        Peers {
            external: self.peers.external.load(Ordering::Relaxed),
            internal: self.peers.internal.load(Ordering::Relaxed),
            other: self.peers.other.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listen_tcp(port: u16) -> Result<TcpListener> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket")?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).with_context(|| format!("bind TCP {addr}"))?;
    listen(
        &fd,
        Backlog::new(LISTEN_BACKLOG).context("listen backlog out of range")?,
    )
    .with_context(|| format!("listen on TCP {addr}"))?;
    Ok(TcpListener::from(fd))
}

struct Conn {
    stream: TcpStream,
    received: usize,
    replied: bool,
    /// Close right after the reply (the server-first load's listeners).
    close_first: bool,
}

fn serve(epoll: &Epoll, listeners: &[TcpListener], stop: &AtomicBool, peers: &PeerCounts) {
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 256];
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(&mut events, 100u16) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("bench: connection server: epoll_wait: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let data = event.data();
            if data & LISTENER_TAG != 0 {
                let index = (data & !LISTENER_TAG) as usize;
                let close_first = index >= PORT_COUNT as usize;
                accept_all(epoll, &listeners[index], close_first, &mut conns, peers);
                continue;
            }
            let fd = data as RawFd;
            let done = conns.get_mut(&fd).is_none_or(|conn| !serve_conn(conn));
            if done && let Some(conn) = conns.remove(&fd) {
                let _ = epoll.delete(&conn.stream);
            }
        }
    }
}

fn accept_all(
    epoll: &Epoll,
    listener: &TcpListener,
    close_first: bool,
    conns: &mut HashMap<RawFd, Conn>,
    peers: &PeerCounts,
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let counter = match peer {
                    SocketAddr::V4(v4) if *v4.ip() == EXTERNAL_IP => &peers.external,
                    SocketAddr::V4(v4) if in_internal_prefix(*v4.ip()) => &peers.internal,
                    _ => &peers.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let fd = stream.as_raw_fd();
                if stream.set_nonblocking(true).is_err()
                    || epoll
                        .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, fd as u64))
                        .is_err()
                {
                    continue;
                }
                conns.insert(
                    fd,
                    Conn {
                        stream,
                        received: 0,
                        replied: false,
                        close_first,
                    },
                );
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // Aborted before accept, or out of descriptors for a moment.
            Err(_) => return,
        }
    }
}

/// Reads what is there; replies once the request is complete. `false` when
/// the connection is finished (the client closed, an error, or the reply of
/// a server-first connection went out: dropping the stream sends the FIN).
fn serve_conn(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                conn.received += n;
                if !conn.replied && conn.received >= REQUEST.len() {
                    if conn.stream.write_all(REPLY).is_err() {
                        return false;
                    }
                    conn.replied = true;
                    if conn.close_first {
                        return false;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Which connections a run makes.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Client-first closes to [`PORT_COUNT`] server ports.
    Spread,
    /// Server-first closes to one server port (a [`SERVER_FIRST_PORTS`] index),
    /// at most `budget` connections (fewer than the NAT's keys for one
    /// destination, so the cooldown cannot run the range dry).
    ServerFirst { port: u16, budget: u64 },
}

impl Load {
    /// The server-first load on the `run`-th of its server ports.
    pub fn server_first(run: usize, budget: u64) -> Load {
        Load::ServerFirst {
            port: SERVER_FIRST_BASE_PORT + (run % SERVER_FIRST_PORTS as usize) as u16,
            budget,
        }
    }
}

pub struct ConnRun {
    pub ok: u64,
    pub failed: u64,
    /// Failures by kind ("connect: ETIMEDOUT: ...").
    pub failures: BTreeMap<String, u64>,
    /// Successful connections that took longer than [`SLOW`].
    pub slow: u64,
    pub secs: f64,
    pub window: Window,
    pub peers: Peers,
    /// connect() durations of the successful connections, in µs, sorted.
    pub connect_us: Vec<u32>,
}

impl ConnRun {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// The `q` quantile of the connect time, in ms (NaN without connections).
    pub fn connect_ms(&self, q: f64) -> f64 {
        if self.connect_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.connect_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.connect_us[i]) / 1000.0
    }
}

#[derive(Default)]
struct WorkerTally {
    ok: u64,
    slow: u64,
    failures: BTreeMap<String, u64>,
    connect_us: Vec<u32>,
}

/// Runs [`WORKERS`] workers pinned to `cpu` for `secs` (or until the
/// server-first load's budget is used), from the addresses `sources` of
/// the client namespace. In the spread load a worker's i-th connection
/// goes from `sources[i mod n]` to server port (i / n) mod 32; in the
/// server-first load the run's n-th connection goes from `sources[n mod
/// len]`.
pub fn run(
    topology: &Topology,
    sources: Vec<Ipv4Addr>,
    server: &Server,
    load: Load,
    secs: f64,
    cpu: usize,
) -> Result<ConnRun> {
    let client_ns = topology.ns_name(Side::Client).to_owned();
    let sources = Arc::new(sources);
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let started = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let sources = Arc::clone(&sources);
            let start = Arc::clone(&start);
            let deadline = Arc::clone(&deadline);
            let started = Arc::clone(&started);
            spawn_in_ns(&client_ns, move || {
                let pinned = cpu::pin_current_thread(cpu);
                start.wait();
                pinned?;
                let deadline = *deadline.get().context("no deadline was set")?;
                Ok::<_, anyhow::Error>(work(worker, &sources, load, &started, deadline))
            })
        })
        .collect();
    let peers_before = server.peers();
    let snapshot = Snapshot::take()?;
    let duration = Duration::from_secs_f64(secs);
    let began = Instant::now();
    let _ = deadline.set(began + duration);
    start.wait();
    let mut tally = WorkerTally::default();
    let mut worker_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(t)) => {
                tally.ok += t.ok;
                tally.slow += t.slow;
                for (kind, n) in t.failures {
                    *tally.failures.entry(kind).or_default() += n;
                }
                tally.connect_us.extend(t.connect_us);
            }
            Ok(Err(e)) => worker_error = Some(e),
            Err(_) => worker_error = Some(anyhow!("a connection worker panicked")),
        }
    }
    // A server-first run that used its budget ends before the deadline.
    let secs = began.elapsed().min(duration).as_secs_f64();
    let window = snapshot.finish()?;
    if let Some(e) = worker_error {
        return Err(e);
    }
    let after = server.peers();
    tally.connect_us.sort_unstable();
    Ok(ConnRun {
        ok: tally.ok,
        failed: tally.failures.values().sum(),
        failures: tally.failures,
        slow: tally.slow,
        secs,
        window,
        peers: Peers {
            external: after.external - peers_before.external,
            internal: after.internal - peers_before.internal,
            other: after.other - peers_before.other,
        },
        connect_us: tally.connect_us,
    })
}

fn work(
    worker: usize,
    sources: &[Ipv4Addr],
    load: Load,
    started: &AtomicU64,
    deadline: Instant,
) -> WorkerTally {
    let mut tally = WorkerTally::default();
    let addrs = sources.len();
    let mut i = worker;
    while Instant::now() < deadline {
        let (src, port, server_first) = match load {
            Load::Spread => (
                sources[i % addrs],
                FIRST_PORT + ((i / addrs) % PORT_COUNT as usize) as u16,
                false,
            ),
            Load::ServerFirst { port, budget } => {
                let n = started.fetch_add(1, Ordering::Relaxed);
                if n >= budget {
                    break;
                }
                // By the run's count, not the worker's: with more hosts
                // than workers every host still gets its share of the
                // budget, give or take one, as the per-host allocation
                // modes need.
                (sources[(n % addrs as u64) as usize], port, true)
            }
        };
        i += WORKERS;
        let began = Instant::now();
        match one_connection(src, SocketAddrV4::new(SERVER_IP, port), server_first) {
            Ok(connected) => {
                let done = Instant::now();
                if done <= deadline {
                    tally.ok += 1;
                    if done - began > SLOW {
                        tally.slow += 1;
                    }
                    let us = (connected - began).as_micros();
                    tally.connect_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Err(kind) => *tally.failures.entry(kind).or_default() += 1,
        }
    }
    tally
}

/// One connection: bind the source address (the port is picked at connect
/// time, per destination), connect, request, reply, and close; with
/// `server_first`, the client waits for the server's FIN before closing.
/// Returns when connect() returned.
fn one_connection(src: Ipv4Addr, dst: SocketAddrV4, server_first: bool) -> Result<Instant, String> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)
        .map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))
        .map_err(|e| format!("bind: {e}"))?;
    let mut stream = TcpStream::from(fd);
    // SO_SNDTIMEO also bounds a blocking connect.
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("timeouts: {e}"))?;
    match connect(stream.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) => {}
        // What a blocking connect returns when SO_SNDTIMEO expires.
        Err(Errno::EINPROGRESS) => return Err("connect: timed out".to_owned()),
        Err(e) => return Err(format!("connect: {e}")),
    }
    let connected = Instant::now();
    stream
        .write_all(REQUEST)
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut reply = [0u8; REPLY.len()];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read: {}", e.kind()))?;
    if &reply != REPLY {
        return Err("read: wrong reply".to_owned());
    }
    if server_first {
        let mut rest = [0u8; 1];
        match stream.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => return Err("read: data after the reply".to_owned()),
            Err(e) => return Err(format!("read (waiting for the server's FIN): {}", e.kind())),
        }
    }
    Ok(connected)
}
