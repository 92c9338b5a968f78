//! `nat reload`: the running daemon asked to re-read its config file, which
//! is checked here first.

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::{
    cli::{Cli, Command, config_file, forward},
    daemon::pidfile,
    datapath::pool::check_addresses,
};

/// `nat reload --iface IFACE`: checks the running daemon's config file as it
/// would read it, then sends it SIGHUP. A file that does not check is
/// reported here and the daemon is left alone.
pub fn run(netns: Option<&str>, iface: &str) -> Result<()> {
    use std::os::unix::ffi::OsStringExt as _;

    let Some(daemon) = pidfile::live(netns, iface) else {
        anyhow::bail!("no `nat load` is running for {iface} (no live pid in /run/nat)");
    };
    let pid = daemon.pid();
    let argv: Vec<std::ffi::OsString> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("cannot read the command line of pid {pid}"))?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsString::from_vec(a.to_vec()))
        .collect();
    // A relative --config names a file from the daemon's directory.
    std::env::set_current_dir(format!("/proc/{pid}/cwd"))
        .with_context(|| format!("cannot enter the directory of pid {pid}"))?;
    let expanded = config_file::expand_argv(argv)?;
    let args = match Cli::try_parse_from(expanded.argv) {
        Ok(Cli {
            command: Command::Load(args),
            ..
        }) => args,
        Ok(_) => anyhow::bail!("pid {pid} is not a `nat load`"),
        Err(e) => anyhow::bail!(
            "the daemon's flags with its config file do not parse: {}",
            e.render().to_string().lines().next().unwrap_or_default()
        ),
    };
    let Some(file) = &args.config.config else {
        anyhow::bail!(
            "the daemon for {iface} (pid {pid}) was started without --config: there is no file to re-read"
        );
    };
    check_addresses(&args.external, &args.internal)
        .and_then(|()| forward::check_all(&args.forward, &args.internal, &args.external))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if !daemon.signal(nix::sys::signal::Signal::SIGHUP)? {
        anyhow::bail!("the daemon for {iface} (pid {pid}) exited meanwhile");
    }
    println!("nat: pid {pid} re-reads {}", file.display());
    for o in expanded.overrides {
        println!("nat: {o} (the daemon's command line wins)");
    }
    Ok(())
}
