//! What the bench measured: the table, the micro-figures, the targets, JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::cpu::{FOREIGN_LIMIT, Window};
use super::events::Delta;
use super::hosts;
use super::micro::{Alloc, MapMemory, Sweep};
use super::modes::{HOSTS_BLOCK_SIZE, HOSTS_MODES, MODES, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    Tcp1,
    Tcp4,
    UdpPps,
    CpuPerPacket,
    ConnRate,
    ConnP50,
    ConnP99,
    ServerFirstRate,
    ServerFirstP50,
    ServerFirstP99,
}

pub const FIGURES: [Figure; 10] = [
    Figure::Tcp1,
    Figure::Tcp4,
    Figure::UdpPps,
    Figure::CpuPerPacket,
    Figure::ConnRate,
    Figure::ConnP50,
    Figure::ConnP99,
    Figure::ServerFirstRate,
    Figure::ServerFirstP50,
    Figure::ServerFirstP99,
];

/// The mode the targets are judged on.
pub const JUDGED: Mode = Mode::NatDefault;

impl Figure {
    pub fn label(self) -> &'static str {
        match self {
            Figure::Tcp1 => "TCP 1 stream, Gbit/s",
            Figure::Tcp4 => "TCP 4 streams, Gbit/s",
            Figure::UdpPps => "UDP 64 B, Mpps delivered",
            Figure::CpuPerPacket => "CPU per packet, ns",
            Figure::ConnRate => "new TCP conn/s, spread",
            Figure::ConnP50 => "  connect p50, ms",
            Figure::ConnP99 => "  connect p99, ms",
            Figure::ServerFirstRate => "new TCP conn/s, server-first",
            Figure::ServerFirstP50 => "  connect p50, ms",
            Figure::ServerFirstP99 => "  connect p99, ms",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Figure::Tcp1 => "tcp_1_stream_gbps",
            Figure::Tcp4 => "tcp_4_streams_gbps",
            Figure::UdpPps => "udp_pps",
            Figure::CpuPerPacket => "cpu_ns_per_packet",
            Figure::ConnRate => "tcp_conn_per_s",
            Figure::ConnP50 => "tcp_connect_p50_ms",
            Figure::ConnP99 => "tcp_connect_p99_ms",
            Figure::ServerFirstRate => "server_first_conn_per_s",
            Figure::ServerFirstP50 => "server_first_connect_p50_ms",
            Figure::ServerFirstP99 => "server_first_connect_p99_ms",
        }
    }

    /// A value as the table shows it (pps in millions).
    pub fn format(self, v: f64) -> String {
        if !v.is_finite() {
            return "-".to_owned();
        }
        match self {
            Figure::Tcp1 | Figure::Tcp4 => format!("{v:.2}"),
            Figure::UdpPps => format!("{:.3}", v / 1e6),
            Figure::CpuPerPacket | Figure::ConnRate | Figure::ServerFirstRate => format!("{v:.0}"),
            Figure::ConnP50 | Figure::ConnP99 | Figure::ServerFirstP50 | Figure::ServerFirstP99 => {
                format!("{v:.2}")
            }
        }
    }
}

/// Median, min and max of some samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median [min–max]`, or the value alone when there is only one.
    fn show(&self, fmt: impl Fn(f64) -> String) -> String {
        if self.n == 1 {
            fmt(self.median)
        } else {
            format!("{} [{}–{}]", fmt(self.median), fmt(self.min), fmt(self.max))
        }
    }

    fn to_json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max, "n": self.n })
    }
}

/// One measurement as kept after the noise guard.
#[derive(Debug, Clone)]
pub struct Sample {
    pub value: f64,
    pub rep: usize,
    /// Share of the CPU other work took during the kept attempt.
    pub noise: f64,
    pub attempts: usize,
    pub clean: bool,
    pub window: Window,
    pub detail: Value,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "value": self.value,
            "repetition": self.rep + 1,
            "attempts": self.attempts,
            "clean": self.clean,
            "other_load_share": self.noise,
            "cpu": self.window.to_json(),
            "detail": self.detail,
        })
    }
}

/// A micro-figure run, kept after the noise guard.
#[derive(Debug, Clone)]
pub struct Kept<T> {
    pub value: T,
    pub noise: f64,
    pub attempts: usize,
    pub clean: bool,
}

/// BPF program run time from one stats pass.
#[derive(Debug, Clone, Copy)]
pub struct BpfRun {
    pub egress_ns: f64,
    pub egress_runs: u64,
    pub ingress_ns: f64,
    pub ingress_runs: u64,
    /// The fast path on the internal interface; NaN when it did not run.
    pub fast_ns: f64,
    pub fast_runs: u64,
    /// Hairpinning on the internal interface; NaN when it did not run.
    pub hairpin_ns: f64,
    pub hairpin_runs: u64,
}

pub struct Config {
    pub quick: bool,
    pub reps: usize,
    pub tcp_secs: u32,
    pub udp_secs: f64,
    pub conn_secs: f64,
    pub stats_secs: f64,
    pub cpus: usize,
    pub load_cpu: usize,
    pub server_cpu: usize,
    /// `nat load` arguments per NAT mode (after --iface, --external, --internal).
    pub nat_args: Vec<(Mode, String)>,
    pub scale_capacity: u64,
    pub scale_reps: usize,
    pub server_first_budget: u64,
    pub alloc_attempts: u32,
    /// Seconds the release build right before the run took (0: none was timed).
    pub build_s: f64,
}

/// What the server-first runs of one mode added up to.
#[derive(Debug, Default)]
pub struct ServerFirstTally {
    pub failures: BTreeMap<String, u64>,
    /// The NAT's `collisions` counter; None for the modes without one.
    pub collisions: Option<u64>,
    pub paws_timewait: u64,
    /// The NAT's counters and probe buckets that moved, summed over the runs.
    pub nat_counters: BTreeMap<String, u64>,
}

impl ServerFirstTally {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The NAT's drop counters summed (`drop_*`, `evicted_openings`, `rejected`).
    pub fn nat_drops(&self) -> u64 {
        self.nat_counters
            .iter()
            .filter(|(name, _)| {
                name.starts_with("drop_") || *name == "evicted_openings" || *name == "rejected"
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// The logged mode's export of the deletions after a run.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delta: Delta,
    /// The most events exported per second over one poll interval.
    pub peak_exported_per_s: f64,
    /// `events_dropped` over the wait: deletions the ring buffer could not hold.
    pub dropped: u64,
}

/// The hosts runs: the server-first load from [`hosts::HOSTS`] hosts in [`HOSTS_MODES`].
#[derive(Default)]
pub struct HostsRuns {
    pub samples: BTreeMap<(Mode, Figure), Vec<Sample>>,
    pub tally: BTreeMap<Mode, ServerFirstTally>,
    /// The daemon's work over each kept run, per NAT mode.
    pub daemon: BTreeMap<Mode, Vec<Delta>>,
    /// Port blocks held right after each run, in the modes that took any.
    pub blocks_in_use: BTreeMap<Mode, Vec<u64>>,
    /// The logged mode's deletions after each of its runs.
    pub drains: Vec<Drain>,
}

impl HostsRuns {
    fn summary(&self, mode: Mode, figure: Figure) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .get(&(mode, figure))?
            .iter()
            .map(|s| s.value)
            .collect();
        Summary::of(&values)
    }

    fn all_clean(&self, mode: Mode, figure: Figure) -> bool {
        self.samples
            .get(&(mode, figure))
            .is_none_or(|s| s.iter().all(|s| s.clean))
    }

    /// `of` / `over` per repetition, as [`Results::ratio`].
    fn ratio(&self, figure: Figure, of: Mode, over: Mode) -> Option<f64> {
        let nat = self.samples.get(&(of, figure))?;
        let base = self.samples.get(&(over, figure))?;
        let ratios: Vec<f64> = nat
            .iter()
            .filter_map(|n| {
                let b = base.iter().find(|b| b.rep == n.rep)?;
                (b.value > 0.0).then(|| n.value / b.value)
            })
            .collect();
        Summary::of(&ratios).map(|s| s.median)
    }

    fn daemon_summary(&self, mode: Mode, f: impl Fn(&Delta) -> f64) -> Option<Summary> {
        let values: Vec<f64> = self.daemon.get(&mode)?.iter().map(f).collect();
        Summary::of(&values)
    }

    fn drain_summary(&self, f: impl Fn(&Drain) -> f64) -> Option<Summary> {
        let values: Vec<f64> = self.drains.iter().map(f).collect();
        Summary::of(&values)
    }
}

#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<(Mode, Figure), Vec<Sample>>,
    pub conn_failures: BTreeMap<Mode, BTreeMap<String, u64>>,
    pub conn_slow: BTreeMap<Mode, u64>,
    pub alloc: BTreeMap<u32, Vec<Kept<Alloc>>>,
    pub sweep: BTreeMap<u32, Vec<Kept<Sweep>>>,
    pub sweep_skipped: Vec<u32>,
    pub server_first: BTreeMap<Mode, ServerFirstTally>,
    /// (mode, figure, live sessions) -> samples of the scale runs.
    pub scale: BTreeMap<(Mode, Figure, u32), Vec<Sample>>,
    pub scale_skipped: Vec<u32>,
    pub map_memory: Option<MapMemory>,
    pub bpf: Vec<BpfRun>,
    pub hosts: HostsRuns,
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(&mut self, mode: Mode, figure: Figure, sample: Sample) {
        self.samples.entry((mode, figure)).or_default().push(sample);
    }

    pub fn add_scale(&mut self, mode: Mode, figure: Figure, sessions: u32, sample: Sample) {
        self.scale
            .entry((mode, figure, sessions))
            .or_default()
            .push(sample);
    }

    /// The scale points measured, in order.
    pub fn scale_points(&self) -> Vec<u32> {
        let mut points: Vec<u32> = self.scale.keys().map(|k| k.2).collect();
        points.sort_unstable();
        points.dedup();
        points
    }

    pub fn scale_summary(&self, mode: Mode, figure: Figure, sessions: u32) -> Option<Summary> {
        let values: Vec<f64> = self
            .scale
            .get(&(mode, figure, sessions))?
            .iter()
            .map(|s| s.value)
            .collect();
        Summary::of(&values)
    }

    /// A figure at `sessions` over the same figure at the smallest point.
    pub fn scale_ratio(&self, mode: Mode, figure: Figure, sessions: u32) -> Option<f64> {
        let first = *self.scale_points().first()?;
        let base = self.scale_summary(mode, figure, first)?.median;
        let at = self.scale_summary(mode, figure, sessions)?.median;
        (base > 0.0).then(|| at / base)
    }

    fn scale_clean(&self, mode: Mode, figure: Figure) -> bool {
        self.scale
            .iter()
            .filter(|((m, f, _), _)| *m == mode && *f == figure)
            .all(|(_, s)| s.iter().all(|s| s.clean))
    }

    pub fn summary(&self, mode: Mode, figure: Figure) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .get(&(mode, figure))?
            .iter()
            .map(|s| s.value)
            .collect();
        Summary::of(&values)
    }

    fn all_clean(&self, mode: Mode, figure: Figure) -> bool {
        self.samples
            .get(&(mode, figure))
            .is_none_or(|s| s.iter().all(|s| s.clean))
    }

    /// `of` / `over`, per repetition (all modes of a repetition run back to
    /// back, so drift of the machine's speed cancels out).
    fn paired_ratios(&self, figure: Figure, of: Mode, over: Mode) -> Option<Summary> {
        let nat = self.samples.get(&(of, figure))?;
        let base = self.samples.get(&(over, figure))?;
        let ratios: Vec<f64> = nat
            .iter()
            .filter_map(|n| {
                let b = base.iter().find(|b| b.rep == n.rep)?;
                (b.value > 0.0).then(|| n.value / b.value)
            })
            .collect();
        Summary::of(&ratios)
    }

    /// The median of the per-repetition ratios.
    pub fn ratio(&self, figure: Figure, of: Mode, over: Mode) -> Option<f64> {
        self.paired_ratios(figure, of, over).map(|s| s.median)
    }

    fn ratio_of_medians(&self, figure: Figure, of: Mode, over: Mode) -> Option<f64> {
        let nat = self.summary(of, figure)?.median;
        let base = self.summary(over, figure)?.median;
        (base > 0.0).then(|| nat / base)
    }

    fn failures(&self, mode: Mode) -> u64 {
        self.conn_failures
            .get(&mode)
            .map_or(0, |kinds| kinds.values().sum())
    }

    fn alloc_summary(&self, occupancy: u32, f: impl Fn(&Alloc) -> f64) -> Option<Summary> {
        let values: Vec<f64> = self
            .alloc
            .get(&occupancy)?
            .iter()
            .map(|k| f(&k.value))
            .collect();
        Summary::of(&values)
    }

    fn sweep_summary(&self, sessions: u32, f: impl Fn(&Sweep) -> f64) -> Option<Summary> {
        let values: Vec<f64> = self
            .sweep
            .get(&sessions)?
            .iter()
            .map(|k| f(&k.value))
            .collect();
        Summary::of(&values)
    }

    fn bpf_summary(&self, f: impl Fn(&BpfRun) -> f64) -> Option<Summary> {
        let values: Vec<f64> = self.bpf.iter().map(f).collect();
        Summary::of(&values)
    }
}

/// A target, judged on medians.
pub struct Target {
    pub name: &'static str,
    pub measured: String,
    /// None: not measured.
    pub met: Option<bool>,
    pub noisy: bool,
}

pub fn targets(r: &Results) -> Vec<Target> {
    let noisy = |figs: &[Figure], modes: &[Mode]| {
        figs.iter()
            .any(|&f| modes.iter().any(|&m| !r.all_clean(m, f)))
    };
    let not_measured = || "not measured".to_owned();
    let ratio_target = |name, figure, over, cmp: fn(f64) -> bool| {
        let ratio = r.ratio(figure, JUDGED, over);
        Target {
            name,
            measured: ratio.map_or_else(not_measured, |x| format!("{x:.3}x")),
            met: ratio.map(cmp),
            noisy: noisy(&[figure], &[JUDGED, over]),
        }
    };
    let mut out = vec![
        ratio_target(
            "UDP 64 B pps >= 1.3x nftables",
            Figure::UdpPps,
            Mode::Nftables,
            |x| x >= 1.3,
        ),
        ratio_target(
            "UDP 64 B pps >= 1.0x routing",
            Figure::UdpPps,
            Mode::Routing,
            |x| x >= 1.0,
        ),
    ];
    let nft = r.ratio(Figure::ServerFirstRate, JUDGED, Mode::Nftables);
    let routing = r.ratio(Figure::ServerFirstRate, JUDGED, Mode::Routing);
    let tally = r.server_first.get(&JUDGED);
    let failed = tally.map_or(0, ServerFirstTally::failed);
    let collisions = tally.and_then(|t| t.collisions);
    out.push(Target {
        name: "new TCP conn/s, server closes first, one destination: >= 1.25x nftables and >= 0.95x routing, zero failures, zero collisions",
        measured: match (nft, routing) {
            (Some(n), Some(rt)) => format!(
                "{n:.3}x nftables, {rt:.3}x routing, {failed} failures, {} collisions",
                collisions.map_or("?".to_owned(), |c| c.to_string())
            ),
            _ => not_measured(),
        },
        met: nft
            .zip(routing)
            .map(|(n, rt)| n >= 1.25 && rt >= 0.95 && failed == 0 && collisions == Some(0)),
        noisy: noisy(
            &[Figure::ServerFirstRate],
            &[JUDGED, Mode::Nftables, Mode::Routing],
        ),
    });
    out.push(ratio_target(
        "p99 connect time (server closes first) <= 1.2x routing",
        Figure::ServerFirstP99,
        Mode::Routing,
        |x| x <= 1.2,
    ));
    out.push(ratio_target(
        "CPU per forwarded packet <= 0.75x nftables",
        Figure::CpuPerPacket,
        Mode::Nftables,
        |x| x <= 0.75,
    ));
    out.push(ratio_target(
        "TCP throughput (1 stream) >= 0.97x routing",
        Figure::Tcp1,
        Mode::Routing,
        |x| x >= 0.97,
    ));
    out.push(ratio_target(
        "TCP throughput (4 streams) >= 0.97x routing",
        Figure::Tcp4,
        Mode::Routing,
        |x| x >= 0.97,
    ));
    let ours = r.scale_ratio(JUDGED, Figure::UdpPps, 1_000_000);
    let theirs = r.scale_ratio(Mode::Nftables, Figure::UdpPps, 1_000_000);
    out.push(Target {
        name: "with 1,000,000 live sessions: UDP pps >= 0.9x of the run with 1,000, and a larger ratio than nftables keeps",
        measured: match (ours, theirs) {
            (Some(o), Some(t)) => format!("{o:.3}x (nftables {t:.3}x)"),
            (Some(o), None) => format!("{o:.3}x (nftables not measured)"),
            _ if r.scale_skipped.contains(&1_000_000) => "not measured (--quick)".to_owned(),
            _ => not_measured(),
        },
        met: ours.zip(theirs).map(|(o, t)| o >= 0.9 && o > t),
        noisy: !r.scale_clean(JUDGED, Figure::UdpPps)
            || !r.scale_clean(Mode::Nftables, Figure::UdpPps),
    });
    let success = r.alloc_summary(95, |a| a.success_pct);
    let median = r.alloc_summary(95, |a| a.median_ns);
    out.push(Target {
        name: "allocation at 95% occupancy: >= 99.9% success, median < 5 us",
        measured: match (success, median) {
            (Some(s), Some(m)) => format!("{:.3}%, {:.0} ns", s.median, m.median),
            _ => "not measured".to_owned(),
        },
        met: success
            .zip(median)
            .map(|(s, m)| s.median >= 99.9 && m.median < 5000.0),
        noisy: r.alloc.get(&95).is_some_and(|k| k.iter().any(|k| !k.clean)),
    });
    let sweep_noisy = r
        .sweep
        .get(&1_000_000)
        .is_some_and(|k| k.iter().any(|k| !k.clean));
    let sweep_target = |name, f: fn(&Sweep) -> f64, limit: f64| {
        let s = r.sweep_summary(1_000_000, f);
        Target {
            name,
            measured: s.map_or_else(
                || {
                    if r.sweep_skipped.contains(&1_000_000) {
                        "not measured (--quick)".to_owned()
                    } else {
                        not_measured()
                    }
                },
                |s| format!("{:.3} s", s.median),
            ),
            met: s.map(|s| s.median < limit),
            noisy: sweep_noisy,
        }
    };
    out.push(sweep_target(
        "expiry: a sweep expiring 1,000,000 sessions < 1 s CPU",
        |x| x.expire_cpu_s,
        1.0,
    ));
    // Routine sweeps: the slower of busy sessions and quiet ones whose
    // liveness a sweep has proven before (a quiet session's full check
    // comes once per 10-17 s; its first is reported next to it).
    out.push(sweep_target(
        "expiry: a sweep of 1,000,000 live sessions expiring none < 0.2 s CPU",
        |x| x.scan_cpu_s.max(x.quiet_cpu_s),
        0.2,
    ));
    out
}

const CELL: usize = 22;
/// The row labels' column: the longest label and a space.
const LABEL: usize = 32;
/// The scale rows' labels: the mode's name and the figure's label.
const SCALE_LABEL: usize = 42;
/// The ratio columns: (of, over, heading).
const RATIOS: [(Mode, Mode, &str); 4] = [
    (JUDGED, Mode::Nftables, "dflt/nft"),
    (JUDGED, Mode::Routing, "dflt/rt"),
    (Mode::Nat, Mode::Nftables, "nat/nft"),
    (Mode::Nat, Mode::Routing, "nat/rt"),
];

/// The scale rows: per mode, each figure at every point, and its ratio to the first point.
fn render_scale(out: &mut String, r: &Results) {
    let points = r.scale_points();
    if points.is_empty() {
        return;
    }
    let mut header = format!("\n{:<SCALE_LABEL$}", "scale: live sessions before the run");
    for p in &points {
        let _ = write!(header, "{:<CELL$}", p.to_string());
    }
    for p in r.scale_skipped.iter().filter(|p| !points.contains(p)) {
        let _ = write!(header, "{:<CELL$}", format!("{p} (skipped)"));
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for mode in [Mode::Nftables, JUDGED] {
        for figure in [
            Figure::UdpPps,
            Figure::ServerFirstRate,
            Figure::ServerFirstP99,
        ] {
            let mut line = format!(
                "{:<SCALE_LABEL$}",
                format!("{} {}", mode.name(), figure.label().trim())
            );
            for &p in &points {
                let cell = match r.scale_summary(mode, figure, p) {
                    Some(s) => {
                        let mut c = s.show(|v| figure.format(v));
                        if let Some(x) = r.scale_ratio(mode, figure, p)
                            && p != points[0]
                        {
                            let _ = write!(c, " ({x:.2}x)");
                        }
                        c
                    }
                    None => "-".to_owned(),
                };
                let _ = write!(line, "{cell:<CELL$}");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let _ = writeln!(
        out,
        "(x): the figure over the same figure at {} live sessions.",
        points[0]
    );
}

/// The hosts runs: per mode, the server-first figures, what failed and
/// what the daemon did, and the logged mode's export.
fn render_hosts(out: &mut String, cfg: &Config, h: &HostsRuns) {
    if h.samples.is_empty() {
        return;
    }
    let mut header = format!(
        "\n{:<LABEL$}",
        format!("server-first, {} hosts", hosts::HOSTS)
    );
    for mode in HOSTS_MODES {
        let _ = write!(header, "{:<CELL$}", mode.name());
    }
    let _ = writeln!(out, "{}", header.trim_end());
    let mut row = |name: &str, cell: &dyn Fn(Mode) -> String| {
        let mut line = format!("{name:<LABEL$}");
        for mode in HOSTS_MODES {
            let _ = write!(line, "{:<CELL$}", cell(mode));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    };
    let mut any_unclean = false;
    for figure in [
        Figure::ServerFirstRate,
        Figure::ServerFirstP50,
        Figure::ServerFirstP99,
    ] {
        row(figure.label(), &|m| match h.summary(m, figure) {
            Some(s) => {
                let mut c = s.show(|v| figure.format(v));
                if !h.all_clean(m, figure) {
                    c.push('*');
                }
                c
            }
            None => "not measured".to_owned(),
        });
        any_unclean |= HOSTS_MODES.iter().any(|&m| !h.all_clean(m, figure));
    }
    row("  over nat-default (conn/s)", &|m| {
        h.ratio(Figure::ServerFirstRate, m, Mode::NatDefault)
            .map_or("-".to_owned(), |x| format!("{x:.2}x"))
    });
    let tally = |m: Mode| h.tally.get(&m);
    row("  failed", &|m| {
        tally(m).map_or("-".to_owned(), |t| t.failed().to_string())
    });
    row("  NAT drops", &|m| {
        tally(m)
            .filter(|_| m.is_nat())
            .map_or("-".to_owned(), |t| t.nat_drops().to_string())
    });
    row("  NAT collisions", &|m| {
        tally(m)
            .and_then(|t| t.collisions)
            .map_or("-".to_owned(), |c| c.to_string())
    });
    row("  PAWSTimewait", &|m| {
        tally(m).map_or("-".to_owned(), |t| t.paws_timewait.to_string())
    });
    row("  blocks in use after", &|m| {
        let values: Vec<f64> = h
            .blocks_in_use
            .get(&m)
            .map(|v| v.iter().map(|&b| b as f64).collect())
            .unwrap_or_default();
        Summary::of(&values).map_or("-".to_owned(), |s| s.show(|v| format!("{v:.0}")))
    });
    row("  daemon CPU, % of a CPU", &|m| {
        h.daemon_summary(m, |d| d.cpu_share() * 100.0)
            .map_or("-".to_owned(), |s| s.show(|v| format!("{v:.1}")))
    });
    let drops: BTreeMap<&str, u64> = h
        .tally
        .values()
        .flat_map(|t| t.nat_counters.iter())
        .filter(|(name, _)| name.starts_with("drop_"))
        .fold(BTreeMap::new(), |mut m, (name, n)| {
            *m.entry(name.as_str()).or_default() += n;
            m
        });
    for name in drops.keys() {
        row(&format!("    {name}"), &|m| {
            tally(m).filter(|_| m.is_nat()).map_or("-".to_owned(), |t| {
                t.nat_counters.get(*name).copied().unwrap_or(0).to_string()
            })
        });
    }
    if any_unclean {
        let _ = writeln!(
            out,
            "* at least one run could not be measured cleanly (see notes)"
        );
    }
    let _ = writeln!(
        out,
        "Hosts runs: the server-first load above (one server port, server closes first, {} connections at most, {:.0} s) from {} internal hosts, {} addresses of {} (local in the client namespace, routed to it from the nat namespace), connection n from host n mod {}; every mode gets --internal {} (nftables: saddr {}). nat-blocks: blocks of {HOSTS_BLOCK_SIZE} (1,008 on the one external address, one per host); nat-deterministic: {} ports per host (64,512 / the 1,024 addresses of the prefix). The NAT daemon's CPU: utime + stime of its process over the run.",
        cfg.server_first_budget,
        cfg.conn_secs,
        hosts::HOSTS,
        hosts::HOSTS,
        hosts::PREFIX,
        hosts::HOSTS,
        hosts::PREFIX,
        hosts::PREFIX,
        64_512 / 1024
    );
    let f0 = |v: f64| format!("{v:.0}");
    let f1 = |v: f64| format!("{v:.1}");
    let logged = |f: fn(&Delta) -> f64| h.daemon_summary(Mode::NatLogged, f);
    if let (Some(read), Some(exported), Some(share), Some(us)) = (
        logged(Delta::read_per_s),
        logged(Delta::exported_per_s),
        logged(|d| d.cpu_share() * 100.0),
        logged(Delta::cpu_us_per_event),
    ) {
        let dropped = h
            .tally
            .get(&Mode::NatLogged)
            .and_then(|t| t.nat_counters.get("events_dropped"))
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "compliance export (nat-logged: log-sessions on, IPFIX to a collector in the server namespace), median [min–max] of the runs:\n  during the run (the creations): {} events/s read, {} exported/s, daemon CPU {}% of a CPU, {} µs per event; events dropped (ring buffer full): {dropped}",
            read.show(f0),
            exported.show(f0),
            share.show(f1),
            us.show(f1)
        );
    }
    let drain = |f: fn(&Drain) -> f64| h.drain_summary(f);
    if let (Some(read), Some(exported), Some(peak), Some(us), Some(dropped)) = (
        drain(|d| d.delta.read as f64),
        drain(|d| d.delta.exported as f64),
        drain(|d| d.peak_exported_per_s),
        drain(|d| d.delta.cpu_us_per_event()),
        drain(|d| d.dropped as f64),
    ) {
        let _ = writeln!(
            out,
            "  after the run (the deletions, swept 10 s after each close): {} events read, {} exported, at most {} exported/s over {:.1} s, daemon CPU {} µs per event; events dropped: {}",
            read.show(f0),
            exported.show(f0),
            peak.show(f0),
            super::events::DRAIN_POLL.as_secs_f64(),
            us.show(f1),
            dropped.show(f0)
        );
    }
}

/// The main table: every figure of every mode in [`MODES`], the ratios,
/// and the connection runs' tallies; whether a figure is starred.
fn render_main(out: &mut String, r: &Results, reps: usize) -> bool {
    let mut header = format!(
        "\n{:<LABEL$}",
        if reps == 1 {
            "1 run".to_owned()
        } else {
            format!("median [min–max] of {reps}")
        }
    );
    for mode in MODES {
        let _ = write!(header, "{:<CELL$}", mode.name());
    }
    for (_, _, heading) in RATIOS {
        let _ = write!(header, "{heading:>9}");
    }
    let _ = writeln!(out, "{header}");
    let mut any_unclean = false;
    for figure in FIGURES {
        let mut line = format!("{:<LABEL$}", figure.label());
        for mode in MODES {
            let cell = match r.summary(mode, figure) {
                Some(s) => {
                    let mut c = s.show(|v| figure.format(v));
                    if !r.all_clean(mode, figure) {
                        c.push('*');
                        any_unclean = true;
                    }
                    c
                }
                None => "not measured".to_owned(),
            };
            let _ = write!(line, "{cell:<CELL$}");
        }
        for (of, over, _) in RATIOS {
            let ratio = r
                .ratio(figure, of, over)
                .map_or("-".to_owned(), |x| format!("{x:.2}"));
            let _ = write!(line, "{ratio:>9}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let mut row = |name: &str, cell: &dyn Fn(Mode) -> String| {
        let mut line = format!("{name:<LABEL$}");
        for mode in MODES {
            let _ = write!(line, "{:<CELL$}", cell(mode));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    };
    row("  failed (spread)", &|m| r.failures(m).to_string());
    let tally = |m: Mode| r.server_first.get(&m);
    row("  failed (server-first)", &|m| {
        tally(m).map_or("-".to_owned(), |t| t.failed().to_string())
    });
    row("  NAT collisions (server-first)", &|m| {
        tally(m)
            .and_then(|t| t.collisions)
            .map_or("-".to_owned(), |c| c.to_string())
    });
    row("  NAT drops (server-first)", &|m| {
        tally(m)
            .filter(|_| m.is_nat())
            .map_or("-".to_owned(), |t| t.nat_drops().to_string())
    });
    row("  PAWSTimewait (server-first)", &|m| {
        tally(m).map_or("-".to_owned(), |t| t.paws_timewait.to_string())
    });
    let mut line = format!("{:<LABEL$}", "  slower than 0.9 s (spr.)");
    for mode in MODES {
        let _ = write!(
            line,
            "{:<CELL$}",
            r.conn_slow.get(&mode).copied().unwrap_or(0).to_string()
        );
    }
    let _ = writeln!(out, "{}", line.trim_end());
    any_unclean
}

pub fn render(cfg: &Config, r: &Results, wall_s: f64) -> String {
    let mut out = String::new();
    let reps = cfg.reps;
    let _ = writeln!(
        out,
        "\nbench: {} on {} CPUs; load generators pinned to CPU {}, servers to CPU {}; {} repetition{}, modes interleaved",
        if cfg.quick { "quick run" } else { "full run" },
        cfg.cpus,
        cfg.load_cpu,
        cfg.server_cpu,
        reps,
        if reps == 1 { "" } else { "s" }
    );
    let any_unclean = !r.samples.is_empty() && render_main(&mut out, r, reps);
    render_hosts(&mut out, cfg, &r.hosts);
    render_scale(&mut out, r);
    if any_unclean {
        let _ = writeln!(
            out,
            "* at least one run of this figure could not be measured cleanly: other processes took more than {:.0}% of the CPU in every attempt (see notes)",
            FOREIGN_LIMIT * 100.0
        );
    }
    let _ = writeln!(
        out,
        "Ratios: median of the per-repetition ratios (a repetition runs all modes back to back, so drift of the machine's speed cancels out); targets are judged on them and on medians."
    );
    let _ = writeln!(
        out,
        "\nTCP: iperf3 -t {} (-P 1 and -P 4), receiver's rate. UDP: one sendmmsg sender, 8 client addresses x 2 ports -> 1 server port, {:.0} s, counted as veth-sv rx_packets (the sink socket is bound, not read). CPU per packet: system + softirq time of all CPUs during the UDP run / packets delivered.",
        cfg.tcp_secs, cfg.udp_secs
    );
    let _ = writeln!(
        out,
        "Connections, spread: 64 worker threads, {:.0} s; each connects from the 8 client addresses in turn to 32 server ports (32 destinations), sends 32 B, reads 32 B, and closes first (the NAT cools the key 15 s). Client namespace: tcp_tw_reuse=1, ip_local_port_range 1024-65535.",
        cfg.conn_secs
    );
    let _ = writeln!(
        out,
        "Connections, server-first: the same workers from the 8 client addresses to ONE server port (a fresh one per run, so no run meets an earlier run's TIME_WAIT), the server closing first right after its reply: the server holds TIME_WAIT and the NAT cools every key its default 240 s. A run stops after {:.0} s or {} connections (90% of the 64,512 keys toward one destination on one external address, so the cooldown cannot run the range dry). Connect time: connect() alone, p50 and p99 of every connection. Collisions: the NAT's `collisions` counter; PAWSTimewait: the server's TcpExt counter (a SYN that met a TIME_WAIT with an older timestamp).",
        cfg.conn_secs, cfg.server_first_budget
    );
    let _ = writeln!(
        out,
        "nat load flags per mode (after --iface --external --internal):"
    );
    for (mode, args) in &cfg.nat_args {
        let _ = writeln!(out, "  {:<19}{args}", mode.name());
    }
    let _ = writeln!(
        out,
        "--ports 1024-65535 in every NAT mode: the default range (16384-32767) holds 16,384 keys per destination, which the server-first load uses up in seconds. NAT modes are restarted for every repetition (fresh maps); nftables: conntrack table flushed after every repetition. Targets are judged on nat-default."
    );
    let _ = writeln!(
        out,
        "Scale: {} repetition(s) of each point; before the measurement, one UDP datagram per flow from a raw socket (8 client addresses x source ports -> 32 bound, unread server ports) leaves that many live entries; then the UDP 64 B run and a server-first run. Both tables sized {}: nat-default gets --max-sessions {} and --max-sessions-per-host 0 (the fill's 8 client addresses would meet the default per-host limit; conntrack has none), nf_conntrack_max is raised to it for the run (machine-wide; restored after), nf_conntrack_udp_timeout of the nat namespace set to {} s (the NAT's UDP timeout) so the entries outlive the point. conntrack's hash table keeps its size (nf_conntrack_buckets).",
        cfg.scale_reps,
        cfg.scale_capacity,
        cfg.scale_capacity,
        super::scale::CONNTRACK_UDP_TIMEOUT_S
    );
    let _ = writeln!(
        out,
        "Reading: veth forwarding runs in the sender's softirq, so the pinned UDP sender's CPU carries the whole path and pps is about 1 / per-packet cost; TCP moves 64 KB GSO segments, so per-packet costs hardly show in it; iperf3 is single-threaded (one CPU per side)."
    );

    let _ = writeln!(out, "\ndatapath micro-figures (median [min–max])");
    let _ = writeln!(
        out,
        "  allocation (nat-bench alloc, strict, {} attempts, one destination's 1000-port range filled to N%):",
        cfg.alloc_attempts
    );
    for (&occ, kept) in &r.alloc {
        let s = |f: fn(&Alloc) -> f64| r.alloc_summary(occ, f);
        let star = if kept.iter().any(|k| !k.clean) {
            "*"
        } else {
            ""
        };
        if let (Some(ok), Some(med), Some(p99)) =
            (s(|a| a.success_pct), s(|a| a.median_ns), s(|a| a.p99_ns))
        {
            let _ = writeln!(
                out,
                "    {occ}% occupied: success {}, median {} ns, p99 {} ns{star}",
                ok.show(|v| format!("{v:.3}%")),
                med.show(|v| format!("{v:.0}")),
                p99.show(|v| format!("{v:.0}")),
            );
        }
    }
    let _ = writeln!(out, "  sweep (nat-bench sweep):");
    for (&sessions, kept) in &r.sweep {
        let s = |f: fn(&Sweep) -> f64| r.sweep_summary(sessions, f);
        let star = if kept.iter().any(|k| !k.clean) {
            "*"
        } else {
            ""
        };
        if let (Some(sw), Some(sc), Some(qf), Some(q), Some(ew), Some(ec)) = (
            s(|x| x.scan_wall_s),
            s(|x| x.scan_cpu_s),
            s(|x| x.quiet_first_cpu_s),
            s(|x| x.quiet_cpu_s),
            s(|x| x.expire_wall_s),
            s(|x| x.expire_cpu_s),
        ) {
            let f3 = |v: f64| format!("{v:.3}");
            let _ = writeln!(
                out,
                "    {sessions} sessions: full sweep, busy {} s wall, {} s CPU; quiet {} s CPU (first {} s CPU); sweep expiring all {} s wall, {} s CPU{star}",
                sw.show(f3),
                sc.show(f3),
                q.show(f3),
                qf.show(f3),
                ew.show(f3),
                ec.show(f3),
            );
        }
    }
    for sessions in &r.sweep_skipped {
        let _ = writeln!(out, "    {sessions} sessions: skipped (--quick)");
    }
    match &r.map_memory {
        Some(m) => {
            let _ = writeln!(
                out,
                "  map memory (bytes_memlock / max_entries): {:.0} B per session (NAT_FWD + NAT_REV), {:.0} B per cooling key (NAT_COOLDOWN)",
                m.per_session, m.per_cooling_key
            );
        }
        None => {
            let _ = writeln!(out, "  map memory: not measured");
        }
    }
    match (
        r.bpf_summary(|b| b.egress_ns),
        r.bpf_summary(|b| b.ingress_ns),
        r.bpf_summary(|b| b.fast_ns),
        r.bpf_summary(|b| b.hairpin_ns),
    ) {
        (Some(e), i, fast, hairpin) => {
            let f0 = |v: f64| format!("{v:.0}");
            let _ = writeln!(
                out,
                "  BPF run time per packet (kernel.bpf_stats_enabled, separate {:.0} s UDP echo runs, not the measured ones): nat_egress {} ns, nat_ingress {} ns, fast path {} ns, hairpin {} ns",
                cfg.stats_secs,
                e.show(f0),
                i.map_or("not measured".to_owned(), |i| i.show(f0)),
                fast.map_or("not run".to_owned(), |f| f.show(f0)),
                hairpin.map_or("not run".to_owned(), |h| h.show(f0)),
            );
        }
        (None, _, _, _) => {
            let _ = writeln!(out, "  BPF run time per packet: not measured");
        }
    }

    let _ = writeln!(out, "\ntargets");
    for t in targets(r) {
        let verdict = match t.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NOT MEASURED",
        };
        let noisy = if t.noisy && t.met.is_some() {
            "  (partly measured on a busy machine)"
        } else {
            ""
        };
        // A long name gets the measurement on a line of its own.
        if t.name.chars().count() < 62 {
            let _ = writeln!(out, "  {verdict:<13}{:<62}{}{noisy}", t.name, t.measured);
        } else {
            let _ = writeln!(out, "  {verdict:<13}{}", t.name);
            let _ = writeln!(out, "  {:<13}{:<62}{}{noisy}", "", "", t.measured);
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\nnotes");
        for note in &r.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    let after_build = if cfg.build_s > 0.0 {
        format!(" ({:.0} s after the build)", wall_s - cfg.build_s)
    } else {
        String::new()
    };
    let _ = writeln!(out, "\nbench: wall time {wall_s:.0} s{after_build}");
    out
}

fn tally_json(t: &ServerFirstTally) -> Value {
    json!({
        "failures": { "total": t.failed(), "by_kind": t.failures },
        "nat_collisions": t.collisions,
        "nat_counter_deltas": t.nat_counters,
        "server_paws_timewait": t.paws_timewait,
    })
}

fn hosts_json(h: &HostsRuns) -> Value {
    if h.samples.is_empty() {
        return Value::Null;
    }
    let mut modes = serde_json::Map::new();
    for mode in HOSTS_MODES {
        let mut figs = serde_json::Map::new();
        for figure in [
            Figure::ServerFirstRate,
            Figure::ServerFirstP50,
            Figure::ServerFirstP99,
        ] {
            let samples: Vec<Value> = h
                .samples
                .get(&(mode, figure))
                .map(|s| s.iter().map(Sample::to_json).collect())
                .unwrap_or_default();
            figs.insert(
                figure.key().to_owned(),
                json!({
                    "summary": h.summary(mode, figure).map(Summary::to_json),
                    "all_clean": h.all_clean(mode, figure),
                    "samples": samples,
                }),
            );
        }
        figs.insert(
            "server_first_conn_per_s_over_nat_default".to_owned(),
            json!(h.ratio(Figure::ServerFirstRate, mode, Mode::NatDefault)),
        );
        figs.insert(
            "tally".to_owned(),
            h.tally.get(&mode).map_or(Value::Null, tally_json),
        );
        figs.insert(
            "blocks_in_use_after".to_owned(),
            json!(h.blocks_in_use.get(&mode)),
        );
        figs.insert(
            "daemon".to_owned(),
            json!(
                h.daemon
                    .get(&mode)
                    .map(|d| d.iter().map(|d| d.to_json()).collect::<Vec<_>>())
            ),
        );
        modes.insert(mode.name().to_owned(), Value::Object(figs));
    }
    json!({
        "hosts": hosts::HOSTS,
        "internal_prefix": hosts::PREFIX,
        "block_size": HOSTS_BLOCK_SIZE,
        "modes": modes,
        "logged_drains": h.drains.iter().map(|d| json!({
            "work": d.delta.to_json(),
            "peak_exported_per_s": d.peak_exported_per_s,
            "events_dropped": d.dropped,
        })).collect::<Vec<_>>(),
    })
}

pub fn to_json(cfg: &Config, r: &Results, wall_s: f64, machine: Value) -> Value {
    let mut modes = serde_json::Map::new();
    for mode in MODES {
        let mut figs = serde_json::Map::new();
        for figure in FIGURES {
            let samples: Vec<Value> = r
                .samples
                .get(&(mode, figure))
                .map(|s| s.iter().map(Sample::to_json).collect())
                .unwrap_or_default();
            figs.insert(
                figure.key().to_owned(),
                json!({
                    "summary": r.summary(mode, figure).map(Summary::to_json),
                    "all_clean": r.all_clean(mode, figure),
                    "samples": samples,
                }),
            );
        }
        figs.insert(
            "tcp_conn_failures".to_owned(),
            json!({ "total": r.failures(mode), "by_kind": r.conn_failures.get(&mode) }),
        );
        figs.insert(
            "tcp_conn_slower_than_900ms".to_owned(),
            json!(r.conn_slow.get(&mode).copied().unwrap_or(0)),
        );
        figs.insert(
            "server_first_tally".to_owned(),
            r.server_first.get(&mode).map_or(Value::Null, tally_json),
        );
        modes.insert(mode.name().to_owned(), Value::Object(figs));
    }
    let mut ratios = serde_json::Map::new();
    for figure in FIGURES {
        let paired = |of, over| {
            json!({
                "median_of_repetition_ratios": r.ratio(figure, of, over),
                "repetition_ratios": r.paired_ratios(figure, of, over).map(Summary::to_json),
                "ratio_of_medians": r.ratio_of_medians(figure, of, over),
            })
        };
        ratios.insert(
            figure.key().to_owned(),
            json!({
                "nat-default/nftables": paired(JUDGED, Mode::Nftables),
                "nat-default/routing": paired(JUDGED, Mode::Routing),
                "nat/nftables": paired(Mode::Nat, Mode::Nftables),
                "nat/routing": paired(Mode::Nat, Mode::Routing),
            }),
        );
    }
    let kept_json = |noise: f64, attempts: usize, clean: bool, raw: &Value| json!({ "other_load_share": noise, "attempts": attempts, "clean": clean, "output": raw });
    let mut alloc = serde_json::Map::new();
    for (occ, kept) in &r.alloc {
        let s = |f: fn(&Alloc) -> f64| r.alloc_summary(*occ, f).map(Summary::to_json);
        alloc.insert(
            format!("occupancy_{occ}"),
            json!({
                "success_pct": s(|a| a.success_pct),
                "median_ns": s(|a| a.median_ns),
                "p99_ns": s(|a| a.p99_ns),
                "runs": kept.iter().map(|k| kept_json(k.noise, k.attempts, k.clean, &k.value.raw)).collect::<Vec<_>>(),
            }),
        );
    }
    let mut sweep = serde_json::Map::new();
    for (sessions, kept) in &r.sweep {
        let s = |f: fn(&Sweep) -> f64| r.sweep_summary(*sessions, f).map(Summary::to_json);
        sweep.insert(
            format!("sessions_{sessions}"),
            json!({
                "scan_wall_s": s(|x| x.scan_wall_s),
                "scan_cpu_s": s(|x| x.scan_cpu_s),
                "quiet_first_cpu_s": s(|x| x.quiet_first_cpu_s),
                "quiet_cpu_s": s(|x| x.quiet_cpu_s),
                "expire_wall_s": s(|x| x.expire_wall_s),
                "expire_cpu_s": s(|x| x.expire_cpu_s),
                "runs": kept.iter().map(|k| kept_json(k.noise, k.attempts, k.clean, &k.value.raw)).collect::<Vec<_>>(),
            }),
        );
    }
    let mut scale = serde_json::Map::new();
    for ((mode, figure, sessions), samples) in &r.scale {
        scale
            .entry(mode.name().to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .entry(figure.key().to_owned())
            .or_insert_with(|| json!({}))[sessions.to_string()] = json!({
            "summary": r.scale_summary(*mode, *figure, *sessions).map(Summary::to_json),
            "ratio_to_first_point": r.scale_ratio(*mode, *figure, *sessions),
            "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        });
    }
    let targets: Vec<Value> = targets(r)
        .into_iter()
        .map(|t| {
            json!({
                "target": t.name,
                "measured": t.measured,
                "met": t.met,
                "status": match t.met { Some(true) => "MET", Some(false) => "MISSED", None => "NOT MEASURED" },
                "partly_noisy": t.noisy,
            })
        })
        .collect();
    json!({
        "quick": cfg.quick,
        "wall_s": wall_s,
        "build_s": cfg.build_s,
        "machine": machine,
        "config": {
            "repetitions": cfg.reps,
            "tcp_secs": cfg.tcp_secs,
            "udp_secs": cfg.udp_secs,
            "conn_secs": cfg.conn_secs,
            "bpf_stats_secs": cfg.stats_secs,
            "load_cpu": cfg.load_cpu,
            "server_cpu": cfg.server_cpu,
            "nat_args": cfg.nat_args.iter().map(|(m, a)| (m.name().to_owned(), json!(a))).collect::<serde_json::Map<_, _>>(),
            "judged_mode": JUDGED.name(),
            "server_first_budget": cfg.server_first_budget,
            "scale_capacity": cfg.scale_capacity,
            "scale_repetitions": cfg.scale_reps,
            "scale_skipped_sessions": r.scale_skipped,
            "udp_flows": "8 client addresses x 2 ports -> 198.18.0.2:9000, 64 B payload",
            "tcp_conn": "64 workers, 8 client addresses, 32 server ports, client closes first",
            "server_first_conn": "64 workers, 8 client addresses, one server port per run, server closes first, cooldown at its default",
            "other_load_limit": FOREIGN_LIMIT,
        },
        "modes": modes,
        "ratios": ratios,
        "hosts": hosts_json(&r.hosts),
        "scale": scale,
        "micro": {
            "alloc": alloc,
            "sweep": sweep,
            "sweep_skipped_sessions": r.sweep_skipped,
            "map_memory": r.map_memory.as_ref().map(|m| json!({
                "bytes_per_session": m.per_session,
                "bytes_per_cooling_key": m.per_cooling_key,
                "maps": m.raw,
            })),
            "bpf_run_time": {
                "egress_ns_per_packet": r.bpf_summary(|b| b.egress_ns).map(Summary::to_json),
                "ingress_ns_per_packet": r.bpf_summary(|b| b.ingress_ns).map(Summary::to_json),
                "fast_path_ns_per_packet": r.bpf_summary(|b| b.fast_ns).map(Summary::to_json),
                "hairpin_ns_per_packet": r.bpf_summary(|b| b.hairpin_ns).map(Summary::to_json),
                "runs": r.bpf.iter().map(|b| json!({
                    "egress_ns": b.egress_ns, "egress_runs": b.egress_runs,
                    "ingress_ns": b.ingress_ns, "ingress_runs": b.ingress_runs,
                    "fast_ns": b.fast_ns, "fast_runs": b.fast_runs,
                    "hairpin_ns": b.hairpin_ns, "hairpin_runs": b.hairpin_runs,
                })).collect::<Vec<_>>(),
            },
        },
        "targets": targets,
        "notes": r.notes,
    })
}
