//! CPU accounting: the noise guard, CPU per packet, and pinning.
//!
//! Every measurement runs inside a [`Snapshot`]..[`Window`] pair. The window
//! says how much CPU the whole machine spent (from `/proc/stat`, all CPUs),
//! how much of it our own processes spent (this process with all its
//! threads, and its children: iperf3, the NAT), and how much *other*
//! processes spent. The latter is what the guard acts on. It is measured two
//! ways, and the larger one counts:
//!
//! - directly: the CPU time of every other user-space process (utime+stime,
//!   plus cutime+cstime so short-lived processes that were reaped inside the
//!   window, e.g. a compiler run, are not missed), plus steal time;
//! - by elimination, as the brief suggests: busy − softirq − irq − ours.
//!   This kernel accounts CPU time by ticks (no IRQ_TIME_ACCOUNTING), so
//!   softirq work done in our threads' context (the whole veth forwarding
//!   path) is in our stime *and* in the softirq column: the difference
//!   underestimates others' load, which is why the direct count exists. It
//!   still catches busy kernel threads (e.g. another run tearing down
//!   namespaces), which the direct count leaves out.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// A measurement during which other processes took more than this share of
/// the machine's CPU capacity is measured again.
pub const FOREIGN_LIMIT: f64 = 0.15;

/// `PF_KTHREAD` in the flags field of /proc/<pid>/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The `cpu` line of /proc/stat, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
    steal: u64,
}

impl CpuTimes {
    fn read() -> Result<CpuTimes> {
        let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no `cpu` line")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 8 {
            bail!("/proc/stat: short `cpu` line: {line}");
        }
        Ok(CpuTimes {
            user: f[0],
            nice: f[1],
            system: f[2],
            idle: f[3],
            iowait: f[4],
            irq: f[5],
            softirq: f[6],
            steal: f[7],
        })
    }

    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    fn minus(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The CPU online count, from the per-CPU lines of /proc/stat.
pub fn cpu_count() -> Result<usize> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let n = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Ok(n.max(1))
}

/// Pins the calling thread (and whatever it spawns afterwards) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} does not fit in a CPU set"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("cannot pin to CPU {cpu}"))
}

/// One process's times from /proc/<pid>/stat, in USER_HZ ticks.
#[derive(Debug, Clone, Copy)]
struct ProcTimes {
    ppid: i32,
    kthread: bool,
    /// utime + stime + cutime + cstime: its own time and that of the
    /// children it reaped, so time moves to the parent, not away, when a
    /// child exits.
    ticks: u64,
}

fn read_proc(pid: i32) -> Option<ProcTimes> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state): field n is rest[n - 3].
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcTimes {
        ppid: rest.get(1)?.parse().ok()?,
        kthread: field(9)? & PF_KTHREAD != 0,
        ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

fn all_processes() -> HashMap<i32, ProcTimes> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect()
}

/// The state of the machine's CPU accounting at one instant.
pub struct Snapshot {
    at: Instant,
    cpu: CpuTimes,
    own: u64,
    foreign: u64,
}

impl Snapshot {
    pub fn take() -> Result<Snapshot> {
        let me = std::process::id() as i32;
        let procs = all_processes();
        let ours = |pid: i32, p: &ProcTimes| pid == me || p.ppid == me;
        let own = procs
            .iter()
            .filter(|(pid, p)| ours(**pid, p))
            .map(|(_, p)| p.ticks)
            .sum();
        let foreign = procs
            .iter()
            .filter(|(pid, p)| !ours(**pid, p) && !p.kthread)
            .map(|(_, p)| p.ticks)
            .sum();
        Ok(Snapshot {
            at: Instant::now(),
            cpu: CpuTimes::read()?,
            own,
            foreign,
        })
    }

    /// Everything between this snapshot and now.
    pub fn finish(&self) -> Result<Window> {
        let end = Snapshot::take()?;
        let d = end.cpu.minus(&self.cpu);
        Ok(Window {
            secs: end.at.duration_since(self.at).as_secs_f64(),
            total: d.total(),
            busy: d.busy(),
            system: d.system,
            softirq: d.softirq,
            irq: d.irq,
            steal: d.steal,
            own: end.own.saturating_sub(self.own),
            foreign: end.foreign.saturating_sub(self.foreign),
        })
    }
}

/// CPU time spent between two snapshots, in USER_HZ ticks, all CPUs.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub secs: f64,
    /// Capacity: every CPU's ticks, idle included.
    pub total: u64,
    pub busy: u64,
    pub system: u64,
    pub softirq: u64,
    pub irq: u64,
    pub steal: u64,
    /// This process and its children.
    pub own: u64,
    /// Every other user-space process.
    pub foreign: u64,
}

impl Window {
    fn share(&self, ticks: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            ticks as f64 / self.total as f64
        }
    }

    /// Other processes' CPU time plus steal, as a share of the capacity.
    pub fn foreign_share(&self) -> f64 {
        self.share(self.foreign + self.steal)
    }

    /// busy − softirq − irq − ours, as a share of the capacity.
    pub fn unexplained_share(&self) -> f64 {
        self.share(
            self.busy
                .saturating_sub(self.softirq + self.irq)
                .saturating_sub(self.own),
        )
    }

    /// The share of the machine other work took: what the guard acts on.
    pub fn noise(&self) -> f64 {
        self.foreign_share().max(self.unexplained_share())
    }

    pub fn clean(&self) -> bool {
        self.noise() <= FOREIGN_LIMIT
    }

    /// System plus softirq time in nanoseconds, for CPU per packet.
    pub fn kernel_ns(&self) -> f64 {
        (self.system + self.softirq) as f64 * 1e9 / clock_ticks_per_second()
    }

    pub fn to_json(self) -> Value {
        json!({
            "secs": self.secs,
            "ticks_total": self.total,
            "ticks_busy": self.busy,
            "ticks_system": self.system,
            "ticks_softirq": self.softirq,
            "ticks_irq": self.irq,
            "ticks_steal": self.steal,
            "ticks_own": self.own,
            "ticks_other_processes": self.foreign,
            "other_share": self.foreign_share(),
            "unexplained_share": self.unexplained_share(),
        })
    }
}

/// utime + stime of process `pid`, all its threads, in seconds.
pub fn process_cpu_s(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let rest: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default();
    // As in read_proc: field n is rest[n - 3]; utime is 14, stime 15.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = field(14)
        .zip(field(15))
        .map(|(u, s)| u + s)
        .with_context(|| format!("{path}: no utime and stime"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// USER_HZ, the unit of /proc/stat and /proc/<pid>/stat.
fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}
