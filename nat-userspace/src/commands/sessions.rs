//! `nat sessions` and `nat cooldowns`: the session table and the cooling keys.

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;

use crate::datapath::tables::{SessionView, Tables, TcpSide, boot_ns, endpoint, proto_name};

/// One session as `nat sessions --json` (and `nat lookup --json`) print it.
pub fn session_json(s: &SessionView, now: u64) -> serde_json::Value {
    let mut row = json!({
        "proto": s.proto_name(),
        "internal": s.internal.to_string(),
        "external": s.external.to_string(),
        "remote": s.remote.to_string(),
        "state": s.state.name(),
        "idle_ms": now.saturating_sub(s.last_seen) / 1_000_000,
        "paired": s.paired,
        "mapping": s.mapping_name(),
    });
    if let Some([internal, remote]) = &s.tcp {
        row["tcp"] = json!({ "internal": tcp_side(internal), "remote": tcp_side(remote) });
    }
    row
}

pub fn sessions(tables: &Tables, as_json: bool) -> Result<()> {
    let now = boot_ns();
    let mut list = tables.sessions()?;
    list.sort_by_key(|s| (s.proto, s.internal, s.remote));
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<_> = list.iter().map(|s| session_json(s, now)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<21} {:<21} {:<21} {:<12} {:>8}  MAPPING",
        "PROTO", "INTERNAL", "EXTERNAL", "REMOTE", "STATE", "IDLE"
    )?;
    for s in &list {
        let idle = now.saturating_sub(s.last_seen) as f64 / 1e9;
        writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<21} {:<12} {:>7.1}s  {}",
            s.proto_name(),
            s.internal.to_string(),
            s.external.to_string(),
            s.remote.to_string(),
            s.state.name(),
            idle,
            s.mapping_name()
        )?;
    }
    writeln!(out, "{} session(s)", list.len())?;
    Ok(())
}

/// What one TCP host of a session sent (`null` for what it has not sent
/// in this connection).
fn tcp_side(side: &TcpSide) -> serde_json::Value {
    json!({
        "acked": side.acked.map(|(a, _)| a),
        "window": side.acked.map(|(_, w)| w),
        "window_bytes": side.window_bytes,
        "wscale": side.wscale,
        "sent_end": side.sent_end,
    })
}

pub fn cooldowns(tables: &Tables, as_json: bool) -> Result<()> {
    let now = boot_ns();
    let mut list = tables.cooling(now)?;
    list.sort_by_key(|(_, until)| *until);
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<_> = list
            .iter()
            .map(|(k, until)| {
                json!({
                    "proto": proto_name(k.proto),
                    "external": endpoint(k.saddr, k.sport).to_string(),
                    "remote": endpoint(k.daddr, k.dport).to_string(),
                    "left_ms": (until - now) / 1_000_000,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<21} {:<21} {:>10}",
        "PROTO", "EXTERNAL", "REMOTE", "LEFT"
    )?;
    for (k, until) in &list {
        writeln!(
            out,
            "{:<5} {:<21} {:<21} {:>9.1}s",
            proto_name(k.proto),
            endpoint(k.saddr, k.sport).to_string(),
            endpoint(k.daddr, k.dport).to_string(),
            (until - now) as f64 / 1e9
        )?;
    }
    writeln!(out, "{} cooling key(s)", list.len())?;
    Ok(())
}
