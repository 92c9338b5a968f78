//! A TCP server and client that end each connection in a chosen way, for the
//! cooldown tests: the cooldown a key gets depends on who closed first and
//! how, and the server tells the client which external address it saw, so a
//! test knows which key each connection left behind.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nat_tests::{
    CLIENT_IP, SERVER_IP, Side, Topology, nat_cmd, nat_json, run_in_ns, serde_json::Value,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect as sys_connect, getsockopt,
    setsockopt, socket, sockopt,
};

/// Longer than any test: only a connection the test forgot can hit it.
const SERVER_IDLE: Duration = Duration::from_secs(20);
/// A handshake through the NAT on a quiet machine takes milliseconds; a
/// dropped SYN is only retried after 1 s, so this tells the two apart.
pub const QUICK: Duration = Duration::from_millis(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The server sends the first FIN and ends in TIME_WAIT: the case
    /// cooldowns exist for.
    ServerFirst,
    /// The client sends the first FIN; the server ends in CLOSED.
    ClientFirst,
    /// The client aborts with an RST (SO_LINGER 0).
    Reset,
}

impl Close {
    fn code(self) -> u8 {
        match self {
            Close::ServerFirst => b'S',
            Close::ClientFirst => b'C',
            Close::Reset => b'R',
        }
    }
}

/// A TCP server on 0.0.0.0:`port` in the server namespace. Each connection
/// sends one byte naming its [`Close`]; the server answers with the peer
/// address it saw (4 address bytes, 2 port bytes) and then plays its part of
/// that close.
pub struct CloseServer {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CloseServer {
    pub fn start(topo: &Topology, port: u16) -> CloseServer {
        let listener = run_in_ns(topo.ns_name(Side::Server), move || {
            TcpListener::bind(("0.0.0.0", port))
                .unwrap_or_else(|e| panic!("cannot listen on TCP port {port}: {e}"))
        });
        // Nonblocking so the loop notices the stop flag.
        listener
            .set_nonblocking(true)
            .expect("set the listener nonblocking");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("close-server-{port}"))
                .spawn(move || accept_loop(&listener, &accepted, &stop))
                .expect("spawn the server thread")
        };
        CloseServer {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CloseServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, accepted: &AtomicUsize, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                // Detached: a connection the client leaves open (the idle
                // test) must not hold up the accept loop or the drop.
                let _ = thread::Builder::new()
                    .name(format!("close-conn-{peer}"))
                    .spawn(move || serve(stream, peer));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                eprintln!("close server: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr) {
    let SocketAddr::V4(peer) = peer else {
        return;
    };
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(SERVER_IDLE)).is_err()
    {
        return;
    }
    let mut code = [0];
    if !matches!(stream.read(&mut code), Ok(1)) {
        return;
    }
    let mut reply = [0; 6];
    reply[..4].copy_from_slice(&peer.ip().octets());
    reply[4..].copy_from_slice(&peer.port().to_be_bytes());
    if stream.write_all(&reply).is_err() {
        return;
    }
    if code[0] == Close::ServerFirst.code() {
        // Everything the client sent has been read, so this close is a FIN, not an RST.
        return;
    }
    // Waits for the client's FIN (or RST) before closing.
    let mut buf = [0; 64];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Connects from [`CLIENT_IP`] to the server's `port` in the client
/// namespace, giving up after `timeout`. Returns the stream and how long the
/// handshake took.
pub fn connect(
    topo: &Topology,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, Duration), String> {
    let dst = SocketAddrV4::new(SERVER_IP, port);
    run_in_ns(topo.ns_name(Side::Client), move || {
        let fail = |e: String| format!("connect {CLIENT_IP} -> {dst}: {e}");
        // Nonblocking, so that the wait for the handshake can be bounded.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| fail(format!("socket: {e}")))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(CLIENT_IP, 0)),
        )
        .map_err(|e| fail(format!("bind: {e}")))?;
        let started = Instant::now();
        match sys_connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let deadline = started + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
            match poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => return Err(fail(format!("no handshake within {timeout:?}"))),
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(fail(format!("poll: {e}"))),
            }
        }
        let took = started.elapsed();
        match getsockopt(&fd, sockopt::SocketError) {
            Ok(0) => {}
            Ok(err) => return Err(fail(Errno::from_raw(err).to_string())),
            Err(e) => return Err(fail(format!("SO_ERROR: {e}"))),
        }
        let stream = TcpStream::from(fd);
        stream
            .set_nonblocking(false)
            .map_err(|e| fail(format!("set blocking: {e}")))?;
        Ok((stream, took))
    })
}

/// Asks the server which external address it saw, then ends the connection
/// as `close` says and waits for the server's part of it. Returns the
/// external address.
pub fn finish(mut stream: TcpStream, close: Close) -> SocketAddrV4 {
    let external = announce(&mut stream, close);
    complete(stream, close);
    external
}

/// The first half of [`finish`]: tells the server how the connection will
/// end and returns the external address it saw. Until [`complete`], a
/// [`Close::ClientFirst`] or [`Close::Reset`] connection stays open and the
/// server drains whatever the client sends.
pub fn announce(stream: &mut TcpStream, close: Close) -> SocketAddrV4 {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    stream
        .write_all(&[close.code()])
        .expect("send the close code");
    let mut reply = [0; 6];
    stream
        .read_exact(&mut reply)
        .expect("read the external address the server saw");
    SocketAddrV4::new(
        [reply[0], reply[1], reply[2], reply[3]].into(),
        u16::from_be_bytes([reply[4], reply[5]]),
    )
}

/// The second half of [`finish`].
pub fn complete(mut stream: TcpStream, close: Close) {
    let mut rest = [0; 16];
    match close {
        Close::ServerFirst => {
            let n = stream.read(&mut rest).expect("wait for the server's FIN");
            assert_eq!(n, 0, "server sent more than its reply");
        }
        Close::ClientFirst => {
            stream.shutdown(Shutdown::Write).expect("send our FIN");
            let n = stream.read(&mut rest).expect("wait for the server's FIN");
            assert_eq!(n, 0, "server sent more than its reply");
        }
        Close::Reset => {
            setsockopt(
                &stream,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .expect("set SO_LINGER {on, 0}");
        }
    }
}

/// One connection from handshake to close.
#[derive(Clone, Copy, Debug)]
pub struct Closed {
    pub external: SocketAddrV4,
    pub connect_took: Duration,
    /// When the client's last segment of the close had been sent.
    pub closed_at: Instant,
}

/// Connects (5 s at most), then [`finish`]es with `close`.
pub fn open_and_close(topo: &Topology, port: u16, close: Close) -> Closed {
    let (stream, connect_took) =
        connect(topo, port, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    let external = finish(stream, close);
    Closed {
        external,
        connect_took,
        closed_at: Instant::now(),
    }
}

/// [`open_and_close`] that also requires the handshake to have needed no SYN
/// retransmission, i.e. the NAT allocated a port for the first SYN.
pub fn quick_close(topo: &Topology, port: u16, close: Close) -> Closed {
    let c = open_and_close(topo, port, close);
    assert!(
        c.connect_took < QUICK,
        "connect to port {port} took {:?} (external {}): the first SYN was dropped",
        c.connect_took,
        c.external
    );
    c
}

pub fn cooldowns(topo: &Topology) -> Vec<Value> {
    nat_json(topo, &["cooldowns", "--json"])
        .as_array()
        .expect("cooldowns --json prints an array")
        .clone()
}

/// `left_ms` of the key (`proto`, `external`, server:`remote_port`) in a
/// `nat cooldowns --json` listing, if it is there.
pub fn left_ms(
    list: &[Value],
    proto: &str,
    external: SocketAddrV4,
    remote_port: u16,
) -> Option<u64> {
    let remote = SocketAddrV4::new(SERVER_IP, remote_port).to_string();
    let found: Vec<&Value> = list
        .iter()
        .filter(|c| {
            c["proto"] == proto && c["external"] == external.to_string() && c["remote"] == remote
        })
        .collect();
    assert!(found.len() <= 1, "key listed twice: {list:#?}");
    found.first().map(|c| {
        c["left_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("left_ms is not a number: {c}"))
    })
}

/// `nat set KEY VALUE`, which must succeed.
pub fn set(topo: &Topology, key: &str, value: &str) {
    let out = nat_cmd(topo, &["set", key, value]);
    assert!(
        out.status.success(),
        "nat set {key} {value} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Polls `f` every 20 ms until it returns `Some`, panicking after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Requires a connection to `port` not to complete within `timeout`. If it
/// does, the panic says which port it got and what the NAT held at the time.
pub fn assert_blocked(topo: &Topology, port: u16, timeout: Duration, why: &str) {
    let Ok((stream, took)) = connect(topo, port, timeout) else {
        return;
    };
    let sessions = nat_json(topo, &["sessions", "--json"]);
    let cooling = nat_json(topo, &["cooldowns", "--json"]);
    let stats = nat_json(topo, &["stats", "--json"]);
    let external = finish(stream, Close::ClientFirst);
    panic!(
        "connected to :{port} in {took:?} via {external}, though {why}\nsessions: {sessions:#}\ncooldowns: {cooling:#}\nstats: {stats:#}"
    );
}

/// Waits for the session table to empty; returns when it was seen empty.
pub fn wait_until_swept(topo: &Topology, within: Duration) -> Instant {
    wait_for("session swept", within, || {
        crate::common::sessions(topo).is_empty().then(Instant::now)
    })
}
