//! What `cargo xtask test --kernel` needs besides the host setup: qemu, a
//! kernel image (installed from Debian by package name), and virtme-ng in a
//! virtualenv under the tools cache. Every step is idempotent.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{capture, stream};
use crate::paths;

/// qemu runs the VM; virtme-ng builds its initramfs with a static busybox;
/// its virtualenv is made with Debian's python3 (python3-venv).
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "python3-venv"];
/// The system interpreter, not whatever `python3` is first on PATH: the
/// virtualenv must not break when a user-level Python is removed.
const PYTHON: &str = "/usr/bin/python3";
const VIRTME_NG_VERSION: &str = "1.42";

/// What booting a test VM needs.
pub struct VmTools {
    /// The directory holding `vng` and the `virtme-run` it calls.
    pub virtme_bin: PathBuf,
    pub kernel_image: PathBuf,
}

/// Installs what is missing; `kernel` is a version (`6.1`, `6.1.0-57-amd64`)
/// or the path of a kernel image.
pub fn run(kernel: &str) -> Result<VmTools> {
    install_packages(VM_PACKAGES)?;
    let kernel_image = kernel_image(kernel)?;
    let virtme_bin = virtme_ng()?;
    println!(
        "setup: vm ok (kernel {}, virtme-ng {VIRTME_NG_VERSION})",
        kernel_image.display()
    );
    Ok(VmTools {
        virtme_bin,
        kernel_image,
    })
}

fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    let still: Vec<&str> = missing
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    ensure!(
        still.is_empty(),
        "setup: vm FAILED: still not installed: {}; fix: apt-get install -y {}",
        still.join(" "),
        still.join(" ")
    );
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    stream(
        Command::new("apt-get")
            // Other jobs on the machine may hold the dpkg lock for a while.
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn package_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

/// A path is used as given; a version is looked for in /boot, and installed
/// from Debian's `linux-image-VERSION*-amd64` packages when it is not there.
fn kernel_image(kernel: &str) -> Result<PathBuf> {
    if kernel.contains('/') {
        let path = PathBuf::from(kernel);
        ensure!(path.is_file(), "no kernel image at {}", path.display());
        return Ok(path);
    }
    if let Some(image) = installed_image(kernel) {
        return Ok(image);
    }
    let package = match image_package(kernel)? {
        Some(p) => p,
        None => {
            apt(&["update"])?;
            image_package(kernel)?.with_context(|| {
                format!(
                    "no Debian package linux-image-{kernel}*-amd64 (see `apt-cache search linux-image`); give a kernel image path instead"
                )
            })?
        }
    };
    println!("setup: installing {package}");
    apt(&["install", "-y", "--no-install-recommends", &package])?;
    installed_image(kernel)
        .with_context(|| format!("{package} is installed but /boot has no vmlinuz-{kernel}*"))
}

/// The newest `/boot/vmlinuz-VERSION*` whose version starts with `kernel`
/// followed by a separator (`6.1` matches `6.1.0-57-amd64`, not `6.10.0`).
fn installed_image(kernel: &str) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?;
            version_matches(version, kernel).then(|| (version_key(version), e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

fn version_matches(version: &str, wanted: &str) -> bool {
    version
        .strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-']))
}

/// Numeric fields of a version, so that 6.1.0-57 sorts after 6.1.0-6.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest plain amd64 image package for `kernel` in apt's lists (the
/// signed or unsigned build, not cloud, rt or debug symbols).
fn image_package(kernel: &str) -> Result<Option<String>> {
    let listing = capture(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^linux-image-{}", regex_escape(kernel)),
    ]))?;
    let mut found: Vec<(Vec<u64>, String)> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let version = name.strip_prefix("linux-image-")?;
            let flavour = version
                .strip_suffix("-amd64")
                .or_else(|| version.strip_suffix("-amd64-unsigned"))?;
            (version_matches(version, kernel)
                && !flavour.ends_with("-cloud")
                && !flavour.ends_with("-rt"))
            .then(|| (version_key(flavour), name.to_owned()))
        })
        .collect();
    found.sort();
    Ok(found.pop().map(|(_, name)| name))
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = ".+*?()[]{}|^$\\".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// virtme-ng from PyPI in its own virtualenv, pinned so every run boots the same way.
fn virtme_ng() -> Result<PathBuf> {
    let venv = paths::tools_cache()?.join("virtme-ng");
    let bin = venv.join("bin");
    if virtme_ng_works(&bin) {
        return Ok(bin);
    }
    println!(
        "setup: installing virtme-ng {VIRTME_NG_VERSION} in {}",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    stream(Command::new(PYTHON).args(["-m", "venv"]).arg(&venv))?;
    stream(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )?;
    if !virtme_ng_works(&bin) {
        bail!(
            "virtme-ng was installed in {} but `vng --version` does not report {VIRTME_NG_VERSION}; remove that directory and retry",
            venv.display()
        );
    }
    Ok(bin)
}

fn virtme_ng_works(bin: &Path) -> bool {
    capture(Command::new(bin.join("vng")).arg("--version"))
        .is_ok_and(|out| out.contains(VIRTME_NG_VERSION))
}

#[cfg(test)]
mod tests {
    use super::{version_key, version_matches};

    #[test]
    fn versions_match_on_a_separator() {
        assert!(version_matches("6.1.0-57-amd64", "6.1"));
        assert!(version_matches("6.1.0-57-amd64", "6.1.0-57-amd64"));
        assert!(!version_matches("6.10.0-1-amd64", "6.1"));
        assert!(version_key("6.1.0-57-amd64") > version_key("6.1.0-6-amd64"));
    }
}
