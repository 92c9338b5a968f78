//! `nat`: loader daemon and CLI of the in-kernel NAT.

mod cli;
mod load;
mod netns;
mod pidfile;
mod pins;
mod reaper;
mod show;
mod tables;
mod unload;

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    tables::Tables,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it loads BPF programs and reads pinned maps)");
    }
    // Before any other thread exists: every thread started later inherits it.
    if let Some(ns) = &cli.netns {
        netns::enter(ns)?;
    }
    let netns = cli.netns.as_deref();
    match cli.command {
        Command::Load(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?
            .block_on(load::run(args, netns)),
        Command::Unload { iface } => unload::run(netns, &iface),
        Command::Sessions(args) => {
            let tables = Tables::open(&pins::resolve(netns, args.iface.as_deref())?)?;
            show::sessions(&tables, args.json)
        }
        Command::Stats(args) => {
            let tables = Tables::open(&pins::resolve(netns, args.iface.as_deref())?)?;
            show::stats(&tables, args.json)
        }
    }
}
