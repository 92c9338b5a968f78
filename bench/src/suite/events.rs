//! The compliance export under the connection load (the `nat-logged`
//! mode): a collector in the server namespace that counts what arrives, the
//! daemon's event counters from its metrics endpoint, and the daemon's CPU
//! time from /proc, read before and after a run.
//!
//! Under `log-sessions on` each session is two events: its creation, as
//! the SYN goes out, and its deletion, when the sweep removes it, which for
//! a closed connection is `timeout-tcp-closed` (10 s) after the close. A
//! run of a few seconds therefore exports the creations; the deletions come
//! in the sweeps after it, which [`drain`] waits for.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nat_common::config::Config;
use nat_tests::{SERVER_IP, run_in_ns};
use serde_json::{Value, json};

use super::cpu;

/// The IPFIX collector's port (IPFIX's own, RFC 7011).
pub const COLLECTOR_PORT: u16 = 4739;
/// Where the logged mode's daemon serves its metrics, inside the nat namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9109";
/// How long the deletions may take to come after a run: the closed
/// timeout (10 s), a sweep interval (1 s) and room for the export.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
pub const DRAIN_POLL: Duration = Duration::from_millis(500);
/// The deletions are in once the count stood still this long after the
/// closed timeout.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// `timeout-tcp-closed` as the logged mode leaves it: its default.
fn closed_timeout() -> Duration {
    Duration::from_millis(Config::default().timeout_tcp_closed_ms)
}

/// The IPFIX collector: reads and counts every datagram on
/// [`COLLECTOR_PORT`] in the server namespace until dropped.
pub struct Collector {
    stop: Arc<AtomicBool>,
    datagrams: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    pub fn start(server_ns: &str, cpu: usize) -> Result<Collector> {
        let socket = run_in_ns(server_ns, || UdpSocket::bind(("0.0.0.0", COLLECTOR_PORT)))
            .with_context(|| format!("cannot bind the IPFIX collector on port {COLLECTOR_PORT}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, datagrams, bytes) = (
                Arc::clone(&stop),
                Arc::clone(&datagrams),
                Arc::clone(&bytes),
            );
            thread::Builder::new()
                .name("ipfix-collector".to_owned())
                .spawn(move || {
                    let _ = cpu::pin_current_thread(cpu);
                    let mut buf = [0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        match socket.recv(&mut buf) {
                            Ok(n) => {
                                datagrams.fetch_add(1, Ordering::Relaxed);
                                bytes.fetch_add(n as u64, Ordering::Relaxed);
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
                .context("cannot spawn the IPFIX collector thread")?
        };
        Ok(Collector {
            stop,
            datagrams,
            bytes,
            thread: Some(thread),
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.datagrams.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `--ipfix-collector` of the logged mode.
pub fn collector_arg() -> String {
    SocketAddrV4::new(SERVER_IP, COLLECTOR_PORT).to_string()
}

/// What a NAT daemon has done by one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    at: Option<Instant>,
    /// utime + stime of the daemon, all its threads, in seconds.
    cpu_s: f64,
    /// `nat_events_read_total`, `nat_events_exported_total` (every
    /// exporter and destination) and `nat_export_errors_total`; zero when
    /// the daemon serves no metrics.
    read: u64,
    exported: u64,
    errors: u64,
    /// Datagrams and bytes the collector received.
    datagrams: u64,
    bytes: u64,
}

/// How a NAT daemon is watched: its process, and in the logged mode its
/// metrics endpoint and the collector.
pub struct Observer<'a> {
    pub pid: u32,
    pub nat_ns: &'a str,
    pub collector: Option<&'a Collector>,
}

impl Observer<'_> {
    pub fn read(&self) -> Result<Reading> {
        let at = Some(Instant::now());
        let cpu_s = cpu::process_cpu_s(self.pid)?;
        let Some(collector) = self.collector else {
            return Ok(Reading {
                at,
                cpu_s,
                ..Reading::default()
            });
        };
        let metrics = scrape(self.nat_ns)?;
        let (datagrams, bytes) = collector.counts();
        Ok(Reading {
            at,
            cpu_s,
            read: metrics.read,
            exported: metrics.exported,
            errors: metrics.errors,
            datagrams,
            bytes,
        })
    }
}

/// A daemon's work between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta {
    pub secs: f64,
    pub cpu_s: f64,
    pub read: u64,
    pub exported: u64,
    pub errors: u64,
    pub datagrams: u64,
    pub bytes: u64,
}

impl Delta {
    pub fn between(before: &Reading, after: &Reading) -> Delta {
        let secs = match (before.at, after.at) {
            (Some(b), Some(a)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        Delta {
            secs,
            cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
            read: after.read.saturating_sub(before.read),
            exported: after.exported.saturating_sub(before.exported),
            errors: after.errors.saturating_sub(before.errors),
            datagrams: after.datagrams.saturating_sub(before.datagrams),
            bytes: after.bytes.saturating_sub(before.bytes),
        }
    }

    /// Events exported per second.
    pub fn exported_per_s(&self) -> f64 {
        per(self.exported as f64, self.secs)
    }

    pub fn read_per_s(&self) -> f64 {
        per(self.read as f64, self.secs)
    }

    /// The daemon's CPU as a share of one CPU.
    pub fn cpu_share(&self) -> f64 {
        per(self.cpu_s, self.secs)
    }

    /// The daemon's CPU time per event read, in µs.
    pub fn cpu_us_per_event(&self) -> f64 {
        per(self.cpu_s * 1e6, self.read as f64)
    }

    pub fn to_json(self) -> Value {
        json!({
            "secs": self.secs,
            "daemon_cpu_s": self.cpu_s,
            "events_read": self.read,
            "events_exported": self.exported,
            "export_errors": self.errors,
            "collector_datagrams": self.datagrams,
            "collector_bytes": self.bytes,
            "events_read_per_s": self.read_per_s(),
            "events_exported_per_s": self.exported_per_s(),
            "daemon_cpu_share": self.cpu_share(),
            "daemon_cpu_us_per_event": self.cpu_us_per_event(),
        })
    }
}

fn per(x: f64, over: f64) -> f64 {
    if over > 0.0 { x / over } else { f64::NAN }
}

/// After a run: the deletions, which the sweep produces once the closed
/// timeout has passed. Waits until the read count stood still for
/// [`DRAIN_QUIET`] after that timeout (at most [`DRAIN_LIMIT`]); returns
/// the work of the whole wait and the most events exported in one poll
/// interval, as a rate.
pub fn drain(observer: &Observer<'_>) -> Result<(Delta, f64)> {
    let first = observer.read()?;
    let began = Instant::now();
    let mut last = first;
    let mut still_since = Instant::now();
    let mut peak = 0.0f64;
    while began.elapsed() < DRAIN_LIMIT {
        super::check_interrupt()?;
        thread::sleep(DRAIN_POLL);
        let now = observer.read()?;
        let step = Delta::between(&last, &now);
        peak = peak.max(step.exported_per_s());
        if step.read > 0 {
            still_since = Instant::now();
        }
        last = now;
        if began.elapsed() > closed_timeout() && still_since.elapsed() >= DRAIN_QUIET {
            break;
        }
    }
    Ok((Delta::between(&first, &last), peak))
}

/// The export's counters from the daemon's metrics endpoint.
struct Metrics {
    read: u64,
    exported: u64,
    errors: u64,
}

fn scrape(nat_ns: &str) -> Result<Metrics> {
    let body = run_in_ns(nat_ns, || -> Result<String> {
        let mut stream = TcpStream::connect(METRICS_ADDR)
            .with_context(|| format!("cannot connect to the metrics endpoint {METRICS_ADDR}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: nat\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    })
    .with_context(|| format!("cannot scrape the metrics of the NAT in {nat_ns}"))?;
    let sum = |name: &str| -> u64 {
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    if !body.contains("nat_events_read_total") {
        bail!("the metrics of the NAT in {nat_ns} have no nat_events_read_total");
    }
    Ok(Metrics {
        read: sum("nat_events_read_total"),
        exported: sum("nat_events_exported_total"),
        errors: sum("nat_export_errors_total"),
    })
}
