//! `nat sessions` and `nat stats`.

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;

use std::collections::{BTreeMap, HashMap, HashSet};

use nat_common::probe::{probe_bucket_label, span};

use crate::{
    settings::{self, SETTINGS, Setting},
    tables::{Tables, boot_ns, endpoint, proto_name},
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

/// Ports in use and cooling per (external address, protocol, destination).
#[derive(Default)]
struct Pressure {
    in_use: u64,
    cooling: u64,
}

pub fn top(tables: &Tables, as_json: bool, limit: usize) -> Result<()> {
    let now = boot_ns();
    let mut per: BTreeMap<(u32, u8, u32, u16), Pressure> = BTreeMap::new();
    let mut live = HashSet::new();
    for (k, _) in tables.reverse_entries()? {
        per.entry((k.saddr, k.proto, k.daddr, k.dport))
            .or_default()
            .in_use += 1;
        live.insert(k);
    }
    for (k, _) in tables.cooling(now)? {
        if !live.contains(&k) {
            per.entry((k.saddr, k.proto, k.daddr, k.dport))
                .or_default()
                .cooling += 1;
        }
    }
    let spans: HashMap<u32, u64> = tables
        .pool()?
        .iter()
        .map(|p| (p.addr, span(p.port_min, p.port_max) as u64))
        .collect();
    let mut rows: Vec<_> = per
        .into_iter()
        .map(|((ext, proto, daddr, dport), p)| {
            let capacity = spans.get(&ext).copied().unwrap_or(0).max(1);
            let used = (p.in_use + p.cooling) as f64 / capacity as f64;
            (ext, proto, daddr, dport, p, capacity, used)
        })
        .collect();
    rows.sort_by(|a, b| b.6.total_cmp(&a.6));
    rows.truncate(limit);
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(ext, proto, daddr, dport, p, cap, used)| {
                json!({
                    "external": endpoint(*ext, 0).ip().to_string(),
                    "proto": proto_name(*proto),
                    "destination": endpoint(*daddr, *dport).to_string(),
                    "in_use": p.in_use,
                    "cooling": p.cooling,
                    "capacity": cap,
                    "used_pct": (used * 1000.0).round() / 10.0,
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
    for (ext, proto, daddr, dport, p, cap, used) in &rows {
        writeln!(
            out,
            "{:<15} {:<5} {:<21} {:>7} {:>7} {:>7} {:>5.1}%",
            endpoint(*ext, 0).ip().to_string(),
            proto_name(*proto),
            endpoint(*daddr, *dport).to_string(),
            p.in_use,
            p.cooling,
            cap.saturating_sub(p.in_use + p.cooling),
            used * 100.0
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
