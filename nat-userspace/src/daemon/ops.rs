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
use log::{info, warn};
use signal_hook::{consts::SIGHUP, iterator::Signals};

use crate::{
    cli::{config_file, plan::Plan},
    daemon::{export, fast_path::FastPath, metrics::Metrics, notify, reload::Reloader},
    datapath::pins::PinDir,
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
    /// `ext_addrs` is the loaded object's NAT_EXT_ADDRS map, `fast` and
    /// `export` what [`Reloader::new`] takes.
    pub fn start(
        plan: &Plan,
        pins: &PinDir,
        ext_addrs: Map,
        fast: FastPath,
        export: export::Control,
        hangups: Hangups,
    ) -> Result<Self> {
        let metrics = Metrics::start(&plan.serve.metrics, pins, export.counters())?;
        let mut reloader = Reloader::new(pins, ext_addrs, plan, fast, export)?;
        let has_config = plan.serve.config_file.is_some();
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
        notify::ready(&format!("translating on {}", plan.target.iface));
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
