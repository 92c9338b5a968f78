//! What the daemon does for its operator besides the datapath: metrics,
//! reloads of the config file on SIGHUP, and systemd notifications. The
//! loader catches SIGHUP first thing ([`catch_hangups`]), calls
//! [`Ops::start`] once attached, and feeds it sweep durations.
//!
//! Reloads run on a thread of their own with map handles of their own, so
//! a SIGHUP is answered at once whatever the daemon's loop is busy with.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::Map;
use clap::Parser as _;
use log::{info, warn};
use signal_hook::{consts::SIGHUP, iterator::Signals};

use crate::{
    cli::LoadArgs, config_file, load::FastPath, metrics::Metrics, notify, pins::PinDir,
    pool::Reloader,
};

/// SIGHUP, caught from the start of `nat load` (its default action would
/// end the daemon) and answered once [`Ops::start`] runs.
pub struct Hangups(Signals);

pub fn catch_hangups() -> Result<Hangups> {
    Ok(Hangups(
        Signals::new([SIGHUP]).context("cannot install SIGHUP handler")?,
    ))
}

pub struct Ops {
    metrics: Option<Metrics>,
    reloads: signal_hook::iterator::Handle,
    reloader: Option<std::thread::JoinHandle<()>>,
}

impl Ops {
    /// Starts the metrics server and the reload thread and tells systemd
    /// the NAT is ready; call it after the programs are attached.
    /// `ext_addrs` is the loaded object's NAT_EXT_ADDRS map.
    /// `fixed` and `fast` are what [`Reloader::new`] takes.
    pub fn start(
        args: &LoadArgs,
        pins: &PinDir,
        ext_addrs: Map,
        fixed: Vec<(&'static str, String)>,
        fast: FastPath,
        hangups: Hangups,
    ) -> Result<Self> {
        let metrics = Metrics::start(&args.metrics, pins)?;
        let mut reloader = Reloader::new(pins, ext_addrs, args, fixed, fast)?;
        let has_config = args.config.config.is_some();
        let Hangups(mut signals) = hangups;
        let reloads = signals.handle();
        let reloader = std::thread::Builder::new()
            .name("nat-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    reload(&mut reloader, has_config);
                }
            })
            .context("cannot start the reload thread")?;
        notify::ready(&format!("translating on {}", args.iface));
        Ok(Self {
            metrics,
            reloads,
            reloader: Some(reloader),
        })
    }

    /// Feeds the metrics with how long an expiry sweep took.
    pub fn observe_sweep(&self, took: Duration) {
        if let Some(m) = &self.metrics {
            m.observe_sweep(took);
        }
    }

    pub fn stopping(&self) {
        notify::stopping();
    }
}

impl Drop for Ops {
    /// Waits for a reload in progress: it may be moving the fast path's
    /// links, which the stop phase (or a successor) must find settled.
    fn drop(&mut self) {
        self.reloads.close();
        if let Some(thread) = self.reloader.take() {
            let _ = thread.join();
        }
    }
}

/// SIGHUP: re-reads the config file and applies what can change live. A
/// file that does not check leaves everything as it was.
fn reload(reloader: &mut Reloader, has_config: bool) {
    if !has_config {
        warn!("reload: started without --config, nothing to re-read");
        return;
    }
    notify::reloading();
    let applied = config_file::reread().and_then(|(args, overrides)| {
        // Every time: an edit of such a key in the file is not applied.
        for o in overrides {
            info!("reload: {o}");
        }
        reloader.apply(&args)
    });
    match applied {
        Ok(change) => info!("reload: {change}"),
        Err(e) => warn!("reload failed, nothing changed: {e:#}"),
    }
    notify::ready("reloaded");
}

/// `nat reload --iface IFACE`: checks the running daemon's config file as it
/// would read it, then sends it SIGHUP. A file that does not check is
/// reported here and the daemon is left alone.
pub fn request_reload(netns: Option<&str>, iface: &str) -> Result<()> {
    use std::os::unix::ffi::OsStringExt as _;

    let Some(daemon) = crate::pidfile::live(netns, iface) else {
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
    let args = match crate::cli::Cli::try_parse_from(expanded.argv) {
        Ok(crate::cli::Cli {
            command: crate::cli::Command::Load(args),
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
    crate::pool::check_addresses(&args.external, &args.internal)
        .and_then(|()| {
            crate::port_forward::check_all(&args.forward, &args.internal, &args.external)
        })
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
