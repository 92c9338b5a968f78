//! New TCP connections per second: many blocking workers in the client
//! namespace (connect, one small request, read the reply, close), and an
//! epoll server in the server namespace listening on [`PORT_COUNT`] ports.
//!
//! The client closes first: the server replies, then waits for the client's
//! FIN before closing. The client's side ends in TIME_WAIT (which
//! tcp_tw_reuse lets it reuse), and the NAT cools a key for its
//! client-first cooldown (15 s by default) rather than the 240 s it uses
//! after a server-first close.

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
                let listener = &listeners[(data & !LISTENER_TAG) as usize];
                accept_all(epoll, listener, &mut conns, peers);
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
/// the connection is finished (the client closed, or an error).
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
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
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
}

impl ConnRun {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

#[derive(Default)]
struct WorkerTally {
    ok: u64,
    slow: u64,
    failures: BTreeMap<String, u64>,
}

/// Runs [`WORKERS`] workers pinned to `cpu` for `secs`; connection i goes
/// from client address i mod 8 to server port (i / 8) mod 32.
pub fn run(topology: &Topology, server: &Server, secs: f64, cpu: usize) -> Result<ConnRun> {
    let client_ns = topology.ns_name(Side::Client).to_owned();
    let sources = Arc::new(topology.client_ips());
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let handles: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let sources = Arc::clone(&sources);
            let start = Arc::clone(&start);
            let deadline = Arc::clone(&deadline);
            spawn_in_ns(&client_ns, move || {
                let pinned = cpu::pin_current_thread(cpu);
                start.wait();
                pinned?;
                let deadline = *deadline.get().context("no deadline was set")?;
                Ok::<_, anyhow::Error>(work(worker, &sources, deadline))
            })
        })
        .collect();
    let peers_before = server.peers();
    let snapshot = Snapshot::take()?;
    let duration = Duration::from_secs_f64(secs);
    let _ = deadline.set(Instant::now() + duration);
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
            }
            Ok(Err(e)) => worker_error = Some(e),
            Err(_) => worker_error = Some(anyhow!("a connection worker panicked")),
        }
    }
    let window = snapshot.finish()?;
    if let Some(e) = worker_error {
        return Err(e);
    }
    let after = server.peers();
    Ok(ConnRun {
        ok: tally.ok,
        failed: tally.failures.values().sum(),
        failures: tally.failures,
        slow: tally.slow,
        secs: duration.as_secs_f64(),
        window,
        peers: Peers {
            external: after.external - peers_before.external,
            internal: after.internal - peers_before.internal,
            other: after.other - peers_before.other,
        },
    })
}

fn work(worker: usize, sources: &[Ipv4Addr], deadline: Instant) -> WorkerTally {
    let mut tally = WorkerTally::default();
    let addrs = sources.len();
    let mut i = worker;
    while Instant::now() < deadline {
        let src = sources[i % addrs];
        let port = FIRST_PORT + ((i / addrs) % PORT_COUNT as usize) as u16;
        i += WORKERS;
        let began = Instant::now();
        match one_connection(src, SocketAddrV4::new(SERVER_IP, port)) {
            Ok(()) => {
                let done = Instant::now();
                if done <= deadline {
                    tally.ok += 1;
                    if done - began > SLOW {
                        tally.slow += 1;
                    }
                }
            }
            Err(kind) => *tally.failures.entry(kind).or_default() += 1,
        }
    }
    tally
}

/// One connection: bind the source address (the port is picked at connect
/// time, per destination), connect, request, reply, close.
fn one_connection(src: Ipv4Addr, dst: SocketAddrV4) -> Result<(), String> {
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
    Ok(())
}
