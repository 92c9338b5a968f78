//! `nat forward add|del|list` on the pins of a running NAT.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use nat_common::names::MAP_INTERNAL;

use crate::{
    cli::{ForwardCommand, forward as parse},
    datapath::{
        forward::{Forward, ForwardTable, proto_name},
        pins::{self, PinDir},
        tables::Tables,
    },
};

/// Runs one `nat forward` subcommand on the instance `netns` and `iface` name.
pub fn run(netns: Option<&str>, action: ForwardCommand) -> Result<()> {
    match action {
        ForwardCommand::Add {
            proto,
            external,
            internal,
            iface,
        } => {
            let fwd = parse::parse(&proto, &external, &internal).map_err(anyhow::Error::msg)?;
            add(&pins::resolve(netns, iface.as_deref())?, &fwd)
        }
        ForwardCommand::Del {
            proto,
            external,
            iface,
        } => {
            let proto = parse::parse_proto(&proto).map_err(anyhow::Error::msg)?;
            let (ext, port, count) =
                parse::parse_endpoint(&external).map_err(anyhow::Error::msg)?;
            if count != 1 {
                bail!("give one port of the forward to delete ({external} is a range)");
            }
            delete(&pins::resolve(netns, iface.as_deref())?, proto, ext, port)
        }
        ForwardCommand::List(args) => {
            list(&pins::resolve(netns, args.iface.as_deref())?, args.json)
        }
    }
}

/// `nat forward add`: checked against the running NAT's prefixes and pool.
pub fn add(pins: &PinDir, fwd: &Forward) -> Result<()> {
    let tables = Tables::open(pins)?;
    let external: Vec<Ipv4Addr> = tables
        .pool()?
        .iter()
        .map(|p| Ipv4Addr::from(u32::from_be(p.addr)))
        .collect();
    let prefixes = internal_prefixes(pins)?;
    let inside = |a: Ipv4Addr| prefixes.get(&Key::new(32, u32::from(a).to_be()), 0).is_ok();
    parse::check_one(fwd, inside, &external).map_err(anyhow::Error::msg)?;
    ForwardTable::open(pins)?.add(fwd)?;
    println!("nat: forward {fwd} added");
    Ok(())
}

fn internal_prefixes(pins: &PinDir) -> Result<LpmTrie<MapData, u32, u8>> {
    let path = pins.path(MAP_INTERNAL);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {}", path.display()))?;
    Map::from_map_data(data)?
        .try_into()
        .context("internal prefix map")
}

/// `nat forward del`.
pub fn delete(pins: &PinDir, proto: u8, ext: Ipv4Addr, port: u16) -> Result<()> {
    let fwd = ForwardTable::open(pins)?.delete(proto, ext, port)?;
    println!("nat: forward {fwd} deleted (its open sessions run until they end)");
    Ok(())
}

/// `nat forward list [--json]`.
pub fn list(pins: &PinDir, json: bool) -> Result<()> {
    let forwards = ForwardTable::open(pins)?.list()?;
    if json {
        let items: Vec<serde_json::Value> = forwards
            .iter()
            .map(|f| {
                serde_json::json!({
                    "protocol": proto_name(f.proto),
                    "external": f.ext.to_string(),
                    "external_port": f.ext_port,
                    "internal": f.int.to_string(),
                    "internal_port": f.int_port,
                    "ports": f.count,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if forwards.is_empty() {
        println!("no port forwards");
    }
    for f in forwards {
        println!("{f}");
    }
    Ok(())
}
