//! `nat lookup internal ADDR` and `nat lookup external ADDR:PORT`: who holds
//! an external port, or what an internal host holds, as the maps say now.
//! Each allocation mode answers from its own record (the port blocks, the
//! deterministic formula); port forwards and the sessions now are listed
//! in every mode. Under `walk` an external port is shared by hosts toward
//! different destinations, so only a session (its remote) names one.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::Result;
use nat_common::config::allocation;
use serde_json::{Value, json};

use crate::{
    cli::LookupCommand,
    commands::{
        blocks::{block_json, ports_text, seconds_ago},
        sessions::session_json,
    },
    datapath::{
        clock,
        forward::{Forward, ForwardTable, proto_name as forward_proto},
        ownership::{self, BlockRow, DetShare, Deterministic},
        pins::{self, PinDir},
        tables::{SessionView, Tables, boot_ns},
    },
};

pub fn run(netns: Option<&str>, what: LookupCommand) -> Result<()> {
    match what {
        LookupCommand::Internal { addr, show } => {
            let pins = pins::resolve(netns, show.iface.as_deref())?;
            internal(&pins, addr, show.json)
        }
        LookupCommand::External { endpoint, show } => {
            let pins = pins::resolve(netns, show.iface.as_deref())?;
            external(&pins, endpoint, show.json)
        }
    }
}

/// What `internal` holds now.
pub fn internal(pins: &PinDir, internal: Ipv4Addr, as_json: bool) -> Result<()> {
    let tables = Tables::open(pins)?;
    let mode = tables.config()?.allocation;
    let now = boot_ns();
    let blocks = ownership::blocks_of(&tables, internal)?;
    let share = match mode {
        allocation::DETERMINISTIC => Deterministic::read(&tables)?.share(internal),
        _ => None,
    };
    let forwards: Vec<Forward> = ForwardTable::open(pins)?
        .list()?
        .into_iter()
        .filter(|f| f.int == internal)
        .collect();
    let mut sessions: Vec<SessionView> = tables
        .sessions()?
        .into_iter()
        .filter(|s| *s.internal.ip() == internal)
        .collect();
    sessions.sort_by_key(|s| (s.proto, s.internal, s.remote));
    let mut out = std::io::stdout().lock();
    if as_json {
        let doc = json!({
            "internal": internal.to_string(),
            "allocation": ownership::allocation_name(mode),
            "blocks": blocks.iter().map(|b| block_json(b, now)).collect::<Vec<_>>(),
            "deterministic": share.map(|s| share_json(&s)),
            "forwards": forwards.iter().map(forward_json).collect::<Vec<_>>(),
            "sessions": sessions.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{internal} (allocation {})",
        ownership::allocation_name(mode)
    )?;
    if mode == allocation::BLOCKS || !blocks.is_empty() {
        if blocks.is_empty() {
            writeln!(out, "blocks:        none")?;
        }
        for b in &blocks {
            writeln!(out, "block:         {}", block_text(b, now, false))?;
        }
    }
    if mode == allocation::DETERMINISTIC {
        match share {
            Some(s) => writeln!(
                out,
                "deterministic: {}:{}-{} (every port of the range, whenever this layout holds)",
                s.external, s.port_min, s.port_max
            )?,
            None => writeln!(out, "deterministic: none (outside the numbered prefixes)")?,
        }
    }
    for f in &forwards {
        writeln!(out, "forward:       {f}")?;
    }
    write_sessions(&mut out, &sessions, now)
}

/// Who holds `endpoint` now.
pub fn external(pins: &PinDir, endpoint: SocketAddrV4, as_json: bool) -> Result<()> {
    let tables = Tables::open(pins)?;
    let mode = tables.config()?.allocation;
    let (addr, port) = (*endpoint.ip(), endpoint.port());
    let in_pool = tables
        .pool()?
        .iter()
        .any(|p| p.addr == u32::from(addr).to_be());
    let now = boot_ns();
    let block = ownership::block_at(&tables, addr, port)?;
    let det = match mode {
        allocation::DETERMINISTIC => {
            let det = Deterministic::read(&tables)?;
            // The owner's share holds the port by construction; it is
            // printed so the reader sees the whole range the host has.
            Some(
                det.owner(addr, port)
                    .and_then(|host| Some((host, det.share(host)?))),
            )
        }
        _ => None,
    };
    let forwards: Vec<(Forward, SocketAddrV4)> = ForwardTable::open(pins)?
        .list()?
        .into_iter()
        .filter(|f| f.ext == addr && f.ext_port <= port && u32::from(port) <= f.last_ext())
        .map(|f| {
            (
                f,
                SocketAddrV4::new(f.int, f.int_port + (port - f.ext_port)),
            )
        })
        .collect();
    let mut sessions: Vec<SessionView> = tables
        .sessions()?
        .into_iter()
        .filter(|s| s.external == endpoint)
        .collect();
    sessions.sort_by_key(|s| (s.proto, s.internal, s.remote));
    let mut out = std::io::stdout().lock();
    if as_json {
        let doc = json!({
            "external": endpoint.to_string(),
            "allocation": ownership::allocation_name(mode),
            "in_pool": in_pool,
            "block": block.as_ref().map(|b| block_json(b, now)),
            "deterministic": det.flatten().map(|(host, share)| {
                let mut v = share_json(&share);
                v["host"] = json!(host.to_string());
                v
            }),
            "forwards": forwards
                .iter()
                .map(|(f, to)| json!({
                    "protocol": forward_proto(f.proto),
                    "internal": to.to_string(),
                    "forward": f.to_string(),
                }))
                .collect::<Vec<_>>(),
            "sessions": sessions.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    write!(
        out,
        "{endpoint} (allocation {})",
        ownership::allocation_name(mode)
    )?;
    if !in_pool {
        write!(out, ", not an address of the pool")?;
    }
    writeln!(out)?;
    match &block {
        Some(b) => writeln!(out, "block:         {}", block_text(b, now, true))?,
        None if mode == allocation::BLOCKS => writeln!(out, "block:         none holds it now")?,
        None => {}
    }
    match det {
        Some(Some((host, s))) => writeln!(
            out,
            "deterministic: {host} (its range {}:{}-{}, whenever this layout holds)",
            s.external, s.port_min, s.port_max
        )?,
        Some(None) => writeln!(
            out,
            "deterministic: nobody (the port lies in no host's range)"
        )?,
        None => {}
    }
    for (f, to) in &forwards {
        writeln!(
            out,
            "forward:       {} to {to} (forward {f})",
            forward_proto(f.proto)
        )?;
    }
    write_sessions(&mut out, &sessions, now)
}

/// A block in one line: its range, since when and sessions, after its
/// owner when the reader asked about the port.
fn block_text(b: &BlockRow, now: u64, owner: bool) -> String {
    let held = format!(
        "{}:{} since {} ({} s ago), {} session(s)",
        b.external,
        ports_text(b),
        clock::rfc3339(clock::wall_ns(b.since)),
        seconds_ago(b.since, now),
        b.sessions
    );
    if owner {
        format!("held by {}: {held}", b.host)
    } else {
        held
    }
}

fn write_sessions(out: &mut impl std::io::Write, sessions: &[SessionView], now: u64) -> Result<()> {
    writeln!(out, "sessions now:  {}", sessions.len())?;
    for s in sessions {
        writeln!(
            out,
            "  {:<4} {} -> {} -> {}  {}, idle {:.1} s",
            s.proto_name(),
            s.internal,
            s.external,
            s.remote,
            s.state.name(),
            now.saturating_sub(s.last_seen) as f64 / 1e9
        )?;
    }
    Ok(())
}

fn share_json(s: &DetShare) -> Value {
    json!({
        "index": s.index,
        "external": s.external.to_string(),
        "port_min": s.port_min,
        "port_max": s.port_max,
    })
}

fn forward_json(f: &Forward) -> Value {
    json!({
        "protocol": forward_proto(f.proto),
        "external": f.ext.to_string(),
        "external_port": f.ext_port,
        "internal_port": f.int_port,
        "ports": f.count,
    })
}
