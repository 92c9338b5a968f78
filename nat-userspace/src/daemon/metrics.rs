//! `nat load --metrics ADDR:PORT`: Prometheus metrics at `/metrics`.
//!
//! Counters, the probe histogram and the blocks in use per external
//! address are read at scrape time (a few dozen array lookups). Everything
//! derived from the session, cooldown and host-block tables costs a read of
//! every entry, so a background thread recomputes it every
//! `--metrics-interval-ms` and scrapes serve the last snapshot: a
//! scrape answers in well under 100 ms however many sessions there are. The
//! HTTP server runs on a thread of its own, so neither a snapshot nor any
//! work of the daemon's loop can delay it.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Arc, Mutex, RwLock, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use log::warn;
use nat_common::{
    config::allocation,
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session},
    names::{LAYOUT_VERSION, MAP_POOL},
    probe::probe_bucket_label,
};
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

use crate::{
    daemon::export,
    datapath::{
        ownership,
        pins::PinDir,
        pressure::{PressureRow, port_pressure},
        tables::{SessionView, Tables, boot_ns, endpoint, proto_name},
    },
};

/// The metrics the daemon feeds (sweep durations); the server and the
/// snapshot thread stop when it is dropped.
pub struct Metrics {
    shared: Arc<Shared>,
    _stop_snapshots: mpsc::Sender<()>,
    _stop_server: tokio::sync::oneshot::Sender<()>,
}

struct Shared {
    /// Handles of our own: the daemon's loop never waits for a scrape.
    live: Mutex<Tables>,
    /// The compliance export's counts.
    export: Arc<export::Counters>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    sweeps: Histogram,
}

/// What a read of the whole tables gave.
#[derive(Debug, Default)]
struct Snapshot {
    /// (protocol, state) -> sessions.
    sessions: BTreeMap<(&'static str, &'static str), u64>,
    /// protocol -> keys cooling.
    cooling: BTreeMap<&'static str, u64>,
    /// map name -> (entries, capacity).
    maps: BTreeMap<String, (u64, u64)>,
    top: Vec<PressureRow>,
    /// Hosts holding `max-blocks-per-host` blocks (allocation blocks only).
    hosts_at_block_limit: Option<u64>,
    took: Duration,
}

impl Metrics {
    /// Starts serving when `--metrics` was given; fails at once if the
    /// address cannot be bound. `export`: the compliance export's counts.
    pub fn start(
        flags: &crate::cli::MetricsFlags,
        pins: &PinDir,
        export: Arc<export::Counters>,
    ) -> Result<Option<Self>> {
        let Some(addr) = flags.metrics else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for --metrics"))?;
        listener.set_nonblocking(true)?;
        let sweeps = Histogram::with_opts(
            HistogramOpts::new(
                "nat_sweep_duration_seconds",
                "Time one sweep over the session and cooldown tables took.",
            )
            .buckets(prometheus::exponential_buckets(0.001, 4.0, 9)?),
        )?;
        let shared = Arc::new(Shared {
            live: Mutex::new(Tables::open(pins)?),
            export,
            snapshot: RwLock::new(None),
            sweeps,
        });
        let (stop_snapshots, stopped) = mpsc::channel();
        let interval = Duration::from_millis(flags.metrics_interval_ms);
        let top = flags.metrics_top as usize;
        let tables = Tables::open(pins)?;
        let pins = pins.clone();
        let for_snapshots = shared.clone();
        std::thread::Builder::new()
            .name("nat-metrics-snapshot".into())
            .spawn(move || {
                snapshots(&for_snapshots, &tables, &pins, top, interval, &stopped);
            })
            .context("cannot start the metrics snapshot thread")?;
        let (stop_server, stop) = tokio::sync::oneshot::channel();
        let for_server = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the metrics runtime")?;
        std::thread::Builder::new()
            .name("nat-metrics".into())
            .spawn(move || runtime.block_on(serve(listener, for_server, stop)))
            .context("cannot start the metrics thread")?;
        log::info!("metrics at http://{addr}/metrics");
        Ok(Some(Self {
            shared,
            _stop_snapshots: stop_snapshots,
            _stop_server: stop_server,
        }))
    }

    /// Records how long one expiry sweep took.
    pub fn observe_sweep(&self, took: Duration) {
        self.shared.sweeps.observe(took.as_secs_f64());
    }
}

fn snapshots(
    shared: &Shared,
    tables: &Tables,
    pins: &PinDir,
    top: usize,
    interval: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    // Reading a million sessions is the slowest thing the daemon does; it
    // yields the CPU to the server thread and the datapath's control loop.
    // SAFETY: setpriority(2) on the calling thread (Linux nice values are per thread).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5) } != 0 {
        warn!("metrics: cannot lower the snapshot thread's priority");
    }
    let mut failing = false;
    loop {
        match Snapshot::read(tables, pins, top) {
            Ok(s) => {
                failing = false;
                *shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(s));
            }
            Err(e) if !failing => {
                failing = true;
                warn!("metrics: {e:#}");
            }
            Err(_) => {}
        }
        if !matches!(
            stopped.recv_timeout(interval),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
    }
}

impl Snapshot {
    fn read(tables: &Tables, pins: &PinDir, top: usize) -> Result<Self> {
        let started = Instant::now();
        let now = boot_ns();
        let fwd = tables.forward_entries()?;
        let rev: Vec<(FlowKey, Session)> = tables.reverse_entries()?;
        // Only a TCP session's state depends on its reverse entry, so only
        // those are joined: a table of UDP flows costs no hash map at all.
        let tcp_rev: std::collections::HashMap<FlowKey, Session> = rev
            .iter()
            .filter(|(k, _)| k.proto == PROTO_TCP)
            .copied()
            .collect();
        let mut s = Snapshot::default();
        for (key, f) in &fwd {
            let rev = (key.proto == PROTO_TCP)
                .then(|| tcp_rev.get(&key.translated(f.addr, f.port)))
                .flatten();
            let view = SessionView::new(key, f, rev);
            *s.sessions
                .entry((view.proto_name(), view.state.name()))
                .or_default() += 1;
        }
        drop(tcp_rev);
        let cooling = tables.cooling(now)?;
        for (k, _) in &cooling {
            *s.cooling.entry(proto_name(k.proto)).or_default() += 1;
        }
        let pool = tables.pool()?;
        let cfg = tables.config()?;
        if cfg.allocation == allocation::BLOCKS {
            s.hosts_at_block_limit = Some(ownership::hosts_at_block_limit(
                &tables.host_blocks()?,
                &cfg,
            ));
        }
        let mut per_address: BTreeMap<u32, usize> = BTreeMap::new();
        s.top = port_pressure(rev.iter().map(|(k, _)| *k), &cooling, &pool)
            .into_iter()
            .filter(|row| {
                let n = per_address.entry(row.external).or_default();
                *n += 1;
                *n <= top
            })
            .collect();
        for name in crate::datapath::pins::PINNED_MAPS {
            let path = pins.path(name);
            let Ok(data) = MapData::from_pin(&path) else {
                continue;
            };
            let info = data.info()?;
            let capacity = u64::from(info.max_entries());
            let entries = match Map::from_map_data(data)? {
                Map::Array(_) | Map::PerCpuArray(_) if name == MAP_POOL => pool.len() as u64,
                Map::Array(_) | Map::PerCpuArray(_) => capacity,
                Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) => count_keys(&d)?,
                _ => continue,
            };
            s.maps.insert(name.to_owned(), (entries, capacity));
        }
        s.took = started.elapsed();
        Ok(s)
    }
}

/// Keys of a map, by walking BPF_MAP_GET_NEXT_KEY with the map's own key
/// size (aya iterates typed maps only).
fn count_keys(map: &MapData) -> Result<u64> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let size = map.info()?.key_size() as usize;
    let fd = map.fd().as_fd().as_raw_fd();
    let (mut key, mut next) = (vec![0u8; size], vec![0u8; size]);
    let mut count = 0u64;
    let mut first = true;
    loop {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: bpf(2) reads `attr` and writes key_size bytes to `next`,
        // which has that size; `key` has it too.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const Attr,
                size_of::<Attr>() as u32,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(count);
            }
            return Err(e).context("cannot walk a map's keys");
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&shared, &req)) }
            });
            // A client that goes away mid-request is no concern of ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match render(shared) {
        Ok(text) => reply(StatusCode::OK, TextEncoder::new().format_type(), text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e:#}\n"),
        ),
    }
}

/// Outcome and reason of a datapath counter, from its name: `translated_*`,
/// `pass_*` and `drop_*` are packet outcomes, the rest are events.
pub fn counter_labels(c: Counter) -> (&'static str, &'static str) {
    let name = c.name();
    for outcome in ["translated", "pass", "drop"] {
        if let Some(reason) = name.strip_prefix(outcome).and_then(|r| r.strip_prefix('_')) {
            return (outcome, reason);
        }
    }
    ("event", name)
}

fn render(shared: &Shared) -> Result<String> {
    let registry = Registry::new();
    let add = |c: Box<dyn Collector>| registry.register(c).context("metric registration");
    let (counters, probes, cfg, blocks) = {
        let tables = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = tables.config()?;
        // A count per pool address the datapath keeps: a few array lookups.
        let blocks = if cfg.allocation == allocation::BLOCKS {
            ownership::block_usage(&tables.block_use()?, &cfg, &tables.pool()?)
        } else {
            Vec::new()
        };
        (tables.counters()?, tables.probe_histogram()?, cfg, blocks)
    };

    let datapath = IntCounterVec::new(
        Opts::new(
            "nat_datapath_events_total",
            "Packets by outcome (translated, pass, drop) and events of the datapath, summed over CPUs; `nat stats` explains each reason.",
        ),
        &["outcome", "reason"],
    )?;
    for (c, v) in &counters {
        let (outcome, reason) = counter_labels(*c);
        datapath.with_label_values(&[outcome, reason]).inc_by(*v);
    }
    add(Box::new(datapath))?;

    let allocations = IntCounterVec::new(
        Opts::new(
            "nat_allocation_probes_total",
            "Allocations by the number of candidate ports probed before one was free (buckets of the datapath's histogram; fallback: a cooling port was taken).",
        ),
        &["probes"],
    )?;
    for (b, v) in probes.iter().enumerate() {
        allocations
            .with_label_values(&[probe_bucket_label(b as u32)])
            .inc_by(*v);
    }
    add(Box::new(allocations))?;

    let pool = IntGaugeVec::new(
        Opts::new(
            "nat_pool_addresses",
            "External addresses new flows are allocated on.",
        ),
        &[],
    )?;
    pool.with_label_values::<&str>(&[])
        .set(i64::from(cfg.pool_len));
    add(Box::new(pool))?;

    if cfg.allocation == allocation::BLOCKS {
        add_blocks(&add, &blocks)?;
    }

    let build = IntGaugeVec::new(
        Opts::new(
            "nat_build_info",
            "Version of the running nat binary and its pin layout; always 1.",
        ),
        &["version", "layout"],
    )?;
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &LAYOUT_VERSION.to_string()])
        .set(1);
    add(Box::new(build))?;
    add(Box::new(shared.sweeps.clone()))?;
    add_export(&add, &shared.export)?;

    let snapshot = shared
        .snapshot
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(s) = snapshot {
        add_snapshot(&add, &s)?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// The compliance export's counters.
fn add_export(add: &dyn Fn(Box<dyn Collector>) -> Result<()>, c: &export::Counters) -> Result<()> {
    let read = IntCounterVec::new(
        Opts::new(
            "nat_events_read_total",
            "Compliance events read from the datapath's event ring buffer (those it could not hold are nat_datapath_events_total{reason=\"events_dropped\"}).",
        ),
        &[],
    )?;
    read.with_label_values::<&str>(&[]).inc_by(c.read());
    add(Box::new(read))?;
    let unreadable = IntCounterVec::new(
        Opts::new(
            "nat_events_unreadable_total",
            "Event records skipped: too short, or of a kind this daemon does not know.",
        ),
        &[],
    )?;
    unreadable
        .with_label_values::<&str>(&[])
        .inc_by(c.unreadable());
    add(Box::new(unreadable))?;
    let labels = ["exporter", "destination"];
    let exported = IntCounterVec::new(
        Opts::new(
            "nat_events_exported_total",
            "Compliance events sent, by exporter (ipfix, syslog) and destination (collector or server).",
        ),
        &labels,
    )?;
    let errors = IntCounterVec::new(
        Opts::new(
            "nat_export_errors_total",
            "IPFIX messages or syslog lines the socket refused, by exporter and destination.",
        ),
        &labels,
    )?;
    for d in c.destinations() {
        let to = d.destination.to_string();
        let values = [d.exporter, to.as_str()];
        exported.with_label_values(&values).inc_by(d.exported);
        errors.with_label_values(&values).inc_by(d.errors);
    }
    add(Box::new(exported))?;
    add(Box::new(errors))
}

/// Blocks in use and free per external address: one series each per pool
/// address, at most [`nat_common::config::MAX_POOL`].
fn add_blocks(
    add: &dyn Fn(Box<dyn Collector>) -> Result<()>,
    usage: &[ownership::BlockUsage],
) -> Result<()> {
    let in_use = IntGaugeVec::new(
        Opts::new(
            "nat_blocks_in_use",
            "Port blocks held by internal hosts on each external address (allocation blocks).",
        ),
        &["external"],
    )?;
    let free = IntGaugeVec::new(
        Opts::new(
            "nat_blocks_free",
            "Port blocks not held on each external address: whole blocks of the port range less those in use (allocation blocks).",
        ),
        &["external"],
    )?;
    for u in usage {
        let external = u.external.to_string();
        in_use
            .with_label_values(&[external.as_str()])
            .set(u.in_use as i64);
        free.with_label_values(&[external.as_str()])
            .set(u.free as i64);
    }
    add(Box::new(in_use))?;
    add(Box::new(free))
}

fn add_snapshot(add: &dyn Fn(Box<dyn Collector>) -> Result<()>, s: &Snapshot) -> Result<()> {
    let gauge =
        |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
    let sessions = gauge(
        "nat_sessions",
        "Sessions by protocol and state.",
        &["protocol", "state"],
    )?;
    for ((proto, state), n) in &s.sessions {
        sessions.with_label_values(&[*proto, *state]).set(*n as i64);
    }
    add(Box::new(sessions))?;
    let cooling = gauge(
        "nat_cooling_keys",
        "Keys (protocol, external address and port, destination) that are cooling: not handed out again until their cooldown ends.",
        &["protocol"],
    )?;
    for (proto, n) in &s.cooling {
        cooling.with_label_values(&[*proto]).set(*n as i64);
    }
    add(Box::new(cooling))?;
    let entries = gauge("nat_map_entries", "Entries in each BPF map.", &["map"])?;
    let capacity = gauge(
        "nat_map_capacity",
        "Capacity (max entries) of each BPF map.",
        &["map"],
    )?;
    for (name, (n, cap)) in &s.maps {
        entries.with_label_values(&[name.as_str()]).set(*n as i64);
        capacity
            .with_label_values(&[name.as_str()])
            .set(*cap as i64);
    }
    add(Box::new(entries))?;
    add(Box::new(capacity))?;
    let labels = ["external", "protocol", "destination"];
    let in_use = gauge(
        "nat_destination_ports_in_use",
        "External ports held by sessions toward a destination, for the destinations of each external address with the most ports in use plus cooling (--metrics-top).",
        &labels,
    )?;
    let cooling_ports = gauge(
        "nat_destination_ports_cooling",
        "External ports cooling toward a destination (not held by a session), for the same destinations as nat_destination_ports_in_use.",
        &labels,
    )?;
    let range = gauge(
        "nat_destination_ports_capacity",
        "Ports of the external address's range, for the same destinations as nat_destination_ports_in_use.",
        &labels,
    )?;
    for row in &s.top {
        let external = endpoint(row.external, 0).ip().to_string();
        let destination = endpoint(row.daddr, row.dport).to_string();
        let values = [
            external.as_str(),
            proto_name(row.proto),
            destination.as_str(),
        ];
        in_use.with_label_values(&values).set(row.in_use as i64);
        cooling_ports
            .with_label_values(&values)
            .set(row.cooling as i64);
        range.with_label_values(&values).set(row.capacity as i64);
    }
    add(Box::new(in_use))?;
    add(Box::new(cooling_ports))?;
    add(Box::new(range))?;
    if let Some(n) = s.hosts_at_block_limit {
        let at_limit = IntGaugeVec::new(
            Opts::new(
                "nat_hosts_at_block_limit",
                "Internal hosts holding max-blocks-per-host blocks: a new flow toward a destination their blocks have no free port for is refused (allocation blocks).",
            ),
            &[],
        )?;
        at_limit.with_label_values::<&str>(&[]).set(n as i64);
        add(Box::new(at_limit))?;
    }
    let took = prometheus::Gauge::with_opts(Opts::new(
        "nat_metrics_snapshot_duration_seconds",
        "Time the last read of the session and cooldown tables for these metrics took.",
    ))?;
    took.set(s.took.as_secs_f64());
    add(Box::new(took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_outcome_and_reason() {
        for c in Counter::ALL {
            let (outcome, reason) = counter_labels(*c);
            assert!(!reason.is_empty());
            match outcome {
                "event" => assert_eq!(reason, c.name()),
                o => assert_eq!(format!("{o}_{reason}"), c.name()),
            }
        }
        assert_eq!(counter_labels(Counter::NoSession), ("drop", "no_session"));
        assert_eq!(counter_labels(Counter::XlateOut), ("translated", "out"));
        assert_eq!(counter_labels(Counter::NotOursIn), ("pass", "no_session"));
        assert_eq!(
            counter_labels(Counter::Opened),
            ("event", "sessions_opened")
        );
    }
}
