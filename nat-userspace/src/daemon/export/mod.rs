//! Compliance logging: the datapath's events (port blocks allocated and
//! released, addresses and ports exhausted, quotas and thresholds reached,
//! sessions created and deleted under `log-sessions`) read from the
//! NAT_EVENTS ring buffer and exported as IPFIX (RFC 7011 with RFC 8158's
//! elements, [`ipfix`]) to every `ipfix-collector` and as RFC 5424 lines
//! ([`syslog`]) to every `syslog-server`, both over UDP.
//!
//! One thread of its own reads and sends ([`Export::start`]): the
//! encoding and the `sendto` calls stay off the async runtime, and the
//! thread sleeps in poll(2) on the ring buffer's descriptor, a control
//! socket and the next template refresh, never spinning. Events go to
//! the collectors in the order the ring buffer holds them. The thread
//! drains the buffer whether or not anything is configured, so the
//! datapath's `events_dropped` means what it says: the daemon fell behind
//! (or was not running), never that nobody listened. A reload re-targets
//! it ([`Control::retarget`]); a stop drains what the buffer holds, sends
//! it, and ends the thread.
//!
//! The ring buffer is pinned with the instance: events written while no
//! daemon runs (a restart, an upgrade) wait in it for the next daemon,
//! which reads on from where the last one stopped; what a full buffer
//! cannot hold is counted by the datapath (`events_dropped`).

pub mod event;
pub mod ipfix;
pub mod syslog;

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::net::UnixDatagram,
    },
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use log::warn;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use event::{Event, WallClock};

use crate::cli::ExportFlags;

/// Events read from the ring buffer before they are sent: bounds the
/// memory a burst takes and the time between two looks at the control
/// socket.
const BATCH: usize = 1024;

/// A send that blocks this long (a full socket buffer) fails and is
/// counted, so a stuck interface cannot stall the reading for long.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// Where the events go: the `nat load` flags of compliance logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub collectors: Vec<SocketAddr>,
    pub template_refresh: Duration,
    pub observation_domain: u32,
    pub syslog: Vec<SocketAddr>,
}

impl Targets {
    pub fn from_flags(flags: &ExportFlags) -> Self {
        Self {
            collectors: flags.ipfix_collector.clone(),
            template_refresh: Duration::from_millis(flags.ipfix_template_refresh),
            observation_domain: flags.ipfix_observation_domain,
            syslog: flags.syslog_server.clone(),
        }
    }

    /// One line for the log: where events go.
    pub fn describe(&self) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts = Vec::new();
        if !self.collectors.is_empty() {
            parts.push(format!(
                "IPFIX to {} (observation domain {}, templates every {:?})",
                list(&self.collectors),
                self.observation_domain,
                self.template_refresh
            ));
        }
        if !self.syslog.is_empty() {
            parts.push(format!("syslog to {}", list(&self.syslog)));
        }
        if parts.is_empty() {
            "not exported (no ipfix-collector, no syslog-server)".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// What the export did, for the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    read: AtomicU64,
    unreadable: AtomicU64,
    by_destination: Mutex<BTreeMap<Destination, Sent>>,
}

/// An exporter (`ipfix`, `syslog`) and where it sends.
type Destination = (&'static str, SocketAddr);
/// Events exported and errors.
type Sent = (u64, u64);

/// One destination's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationCounts {
    /// `ipfix` or `syslog`.
    pub exporter: &'static str,
    pub destination: SocketAddr,
    /// Events sent (in a message or line the socket took).
    pub exported: u64,
    /// Messages or lines the socket refused.
    pub errors: u64,
}

impl Counters {
    /// Events read from the ring buffer.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Records read that were too short or of a kind this build does not know.
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    pub fn destinations(&self) -> Vec<DestinationCounts> {
        lock(&self.by_destination)
            .iter()
            .map(
                |(&(exporter, destination), &(exported, errors))| DestinationCounts {
                    exporter,
                    destination,
                    exported,
                    errors,
                },
            )
            .collect()
    }

    fn count(&self, exporter: &'static str, to: SocketAddr, exported: u64, errors: u64) {
        let mut map = lock(&self.by_destination);
        let entry = map.entry((exporter, to)).or_default();
        entry.0 += exported;
        entry.1 += errors;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The exporters and their sockets; no thread of their own. [`Export`]
/// runs them on its thread; tests feed them directly.
pub struct Exporters {
    targets: Targets,
    sessions: Vec<(SocketAddr, ipfix::Session)>,
    lines: syslog::LineFormat,
    sockets: Sockets,
    counters: Arc<Counters>,
}

impl Exporters {
    pub fn new(targets: Targets, counters: Arc<Counters>) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let mut exporters = Self {
            targets: Targets {
                collectors: Vec::new(),
                syslog: Vec::new(),
                ..targets.clone()
            },
            sessions: Vec::new(),
            lines: syslog::LineFormat::new(&host, std::process::id()),
            sockets: Sockets::default(),
            counters,
        };
        exporters.retarget(targets);
        exporters
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Sends from now on to `targets`. A collector that stays keeps its
    /// session (its sequence numbers go on); one that is new, or all of
    /// them when the observation domain changes, starts one, templates
    /// first.
    pub fn retarget(&mut self, targets: Targets) {
        let domain = targets.observation_domain;
        let mut old = std::mem::take(&mut self.sessions);
        for c in &targets.collectors {
            let kept = old
                .iter()
                .position(|(a, s)| a == c && s.domain() == domain)
                .map(|i| old.swap_remove(i).1);
            let session = kept.unwrap_or_else(|| ipfix::Session::new(domain));
            self.sessions.push((*c, session));
        }
        self.targets = targets;
        self.tick(Instant::now());
    }

    /// Sends `events` to every destination.
    pub fn export(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        let secs = export_secs();
        let refresh = self.targets.template_refresh;
        for (to, session) in &mut self.sessions {
            let mut sent = 0u64;
            let mut errors = 0u64;
            for msg in session.messages(events, now, refresh, secs) {
                match self.sockets.send(&msg, *to) {
                    Ok(()) => sent += data_records(&msg),
                    Err(e) => {
                        errors += 1;
                        note_failure("IPFIX", *to, &e, errors);
                    }
                }
            }
            self.counters.count("ipfix", *to, sent, errors);
        }
        for to in &self.targets.syslog {
            let (mut sent, mut errors) = (0u64, 0u64);
            for ev in events {
                match self.sockets.send(&self.lines.line(ev), *to) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        errors += 1;
                        note_failure("syslog", *to, &e, errors);
                    }
                }
            }
            self.counters.count("syslog", *to, sent, errors);
        }
    }

    /// Sends the templates to every collector they are due at by time.
    pub fn tick(&mut self, now: Instant) {
        let refresh = self.targets.template_refresh;
        for (to, session) in &mut self.sessions {
            if let Some(msg) = session.refresh(now, refresh, export_secs())
                && let Err(e) = self.sockets.send(&msg, *to)
            {
                self.counters.count("ipfix", *to, 0, 1);
                note_failure("IPFIX", *to, &e, 1);
            }
        }
    }

    /// When [`Exporters::tick`] next has something to send.
    pub fn next_tick(&self) -> Option<Instant> {
        let refresh = self.targets.template_refresh;
        self.sessions
            .iter()
            .filter_map(|(_, s)| s.templates_due_at(refresh))
            .min()
    }
}

/// Data records in an IPFIX message: the sets after the header whose id
/// names a template (256 and up), each record the template's length.
fn data_records(msg: &[u8]) -> u64 {
    let mut at = 16;
    let mut n = 0;
    while at + 4 <= msg.len() {
        let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
        if let Some(t) = ipfix::TEMPLATES.iter().find(|t| t.id == id) {
            n += ((len.saturating_sub(4)) / t.record_len()) as u64;
        }
        at += len.max(4);
    }
    n
}

/// The first failure toward a destination in a batch is logged; the
/// counters have the rest.
fn note_failure(what: &str, to: SocketAddr, e: &io::Error, nth: u64) {
    if nth == 1 {
        warn!("export: cannot send {what} to {to}: {e}");
    }
}

fn export_secs() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// One unconnected UDP socket per address family, opened when first
/// needed: an unconnected socket is not told of ICMP errors, so a
/// collector that is down costs its datagrams and nothing else.
#[derive(Default)]
struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Sockets {
    fn send(&mut self, msg: &[u8], to: SocketAddr) -> io::Result<()> {
        let slot = if to.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if slot.is_none() {
            let any: SocketAddr = if to.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(any)?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
            *slot = Some(sock);
        }
        let sock = slot.as_ref().expect("opened above");
        let n = sock.send_to(msg, to)?;
        if n != msg.len() {
            return Err(io::Error::other("datagram cut short"));
        }
        Ok(())
    }
}

enum Command {
    Retarget(Targets),
}

/// Changes the running export: what a reload holds.
#[derive(Clone)]
pub struct Control {
    commands: mpsc::Sender<Command>,
    wake: Arc<UnixDatagram>,
    counters: Arc<Counters>,
    current: Arc<Mutex<Targets>>,
}

impl Control {
    /// Re-targets the export; `None` when `targets` are what it has.
    /// Returns what changed, for the reload's line.
    pub fn retarget(&self, targets: Targets) -> Option<String> {
        let mut current = lock(&self.current);
        if *current == targets {
            return None;
        }
        *current = targets.clone();
        let line = format!("compliance events now {}", targets.describe());
        // A thread that is gone has nothing to re-target.
        if self.commands.send(Command::Retarget(targets)).is_ok() {
            let _ = self.wake.send(&[1]);
        }
        Some(line)
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }
}

/// The export thread; dropping it stops the thread after a last drain.
pub struct Export {
    control: Control,
    thread: Option<thread::JoinHandle<()>>,
}

impl Export {
    /// Starts reading `map` (the loaded object's NAT_EVENTS) on a thread of
    /// its own and sending to `targets`.
    pub fn start(map: Map, targets: Targets) -> Result<Self> {
        let ring: RingBuf<MapData> = map.try_into().context("event ring buffer")?;
        let counters = Arc::new(Counters::default());
        let (wake, woken) =
            UnixDatagram::pair().context("cannot open the export's control socket")?;
        woken
            .set_nonblocking(true)
            .context("cannot open the export's control socket")?;
        let (commands, received) = mpsc::channel();
        let thread = {
            let (targets, counters) = (targets.clone(), Arc::clone(&counters));
            thread::Builder::new()
                .name("nat-export".into())
                .spawn(move || {
                    // Here, not on the caller's thread: it sends the templates.
                    let exporters = Exporters::new(targets, counters);
                    run(ring, &woken, &received, exporters);
                })
                .context("cannot start the export thread")?
        };
        Ok(Self {
            control: Control {
                commands,
                wake: Arc::new(wake),
                counters,
                current: Arc::new(Mutex::new(targets)),
            },
            thread: Some(thread),
        })
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // A zero byte, not a closed channel: the reload thread may still
        // hold a Control.
        if let Some(thread) = self.thread.take() {
            let _ = self.control.wake.send(&[0]);
            let _ = thread.join();
        }
    }
}

fn run(
    mut ring: RingBuf<MapData>,
    woken: &UnixDatagram,
    commands: &mpsc::Receiver<Command>,
    mut exporters: Exporters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let timeout = exporters.next_tick().map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now());
            // Rounded up: a deadline less than a millisecond away is not a
            // zero timeout, which would spin until it passes.
            let ms = left.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        });
        let stop = match wait(&ring, woken, timeout) {
            Ok(wake) => wake.stop,
            Err(e) => {
                warn!("export: poll: {e}; stopping the export");
                true
            }
        };
        for command in commands.try_iter() {
            match command {
                Command::Retarget(t) => {
                    log::info!("export: compliance events {}", t.describe());
                    exporters.retarget(t);
                }
            }
        }
        drain(&mut ring, &mut batch, &mut exporters);
        exporters.tick(Instant::now());
        if stop {
            return;
        }
    }
}

struct Wake {
    stop: bool,
}

/// Sleeps until the ring buffer has data, the control socket a byte, or
/// `timeout` passes; a zero byte on the control socket is the stop.
fn wait(ring: &RingBuf<MapData>, woken: &UnixDatagram, timeout: PollTimeout) -> io::Result<Wake> {
    let ring_fd: BorrowedFd<'_> = ring.as_fd();
    let mut fds = [
        PollFd::new(ring_fd, PollFlags::POLLIN),
        PollFd::new(woken.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    let mut stop = false;
    let mut byte = [0u8; 1];
    loop {
        match woken.recv(&mut byte) {
            Ok(1) => stop |= byte[0] == 0,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // The other end is gone with the whole Export.
            Err(_) => {
                stop = true;
                break;
            }
        }
    }
    Ok(Wake { stop })
}

/// Reads everything the ring buffer holds and exports it, [`BATCH`]
/// events at a time.
fn drain(ring: &mut RingBuf<MapData>, batch: &mut Vec<Event>, exporters: &mut Exporters) {
    loop {
        let clock = WallClock::now();
        let mut bad = 0;
        while batch.len() < BATCH {
            let Some(item) = ring.next() else { break };
            match Event::parse(&item, &clock) {
                Some(ev) => batch.push(ev),
                None => bad += 1,
            }
        }
        let counters = &exporters.counters;
        counters
            .read
            .fetch_add(batch.len() as u64 + bad, Ordering::Relaxed);
        if bad > 0 {
            counters.unreadable.fetch_add(bad, Ordering::Relaxed);
            warn!(
                "export: {bad} unreadable event records skipped (a datapath newer than this daemon?)"
            );
        }
        if batch.is_empty() {
            return;
        }
        let full = batch.len() == BATCH;
        exporters.export(batch);
        batch.clear();
        if !full {
            return;
        }
    }
}
