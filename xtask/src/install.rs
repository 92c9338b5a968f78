//! `cargo xtask install`: the release `nat`, the systemd unit and the example
//! config, in the places the unit expects.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{build_nat, paths};

/// The prefix the unit file in dist/ is written for.
const UNIT_PREFIX: &str = "/usr/local";

pub struct Options {
    /// Installs under this directory instead of / (for packaging).
    pub root: PathBuf,
    pub prefix: PathBuf,
}

pub fn run(opts: &Options) -> Result<()> {
    let bin = build_nat::build(true)?.nat;
    let repo = paths::workspace_root();
    let under = |p: &Path| opts.root.join(p.strip_prefix("/").unwrap_or(p));
    let sbin = under(&opts.prefix.join("sbin"));
    let units = under(Path::new("/etc/systemd/system"));
    let etc = under(Path::new("/etc/nat"));
    for dir in [&sbin, &units, &etc] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Replaced by rename, so a running daemon keeps its old binary until restarted.
    let target = sbin.join("nat");
    let staged = sbin.join(".nat.new");
    std::fs::copy(&bin, &staged).with_context(|| format!("cannot copy to {}", staged.display()))?;
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot install {}", target.display()))?;
    println!("install: {}", target.display());

    let unit = std::fs::read_to_string(repo.join("dist/nat@.service"))
        .context("cannot read dist/nat@.service")?
        .replace(
            &format!("{UNIT_PREFIX}/sbin/nat"),
            &opts.prefix.join("sbin/nat").to_string_lossy(),
        );
    let unit_path = units.join("nat@.service");
    std::fs::write(&unit_path, unit)
        .with_context(|| format!("cannot write {}", unit_path.display()))?;
    println!("install: {}", unit_path.display());

    // The example never overwrites a config in use: it has a name of its own.
    let example = etc.join("nat.toml.example");
    std::fs::copy(repo.join("examples/nat.toml"), &example)
        .with_context(|| format!("cannot write {}", example.display()))?;
    println!("install: {}", example.display());

    if opts.root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        let ok = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("install: `systemctl daemon-reload` failed; run it by hand");
        }
    }
    println!(
        "install: next: cp /etc/nat/nat.toml.example /etc/nat/IFACE.toml, edit it, `nat check-config` it, then systemctl enable --now nat@IFACE"
    );
    Ok(())
}
