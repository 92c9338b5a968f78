//! `nat reaper-bench`: sweep time and CPU of the reaper over N sessions in
//! real BPF maps (nothing is attached).

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::IterableMap as _;
use nat_common::flow::{FlowKey, PROTO_TCP, Session, seen};
use serde_json::json;

use crate::{
    batch,
    load::{Globals, load_object},
    reaper,
    tables::{Tables, boot_ns},
};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

pub fn run(sessions: u32, as_json: bool) -> Result<()> {
    let mut ebpf = load_object(sessions + 1024, sessions + 1024, Globals::default())?;
    let mut tables = Tables::from_ebpf(&mut ebpf)?;
    let mut cfg = nat_common::config::Config {
        pool_len: 1,
        ..Default::default()
    };
    cfg.timeout_tcp_established_ms = 7_440_000;
    tables.set_config(cfg)?;

    let now = boot_ns();
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
    batch::update_all(tables.fwd.map(), &fwd).context("filling the forward map")?;
    batch::update_all(tables.rev.map(), &rev).context("filling the reverse map")?;
    let fill_s = filled.elapsed().as_secs_f64();
    drop((fwd, rev));

    // A routine sweep: every session is read and checked, none has expired.
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let scan = reaper::sweep(&mut tables, boot_ns())?;
    let (scan_wall, scan_cpu) = (wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);

    // Everything idle past its timeout: each session cools and is deleted.
    let later = boot_ns() + 7_441_000 * 1_000_000;
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let expire = reaper::sweep(&mut tables, later)?;
    let (expire_wall, expire_cpu) = (wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);

    if as_json {
        println!(
            "{}",
            json!({
                "sessions": sessions, "fill_s": fill_s,
                "scan": { "scanned": scan.scanned, "expired": scan.expired, "wall_s": scan_wall, "cpu_s": scan_cpu },
                "expire": { "scanned": expire.scanned, "expired": expire.expired, "wall_s": expire_wall, "cpu_s": expire_cpu },
            })
        );
    } else {
        println!("{sessions} sessions (filled in {fill_s:.2}s)");
        println!(
            "sweep, none expired: {} scanned in {scan_wall:.3}s wall, {scan_cpu:.3}s CPU",
            scan.scanned
        );
        println!(
            "sweep, all expired:  {} expired in {expire_wall:.3}s wall, {expire_cpu:.3}s CPU",
            expire.expired
        );
    }
    Ok(())
}
