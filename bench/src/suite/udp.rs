//! UDP packet rate: a sendmmsg blaster in the client namespace, counted where
//! the packets arrive (rx_packets of veth-sv).

use std::io::ErrorKind;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nat_tests::{SERVER_IFACE, SERVER_IP, Side, Topology, run_in_ns, spawn_in_ns};

use super::cpu::{self, Snapshot, Window};

/// The sink of the measured runs: bound so that no ICMP port unreachable
/// flows back, and never read, so it costs the server no more than a full
/// socket queue's drop.
pub const SINK_PORT: u16 = 9000;
/// The echo server of the BPF run-time pass, which needs replies too.
pub const ECHO_PORT: u16 = 9001;
/// UDP payload bytes.
pub const PAYLOAD: usize = 64;
/// Each client address sends from this many ports.
pub const PORTS_PER_ADDR: u16 = 2;
const FIRST_CLIENT_PORT: u16 = 40_000;
/// Datagrams per sendmmsg call.
const BATCH: usize = 64;

/// A bound, unread UDP socket in the server namespace.
pub struct Sink {
    _socket: UdpSocket,
}

impl Sink {
    pub fn bind(server_ns: &str) -> Result<Sink> {
        let socket = run_in_ns(server_ns, || UdpSocket::bind(("0.0.0.0", SINK_PORT)))
            .with_context(|| format!("cannot bind the UDP sink on port {SINK_PORT}"))?;
        Ok(Sink { _socket: socket })
    }
}

/// Echoes every datagram on [`ECHO_PORT`] back to its sender until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start(server_ns: &str, cpu: usize) -> Result<Echo> {
        let socket = run_in_ns(server_ns, || UdpSocket::bind(("0.0.0.0", ECHO_PORT)))
            .with_context(|| format!("cannot bind the UDP echo on port {ECHO_PORT}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("udp-echo".to_owned())
                .spawn(move || {
                    let _ = cpu::pin_current_thread(cpu);
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        match socket.recv_from(&mut buf) {
                            Ok((n, peer)) => {
                                let _ = socket.send_to(&buf[..n], peer);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
                .context("cannot spawn the UDP echo thread")?
        };
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Blast {
    /// Datagrams the sender handed to the kernel.
    pub sent: u64,
    /// rx_packets delta of veth-sv.
    pub delivered: u64,
    pub secs: f64,
    pub window: Window,
}

impl Blast {
    pub fn pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    /// System + softirq CPU time of the whole machine per delivered packet.
    pub fn cpu_ns_per_packet(&self) -> f64 {
        if self.delivered == 0 {
            f64::NAN
        } else {
            self.window.kernel_ns() / self.delivered as f64
        }
    }
}

/// Sends 64-byte datagrams for `secs` from every client address ×
/// [`PORTS_PER_ADDR`] ports to the server's `dst_port`, from one thread
/// pinned to `cpu`.
pub fn blast(topology: &Topology, dst_port: u16, secs: f64, cpu: usize) -> Result<Blast> {
    let client_ns = topology.ns_name(Side::Client).to_owned();
    let server_ns = topology.ns_name(Side::Server).to_owned();
    let sources: Vec<SocketAddrV4> = topology
        .client_ips()
        .into_iter()
        .flat_map(|ip| {
            (0..PORTS_PER_ADDR).map(move |p| SocketAddrV4::new(ip, FIRST_CLIENT_PORT + p))
        })
        .collect();
    let dst = SocketAddrV4::new(SERVER_IP, dst_port);
    let start = Arc::new(Barrier::new(2));
    let sender = {
        let start = Arc::clone(&start);
        spawn_in_ns(&client_ns, move || -> Result<(u64, f64)> {
            let sockets = sources
                .iter()
                .map(|&src| connected_socket(src, dst))
                .collect::<Result<Vec<_>>>();
            let pinned = cpu::pin_current_thread(cpu);
            start.wait();
            let (sockets, ()) = (sockets?, pinned?);
            send_loop(&sockets, Duration::from_secs_f64(secs))
        })
    };
    let before = rx_packets(&server_ns)?;
    let snapshot = Snapshot::take()?;
    start.wait();
    let (sent, elapsed) = sender
        .join()
        .map_err(|_| anyhow!("the UDP sender panicked"))??;
    let window = snapshot.finish()?;
    let after = rx_packets(&server_ns)?;
    Ok(Blast {
        sent,
        delivered: after.saturating_sub(before),
        secs: elapsed,
        window,
    })
}

fn connected_socket(src: SocketAddrV4, dst: SocketAddrV4) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(src).with_context(|| format!("UDP bind {src}"))?;
    socket
        .connect(dst)
        .with_context(|| format!("UDP connect {src} -> {dst}"))?;
    Ok(socket)
}

/// Round-robin over the sockets, [`BATCH`] datagrams per sendmmsg; returns
/// (datagrams sent, seconds).
fn send_loop(sockets: &[UdpSocket], duration: Duration) -> Result<(u64, f64)> {
    let payload = [0x5au8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let iov_ptr: *mut libc::iovec = &mut iov;
    // SAFETY: msghdr and mmsghdr are plain C structs for which all-zero is a
    // valid value (no name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov_ptr;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let started = Instant::now();
    let deadline = started + duration;
    let mut sent = 0u64;
    let mut transient = 0u64;
    while Instant::now() < deadline {
        for socket in sockets {
            // SAFETY: every mmsghdr points at `iov`, which points at
            // `payload`; all three outlive the call, which only reads them
            // (and writes msg_len).
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    0,
                )
            };
            if n >= 0 {
                sent += n as u64;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // A full queue or an ICMP error reported on the socket: keep going.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR) => {
                    transient += 1;
                }
                _ => bail!("sendmmsg: {err}"),
            }
        }
    }
    if sent == 0 {
        bail!("no datagram could be sent ({transient} transient errors)");
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// rx_packets of veth-sv, read from /proc/thread-self/net/dev inside the
/// server namespace.
pub fn rx_packets(server_ns: &str) -> Result<u64> {
    let dev = run_in_ns(server_ns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .context("cannot read /proc/thread-self/net/dev in the server namespace")?;
    dev.lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            if name.trim() != SERVER_IFACE {
                return None;
            }
            // Receive: bytes packets ...
            counters.split_whitespace().nth(1)?.parse().ok()
        })
        .with_context(|| format!("{SERVER_IFACE} is not in the server namespace's net/dev"))
}
