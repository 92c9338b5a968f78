//! What booting a VM on another kernel needs besides the host setup: qemu,
//! a kernel image (Debian's, fetched by package name: `kernels`), and
//! virtme-ng in a virtualenv under the tools cache. Every step is idempotent.

use std::fs;
use std::path::{Path, PathBuf};

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{capture, stream};
use crate::kernels::{self, Kernel};
use crate::paths;

/// qemu runs the VM; virtme-ng builds its initramfs with a static busybox,
/// indexes an unpacked kernel's modules with depmod (kmod), reads an
/// image's version with `file`, and finds the guest's console ports
/// through udevd (without it the script's output and exit code are lost);
/// its virtualenv is made with Debian's python3 (python3-venv).
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "file",
    "udev",
    "python3-venv",
];
/// The system interpreter, not whatever `python3` is first on PATH: the
/// virtualenv must not break when a user-level Python is removed.
const PYTHON: &str = "/usr/bin/python3";
const VIRTME_NG_VERSION: &str = "1.42";

/// What booting a test VM needs.
pub struct VmTools {
    /// The directory holding `vng` and the `virtme-run` it calls.
    pub virtme_bin: PathBuf,
    pub kernel: Kernel,
}

/// Installs what is missing; `kernel` is what [`kernels::resolve`] takes.
pub fn run(kernel: &str) -> Result<VmTools> {
    install_packages(VM_PACKAGES)?;
    let kernel = kernels::resolve(kernel)?;
    let virtme_bin = virtme_ng()?;
    println!(
        "setup: vm ok (kernel {}, virtme-ng {VIRTME_NG_VERSION})",
        kernel.label
    );
    Ok(VmTools { virtme_bin, kernel })
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
