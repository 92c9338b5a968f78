//! Long-running flows for the restart and upgrade tests: a TCP transfer and
//! a UDP exchange paced over a fixed duration, whose receivers record the
//! longest silence, so a daemon restart that loses packets shows up as a
//! gap (retransmission waits, or a dead flow) rather than only as a failure.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{run_in_ns, spawn_in_ns};
use crate::sockets::{connect_from, listen_tcp};
use crate::topology::{CLIENT_IP, SERVER_IP, Side, Topology};

/// How often each flow sends.
const TICK: Duration = Duration::from_millis(50);
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the receivers saw once both flows ended.
#[derive(Debug)]
pub struct PacedReport {
    /// Bytes the TCP server received, all equal to what was sent.
    pub tcp_bytes: usize,
    /// Longest time between two reads at the TCP server.
    pub tcp_max_gap: Duration,
    pub udp_sent: u32,
    pub udp_echoed: u32,
    /// Longest time between two echoes at the UDP client.
    pub udp_max_gap: Duration,
}

/// A TCP transfer of `tcp_bytes` and a UDP exchange, both from `src` in
/// `client_ns` to `server_ip` in `server_ns`, paced over `duration`.
pub struct PacedFlows {
    tcp_client: JoinHandle<Result<(), String>>,
    tcp_server: JoinHandle<Result<(usize, Duration), String>>,
    udp: JoinHandle<Result<(u32, u32, Duration), String>>,
}

impl PacedFlows {
    /// Starts both flows from the client's [`CLIENT_IP`] to the server: TCP
    /// to a server of its own on `tcp_port`, which checks every byte, and UDP
    /// to the echo server the caller runs on `udp_port`.
    pub fn start(
        topology: &Topology,
        tcp_port: u16,
        udp_port: u16,
        tcp_bytes: usize,
        duration: Duration,
    ) -> PacedFlows {
        let (client_ns, server_ns) = (
            topology.ns_name(Side::Client),
            topology.ns_name(Side::Server),
        );
        let (src, server_ip) = (CLIENT_IP, SERVER_IP);
        let udp_dst = SocketAddrV4::new(server_ip, udp_port);
        let listener = run_in_ns(server_ns, move || listen_tcp(tcp_port));
        let tcp_server = std::thread::spawn(move || {
            listener
                .set_nonblocking(false)
                .map_err(|e| format!("listener: {e}"))?;
            let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| format!("set timeout: {e}"))?;
            let (mut got, mut max_gap, mut last) = (0usize, Duration::ZERO, None::<Instant>);
            let mut buf = vec![0u8; 64 * 1024];
            let mut want = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).map_err(|e| {
                    let since = last.map(|l| l.elapsed()).unwrap_or_default();
                    format!("TCP read after {got} bytes, {since:?} after the last: {e}")
                })?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                if let Some(last) = last {
                    max_gap = max_gap.max(now - last);
                }
                last = Some(now);
                fill_at(got, &mut want[..n]);
                if buf[..n] != want[..n] {
                    return Err(format!(
                        "TCP content differs within bytes {got}..{}",
                        got + n
                    ));
                }
                got += n;
            }
            Ok((got, max_gap))
        });
        let dst = SocketAddrV4::new(server_ip, tcp_port);
        let tcp_client = spawn_in_ns(client_ns, move || {
            let mut stream = connect_from(Some(src), dst, SETUP_TIMEOUT)?;
            stream
                .set_write_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| format!("set timeout: {e}"))?;
            let ticks = (duration.as_millis() / TICK.as_millis()).max(1) as usize;
            let per_tick = tcp_bytes.div_ceil(ticks);
            let mut buf = vec![0u8; per_tick];
            let (start, mut sent) = (Instant::now(), 0usize);
            for tick in 0..ticks {
                let n = per_tick.min(tcp_bytes - sent);
                fill_at(sent, &mut buf[..n]);
                stream
                    .write_all(&buf[..n])
                    .map_err(|e| format!("TCP send after {sent} bytes: {e}"))?;
                sent += n;
                sleep_until(start + TICK * (tick as u32 + 1));
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("TCP shutdown: {e}"))
        });
        let udp = spawn_in_ns(client_ns, move || udp_flow(src, udp_dst, duration));
        PacedFlows {
            tcp_client,
            tcp_server,
            udp,
        }
    }

    /// Waits for both flows to end; the error names what broke.
    pub fn finish(self) -> Result<PacedReport, String> {
        fn joined<T>(r: std::thread::Result<Result<T, String>>) -> Result<T, String> {
            r.unwrap_or_else(|_| Err("panicked".to_owned()))
        }
        let client = joined(self.tcp_client.join()).map_err(|e| format!("TCP client: {e}"));
        let server = joined(self.tcp_server.join()).map_err(|e| format!("TCP server: {e}"));
        let udp = joined(self.udp.join()).map_err(|e| format!("UDP: {e}"));
        let errors: Vec<String> = [
            client.err(),
            server.as_ref().err().cloned(),
            udp.as_ref().err().cloned(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let ((tcp_bytes, tcp_max_gap), (udp_sent, udp_echoed, udp_max_gap)) =
            (server.expect("checked"), udp.expect("checked"));
        Ok(PacedReport {
            tcp_bytes,
            tcp_max_gap,
            udp_sent,
            udp_echoed,
            udp_max_gap,
        })
    }
}

/// One datagram per tick from one socket (one session), each carrying its
/// sequence number; counts the echoes and the longest wait between two.
fn udp_flow(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    duration: Duration,
) -> Result<(u32, u32, Duration), String> {
    let socket = UdpSocket::bind((src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
    let (start, mut sent, mut echoed) = (Instant::now(), 0u32, 0u32);
    let (mut last, mut max_gap) = (start, Duration::ZERO);
    let mut buf = [0u8; 64];
    while start.elapsed() < duration {
        socket
            .send_to(&sent.to_be_bytes(), dst)
            .map_err(|e| format!("send: {e}"))?;
        sent += 1;
        let next = start + TICK * sent;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| format!("set timeout: {e}"))?;
            match socket.recv_from(&mut buf) {
                Ok((4, SocketAddr::V4(from))) if from == dst => {
                    let now = Instant::now();
                    max_gap = max_gap.max(now - last);
                    last = now;
                    echoed += 1;
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }
    max_gap = max_gap.max(last.elapsed());
    Ok((sent, echoed, max_gap))
}

/// The transfer's bytes from `offset` on: a function of the position
/// alone, so sender and receiver agree however the stream is cut.
fn fill_at(offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((offset + i) as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_be_bytes()[0];
    }
}

fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}
