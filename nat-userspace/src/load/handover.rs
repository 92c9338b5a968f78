//! Between attach and serve: the daemon that serves an instance is the one
//! its pid file names. A load refuses while another daemon serves the
//! instance, unless `--replace` is given: the new one then names itself in
//! the pid file and tells the old one to exit, which seeing another pid there
//! leaves the datapath alone (even with `--unload-on-exit`).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use log::info;

use crate::{cli::LoadArgs, pidfile};

/// How long a replaced daemon gets to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon serving the instance now, if `--replace` allows taking over
/// from it; refuses with one line if it does not.
pub fn running_daemon(
    args: &LoadArgs,
    netns: Option<&str>,
    scope: &str,
) -> Result<Option<pidfile::Daemon>> {
    let Some(daemon) = pidfile::live(netns, &args.iface) else {
        return Ok(None);
    };
    if !args.replace {
        bail!(
            "a NAT is already loaded on {}{scope} and its daemon (pid {}) is running: pass --replace to take over from it, or stop it first",
            args.iface,
            daemon.pid()
        );
    }
    Ok(Some(daemon))
}

/// Names this process in the pid file, then stops the daemon it replaces;
/// the pid file says what it said before if the claim is dropped unkept.
pub async fn take_over(
    netns: Option<&str>,
    iface: &str,
    old: Option<pidfile::Daemon>,
) -> Result<pidfile::Claim> {
    let claim = pidfile::claim(netns, iface)?;
    let Some(old) = old else {
        return Ok(claim);
    };
    let pid = old.pid();
    info!("taking over from the daemon with pid {pid}");
    let exited = tokio::task::spawn_blocking(move || old.stop(EXIT_TIMEOUT))
        .await
        .context("cannot wait for the replaced daemon")?;
    if !exited {
        bail!(
            "the replaced daemon (pid {pid}) did not exit within {EXIT_TIMEOUT:?}; the new programs run, stop it by hand"
        );
    }
    Ok(claim)
}
