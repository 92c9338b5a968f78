//! The kernel expiry sweep (nat-ebpf/src/flows/sweep.rs) from user space: loads
//! the program, sets its interval and budget, runs it through
//! BPF_PROG_TEST_RUN and reads what it did from its per-CPU totals.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use nat_common::{
    names::{MAP_SWEEP_CTL, MAP_SWEEP_STATS, MAP_SWEEP_STOP, PROG_SWEEP},
    sweep::{SWEEP_TOTALS, SweepControl, SweepTotal, TIMER_SCAN_BUDGET, phase},
};

/// Runs one sweep asks for at most: far more than the largest table needs
/// at [`DAEMON_BUDGET`] deletions or [`DAEMON_SCAN`] entries a run.
const MAX_RUNS: u32 = 4096;

/// Deletions per run of the daemon's sweep. A stop does not wait for a
/// run (NAT_SWEEP_STOP ends it at the next entry), so runs are as long as
/// the CPU they hold in one go allows: 262,144 deletions take some 0.25 s.
/// Fewer, longer runs are cheaper: every run walks the hash buckets from
/// the first one again (bpf_for_each_map_elem cannot start elsewhere), and
/// with 16,384 a run, expiring 1,000,000 sessions took 62 runs and 1.7 s
/// instead of 4 runs and under 1 s.
pub const DAEMON_BUDGET: u32 = 262_144;

/// Entries one run of the daemon's sweep looks at, at most (some 0.1 s
/// when they are live): a run looks at 1,000,000 entries in one go, a
/// larger table takes more runs. Kept that large because a resumed run
/// passes over, one cache miss each, every entry the earlier runs of its
/// sweep looked at: with 262,144 a run, the four runs of a sweep over
/// 1,000,000 live sessions cost three times as much as one.
pub const DAEMON_SCAN: u32 = 1 << 20;

/// A test run of a TC program needs a packet of at least an Ethernet
/// header; its first four bytes are the resume token the sweep starts from.
const FRAME_LEN: usize = 64;

/// Running totals of the sweep over all CPUs, indexed by [`SweepTotal`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals([u64; SWEEP_TOTALS as usize]);

impl Totals {
    pub fn get(&self, total: SweepTotal) -> u64 {
        self.0[total as usize]
    }

    /// What happened from `earlier` to `self`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        let mut out = Totals::default();
        for (i, v) in out.0.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        out
    }
}

/// What one run of the sweep program did.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// The token the next run resumes from; 0 ([`phase::DONE`]): the sweep
    /// is complete.
    pub next: u32,
    /// What it did (a timer run on another CPU meanwhile is counted too).
    pub totals: Totals,
    /// How long the program ran, by the kernel's clock.
    pub program: Duration,
}

pub struct KernelSweep {
    stats: PerCpuArray<MapData, u64>,
    stop: Option<Array<MapData, u32>>,
    budget: u32,
    scan: u32,
}

/// Ends the daemon's sweep run in progress at its next entry, from another
/// thread than the one that runs it.
pub struct StopSwitch(Array<MapData, u32>);

impl StopSwitch {
    pub fn pull(&mut self) -> Result<()> {
        self.0
            .set(0, 1, 0)
            .context("cannot write the sweep stop map")
    }
}

impl KernelSweep {
    /// Loads the sweep program into the kernel and takes its maps out of
    /// `ebpf`; `interval_ms` is how often the timer sweeps once no daemon
    /// does (0: never); `budget` the deletions per run of this process's
    /// sweeps (0: the kernel default the timer's runs use), `scan` the
    /// entries one run looks at (0: no limit).
    /// The timer is armed by the first [`KernelSweep::run`].
    pub fn load(ebpf: &mut Ebpf, interval_ms: u64, budget: u32, scan: u32) -> Result<Self> {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_SWEEP)
            .context("sweep program missing from the object")?
            .try_into()?;
        prog.load()
            .context("the kernel rejected the expiry sweep program")?;
        let mut ctl: Array<MapData, SweepControl> = ebpf
            .take_map(MAP_SWEEP_CTL)
            .context("map NAT_SWEEP_CTL missing from the object")?
            .try_into()
            .context("sweep control map")?;
        let stats = ebpf
            .take_map(MAP_SWEEP_STATS)
            .context("map NAT_SWEEP_STATS missing from the object")?
            .try_into()
            .context("sweep stats map")?;
        let stop = ebpf
            .take_map(MAP_SWEEP_STOP)
            .context("map NAT_SWEEP_STOP missing from the object")?
            .try_into()
            .context("sweep stop map")?;
        let control = SweepControl {
            interval_ns: interval_ms.saturating_mul(1_000_000),
            budget: 0,
            timer_scan: TIMER_SCAN_BUDGET,
        };
        ctl.set(0, control, 0)
            .context("cannot write the sweep control map")?;
        Ok(Self {
            stats,
            stop: Some(stop),
            budget,
            scan,
        })
    }

    /// The switch that ends a run of this sweep early; there is one.
    pub fn stop_switch(&mut self) -> Result<StopSwitch> {
        self.stop
            .take()
            .map(StopSwitch)
            .context("the sweep's stop switch was taken already")
    }

    pub fn totals(&self) -> Result<Totals> {
        let mut out = Totals::default();
        for (i, v) in out.0.iter_mut().enumerate() {
            *v = self
                .stats
                .get(&(i as u32), 0)
                .context("cannot read the sweep totals")?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// One full sweep: runs the program until it reports that it walked
    /// everything, and returns what it did meanwhile (a timer run on another
    /// CPU meanwhile is counted too). `stop` ends it early between two runs
    /// (each is bounded by its budgets, and the stop switch ends the one in
    /// progress), so a stopping daemon waits for one entry of one run at
    /// most; the next sweep, or the timer, walks everything again.
    /// Also returns how long the program itself ran (the kernel's own
    /// clock around each BPF_PROG_TEST_RUN, without the system calls).
    pub fn run(&self, ebpf: &Ebpf, stop: &AtomicBool) -> Result<(Totals, Duration)> {
        let before = self.totals()?;
        let mut program = Duration::ZERO;
        let mut token = phase::DONE as u32;
        for _ in 0..MAX_RUNS {
            if stop.load(Ordering::Relaxed) {
                return Ok((self.totals()?.since(&before), program));
            }
            let run = self.run_once(ebpf, token)?;
            program += run.program;
            token = run.next;
            if token == phase::DONE as u32 {
                return Ok((self.totals()?.since(&before), program));
            }
        }
        bail!("the expiry sweep did not finish in {MAX_RUNS} runs")
    }

    /// One run of the sweep program from the resume token `token` (0: a
    /// new sweep), with this sweep's budgets.
    pub fn run_once(&self, ebpf: &Ebpf, token: u32) -> Result<Run> {
        let prog: &SchedClassifier = ebpf
            .program(PROG_SWEEP)
            .context("sweep program missing from the object")?
            .try_into()?;
        let before = self.totals()?;
        let mut frame = [0u8; FRAME_LEN];
        frame[..4].copy_from_slice(&token.to_ne_bytes());
        frame[4..8].copy_from_slice(&self.scan.to_ne_bytes());
        frame[8..12].copy_from_slice(&self.budget.to_ne_bytes());
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: 1,
                ..Default::default()
            })
            .context("cannot run the expiry sweep (BPF_PROG_TEST_RUN)")?;
        // The token the next run resumes from: a phase in the low bits.
        let next = result.return_value;
        match (next & 3) as u8 {
            phase::DONE if next == 0 => {}
            phase::COOLDOWNS | phase::SESSIONS | phase::ORPHANS => {}
            _ => bail!("the expiry sweep returned {next}, not a resume token"),
        }
        Ok(Run {
            next,
            totals: self.totals()?.since(&before),
            program: result.duration,
        })
    }
}
