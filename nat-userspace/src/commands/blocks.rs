//! `nat blocks`: the port blocks handed to internal hosts (allocation
//! blocks), one row per block.

use std::io::Write as _;

use anyhow::Result;
use nat_common::config::allocation;
use serde_json::json;

use crate::datapath::{
    clock,
    ownership::{self, BlockRow},
    tables::{Tables, boot_ns},
};

pub fn blocks(tables: &Tables, as_json: bool) -> Result<()> {
    let cfg = tables.config()?;
    let rows = ownership::block_rows(&tables.blocks()?, &cfg, &tables.pool()?);
    let now = boot_ns();
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows.iter().map(|r| block_json(r, now)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<15} {:<15} {:<11} {:>8} {:>10}  SINCE (UTC)",
        "HOST", "EXTERNAL", "PORTS", "SESSIONS", "SINCE"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<15} {:<15} {:<11} {:>8} {:>8} s  {}",
            r.host.to_string(),
            r.external.to_string(),
            ports_text(r),
            r.sessions,
            seconds_ago(r.since, now),
            clock::rfc3339(clock::wall_ns(r.since))
        )?;
    }
    write!(out, "{} block(s)", rows.len())?;
    if cfg.allocation != allocation::BLOCKS {
        write!(
            out,
            " (allocation is {}: it hands out none)",
            ownership::allocation_name(cfg.allocation)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// Whole seconds from boot-clock time `since` to `now`.
pub fn seconds_ago(since: u64, now: u64) -> u64 {
    now.saturating_sub(since) / 1_000_000_000
}

/// A block's ports as `LO-HI`, or its index when the range as it is now
/// has no such block.
pub fn ports_text(r: &BlockRow) -> String {
    match r.ports {
        Some((lo, hi)) => format!("{lo}-{hi}"),
        None => format!("block {}", r.index),
    }
}

/// A block as `nat blocks --json` and `nat lookup --json` print it: since
/// when as seconds ago, boot-clock nanoseconds (the maps' and the event
/// records' clock) and wall-clock time (UTC).
pub fn block_json(r: &BlockRow, now: u64) -> serde_json::Value {
    json!({
        "host": r.host.to_string(),
        "external": r.external.to_string(),
        "block": r.index,
        "port_min": r.ports.map(|p| p.0),
        "port_max": r.ports.map(|p| p.1),
        "sessions": r.sessions,
        "since_s": seconds_ago(r.since, now),
        "since_boot_ns": r.since,
        "since_utc": clock::rfc3339(clock::wall_ns(r.since)),
    })
}
