//! `nat sessions` and `nat stats`.

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;

use std::collections::{HashMap, HashSet};

use nat_common::{
    config::PoolAddr,
    flow::FlowKey,
    probe::{probe_bucket_label, span},
};

use crate::{
    settings::{self, SETTINGS, Setting},
    tables::{Tables, TcpSide, boot_ns, endpoint, proto_name},
};

pub fn sessions(tables: &Tables, as_json: bool) -> Result<()> {
    let now = boot_ns();
    let mut list = tables.sessions()?;
    list.sort_by_key(|s| (s.proto, s.internal, s.remote));
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<_> = list
            .iter()
            .map(|s| {
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
                    row["tcp"] =
                        json!({ "internal": tcp_side(internal), "remote": tcp_side(remote) });
                }
                row
            })
            .collect();
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

pub fn stats(tables: &Tables, as_json: bool) -> Result<()> {
    let counters = tables.counters()?;
    let sessions = tables.forward_entries()?.len();
    let cooling = tables.cooling(boot_ns())?.len();
    let histogram = tables.probe_histogram()?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut map = serde_json::Map::new();
        for (c, v) in &counters {
            map.insert(c.name().to_string(), json!(v));
        }
        let mut probes = serde_json::Map::new();
        for (b, v) in histogram.iter().enumerate() {
            probes.insert(probe_bucket_label(b as u32).to_string(), json!(v));
        }
        let doc =
            json!({ "sessions": sessions, "cooling": cooling, "counters": map, "probes": probes });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "{:<22} {:>12}", "sessions", sessions)?;
    writeln!(out, "{:<22} {:>12}", "cooling keys", cooling)?;
    for (c, v) in &counters {
        writeln!(out, "{:<22} {:>12}  {}", c.name(), v, c.help())?;
    }
    write!(out, "probes per allocation:")?;
    for (b, v) in histogram.iter().enumerate() {
        write!(out, "  {}:{v}", probe_bucket_label(b as u32))?;
    }
    writeln!(out)?;
    Ok(())
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

/// Ports in use and cooling toward one destination on one external address.
#[derive(Clone, Debug, Default)]
pub struct PressureRow {
    /// Network byte order, as in the maps.
    pub external: u32,
    pub proto: u8,
    pub daddr: u32,
    pub dport: u16,
    pub in_use: u64,
    /// Cooling and not held by a session.
    pub cooling: u64,
    /// Ports in the external address's range.
    pub capacity: u64,
    /// (in_use + cooling) / capacity.
    pub used: f64,
}

/// Port pressure per (external address, protocol, destination), fullest
/// first, from the reverse keys and the cooling keys.
pub fn port_pressure(
    rev_keys: impl IntoIterator<Item = FlowKey>,
    cooling: &[(FlowKey, u64)],
    pool: &[PoolAddr],
) -> Vec<PressureRow> {
    let mut per: HashMap<(u32, u8, u32, u16), (u64, u64)> = HashMap::new();
    // A key both live and cooling (a reopened session) counts as in use
    // only. Cooling keys are usually far fewer than sessions, so those are
    // the ones put in a set.
    let cooling_keys: HashSet<FlowKey> = cooling.iter().map(|(k, _)| *k).collect();
    let mut both: HashSet<FlowKey> = HashSet::new();
    for k in rev_keys {
        per.entry((k.saddr, k.proto, k.daddr, k.dport))
            .or_default()
            .0 += 1;
        if !cooling_keys.is_empty() && cooling_keys.contains(&k) {
            both.insert(k);
        }
    }
    for k in cooling_keys.iter().filter(|k| !both.contains(k)) {
        per.entry((k.saddr, k.proto, k.daddr, k.dport))
            .or_default()
            .1 += 1;
    }
    let spans: HashMap<u32, u64> = pool
        .iter()
        .map(|p| (p.addr, span(p.port_min, p.port_max) as u64))
        .collect();
    let mut rows: Vec<PressureRow> = per
        .into_iter()
        .map(|((external, proto, daddr, dport), (in_use, cooling))| {
            let capacity = spans.get(&external).copied().unwrap_or(0).max(1);
            PressureRow {
                external,
                proto,
                daddr,
                dport,
                in_use,
                cooling,
                capacity,
                used: (in_use + cooling) as f64 / capacity as f64,
            }
        })
        .collect();
    // Fullest first; ties in a fixed order, so `nat top` and the metrics agree.
    rows.sort_by(|a, b| {
        b.used.total_cmp(&a.used).then(
            (a.external, a.proto, a.daddr, a.dport).cmp(&(b.external, b.proto, b.daddr, b.dport)),
        )
    });
    rows
}

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

pub fn get(tables: &Tables, key: Option<&str>, as_json: bool) -> Result<()> {
    let cfg = tables.config()?;
    let chosen: Vec<&Setting> = match key {
        Some(k) => vec![settings::find(k).map_err(anyhow::Error::msg)?],
        None => SETTINGS.iter().collect(),
    };
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut map = serde_json::Map::new();
        for s in &chosen {
            map.insert(s.name.to_string(), s.json(&cfg));
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&map)?)?;
    } else if let [one] = chosen.as_slice()
        && key.is_some()
    {
        writeln!(out, "{}", one.format(&cfg))?;
    } else {
        for s in &chosen {
            writeln!(out, "{:<24} {:<12} {}", s.name, s.format(&cfg), s.help)?;
        }
    }
    Ok(())
}

pub fn set(tables: &mut Tables, key: &str, value: &str) -> Result<()> {
    let setting = settings::find(key).map_err(anyhow::Error::msg)?;
    let v = setting.parse(value).map_err(anyhow::Error::msg)?;
    let mut cfg = tables.config()?;
    setting.apply(&mut cfg, v);
    tables.set_config(cfg)?;
    writeln!(
        std::io::stdout(),
        "{} = {}",
        setting.name,
        setting.format(&cfg)
    )?;
    Ok(())
}
