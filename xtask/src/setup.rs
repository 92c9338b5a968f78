//! Brings the machine to the state a task needs, and no further: building
//! needs only the Rust side (nightly with rust-src, the cached bpf-linker),
//! which installs without root; running the NAT (tests, demo, bench) also
//! needs root, the Debian packages and bpffs. Every step is idempotent and
//! cheap when already satisfied, so the tasks run it each time.

use std::fmt;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::unistd::geteuid;

use crate::cmd::{capture, describe, stream};
use crate::paths;

/// ip/tc, nft, iperf3, ethtool, bpftool, tcpdump, sysctl, ping for ICMP
/// checks, a STUN client and server for the NAT-behaviour test,
/// systemd-analyze to rate the shipped unit, setpriv and nsenter to run
/// the daemon with the unit's capabilities, and the decoders the
/// compliance export is checked with (tshark's IPFIX dissector; nfcapd
/// and nfdump).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "systemd",
    "util-linux",
    "nftables",
    "iperf3",
    "ethtool",
    "bpftool",
    "tcpdump",
    "procps",
    "iputils-ping",
    "prometheus",
    "stun-client",
    "stun-server",
    "tshark",
    "nfdump",
];
/// tshark's package asks whether non-root users may capture; the answer,
/// given before apt runs, keeps the install non-interactive (no, as
/// the default: the tests capture as root).
const DEBCONF_PRESEED: &str = "wireshark-common wireshark-common/install-setuid boolean false\n";
/// What rustc needs from the system to link host binaries; checked, never
/// installed, because installing it needs root and building must not.
const BUILD_PACKAGES: &str = "gcc libc6-dev";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";

enum Outcome {
    AlreadyThere,
    Installed,
}

/// Why a step failed and what the user can do about it; printed as one line.
struct Failure {
    reason: String,
    fix: String,
}

fn fail(reason: impl Into<String>, fix: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// A failed step, rendered as the single line the user needs.
#[derive(Debug)]
pub struct SetupError(String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// The steps that passed without installing anything, reported as one line
/// at the end so that a ready machine costs the reader a single line.
#[derive(Default)]
struct Steps {
    ok: Vec<&'static str>,
}

impl Steps {
    fn run(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<Outcome, Failure>,
    ) -> Result<(), SetupError> {
        match f() {
            Ok(Outcome::AlreadyThere) => {
                self.ok.push(name);
                Ok(())
            }
            Ok(Outcome::Installed) => {
                println!("setup: {name} installed");
                Ok(())
            }
            Err(Failure { reason, fix }) => Err(SetupError(format!(
                "setup: {name} FAILED: {reason}; fix: {fix}"
            ))),
        }
    }

    fn report(self) {
        if !self.ok.is_empty() {
            println!("setup: ok ({})", self.ok.join(", "));
        }
    }
}

/// What building needs: no root, no apt.
pub fn for_build() -> Result<(), SetupError> {
    let mut steps = Steps::default();
    toolchain(&mut steps)?;
    steps.report();
    Ok(())
}

/// What running the NAT needs on top of building; `task` names the task in
/// the message when not root.
pub fn for_running(task: &str) -> Result<(), SetupError> {
    let mut steps = Steps::default();
    steps.run("root", || check_root(task))?;
    system(&mut steps)?;
    toolchain(&mut steps)?;
    steps.report();
    Ok(())
}

/// `cargo xtask setup`: the build side first, which works without root, so a
/// non-root user gets that far and learns what the rest needs.
pub fn everything() -> Result<(), SetupError> {
    let mut build = Steps::default();
    toolchain(&mut build)?;
    build.report();
    let mut running = Steps::default();
    running.run("root", || check_root("setup"))?;
    system(&mut running)?;
    running.report();
    Ok(())
}

fn toolchain(steps: &mut Steps) -> Result<(), SetupError> {
    steps.run("C linker", c_linker)?;
    steps.run("nightly toolchain", nightly_toolchain)?;
    steps.run("rust-src", rust_src)?;
    steps.run("bpf-linker", bpf_linker)
}

fn system(steps: &mut Steps) -> Result<(), SetupError> {
    steps.run("debian packages", debian_packages)?;
    steps.run("bpffs", bpffs)
}

/// rustc links host binaries (build scripts, xtask, nat) through `cc`.
fn c_linker() -> Result<Outcome, Failure> {
    match capture(Command::new("cc").arg("--version")) {
        Ok(_) => Ok(Outcome::AlreadyThere),
        Err(e) => Err(fail(
            format!("{e:#}"),
            format!("install a C toolchain, e.g. `sudo apt-get install {BUILD_PACKAGES}`"),
        )),
    }
}

/// apt, bpffs, network namespaces and BPF programs all need root.
fn check_root(task: &str) -> Result<Outcome, Failure> {
    if geteuid().is_root() {
        Ok(Outcome::AlreadyThere)
    } else {
        Err(fail(
            format!(
                "`cargo xtask {task}` needs root (it installs packages, mounts bpffs, creates network namespaces and loads BPF programs)"
            ),
            format!(
                "run `sudo -E cargo xtask {task}`; `cargo xtask build` and `cargo xtask lint` work without root"
            ),
        ))
    }
}

fn debian_packages() -> Result<Outcome, Failure> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::AlreadyThere);
    }
    println!("setup: installing {}", missing.join(" "));
    let fix = format!(
        "install them by hand: apt-get update && apt-get install -y {}",
        missing.join(" ")
    );
    stream(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| fail(format!("{e:#}"), fix.clone()))?;
    preseed().map_err(|e| fail(format!("debconf-set-selections: {e}"), fix.clone()))?;
    stream(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| fail(format!("{e:#}"), fix.clone()))?;
    let still_missing: Vec<&str> = missing
        .into_iter()
        .filter(|package| !package_installed(package))
        .collect();
    if !still_missing.is_empty() {
        return Err(fail(
            format!("still not installed: {}", still_missing.join(" ")),
            fix,
        ));
    }
    Ok(Outcome::Installed)
}

fn preseed() -> std::io::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(DEBCONF_PRESEED.as_bytes())?;
    let status = child.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("exited with {status}")))
    }
}

fn package_installed(package: &str) -> bool {
    // An unknown package makes dpkg-query fail, which also means "missing".
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

/// aya pins maps under /sys/fs/bpf, which some containers leave unmounted.
fn bpffs() -> Result<Outcome, Failure> {
    let fix = format!("mount it by hand: mount -t bpf bpf {BPFFS}");
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| fail(format!("cannot read /proc/mounts: {e}"), fix.clone()))?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(Outcome::AlreadyThere);
    }
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| fail(format!("mount -t bpf bpf {BPFFS}: {e}"), fix))?;
    Ok(Outcome::Installed)
}

/// aya-build compiles the eBPF crate with nightly (`-Z build-std=core`).
fn nightly_toolchain() -> Result<Outcome, Failure> {
    let fix = "install it by hand: rustup toolchain install nightly --profile minimal";
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))
        .map_err(|e| fail(format!("{e:#}"), "install rustup (https://rustup.rs)"))?;
    if list.lines().any(|line| line.starts_with("nightly")) {
        return Ok(Outcome::AlreadyThere);
    }
    stream(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .map_err(|e| fail(format!("{e:#}"), fix))?;
    Ok(Outcome::Installed)
}

/// `-Z build-std=core` needs the core sources.
fn rust_src() -> Result<Outcome, Failure> {
    let fix = "install it by hand: rustup component add rust-src --toolchain nightly";
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .map_err(|e| fail(format!("{e:#}"), fix))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(Outcome::AlreadyThere);
    }
    stream(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .map_err(|e| fail(format!("{e:#}"), fix))?;
    Ok(Outcome::Installed)
}

/// bpf-linker is built against the LLVM inside the nightly toolchain, so the
/// bitcode rustc emits and the linker that reads it always agree. Running it
/// is the check: after a nightly update removes that LLVM, it no longer
/// starts and gets rebuilt.
fn bpf_linker() -> Result<Outcome, Failure> {
    let no_cache = |e: anyhow::Error| {
        fail(
            format!("{e:#}"),
            "set NAT_TOOLS_DIR to a writable directory",
        )
    };
    let cache = paths::tools_cache().map_err(no_cache)?;
    let tools_root = paths::tools_root().map_err(no_cache)?;
    let linker = tools_root.join("bin/bpf-linker");
    if linker_works(&linker) {
        return Ok(Outcome::AlreadyThere);
    }
    let fix = format!(
        "see the output above; `rm -rf {}` and re-run `cargo xtask setup` to start over",
        cache.display()
    );

    let sysroot =
        capture(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .map_err(|e| fail(format!("{e:#}"), fix.clone()))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = find_rust_llvm(&libdir).ok_or_else(|| {
        fail(
            format!("no libLLVM.so.*-rust-* in {}", libdir.display()),
            "reinstall nightly: rustup toolchain uninstall nightly && cargo xtask setup",
        )
    })?;
    let file_name = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .expect("found by a UTF-8 name match");
    let major = llvm_major(file_name).ok_or_else(|| {
        fail(
            format!("cannot read the LLVM version from {file_name}"),
            fix.clone(),
        )
    })?;

    // llvm-sys wants an LLVM install prefix; a lib/ dir of symlinks to the
    // toolchain's library is enough for linking against it dynamically.
    let prefix = cache.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).map_err(|e| {
        fail(
            format!("cannot create {}: {e}", prefix_lib.display()),
            fix.clone(),
        )
    })?;
    for name in ["libLLVM.so", file_name] {
        replace_symlink(&llvm, &prefix_lib.join(name)).map_err(|e| fail(e, fix.clone()))?;
    }

    // Same library name again (e.g. a rebuilt cache dir): the links were all it lacked.
    if linker_works(&linker) {
        return Ok(Outcome::Installed);
    }

    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (takes a few minutes)",
        llvm.display()
    );
    let mut install = Command::new(paths::cargo());
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            // A binary linked against a vanished LLVM still counts as installed.
            "--force",
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&tools_root)
        .env("LLVM_PREFIX", &prefix);
    stream(&mut install).map_err(|e| fail(format!("{e:#}"), fix.clone()))?;
    if !linker_works(&linker) {
        return Err(fail(
            format!(
                "{} was installed but `{} --version` does not report {BPF_LINKER_VERSION}",
                describe(&install),
                linker.display()
            ),
            fix,
        ));
    }
    Ok(Outcome::Installed)
}

fn linker_works(linker: &Path) -> bool {
    capture(Command::new(linker).arg("--version")).is_ok_and(|out| {
        out.split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    })
}

/// The versioned library rustc itself links, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_rust_llvm(libdir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(libdir)
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    let end = version
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version.len());
    version[..end].parse().ok()
}

fn replace_symlink(target: &Path, link: &Path) -> Result<(), String> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link)
            .map_err(|e| format!("cannot remove stale {}: {e}", link.display()))?;
    }
    symlink(target, link).map_err(|e| {
        format!(
            "cannot link {} -> {}: {e}",
            link.display(),
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_rust_library_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM.so.-rust"), None);
    }
}
