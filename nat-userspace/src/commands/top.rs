//! `nat top`: the destinations nearest port exhaustion, or with `--hosts`
//! the internal hosts holding the most sessions.

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;

use crate::datapath::{
    pressure::port_pressure,
    tables::{Tables, boot_ns, endpoint, proto_name},
};

pub fn top(tables: &Tables, as_json: bool, limit: usize) -> Result<()> {
    let now = boot_ns();
    let mut rows = port_pressure(
        tables.reverse_entries()?.into_iter().map(|(k, _)| k),
        &tables.cooling(now)?,
        &tables.pool()?,
    );
    rows.truncate(limit);
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "external": endpoint(r.external, 0).ip().to_string(),
                    "proto": proto_name(r.proto),
                    "destination": endpoint(r.daddr, r.dport).to_string(),
                    "in_use": r.in_use,
                    "cooling": r.cooling,
                    "capacity": r.capacity,
                    "used_pct": (r.used * 1000.0).round() / 10.0,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<15} {:<5} {:<21} {:>7} {:>7} {:>7} {:>6}",
        "EXTERNAL", "PROTO", "DESTINATION", "IN_USE", "COOLING", "FREE", "USED"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<15} {:<5} {:<21} {:>7} {:>7} {:>7} {:>5.1}%",
            endpoint(r.external, 0).ip().to_string(),
            proto_name(r.proto),
            endpoint(r.daddr, r.dport).to_string(),
            r.in_use,
            r.cooling,
            r.capacity.saturating_sub(r.in_use + r.cooling),
            r.used * 100.0
        )?;
    }
    Ok(())
}

/// `nat top --hosts`: the internal hosts holding the most sessions.
pub fn top_hosts(tables: &Tables, as_json: bool, limit: usize) -> Result<()> {
    let cap = tables.config()?.max_sessions_per_host;
    let mut rows = tables.host_counts()?;
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.truncate(limit);
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(host, n)| {
                json!({
                    "host": host.to_string(),
                    "sessions": n,
                    "limit": cap,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<15} {:>9} {:>9} {:>6}",
        "HOST", "SESSIONS", "LIMIT", "USED"
    )?;
    for (host, n) in &rows {
        let (limit_text, used) = match cap {
            0 => ("none".to_owned(), "-".to_owned()),
            c => (
                c.to_string(),
                format!("{:.1}%", *n as f64 * 100.0 / f64::from(c)),
            ),
        };
        writeln!(
            out,
            "{:<15} {:>9} {:>9} {:>6}",
            host.to_string(),
            n,
            limit_text,
            used
        )?;
    }
    Ok(())
}
