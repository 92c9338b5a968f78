//! `nat stats`: the counters and the allocation histogram.

use std::io::Write as _;

use anyhow::Result;
use nat_common::probe::probe_bucket_label;
use serde_json::json;

use crate::datapath::tables::{Tables, boot_ns};

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
