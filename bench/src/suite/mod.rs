//! `nat-bench suite`, which `cargo xtask bench` runs: this NAT against plain
//! routing and nftables masquerade on one netns topology, plus the datapath
//! micro-figures.
//!
//! Every repetition runs every mode, in a rotating order, so drift in the
//! machine's speed hits all modes alike. Every measurement is watched by the
//! noise guard ([`cpu`]): when other processes took more than 15% of the
//! CPU during it, it is measured again (a bounded number of times), and a
//! figure that never got a quiet attempt is marked in the report.

mod conn;
mod cpu;
mod events;
mod hosts;
mod iperf;
mod micro;
mod modes;
mod plot;
mod report;
mod scale;
mod udp;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nat_tests::{Side, Topology, TopologyOpts, interrupt};
use serde_json::{Value, json};

use self::conn::Load;
use self::cpu::Window;
use self::hosts::Sources;
use self::modes::{Active, HOSTS_MODES, MODES, Mode, NAT_PORTS};
use self::report::{BpfRun, Config, Figure, Kept, Results, Sample};

const TAG: &str = "bench";
/// Width of the progress lines' label: repetition, mode and what is measured.
const COLUMN: usize = 56;
/// Client addresses of the topology (the UDP flows and TCP connections use them all).
const CLIENT_ADDRS: u8 = 8;
/// The modes of the scale runs: the targets' mode against conntrack.
const SCALE_MODES: [Mode; 2] = [Mode::Nftables, Mode::NatDefault];
const ALLOC_OCCUPANCIES: [u32; 3] = [50, 90, 95];
const ALLOC_ATTEMPTS: u32 = 10_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// One repetition with short runs, without the 1M-session sweep and scale runs (under 2 minutes)
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure, sample and target to FILE as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw the ratio table and the scale curves to FILE (SVG)
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Development aid: run only this part of every repetition (`server-first`: the
    /// server-first connections to one destination alone, with the NAT's counters over each
    /// run; `udp`: the UDP runs alone, with CPU per packet and the BPF run time; `hosts`: the
    /// hosts runs alone), no scale runs and no micro-figures; the report then lacks the other
    /// figures
    #[arg(long, value_name = "PART", hide_short_help = true)]
    pub only: Option<Part>,
    /// Development aid: this many repetitions instead of the plan's (5, or 1 with --quick)
    #[arg(long, value_name = "N", hide_short_help = true)]
    pub reps: Option<usize>,
    /// The `nat` binary to measure (default: the `nat` beside this nat-bench, where a build puts it)
    #[arg(long, value_name = "PATH")]
    pub nat: Option<PathBuf>,
    /// Seconds a build took right before the run, counted in the wall time it reports
    /// (`cargo xtask bench` passes its build's)
    #[arg(long, value_name = "SECS", default_value_t = 0.0, hide = true)]
    pub build_secs: f64,
}

/// A part of the bench that `--only` runs alone (a development aid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The server-first connections to one destination alone, every mode, every repetition.
    ServerFirst,
    /// The UDP 64 B runs alone (packet rate, CPU per packet), and the BPF run-time pass of
    /// the nat mode, every mode, every repetition.
    Udp,
    /// The hosts runs alone: the server-first load from 1,000 internal hosts in every
    /// allocation mode, with walk, nftables and the logged mode beside them.
    Hosts,
}

/// How long and how often; `--quick` shrinks it to fit in 2 minutes.
struct Plan {
    quick: bool,
    /// Only this part of each mode's repetition, nothing else (`--only`).
    only: Option<Part>,
    reps: usize,
    tcp_secs: u32,
    udp_secs: f64,
    conn_secs: f64,
    /// The BPF run-time pass in the nat mode (not a measured run).
    stats_secs: f64,
    /// Extra attempts of one measurement when the machine was busy.
    retries: usize,
    /// Extra attempts in the whole run, so a busy machine cannot stretch it
    /// past its time limit.
    retry_budget: usize,
    /// Before an extra attempt, up to this long is spent waiting for a quiet
    /// second; `wait_budget` bounds it over the whole run.
    max_wait: Duration,
    wait_budget: Duration,
    micro_reps: usize,
    sweep_sessions: &'static [u32],
    sweep_skipped: &'static [u32],
    /// The hosts runs ([`HOSTS_MODES`] from [`hosts::HOSTS`] hosts), after
    /// the main modes in every repetition.
    hosts: bool,
    /// Live sessions before the scale runs' measurements.
    scale_points: &'static [u32],
    scale_skipped: &'static [u32],
    scale_reps: usize,
    /// Pause after each mode, for the previous mode's traffic to drain.
    settle: Duration,
}

impl Plan {
    fn new(opts: &Args) -> Plan {
        let mut plan = Plan::standard(opts.quick);
        if let Some(reps) = opts.reps {
            plan.reps = reps.max(1);
        }
        if opts.only.is_some() {
            plan.only = opts.only;
            plan.sweep_sessions = &[];
            plan.scale_points = &[];
            plan.micro_reps = 0;
            plan.hosts = opts.only == Some(Part::Hosts);
        }
        plan
    }

    fn standard(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                only: None,
                reps: 1,
                tcp_secs: 2,
                udp_secs: 2.0,
                conn_secs: 2.0,
                stats_secs: 1.0,
                retries: 1,
                retry_budget: 3,
                max_wait: Duration::from_secs(4),
                wait_budget: Duration::from_secs(10),
                micro_reps: 1,
                // A logged run waits for its deletions (10 s after the
                // connections closed), which --quick has no room for.
                hosts: false,
                sweep_sessions: &[100_000],
                sweep_skipped: &[1_000_000],
                scale_points: &[1_000, 100_000],
                scale_skipped: &[1_000_000],
                scale_reps: 1,
                settle: Duration::from_millis(500),
            }
        } else {
            Plan {
                quick,
                only: None,
                reps: 5,
                tcp_secs: 5,
                udp_secs: 5.0,
                conn_secs: 5.0,
                stats_secs: 2.0,
                retries: 2,
                retry_budget: 15,
                max_wait: Duration::from_secs(10),
                wait_budget: Duration::from_secs(90),
                micro_reps: 3,
                hosts: true,
                sweep_sessions: &[100_000, 1_000_000],
                sweep_skipped: &[],
                scale_points: &[1_000, 100_000, 1_000_000],
                scale_skipped: &[],
                scale_reps: 2,
                settle: Duration::from_secs(1),
            }
        }
    }
}

pub fn run(opts: &Args) -> Result<()> {
    let started = Instant::now();
    // The micro-figures run this binary's own `alloc` and `sweep`.
    let nat_bench = std::env::current_exe().context("cannot find the nat-bench executable")?;
    let nat_bin = opts
        .nat
        .clone()
        .unwrap_or_else(|| nat_bench.with_file_name("nat"));
    ensure!(
        nat_bin.is_file(),
        "{} does not exist: build it (`cargo xtask build --release`) or name it with --nat",
        nat_bin.display()
    );
    // SAFETY: nothing but this thread exists yet (no handler, servers or
    // workers have been started), so nobody can read the environment concurrently.
    unsafe { std::env::set_var("NAT_BIN", &nat_bin) };
    interrupt::install("bench", TAG)?;
    interrupt::on_cleanup(micro::restore_bpf_stats);
    interrupt::on_cleanup(scale::restore_conntrack_max);
    // Caught so that, after a signal, the cleanup thread and not a panic
    // decides how the process ends.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        bench(opts, &nat_bin, &nat_bench, started)
    }));
    micro::restore_bpf_stats();
    scale::restore_conntrack_max();
    interrupt::defer_to_cleanup();
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            bail!("the bench failed: {message}")
        }
    }
}

/// `cmd` as one line, for messages.
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    format!("`{line}`")
}

/// Runs `cmd` to completion (started under the interrupt guard) and returns its stdout.
fn capture(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let child = interrupt::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn check_interrupt() -> Result<()> {
    if interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// The result of a measurement under the noise guard: the quietest attempt.
struct Guarded<T> {
    value: T,
    window: Window,
    attempts: usize,
}

impl<T> Guarded<T> {
    fn noise(&self) -> f64 {
        self.window.noise()
    }

    fn clean(&self) -> bool {
        self.window.clean()
    }
}

struct Guard {
    retries: usize,
    budget: usize,
    max_wait: Duration,
    wait_budget: Duration,
    notes: Vec<String>,
}

impl Guard {
    /// Runs `f` until an attempt is quiet enough (at most `retries` extra
    /// times, while the run's budget lasts) and keeps the quietest attempt.
    fn measure<T>(
        &mut self,
        label: &str,
        mut f: impl FnMut() -> Result<T>,
        window: impl Fn(&T) -> Window,
        describe: impl Fn(&T) -> String,
    ) -> Result<Guarded<T>> {
        let mut best: Option<Guarded<T>> = None;
        let mut attempts = 0;
        loop {
            check_interrupt()?;
            attempts += 1;
            let value = f().with_context(|| format!("{label} failed"))?;
            let w = window(&value);
            let noise = w.noise();
            // One println per attempt, so the NAT's output cannot land mid-line.
            let line = format!(
                "  {label:<COLUMN$}{:<34} other load {:>3.0}%",
                describe(&value),
                noise * 100.0
            );
            let better = best.as_ref().is_none_or(|b| noise < b.noise());
            if better {
                best = Some(Guarded {
                    value,
                    window: w,
                    attempts,
                });
            }
            let kept = best.as_mut().expect("set above");
            kept.attempts = attempts;
            if noise <= cpu::FOREIGN_LIMIT {
                println!("{line}");
                break;
            }
            if attempts > self.retries || self.budget == 0 {
                println!("{line}  (busy; keeping the quietest attempt)");
                self.notes.push(format!(
                    "{label}: other processes took {:.0}% of the CPU in the quietest of {attempts} attempt(s) (limit {:.0}%){}",
                    kept.noise() * 100.0,
                    cpu::FOREIGN_LIMIT * 100.0,
                    if self.budget == 0 { "; the run's retry budget was used up" } else { "" }
                ));
                break;
            }
            self.budget -= 1;
            println!("{line}  (busy; measuring again)");
            self.wait_for_quiet()?;
        }
        Ok(best.expect("at least one attempt"))
    }

    /// Waits for a second during which other work stays under the limit,
    /// for at most `max_wait` and while the run's waiting budget lasts.
    fn wait_for_quiet(&mut self) -> Result<()> {
        let began = Instant::now();
        let limit = self.max_wait.min(self.wait_budget);
        loop {
            check_interrupt()?;
            let snapshot = cpu::Snapshot::take()?;
            thread::sleep(Duration::from_secs(1));
            let quiet = snapshot.finish()?.clean();
            if quiet || began.elapsed() >= limit {
                break;
            }
        }
        self.wait_budget = self.wait_budget.saturating_sub(began.elapsed());
        Ok(())
    }
}

/// What every measurement needs.
struct Ctx<'a> {
    plan: &'a Plan,
    topology: &'a Topology,
    nat_bin: &'a Path,
    load_cpu: usize,
    server_cpu: usize,
    conn_server: &'a conn::Server,
    /// The IPFIX collector of the logged mode.
    collector: &'a events::Collector,
    /// Server-first runs so far: each gets the next server port.
    server_first_runs: usize,
    /// Connections a server-first run may make: 90% of the external ports toward
    /// its one destination, so the 240 s cooldown cannot run the range dry.
    server_first_budget: u64,
    guard: Guard,
    results: Results,
}

fn bench(opts: &Args, nat_bin: &Path, nat_bench: &Path, started: Instant) -> Result<()> {
    let plan = Plan::new(opts);
    let cpus = cpu::cpu_count()?;
    let load_cpu = cpus - 1;
    let server_cpu = 0;
    println!(
        "bench: {} repetition(s) of {}, interleaved; load pinned to CPU {load_cpu}, servers to CPU {server_cpu}",
        plan.reps,
        MODES.map(Mode::name).join(", ")
    );
    let server_first_budget = server_first_budget()?;
    let (mut results, mut guard) = {
        let topology = {
            let _setup = interrupt::namespace_setup();
            check_interrupt()?;
            Topology::new(
                TAG,
                TopologyOpts {
                    client_addrs: CLIENT_ADDRS,
                    offloads: true,
                    wire_hosts: false,
                },
            )
        };
        let client_ns = topology.ns_name(Side::Client);
        let server_ns = topology.ns_name(Side::Server);
        hosts::add(&topology)?;
        capture(Command::new("ip").args([
            "netns",
            "exec",
            client_ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]))?;
        let _sink = udp::Sink::bind(server_ns)?;
        let _scale_sinks = scale::Sinks::bind(server_ns)?;
        scale::set_conntrack_udp_timeout(topology.ns_name(Side::Nat))?;
        let conn_server = conn::Server::start(server_ns, server_cpu)?;
        let collector = events::Collector::start(server_ns, server_cpu)?;
        let _iperf_server = iperf::Server::start(server_ns, server_cpu)?;
        let mut ctx = Ctx {
            plan: &plan,
            topology: &topology,
            nat_bin,
            load_cpu,
            server_cpu,
            conn_server: &conn_server,
            collector: &collector,
            server_first_runs: 0,
            server_first_budget,
            guard: Guard {
                retries: plan.retries,
                budget: plan.retry_budget,
                max_wait: plan.max_wait,
                wait_budget: plan.wait_budget,
                notes: Vec::new(),
            },
            results: Results::default(),
        };
        for rep in 0..plan.reps {
            if plan.only != Some(Part::Hosts) {
                let order = rotated(&MODES, rep);
                println!(
                    "\nbench: repetition {}/{}: {}",
                    rep + 1,
                    plan.reps,
                    names(&order)
                );
                for mode in order {
                    run_mode(&mut ctx, mode, rep)?;
                }
            }
            if plan.hosts {
                let order = rotated(&HOSTS_MODES, rep);
                println!(
                    "\nbench: repetition {}/{}, server-first from {} hosts: {}",
                    rep + 1,
                    plan.reps,
                    hosts::HOSTS,
                    names(&order)
                );
                for mode in order {
                    hosts_run(&mut ctx, mode, rep)?;
                }
            }
        }
        if !plan.scale_points.is_empty() {
            println!(
                "\nbench: scale: {} and {} with {} live sessions",
                SCALE_MODES[0].name(),
                SCALE_MODES[1].name(),
                plan.scale_points
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            scale::raise_conntrack_max()?;
            for rep in 0..plan.scale_reps {
                for &sessions in plan.scale_points {
                    for mode in SCALE_MODES {
                        run_scale(&mut ctx, mode, sessions, rep)?;
                    }
                }
            }
            scale::restore_conntrack_max();
        }
        // The servers and the namespaces go at the end of this block.
        (ctx.results, ctx.guard)
    };

    println!("\nbench: datapath micro-figures");
    micro_figures(&plan, nat_bench, &mut guard, &mut results)?;

    results.notes.extend(guard.notes);
    results.sweep_skipped = plan.sweep_skipped.to_vec();
    results.scale_skipped = plan.scale_skipped.to_vec();
    let config = Config {
        quick: plan.quick,
        reps: plan.reps,
        tcp_secs: plan.tcp_secs,
        udp_secs: plan.udp_secs,
        conn_secs: plan.conn_secs,
        stats_secs: plan.stats_secs,
        cpus,
        load_cpu,
        server_cpu,
        nat_args: MODES
            .iter()
            .chain(HOSTS_MODES.iter().filter(|m| !MODES.contains(m)))
            .filter_map(|m| Some((*m, m.nat_args()?.join(" "))))
            .collect(),
        scale_capacity: scale::CAPACITY,
        scale_reps: plan.scale_reps,
        server_first_budget,
        alloc_attempts: ALLOC_ATTEMPTS,
        build_s: opts.build_secs,
    };
    let wall_s = opts.build_secs + started.elapsed().as_secs_f64();
    print!("{}", report::render(&config, &results, wall_s));
    if let Some(path) = &opts.json {
        let machine = json!({
            "cpus": cpus,
            "kernel": capture(Command::new("uname").arg("-r")).map(|s| s.trim().to_owned()).ok(),
            "nat_bin": nat_bin.display().to_string(),
        });
        let json = report::to_json(&config, &results, wall_s, machine);
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("bench: wrote {}", path.display());
    }
    if let Some(path) = &opts.plot {
        plot::draw(path, &results)?;
        println!("bench: drew {}", path.display());
    }
    Ok(())
}

/// 90% of the keys toward one destination: the ports of [`NAT_PORTS`] on the
/// one external address.
fn server_first_budget() -> Result<u64> {
    let (lo, hi) = NAT_PORTS
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.parse::<u64>().ok()?, hi.parse::<u64>().ok()?)))
        .context("NAT_PORTS is not LO-HI")?;
    Ok((hi - lo + 1) * 9 / 10)
}

/// `modes` starting at the `rep`-th, so that no mode always runs first.
fn rotated(modes: &[Mode], rep: usize) -> Vec<Mode> {
    (0..modes.len())
        .map(|i| modes[(i + rep) % modes.len()])
        .collect()
}

fn names(modes: &[Mode]) -> String {
    modes
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn label(rep: usize, reps: usize, mode: Mode, what: impl Display) -> String {
    format!("[{}/{reps}] {:<18}{what}", rep + 1, mode.name())
}

fn sample<T>(g: &Guarded<T>, value: f64, rep: usize, detail: Value) -> Sample {
    Sample {
        value,
        rep,
        noise: g.noise(),
        attempts: g.attempts,
        clean: g.clean(),
        window: g.window,
        detail,
    }
}

fn run_mode(ctx: &mut Ctx<'_>, mode: Mode, rep: usize) -> Result<()> {
    check_interrupt()?;
    let plan = ctx.plan;
    let topology = ctx.topology;
    let active = Active::enter(mode, topology, Sources::Clients, &[])
        .with_context(|| format!("cannot set up the {} mode", mode.name()))?;
    let only = plan.only;
    if only.is_none() {
        tcp_runs(ctx, mode, rep)?;
    }
    if only.is_none() || only == Some(Part::Udp) {
        udp_runs(ctx, mode, rep)?;
    }
    if only.is_none() {
        spread_run(ctx, &active, rep)?;
    }
    if only.is_none() || only == Some(Part::ServerFirst) {
        server_first_run(ctx, &active, rep)?;
    }
    active
        .leave()
        .with_context(|| format!("cannot tear down the {} mode", mode.name()))?;
    thread::sleep(plan.settle);
    Ok(())
}

/// TCP throughput, 1 and 4 streams.
fn tcp_runs(ctx: &mut Ctx<'_>, mode: Mode, rep: usize) -> Result<()> {
    let plan = ctx.plan;
    let client_ns = ctx.topology.ns_name(Side::Client);
    let load_cpu = ctx.load_cpu;
    for (figure, streams) in [(Figure::Tcp1, 1), (Figure::Tcp4, 4)] {
        let g = ctx.guard.measure(
            &label(
                rep,
                plan.reps,
                mode,
                format_args!("TCP, {streams} stream(s)"),
            ),
            || iperf::run(client_ns, plan.tcp_secs, streams, load_cpu),
            |(_, w)| *w,
            |(gbps, _)| format!("{gbps:.2} Gbit/s"),
        )?;
        let s = sample(&g, g.value.0, rep, json!({ "streams": streams }));
        ctx.results.add(mode, figure, s);
    }
    Ok(())
}

/// The UDP 64 B run with its CPU per packet; in the `nat` mode, then the
/// BPF run-time pass and the map memory.
fn udp_runs(ctx: &mut Ctx<'_>, mode: Mode, rep: usize) -> Result<()> {
    let plan = ctx.plan;
    let programs = if mode == Mode::Nat {
        let dir = micro::pin_dir(ctx.topology.ns_name(Side::Nat));
        if ctx.results.map_memory.is_none() {
            ctx.results.map_memory = Some(micro::map_memory(&dir)?);
        }
        Some(micro::programs(&dir)?)
    } else {
        None
    };
    let (pps, cpu_ns) = udp_pps(ctx, mode, rep, plan.reps, "UDP 64 B")?;
    ctx.results.add(mode, Figure::UdpPps, pps);
    ctx.results.add(mode, Figure::CpuPerPacket, cpu_ns);

    if let Some(programs) = &programs {
        let run = bpf_run_time(ctx, programs)?;
        println!(
            "  {:<COLUMN$}nat_egress {:.0} ns/pkt ({} runs), nat_ingress {:.0} ns/pkt ({} runs), fast path {:.0} ns/pkt ({} runs), hairpin {:.0} ns/pkt ({} runs)",
            label(rep, plan.reps, mode, "BPF run time"),
            run.egress_ns,
            run.egress_runs,
            run.ingress_ns,
            run.ingress_runs,
            run.fast_ns,
            run.fast_runs,
            run.hairpin_ns,
            run.hairpin_runs
        );
        ctx.results.bpf.push(run);
    }
    Ok(())
}

/// New TCP connections spread over 32 destinations, the client closing first.
fn spread_run(ctx: &mut Ctx<'_>, active: &Active, rep: usize) -> Result<()> {
    let mode = active.mode();
    let spread = connections(
        ctx,
        active,
        rep,
        ctx.plan.reps,
        Load::Spread,
        "new TCP connections",
    )?;
    for (kind, n) in &spread.failures {
        *ctx.results
            .conn_failures
            .entry(mode)
            .or_default()
            .entry(kind.clone())
            .or_default() += n;
    }
    ctx.results.conn_failures.entry(mode).or_default();
    *ctx.results.conn_slow.entry(mode).or_default() += spread.slow;
    for (figure, s) in spread.samples {
        ctx.results.add(mode, figure, s);
    }
    Ok(())
}

fn server_first_run(ctx: &mut Ctx<'_>, active: &Active, rep: usize) -> Result<()> {
    let mode = active.mode();
    let plan = ctx.plan;
    let load = Load::server_first(ctx.server_first_runs, ctx.server_first_budget);
    let run = connections(ctx, active, rep, plan.reps, load, "server-first, 1 dest")?;
    let tally = ctx.results.server_first.entry(mode).or_default();
    for (kind, n) in &run.failures {
        *tally.failures.entry(kind.clone()).or_default() += n;
    }
    tally.paws_timewait += run.paws_timewait;
    if let Some(c) = run.collisions {
        *tally.collisions.get_or_insert(0) += c;
    }
    for (name, n) in run.nat_counters.iter().flatten() {
        *tally.nat_counters.entry(name.clone()).or_default() += n;
    }
    for (figure, s) in run.samples {
        ctx.results.add(mode, figure, s);
    }
    Ok(())
}

/// One mode's hosts run: `mode` afresh, translating [`hosts::PREFIX`], and
/// the server-first load from its [`hosts::HOSTS`] hosts; in the logged
/// mode, then the deletions' export after it.
fn hosts_run(ctx: &mut Ctx<'_>, mode: Mode, rep: usize) -> Result<()> {
    check_interrupt()?;
    let (plan, topology) = (ctx.plan, ctx.topology);
    let active = Active::enter(mode, topology, Sources::Hosts, &[])
        .with_context(|| format!("cannot set up the {} mode", mode.name()))?;
    let load = Load::server_first(ctx.server_first_runs, ctx.server_first_budget);
    let what = format!("{} hosts, server-first", hosts::HOSTS);
    let run = connections(ctx, &active, rep, plan.reps, load, &what)?;
    let drain = match active.daemon_pid().filter(|_| mode.exports()) {
        Some(pid) => {
            let nat_ns = topology.ns_name(Side::Nat);
            let observer = events::Observer {
                pid,
                nat_ns,
                collector: Some(ctx.collector),
            };
            let before = nat_stats(ctx.nat_bin, nat_ns)?;
            let (delta, peak) = events::drain(&observer)?;
            let after = nat_stats(ctx.nat_bin, nat_ns)?;
            let dropped = counter_deltas(&before, &after)?
                .get("events_dropped")
                .copied()
                .unwrap_or(0);
            println!(
                "  {:<COLUMN$}{}, most {:.0} exported/s in {:.1} s; {dropped} events dropped",
                label(rep, plan.reps, mode, "after the run: the deletions"),
                describe_daemon(&delta, true),
                peak,
                events::DRAIN_POLL.as_secs_f64()
            );
            Some(report::Drain {
                delta,
                peak_exported_per_s: peak,
                dropped,
            })
        }
        None => None,
    };
    active
        .leave()
        .with_context(|| format!("cannot tear down the {} mode", mode.name()))?;
    let runs = &mut ctx.results.hosts;
    let tally = runs.tally.entry(mode).or_default();
    for (kind, n) in &run.failures {
        *tally.failures.entry(kind.clone()).or_default() += n;
    }
    tally.paws_timewait += run.paws_timewait;
    if let Some(c) = run.collisions {
        *tally.collisions.get_or_insert(0) += c;
    }
    for (name, n) in run.nat_counters.iter().flatten() {
        *tally.nat_counters.entry(name.clone()).or_default() += n;
    }
    if let Some(d) = run.daemon {
        runs.daemon.entry(mode).or_default().push(d);
    }
    if let Some(b) = run.blocks_in_use {
        runs.blocks_in_use.entry(mode).or_default().push(b);
    }
    runs.drains.extend(drain);
    for (figure, s) in run.samples {
        runs.samples.entry((mode, figure)).or_default().push(s);
    }
    thread::sleep(plan.settle);
    Ok(())
}

/// One scale point: `mode` afresh, `sessions` live UDP flows, then the UDP
/// rate and the server-first load's connection rate.
fn run_scale(ctx: &mut Ctx<'_>, mode: Mode, sessions: u32, rep: usize) -> Result<()> {
    check_interrupt()?;
    let topology = ctx.topology;
    let nat_ns = topology.ns_name(Side::Nat).to_owned();
    // The fill comes from 8 client addresses: the default per-host limit
    // (32,768) would stop it at 262,144 sessions, and conntrack has none.
    let extra = if mode.is_nat() {
        vec![
            "--max-sessions".to_owned(),
            scale::CAPACITY.to_string(),
            "--max-sessions-per-host".to_owned(),
            "0".to_owned(),
        ]
    } else {
        Vec::new()
    };
    let active = Active::enter(mode, topology, Sources::Clients, &extra)
        .with_context(|| format!("cannot set up the {} mode", mode.name()))?;
    let nat_bin = ctx.nat_bin;
    let filled = scale::fill(topology, sessions, ctx.load_cpu, || {
        if mode.is_nat() {
            let stats = nat_stats(nat_bin, &nat_ns)?;
            stats["sessions"]
                .as_u64()
                .context("nat stats --json has no sessions count")
        } else {
            scale::conntrack_count(&nat_ns)
        }
    })?;
    let reps = ctx.plan.scale_reps;
    let what = format!("{sessions} live");
    println!(
        "  {:<COLUMN$}{} entries after {} pass(es), {:.1} s",
        label(rep, reps, mode, format_args!("{what}: fill")),
        filled.live,
        filled.passes,
        filled.secs
    );
    let fill = json!({
        "sessions": sessions,
        "live_entries": filled.live,
        "fill_passes": filled.passes,
        "fill_secs": filled.secs,
    });
    let (mut pps, _) = udp_pps(ctx, mode, rep, reps, &format!("{what}: UDP 64 B"))?;
    pps.detail["fill"] = fill.clone();
    ctx.results.add_scale(mode, Figure::UdpPps, sessions, pps);
    let load = Load::server_first(ctx.server_first_runs, ctx.server_first_budget);
    let server_first = connections(
        ctx,
        &active,
        rep,
        reps,
        load,
        &format!("{what}: server-first"),
    )?;
    let stop = active
        .leave()
        .with_context(|| format!("cannot tear down the {} mode", mode.name()))?;
    if let Some(stop) = stop {
        println!(
            "  {:<COLUMN$}{:.1} s",
            label(rep, reps, mode, format_args!("{what}: daemon stop")),
            stop.as_secs_f64()
        );
    }
    for (figure, mut s) in server_first.samples {
        s.detail["fill"] = fill.clone();
        s.detail["daemon_stop_secs"] = json!(stop.map(|d| d.as_secs_f64()));
        ctx.results.add_scale(mode, figure, sessions, s);
    }
    thread::sleep(ctx.plan.settle);
    Ok(())
}

/// The UDP 64 B run: (pps, CPU ns per packet) samples.
fn udp_pps(
    ctx: &mut Ctx<'_>,
    mode: Mode,
    rep: usize,
    reps: usize,
    what: &str,
) -> Result<(Sample, Sample)> {
    let (topology, secs, load_cpu) = (ctx.topology, ctx.plan.udp_secs, ctx.load_cpu);
    let g = ctx.guard.measure(
        &label(rep, reps, mode, what),
        || udp::blast(topology, udp::SINK_PORT, secs, load_cpu),
        |b| b.window,
        |b| {
            format!(
                "{:.3} Mpps, {:.0} ns CPU/pkt",
                b.pps() / 1e6,
                b.cpu_ns_per_packet()
            )
        },
    )?;
    let detail = json!({
        "sent": g.value.sent,
        "delivered": g.value.delivered,
        "secs": g.value.secs,
        "delivered_share": g.value.delivered as f64 / g.value.sent.max(1) as f64,
    });
    Ok((
        sample(&g, g.value.pps(), rep, detail.clone()),
        sample(&g, g.value.cpu_ns_per_packet(), rep, detail),
    ))
}

/// A connection run's samples (rate, connect p50, connect p99) and tallies.
struct Connections {
    samples: Vec<(Figure, Sample)>,
    failures: BTreeMap<String, u64>,
    slow: u64,
    /// The NAT's `collisions` counter over the run (None: not a NAT mode).
    collisions: Option<u64>,
    /// Every NAT counter that moved over the run (None: not a NAT mode).
    nat_counters: Option<BTreeMap<String, u64>>,
    /// TcpExt PAWSTimewait of the server namespace over the run.
    paws_timewait: u64,
    /// The NAT daemon's work over the run (None: not a NAT mode).
    daemon: Option<events::Delta>,
    /// Port blocks held right after the run (None: no block was ever taken).
    blocks_in_use: Option<u64>,
}

/// One attempt of a connection run.
struct Attempt {
    run: conn::ConnRun,
    /// NAT counters that moved (None: not a NAT mode).
    counters: Option<BTreeMap<String, u64>>,
    paws: u64,
    /// Keys cooling right after the run.
    cooling: Option<u64>,
    /// blocks_allocated - blocks_released right after the run.
    blocks_in_use: Option<u64>,
    daemon: Option<events::Delta>,
    load: Load,
}

/// A connection run under the noise guard, from `active`'s sources. A
/// server-first `load`'s port is ignored: each attempt takes the next of
/// the server-first ports.
fn connections(
    ctx: &mut Ctx<'_>,
    active: &Active,
    rep: usize,
    reps: usize,
    load: Load,
    what: &str,
) -> Result<Connections> {
    let mode = active.mode();
    let (topology, conn_server) = (ctx.topology, ctx.conn_server);
    let (secs, load_cpu) = (ctx.plan.conn_secs, ctx.load_cpu);
    let nat_ns = topology.ns_name(Side::Nat).to_owned();
    let server_ns = topology.ns_name(Side::Server).to_owned();
    let nat_bin = ctx.nat_bin;
    let sources = active.sources().addrs(topology);
    let observer = active.daemon_pid().map(|pid| events::Observer {
        pid,
        nat_ns: topology.ns_name(Side::Nat),
        collector: mode.exports().then_some(ctx.collector),
    });
    // `nat stats --json`; None outside the NAT modes.
    let nat_figures = || -> Result<Option<Value>> {
        if !mode.is_nat() {
            return Ok(None);
        }
        nat_stats(nat_bin, &nat_ns).map(Some)
    };
    let server_first_runs = &mut ctx.server_first_runs;
    let g = ctx.guard.measure(
        &label(rep, reps, mode, what),
        || {
            // Every attempt of a server-first run gets a server port of its own:
            // a second attempt on the first one's port would meet the keys
            // that attempt left cooling in the NAT (and its TIME_WAIT on
            // the server), and take cooling ports or fail for want of any.
            let load = match load {
                Load::ServerFirst { budget, .. } => {
                    let fresh = Load::server_first(*server_first_runs, budget);
                    *server_first_runs += 1;
                    fresh
                }
                Load::Spread => Load::Spread,
            };
            let before = (
                nat_figures()?,
                nat_tests::tcp_ext(&server_ns, "PAWSTimewait"),
                observer.as_ref().map(events::Observer::read).transpose()?,
            );
            let run = conn::run(topology, sources.clone(), conn_server, load, secs, load_cpu)?;
            let after = (
                observer.as_ref().map(events::Observer::read).transpose()?,
                nat_figures()?,
                nat_tests::tcp_ext(&server_ns, "PAWSTimewait"),
            );
            let counters = match (&before.0, &after.1) {
                (Some(b), Some(a)) => Some(counter_deltas(b, a)?),
                _ => None,
            };
            let count = |stats: &Value, name: &str| stats["counters"][name].as_u64().unwrap_or(0);
            Ok(Attempt {
                run,
                counters,
                paws: after.2.saturating_sub(before.1),
                cooling: after.1.as_ref().map(|a| a["cooling"].as_u64().unwrap_or(0)),
                blocks_in_use: after
                    .1
                    .as_ref()
                    .filter(|a| count(a, "blocks_allocated") > 0)
                    .map(|a| {
                        count(a, "blocks_allocated").saturating_sub(count(a, "blocks_released"))
                    }),
                daemon: before
                    .2
                    .zip(after.0)
                    .map(|(b, a)| events::Delta::between(&b, &a)),
                load,
            })
        },
        |a| a.run.window,
        |a| {
            let c = &a.run;
            format!(
                "{:.0} conn/s, connect p50 {:.2} ms p99 {:.2} ms, {} failed{}{}",
                c.rate(),
                c.connect_ms(0.5),
                c.connect_ms(0.99),
                c.failed,
                a.counters.as_ref().map_or(String::new(), |d| format!(
                    ", {} collisions",
                    d.get("collisions").copied().unwrap_or(0)
                )),
                if a.paws > 0 {
                    format!(", PAWSTimewait {}", a.paws)
                } else {
                    String::new()
                }
            )
        },
    )?;
    let a = &g.value;
    let (c, counters, load) = (&a.run, &a.counters, a.load);
    if let (Some(d), Load::ServerFirst { .. }) = (counters, load) {
        // Next to the run's failures, so that a NAT drop that coincides
        // with a connect timeout shows.
        println!(
            "  {:<COLUMN$}{}",
            "    NAT counters over the kept attempt",
            describe_deltas(d)
        );
    }
    if let Some(d) = &a.daemon {
        println!(
            "  {:<COLUMN$}{}",
            "    daemon over the kept attempt",
            describe_daemon(d, mode.exports())
        );
    }
    let collided = counters
        .as_ref()
        .map(|d| d.get("collisions").copied().unwrap_or(0));
    let translated = match mode {
        Mode::Routing => c.peers.external == 0 && c.peers.other == 0,
        _ => c.peers.internal == 0 && c.peers.other == 0,
    };
    if !translated {
        bail!(
            "{} mode: the server saw {} connections from the NAT's address, {} from internal addresses, {} from elsewhere",
            mode.name(),
            c.peers.external,
            c.peers.internal,
            c.peers.other
        );
    }
    let detail = json!({
        "load": match load {
            Load::Spread => json!("spread: 32 server ports, client closes first"),
            Load::ServerFirst { port, budget } => json!({ "server_port": port, "budget": budget, "close": "server first" }),
        },
        "sources": sources.len(),
        "internal_prefix": active.sources().prefix(),
        "ok": c.ok,
        "failed": c.failed,
        "failures": c.failures,
        "slower_than_900ms": c.slow,
        "secs": c.secs,
        "connect_ms": { "p50": c.connect_ms(0.5), "p90": c.connect_ms(0.9), "p99": c.connect_ms(0.99), "max": c.connect_ms(1.0) },
        "nat_collisions": collided,
        // Every NAT counter and probe bucket that moved during the run.
        "nat_counter_deltas": counters,
        // Keys cooling right after the run: with the server closing first,
        // about one per connection made since the NAT started.
        "nat_cooling_keys_after": a.cooling,
        "nat_blocks_in_use_after": a.blocks_in_use,
        "daemon": a.daemon.map(events::Delta::to_json),
        "server_paws_timewait": a.paws,
        "accepted_from_nat_address": c.peers.external,
        "accepted_from_internal_addresses": c.peers.internal,
    });
    let (rate, p50, p99) = match load {
        Load::Spread => (Figure::ConnRate, Figure::ConnP50, Figure::ConnP99),
        Load::ServerFirst { .. } => (
            Figure::ServerFirstRate,
            Figure::ServerFirstP50,
            Figure::ServerFirstP99,
        ),
    };
    Ok(Connections {
        samples: vec![
            (rate, sample(&g, c.rate(), rep, detail.clone())),
            (p50, sample(&g, c.connect_ms(0.5), rep, detail.clone())),
            (p99, sample(&g, c.connect_ms(0.99), rep, detail)),
        ],
        failures: c.failures.clone(),
        slow: c.slow,
        collisions: collided,
        nat_counters: counters.clone(),
        paws_timewait: a.paws,
        daemon: a.daemon,
        blocks_in_use: a.blocks_in_use,
    })
}

/// The daemon's CPU over a run and, when it exports, the events it read and sent.
fn describe_daemon(d: &events::Delta, exports: bool) -> String {
    let mut line = format!(
        "CPU {:.3} s ({:.1}% of a CPU)",
        d.cpu_s,
        d.cpu_share() * 100.0
    );
    if exports {
        line.push_str(&format!(
            ", {} events read ({:.0}/s), {} exported ({:.0}/s) in {} datagrams, {:.1} µs CPU per event",
            d.read,
            d.read_per_s(),
            d.exported,
            d.exported_per_s(),
            d.datagrams,
            d.cpu_us_per_event()
        ));
    }
    line
}

/// Counters (by name) and probe buckets (as `probes NAME`) of `nat stats
/// --json` that moved from `before` to `after`.
fn counter_deltas(before: &Value, after: &Value) -> Result<BTreeMap<String, u64>> {
    let mut deltas = BTreeMap::new();
    for (section, prefix) in [("counters", ""), ("probes", "probes ")] {
        let (Some(b), Some(a)) = (before[section].as_object(), after[section].as_object()) else {
            bail!("nat stats --json has no {section}");
        };
        for (name, value) in a {
            let was = b.get(name).and_then(Value::as_u64).unwrap_or(0);
            let delta = value.as_u64().unwrap_or(0).saturating_sub(was);
            if delta != 0 {
                deltas.insert(format!("{prefix}{name}"), delta);
            }
        }
    }
    Ok(deltas)
}

/// Counters that count every packet: left out of the printed deltas.
const PER_PACKET: [&str; 5] = [
    "translated_out",
    "translated_in",
    "fast_out",
    "fast_in",
    "pass_external_source",
];

fn describe_deltas(deltas: &BTreeMap<String, u64>) -> String {
    let shown: Vec<String> = deltas
        .iter()
        .filter(|(name, _)| !PER_PACKET.contains(&name.as_str()))
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if shown.is_empty() {
        "none moved".to_owned()
    } else {
        shown.join(", ")
    }
}

/// `nat stats --json` of the instance in `nat_ns`.
fn nat_stats(nat_bin: &Path, nat_ns: &str) -> Result<Value> {
    let out = capture(
        Command::new(nat_bin)
            .arg("--netns")
            .arg(nat_ns)
            .args(["stats", "--json"]),
    )?;
    serde_json::from_str(&out).context("nat stats --json printed no JSON")
}

/// Program run time per packet from a separate UDP pass with
/// kernel.bpf_stats_enabled=1 (its two clock reads per program run would
/// otherwise slow the measured nat run) against an echo server, so that
/// replies exercise the ingress program too.
fn bpf_run_time(ctx: &Ctx<'_>, programs: &micro::Programs) -> Result<BpfRun> {
    let echo = udp::Echo::start(ctx.topology.ns_name(Side::Server), ctx.server_cpu)?;
    let stats = micro::BpfStats::enable()?;
    let read = |id: Option<u64>| id.map(micro::run_stats).transpose();
    let before = [
        read(Some(programs.egress))?,
        read(Some(programs.ingress))?,
        read(programs.fast)?,
        read(programs.hairpin)?,
    ];
    udp::blast(
        ctx.topology,
        udp::ECHO_PORT,
        ctx.plan.stats_secs,
        ctx.load_cpu,
    )?;
    let after = [
        read(Some(programs.egress))?,
        read(Some(programs.ingress))?,
        read(programs.fast)?,
        read(programs.hairpin)?,
    ];
    drop(stats);
    drop(echo);
    let per_run = |i: usize| match (before[i], after[i]) {
        (Some((t0, n0)), Some((t1, n1))) => {
            let runs = n1.saturating_sub(n0);
            let ns = if runs == 0 {
                f64::NAN
            } else {
                t1.saturating_sub(t0) as f64 / runs as f64
            };
            (ns, runs)
        }
        _ => (f64::NAN, 0),
    };
    let (egress_ns, egress_runs) = per_run(0);
    let (ingress_ns, ingress_runs) = per_run(1);
    let (fast_ns, fast_runs) = per_run(2);
    let (hairpin_ns, hairpin_runs) = per_run(3);
    Ok(BpfRun {
        hairpin_ns,
        hairpin_runs,
        egress_ns,
        egress_runs,
        ingress_ns,
        ingress_runs,
        fast_ns,
        fast_runs,
    })
}

fn micro_figures(
    plan: &Plan,
    nat_bench: &Path,
    guard: &mut Guard,
    results: &mut Results,
) -> Result<()> {
    for rep in 0..plan.micro_reps {
        for occupancy in ALLOC_OCCUPANCIES {
            let g = guard.measure(
                &format!(
                    "[{}/{}] nat-bench alloc {occupancy}% occupied",
                    rep + 1,
                    plan.micro_reps
                ),
                || micro::alloc(nat_bench, occupancy, ALLOC_ATTEMPTS),
                |(_, w)| *w,
                |(a, _)| {
                    format!(
                        "{:.3}% ok, median {:.0} ns, p99 {:.0} ns",
                        a.success_pct, a.median_ns, a.p99_ns
                    )
                },
            )?;
            let (noise, clean, attempts) = (g.noise(), g.clean(), g.attempts);
            results.alloc.entry(occupancy).or_default().push(Kept {
                value: g.value.0,
                noise,
                attempts,
                clean,
            });
        }
        for &sessions in plan.sweep_sessions {
            let g = guard.measure(
                &format!(
                    "[{}/{}] nat-bench sweep {sessions} sessions",
                    rep + 1,
                    plan.micro_reps
                ),
                || micro::sweep(nat_bench, sessions),
                |(_, w)| *w,
                |(r, _)| {
                    format!(
                        "sweep {:.3} s CPU (quiet {:.3} s, first {:.3} s), expire {:.3} s CPU",
                        r.scan_cpu_s, r.quiet_cpu_s, r.quiet_first_cpu_s, r.expire_cpu_s
                    )
                },
            )?;
            let (noise, clean, attempts) = (g.noise(), g.clean(), g.attempts);
            results.sweep.entry(sessions).or_default().push(Kept {
                value: g.value.0,
                noise,
                attempts,
                clean,
            });
        }
    }
    Ok(())
}
