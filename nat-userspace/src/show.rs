//! `nat sessions` and `nat stats`.

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;

use crate::tables::{Tables, boot_ns};

pub fn sessions(tables: &Tables, as_json: bool) -> Result<()> {
    let now = boot_ns();
    let mut list = tables.sessions()?;
    list.sort_by_key(|s| (s.proto, s.internal, s.remote));
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<_> = list
            .iter()
            .map(|s| {
                json!({
                    "proto": s.proto_name(),
                    "internal": s.internal.to_string(),
                    "external": s.external.to_string(),
                    "remote": s.remote.to_string(),
                    "state": s.state.name(),
                    "idle_ms": now.saturating_sub(s.last_seen) / 1_000_000,
                    "paired": s.paired,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<21} {:<21} {:<21} {:<12} {:>8}",
        "PROTO", "INTERNAL", "EXTERNAL", "REMOTE", "STATE", "IDLE"
    )?;
    for s in &list {
        let idle = now.saturating_sub(s.last_seen) as f64 / 1e9;
        writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<21} {:<12} {:>7.1}s",
            s.proto_name(),
            s.internal.to_string(),
            s.external.to_string(),
            s.remote.to_string(),
            s.state.name(),
            idle
        )?;
    }
    writeln!(out, "{} session(s)", list.len())?;
    Ok(())
}

pub fn stats(tables: &Tables, as_json: bool) -> Result<()> {
    let counters = tables.counters()?;
    let sessions = tables.fwd.keys().count();
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut map = serde_json::Map::new();
        for (c, v) in &counters {
            map.insert(c.name().to_string(), json!(v));
        }
        let doc = json!({ "sessions": sessions, "counters": map });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "{:<20} {:>12}  ", "sessions", sessions)?;
    for (c, v) in &counters {
        writeln!(out, "{:<20} {:>12}  {}", c.name(), v, c.help())?;
    }
    Ok(())
}
