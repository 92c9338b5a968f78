//! Socket setup that std cannot express: a listen backlog large enough for
//! bursts of hundreds of connections, and binding a client to a chosen source
//! address before connecting with a timeout.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, connect, getsockopt, listen,
    setsockopt, socket, sockopt,
};

const LISTEN_BACKLOG: i32 = 1024;

/// A listening TCP socket on 0.0.0.0:`port` in the calling thread's namespace.
pub(crate) fn listen_tcp(port: u16) -> TcpListener {
    let fd = tcp_socket().unwrap_or_else(|e| panic!("cannot create a TCP socket: {e}"));
    setsockopt(&fd, sockopt::ReuseAddr, &true)
        .unwrap_or_else(|e| panic!("cannot set SO_REUSEADDR: {e}"));
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))
        .unwrap_or_else(|e| panic!("cannot bind TCP {addr}: {e}"));
    listen(
        &fd,
        Backlog::new(LISTEN_BACKLOG).expect("backlog within the kernel's range"),
    )
    .unwrap_or_else(|e| panic!("cannot listen on TCP {addr}: {e}"));
    TcpListener::from(fd)
}

/// Connects to `dst` from `src` (any local address if `None`) in the calling
/// thread's namespace, giving up after `timeout`. Returns a blocking stream.
pub(crate) fn connect_from(
    src: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let context = || match src {
        Some(src) => format!("connect {src} -> {dst}"),
        None => format!("connect -> {dst}"),
    };
    let fd = tcp_socket().map_err(|e| format!("{}: socket: {e}", context()))?;
    if let Some(src) = src {
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))
            .map_err(|e| format!("{}: bind: {e}", context()))?;
    }
    match connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => {
            wait_connected(&fd, timeout).map_err(|e| format!("{}: {e}", context()))?
        }
        Err(e) => return Err(format!("{}: {e}", context())),
    }
    let stream = TcpStream::from(fd);
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("{}: set blocking: {e}", context()))?;
    Ok(stream)
}

/// Nonblocking so that connecting can be bounded by a timeout; callers
/// switch it back once connected.
fn tcp_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

fn wait_connected(fd: &OwnedFd, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let poll_timeout = PollTimeout::try_from(remaining).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, poll_timeout) {
            Ok(0) => return Err(format!("timed out after {timeout:?}")),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    match getsockopt(fd, sockopt::SocketError) {
        Ok(0) => Ok(()),
        Ok(err) => Err(Errno::from_raw(err).to_string()),
        Err(e) => Err(format!("SO_ERROR: {e}")),
    }
}
