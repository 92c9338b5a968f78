//! `nat`: loader daemon and CLI of the in-kernel NAT.

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser as _, error::ErrorKind};

use nat_userspace::{
    cli::{Cli, Command, ForwardCommand},
    config_file::Override,
    load, netns, pins, show,
    tables::Tables,
    unload,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // A config file's keys become flags the command line does not give itself.
    let (argv, overrides) =
        match nat_userspace::config_file::expand_argv(std::env::args_os().collect()) {
            Ok(expanded) => (expanded.argv, expanded.overrides),
            Err(e) => {
                eprintln!("nat: {e}");
                return ExitCode::from(2);
            }
        };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error of ours; --help has the rest.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("nat: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli, &overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `overrides`: the config file's keys the command line set aside, which
/// `nat load` names before it starts.
fn run(cli: Cli, overrides: &[Override]) -> Result<()> {
    // Checking a file needs no privileges.
    if let Command::CheckConfig { file } = &cli.command {
        let args = nat_userspace::config_file::check(file)?;
        println!(
            "nat: {} is valid (iface {}, {} external address(es))",
            file.display(),
            args.iface,
            args.external.len()
        );
        return Ok(());
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
    if let Command::Load(_) = cli.command {
        let mut stdout = std::io::stdout();
        for o in overrides {
            writeln!(stdout, "nat: {o}")?;
        }
    }
    match cli.command {
        Command::Load(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?
            .block_on(load::run(*args, netns)),
        Command::Unload { iface } => unload::run(netns, &iface, netns_gone),
        Command::Sessions(args) => show::sessions(&open(netns, args.iface.as_deref())?, args.json),
        Command::Stats(args) => show::stats(&open(netns, args.iface.as_deref())?, args.json),
        Command::Cooldowns(args) => {
            show::cooldowns(&open(netns, args.iface.as_deref())?, args.json)
        }
        Command::Top {
            show: args,
            limit,
            hosts,
        } => {
            let tables = open(netns, args.iface.as_deref())?;
            if hosts {
                show::top_hosts(&tables, args.json, limit)
            } else {
                show::top(&tables, args.json, limit)
            }
        }
        Command::Get { key, iface, json } => {
            show::get(&open(netns, iface.as_deref())?, key.as_deref(), json)
        }
        Command::Set { key, value, iface } => {
            show::set(&mut open(netns, iface.as_deref())?, &key, &value)
        }
        Command::CheckConfig { .. } => unreachable!("handled before the root check"),
        Command::Reload { iface } => nat_userspace::ops::request_reload(netns, &iface),
        Command::Forward { action } => forward(netns, action),
    }
}

/// `nat forward add|del|list` on the pins of the running NAT.
fn forward(netns: Option<&str>, action: ForwardCommand) -> Result<()> {
    use nat_userspace::port_forward as pf;
    match action {
        ForwardCommand::Add {
            proto,
            external,
            internal,
            iface,
        } => {
            let fwd = pf::parse(&proto, &external, &internal).map_err(anyhow::Error::msg)?;
            pf::add(&pins::resolve(netns, iface.as_deref())?, &fwd)
        }
        ForwardCommand::Del {
            proto,
            external,
            iface,
        } => {
            let proto = pf::parse_proto(&proto).map_err(anyhow::Error::msg)?;
            let (ext, port, count) = pf::parse_endpoint(&external).map_err(anyhow::Error::msg)?;
            if count != 1 {
                bail!("give one port of the forward to delete ({external} is a range)");
            }
            pf::delete(&pins::resolve(netns, iface.as_deref())?, proto, ext, port)
        }
        ForwardCommand::List(args) => {
            pf::list(&pins::resolve(netns, args.iface.as_deref())?, args.json)
        }
    }
}

fn open(netns: Option<&str>, iface: Option<&str>) -> Result<Tables> {
    Tables::open(&pins::resolve(netns, iface)?)
}
