//! Servers in the server namespace that record which peer addresses they saw:
//! the peer address is the NAT's observable effect.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::lock::lock;
use crate::netns::run_in_ns;
use crate::protocol::{CHUNK, Fnv1a, REQUEST_HEADER_LEN, SHORT_REPLY, SHORT_REQUEST, encode_reply};
use crate::sockets::listen_tcp;

/// How often the server loops look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// A client that goes quiet this long mid-request is given up on.
const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the closing server waits for a client's request.
const CLOSING_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Refuses absurd lengths, which mean the stream was corrupted.
const MAX_REQUEST: u64 = 1 << 32;

/// A running server; stops (and joins its accept/receive loop) on drop.
#[derive(Debug)]
pub struct ServerHandle {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Runs `serve` on a thread named `name` until the handle stops it.
    fn spawn(
        name: String,
        port: u16,
        serve: impl FnOnce(&Mutex<Vec<SocketAddr>>, &AtomicBool) + Send + 'static,
    ) -> ServerHandle {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let peers = Arc::clone(&peers);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || serve(&peers, &stop))
                .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"))
        };
        ServerHandle {
            port,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    /// Every peer seen so far, in arrival order: one entry per accepted TCP
    /// connection, or per received UDP datagram.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.peers).clone()
    }

    pub fn last_peer(&self) -> Option<SocketAddr> {
        lock(&self.peers).last().copied()
    }

    /// The bound port (useful when started on port 0).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP server on 0.0.0.0:`port` in `ns` speaking the check protocol of
/// [`tcp_transfer`](crate::tcp_transfer), one thread per connection; the
/// client closes first.
pub fn tcp_sink_server(ns: &str, port: u16) -> ServerHandle {
    tcp_server(ns, port, "tcp-sink", |stream| {
        serve_connection(stream, Close::ClientFirst)
    })
}

/// [`tcp_sink_server`] that closes each connection right after its reply,
/// before the client does, so the server holds every connection in
/// TIME_WAIT as a busy web server does.
pub fn tcp_closing_server(ns: &str, port: u16) -> ServerHandle {
    tcp_server(ns, port, "tcp-closing", |stream| {
        serve_connection(stream, Close::ServerFirst)
    })
}

/// A TCP server on 0.0.0.0:`port` in `ns` that reads a short request,
/// answers `bye` and closes first, so that every connection ends in
/// TIME_WAIT on the server: the busy server the NAT's cooldown is for. See
/// [`short_connection`](crate::short_connection) for its client.
pub fn short_connection_server(ns: &str, port: u16) -> ServerHandle {
    tcp_server(ns, port, "tcp-short", answer_and_close)
}

/// A TCP server on 0.0.0.0:`port` in `ns` that sends back whatever it
/// receives, until the client closes or is silent for 30 s: the other end
/// of [`EchoConnection`](crate::EchoConnection).
pub fn tcp_echo_server(ns: &str, port: u16) -> ServerHandle {
    tcp_server(ns, port, "tcp-echo", echo_connection)
}

fn tcp_server(
    ns: &str,
    port: u16,
    kind: &str,
    serve: fn(TcpStream) -> std::io::Result<()>,
) -> ServerHandle {
    // Bound inside the namespace; the socket stays there whichever thread uses it.
    let listener = run_in_ns(ns, move || listen_tcp(port));
    let port = local_port(listener.local_addr());
    let kind = kind.to_owned();
    ServerHandle::spawn(format!("{kind}-{port}"), port, move |peers, stop| {
        accept_loop(&listener, &kind, serve, peers, stop)
    })
}

/// A UDP server on 0.0.0.0:`port` in `ns` that sends every datagram back
/// unchanged to its sender.
pub fn udp_echo_server(ns: &str, port: u16) -> ServerHandle {
    let socket = run_in_ns(ns, move || {
        UdpSocket::bind(("0.0.0.0", port))
            .unwrap_or_else(|e| panic!("cannot bind UDP 0.0.0.0:{port}: {e}"))
    });
    socket
        .set_read_timeout(Some(STOP_POLL))
        .expect("cannot set a UDP read timeout");
    let port = local_port(socket.local_addr());
    ServerHandle::spawn(format!("udp-echo-{port}"), port, move |peers, stop| {
        echo_loop(&socket, peers, stop)
    })
}

fn accept_loop(
    listener: &TcpListener,
    kind: &str,
    serve: fn(TcpStream) -> std::io::Result<()>,
    peers: &Mutex<Vec<SocketAddr>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(STOP_POLL).expect("small timeout");
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll on the {kind} listener failed: {e}"),
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                lock(peers).push(peer);
                let server = kind.to_owned();
                let spawned = thread::Builder::new()
                    .name(format!("{kind}-{peer}"))
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        if let Err(e) = serve(stream) {
                            eprintln!("{server}: connection from {peer}: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("{kind}: cannot spawn a thread for {peer}: {e}");
                }
            }
            // The connection may have been reset between poll and accept.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("{kind}: accept failed: {e}");
                thread::sleep(STOP_POLL);
            }
        }
    }
}

/// Which end of a sink connection closes first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    ClientFirst,
    ServerFirst,
}

fn serve_connection(mut stream: TcpStream, close: Close) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    let mut header = [0; REQUEST_HEADER_LEN];
    stream.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header);
    if len > MAX_REQUEST {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("request length {len} is implausible"),
        ));
    }
    let mut hash = Fnv1a::new();
    let mut buf = vec![0; CHUNK];
    let mut remaining = len;
    while remaining > 0 {
        let want = usize::try_from(remaining.min(CHUNK as u64)).expect("at most CHUNK");
        let got = stream.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("peer closed with {remaining} of {len} bytes unsent"),
            ));
        }
        hash.update(&buf[..got]);
        remaining -= got as u64;
    }
    stream.write_all(&encode_reply(len, hash.finish()))?;
    if close == Close::ClientFirst {
        // Waiting for the client's FIN makes the client close first, so the
        // connection ends with a full FIN exchange through the NAT.
        while stream.read(&mut buf)? > 0 {}
    }
    Ok(())
}

/// The short-connection server's side: a reset or silent client is not its
/// problem (the client reports it), so only I/O setup errors are returned.
fn answer_and_close(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLOSING_READ_TIMEOUT))?;
    let mut request = [0; SHORT_REQUEST.len()];
    if stream.read_exact(&mut request).is_ok() {
        let _ = stream.write_all(SHORT_REPLY);
    }
    // Dropped here: the server sends its FIN first.
    Ok(())
}

fn echo_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    let mut buf = vec![0; CHUNK];
    loop {
        let got = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(got) => got,
            // The test process's children exiting (SIGCHLD) must not end the connection.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..got])?;
    }
}

fn echo_loop(socket: &UdpSocket, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    let mut buf = vec![0; 65536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                lock(peers).push(peer);
                if let Err(e) = socket.send_to(&buf[..len], peer) {
                    eprintln!("udp echo: cannot reply to {peer}: {e}");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                eprintln!("udp echo: receive failed: {e}");
                thread::sleep(STOP_POLL);
            }
        }
    }
}

fn local_port(addr: std::io::Result<SocketAddr>) -> u16 {
    addr.expect("a bound socket has a local address").port()
}
