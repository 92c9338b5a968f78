//! `nat-bench sweep`: time and CPU of one run of the kernel sweep over N
//! sessions in real BPF maps (nothing is attached, the timer is not armed).
//! The sweep runs in the kernel through BPF_PROG_TEST_RUN, so its CPU is
//! this process's system time; the program's own run time (the kernel's
//! clock around each test run, which leaves out the system calls and, the
//! runs not being preempted, time given to other tasks) is printed too, and
//! is the steadier figure on a loaded machine. Each run has the daemon's budgets (deletions
//! and entries looked at), so the figures include what bounding a run costs.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Result, ensure};
use nat_common::{
    config::Config,
    flow::{FlowKey, PROTO_TCP, Session, seen},
};
use nat_userspace::{
    daemon::sweep::{self, Sweep},
    datapath::{
        object::{Globals, load_object},
        sweep::{DAEMON_BUDGET, DAEMON_SCAN, KernelSweep},
        tables::{Tables, boot_ns},
    },
};
use serde_json::json;

/// Age of every session's last packet: past the shortest timeout, so the
/// sweep reads both entries of each session as it would in a table of
/// quiet but live flows.
const IDLE_NS: u64 = 30_000_000_000;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// One full sweep with its wall and CPU seconds.
fn timed(sweeper: &KernelSweep, ebpf: &aya::Ebpf) -> Result<(Sweep, f64, f64)> {
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let s = sweep::sweep(sweeper, ebpf, &std::sync::atomic::AtomicBool::new(false))?;
    Ok((s, wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
}

pub fn run(sessions: u32, as_json: bool) -> Result<()> {
    // Twice as many cooldowns as sessions, as the defaults have.
    let mut ebpf = load_object(sessions + 1024, 2 * sessions + 1024, Globals::default())?;
    let sweeper = KernelSweep::load(&mut ebpf, 0, DAEMON_BUDGET, DAEMON_SCAN)?;
    let mut tables = Tables::from_ebpf(&mut ebpf)?;
    let mut cfg = Config {
        pool_len: 1,
        ..Default::default()
    };
    cfg.timeout_tcp_established_ms = 7_440_000;
    tables.set_config(cfg)?;

    let now = boot_ns().saturating_sub(IDLE_NS);
    let ext = u32::from(Ipv4Addr::new(198, 18, 0, 1)).to_be();
    let (mut fwd, mut rev) = (
        Vec::with_capacity(sessions as usize),
        Vec::with_capacity(sessions as usize),
    );
    for i in 0..sessions {
        let block = i / 50_000;
        let port = (10_000 + i % 50_000) as u16;
        let internal = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + block;
        let remote = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + block;
        let key = FlowKey::new(
            PROTO_TCP,
            internal.to_be(),
            port.to_be(),
            remote.to_be(),
            443u16.to_be(),
        );
        let out = Session {
            addr: ext,
            port: port.to_be(),
            seen: seen::SYN.into(),
            last_seen: now,
            ..Session::default()
        };
        let back = Session {
            addr: key.saddr,
            port: key.sport,
            seen: seen::SYN_ACK.into(),
            last_seen: now,
            ..Session::default()
        };
        rev.push((key.translated(ext, out.port), back));
        fwd.push((key, out));
    }
    let filled = Instant::now();
    tables.fill_sessions(&fwd, &rev)?;
    let fill_s = filled.elapsed().as_secs_f64();
    drop((fwd, rev));

    // Sweeps that expire none. Quiet: idle past the shortest timeout but
    // not its own. The first sweep that sees a quiet session reads both of
    // its entries and stamps the forward one with how long it is proven
    // live; the routine sweeps after it read the forward entry alone (until
    // the stamp runs out, at most 17 s later: a quiet session costs one
    // full read per 10-17 s). Busy: every session was seen within the
    // shortest timeout, so its forward entry alone clears it.
    let quiet_first = timed(&sweeper, &ebpf)?;
    let quiet = timed(&sweeper, &ebpf)?;
    let busy_cfg = Config {
        timeout_tcp_closed_ms: 2 * IDLE_NS / 1_000_000,
        timeout_icmp_ms: 2 * IDLE_NS / 1_000_000,
        ..cfg
    };
    tables.set_config(busy_cfg)?;
    let busy = timed(&sweeper, &ebpf)?;
    for (name, (s, _, _)) in [
        ("busy", &busy),
        ("first quiet", &quiet_first),
        ("quiet", &quiet),
    ] {
        ensure!(
            s.expired == 0 && s.scanned == u64::from(sessions),
            "the {name} sweep expired {} and scanned {} of {sessions} live sessions",
            s.expired,
            s.scanned
        );
    }

    // The established timeout drops below their idle time (a live setting):
    // each session cools and is deleted, stamps or not (stamps written
    // under other timeouts are not trusted).
    cfg.timeout_tcp_established_ms = IDLE_NS / 2_000_000;
    tables.set_config(cfg)?;
    let expire = timed(&sweeper, &ebpf)?;
    let cooling = tables.cooldown_entries()?.len();
    ensure!(
        expire.0.expired == u64::from(sessions)
            && cooling == sessions as usize
            && tables.forward_entries()?.is_empty(),
        "the expiring sweep expired {} of {sessions} sessions and left {cooling} cooling",
        expire.0.expired
    );

    let report = |(s, wall, cpu): &(Sweep, f64, f64)| json!({ "scanned": s.scanned, "expired": s.expired, "runs": s.runs, "wall_s": wall, "cpu_s": cpu, "program_s": s.program.as_secs_f64() });
    if as_json {
        println!(
            "{}",
            json!({
                "sessions": sessions, "fill_s": fill_s,
                // "scan" is the busy sweep, as before the quiet one was added.
                "scan": report(&busy), "scan_quiet_first": report(&quiet_first),
                "scan_quiet": report(&quiet), "expire": report(&expire),
            })
        );
    } else {
        println!("{sessions} sessions (filled in {fill_s:.2}s)");
        for (name, (s, wall, cpu)) in [
            ("none expired, busy:       ", &busy),
            ("none expired, first quiet:", &quiet_first),
            ("none expired, quiet:      ", &quiet),
            ("all expired:              ", &expire),
        ] {
            println!(
                "sweep, {name} {} scanned, {} expired in {} runs, {wall:.3}s wall, {cpu:.3}s CPU, \
                 {:.3}s in the program",
                s.scanned,
                s.expired,
                s.runs,
                s.program.as_secs_f64()
            );
        }
    }
    Ok(())
}
