//! The subcommands of `nat`, one module each, and the dispatch from the
//! parsed command line. `nat load` runs the daemon (`crate::daemon`).

pub mod blocks;
pub mod check_config;
pub mod forward;
pub mod lookup;
pub mod reload;
pub mod sessions;
pub mod settings;
pub mod stats;
pub mod top;
pub mod unload;

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};

use crate::{
    cli::{Cli, Command, config_file::Override},
    datapath::{netns, pins, tables::Tables},
};

/// Runs the parsed command line. `overrides`: the config file's keys the
/// command line set aside, which `nat load` names before it starts.
pub fn run(cli: Cli, overrides: &[Override]) -> Result<()> {
    // Checking a file needs no privileges.
    if let Command::CheckConfig { file } = &cli.command {
        return check_config::run(file);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it loads BPF programs and reads pinned maps)");
    }
    // Before any other thread exists: every thread started later inherits it.
    // An instance whose namespace was deleted can still be unloaded: its pins
    // are in the root bpffs.
    let mut netns_gone = false;
    if let Some(ns) = &cli.netns {
        netns_gone = matches!(cli.command, Command::Unload { .. }) && !netns::exists(ns)?;
        if !netns_gone {
            netns::enter(ns)?;
        }
    }
    let netns = cli.netns.as_deref();
    match cli.command {
        Command::Load(args) => {
            let mut stdout = std::io::stdout();
            for o in overrides {
                writeln!(stdout, "nat: {o}")?;
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?
                .block_on(crate::daemon::load::run(*args, netns))
        }
        Command::Unload { iface } => unload::run(netns, &iface, netns_gone),
        Command::Sessions(args) => {
            sessions::sessions(&open(netns, args.iface.as_deref())?, args.json)
        }
        Command::Stats(args) => stats::stats(&open(netns, args.iface.as_deref())?, args.json),
        Command::Cooldowns(args) => {
            sessions::cooldowns(&open(netns, args.iface.as_deref())?, args.json)
        }
        Command::Top {
            show: args,
            limit,
            hosts,
        } => {
            let tables = open(netns, args.iface.as_deref())?;
            if hosts {
                top::top_hosts(&tables, args.json, limit)
            } else {
                top::top(&tables, args.json, limit)
            }
        }
        Command::Get { key, iface, json } => {
            settings::get(&open(netns, iface.as_deref())?, key.as_deref(), json)
        }
        Command::Set { key, value, iface } => {
            settings::set(&mut open(netns, iface.as_deref())?, &key, &value)
        }
        Command::CheckConfig { .. } => unreachable!("handled before the root check"),
        Command::Reload { iface } => reload::run(netns, &iface),
        Command::Forward { action } => forward::run(netns, action),
        Command::Blocks(args) => blocks::blocks(&open(netns, args.iface.as_deref())?, args.json),
        Command::Lookup { what } => lookup::run(netns, what),
    }
}

fn open(netns: Option<&str>, iface: Option<&str>) -> Result<Tables> {
    Tables::open(&pins::resolve(netns, iface)?)
}
