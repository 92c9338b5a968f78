//! Debian's own kernels for the VMs, fetched by package name and unpacked
//! under the tools cache; nothing is installed on this machine.
//!
//! apt runs with a private configuration (its own sources list, package
//! lists and download cache under the tools cache), so the suites the
//! kernels come from (bookworm-backports, trixie-backports, sid) never
//! reach the machine's own sources, where a later `apt-get install` would
//! pull packages from them. `apt-get download` fetches a package without
//! its dependencies and `dpkg-deb -x` unpacks it into a directory of its
//! own; virtme-ng finds the modules beside the image there.
//!
//! Two layouts: the older images are one package,
//! `linux-image-VERSION-amd64-unsigned` (image in `boot/`, modules in
//! `lib/modules/VERSION/`); the newest are split into `linux-binary-VERSION-amd64`
//! (image as `usr/lib/modules/VERSION/vmlinuz`) and `linux-modules-VERSION-amd64`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{capture, stream};
use crate::paths;

/// The kernels CI holds the verifier budget on: this machine's, Debian 12's
/// (6.1), its backports' (6.12) and Debian's newest.
pub const MATRIX: &[&str] = &["host", "6.1", "6.12", "newest"];

/// The suites the kernels come from. bookworm-security carries the 6.1
/// point releases, bookworm-backports 6.12, trixie-backports and sid the newest.
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
";

/// Package lists older than this are fetched again before a lookup.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel to boot: its image, and the name it goes by in reports.
pub struct Kernel {
    /// The kernel's version string (`6.1.0-57-amd64`), or the file name of a given image.
    pub label: String,
    pub image: PathBuf,
}

/// `kernel`: a path to an image (used as it is), `newest` (Debian's newest
/// amd64 kernel), or a version prefix (`6.1`, `6.12`, `6.1.0-57`) whose
/// newest Debian build is used.
pub fn resolve(kernel: &str) -> Result<Kernel> {
    if kernel.contains('/') {
        let image = PathBuf::from(kernel);
        ensure!(image.is_file(), "no kernel image at {}", image.display());
        let label = image
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_else(|| kernel.to_string());
        return Ok(Kernel { label, image });
    }
    let apt = PrivateApt::new()?;
    apt.refresh(false)?;
    let found = match newest_build(&apt.package_names()?, kernel) {
        Some(b) => b,
        None => {
            // A kernel newer than the lists: fetch them once more.
            apt.refresh(true)?;
            newest_build(&apt.package_names()?, kernel).with_context(|| {
                format!(
                    "Debian has no amd64 kernel {kernel} in {} (linux-image-{kernel}*-amd64-unsigned or linux-binary-{kernel}*-amd64); give an image path instead",
                    suites()
                )
            })?
        }
    };
    let image = apt.unpacked(&found)?;
    Ok(Kernel {
        label: found.version,
        image,
    })
}

fn suites() -> String {
    SOURCES
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One Debian kernel build and the packages that hold it.
#[derive(Debug, PartialEq, Eq)]
struct Build {
    /// `6.1.0-57-amd64`, `7.3.4+deb13-amd64`.
    version: String,
    packages: Vec<String>,
}

/// The newest plain amd64 build (not cloud, not rt) that `wanted` names.
fn newest_build(names: &[String], wanted: &str) -> Option<Build> {
    let mut found: Vec<(Vec<u64>, Build)> = names
        .iter()
        .filter_map(|name| {
            let (version, packages) = if let Some(v) = name
                .strip_prefix("linux-image-")
                .and_then(|v| v.strip_suffix("-amd64-unsigned"))
            {
                (v, vec![name.clone()])
            } else {
                let v = name
                    .strip_prefix("linux-binary-")
                    .and_then(|v| v.strip_suffix("-amd64"))?;
                let modules = format!("linux-modules-{v}-amd64");
                if !names.contains(&modules) {
                    return None;
                }
                (v, vec![name.clone(), modules])
            };
            if version.starts_with("unsigned")
                || version.ends_with("-cloud")
                || version.ends_with("-rt")
            {
                return None;
            }
            let matches = wanted == "newest" || version_matches(version, wanted);
            matches.then(|| {
                (
                    version_key(version),
                    Build {
                        version: format!("{version}-amd64"),
                        packages,
                    },
                )
            })
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.pop().map(|(_, b)| b)
}

/// `6.1` matches `6.1.0-57`, not `6.10.0`.
pub fn version_matches(version: &str, wanted: &str) -> bool {
    version
        .strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
}

/// Numeric fields of a version, so that 6.1.0-57 sorts after 6.1.0-6.
pub fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// apt with its own sources, lists and download cache under the tools cache.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new() -> Result<Self> {
        let dir = paths::tools_cache()?.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(SOURCES) {
            fs::write(&sources, SOURCES)
                .with_context(|| format!("cannot write {}", sources.display()))?;
            // Lists of other sources must not be mistaken for fresh ones.
            let _ = fs::remove_file(dir.join("lists/fetched"));
        }
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        vec![
            "-o".into(),
            format!("Dir::Etc::sourcelist={}", d("sources.list")),
            "-o".into(),
            "Dir::Etc::sourceparts=-".into(),
            "-o".into(),
            format!("Dir::State::Lists={}", d("lists")),
            "-o".into(),
            format!("Dir::Cache={}", d("cache")),
            // Downloads land in our own directory, which apt's sandbox user cannot write.
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    /// `apt-get update` of the private lists, unless they are fresh.
    fn refresh(&self, force: bool) -> Result<()> {
        let stamp = self.dir.join("lists/fetched");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(());
        }
        println!(
            "setup: fetching Debian's package lists for the kernels ({})",
            suites()
        );
        capture(
            Command::new("apt-get")
                .args(self.options())
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        fs::write(&stamp, b"").with_context(|| format!("cannot write {}", stamp.display()))
    }

    fn package_names(&self) -> Result<Vec<String>> {
        let listing = capture(
            Command::new("apt-cache")
                .args(self.options())
                .args(["pkgnames", "linux-"]),
        )?;
        Ok(listing.lines().map(str::to_owned).collect())
    }

    /// The build unpacked under the tools cache (downloaded first if it is
    /// not yet there), and the path of its image.
    fn unpacked(&self, build: &Build) -> Result<PathBuf> {
        let root = paths::tools_cache()?.join("kernels").join(&build.version);
        let done = root.join(".unpacked");
        if !done.is_file() {
            println!(
                "setup: fetching kernel {} ({})",
                build.version,
                build.packages.join(", ")
            );
            if root.exists() {
                fs::remove_dir_all(&root)
                    .with_context(|| format!("cannot remove {}", root.display()))?;
            }
            let debs = root.with_extension("debs");
            fs::create_dir_all(&debs)
                .with_context(|| format!("cannot create {}", debs.display()))?;
            capture(
                Command::new("apt-get")
                    .current_dir(&debs)
                    .args(self.options())
                    .arg("download")
                    .args(&build.packages),
            )?;
            fs::create_dir_all(&root)
                .with_context(|| format!("cannot create {}", root.display()))?;
            for entry in fs::read_dir(&debs)? {
                let deb = entry?.path();
                if deb.extension().is_some_and(|e| e == "deb") {
                    stream(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
                }
            }
            fs::remove_dir_all(&debs)
                .with_context(|| format!("cannot remove {}", debs.display()))?;
            fs::write(&done, b"").with_context(|| format!("cannot write {}", done.display()))?;
        }
        image_in(&root, &build.version)
    }
}

/// The image of `version` unpacked under `root`, in either layout.
fn image_in(root: &Path, version: &str) -> Result<PathBuf> {
    for candidate in [
        root.join("boot").join(format!("vmlinuz-{version}")),
        root.join("usr/lib/modules").join(version).join("vmlinuz"),
        root.join("lib/modules").join(version).join("vmlinuz"),
    ] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{} holds no image of {version}", root.display())
}

#[cfg(test)]
mod tests {
    use super::{Build, newest_build, version_key, version_matches};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn versions_match_on_a_separator() {
        assert!(version_matches("6.1.0-57", "6.1"));
        assert!(version_matches("6.12.95+deb12", "6.12"));
        assert!(!version_matches("6.10.0-1", "6.1"));
        assert!(version_key("6.1.0-57") > version_key("6.1.0-6"));
    }

    #[test]
    fn the_newest_plain_build_is_chosen_in_either_layout() {
        let n = names(&[
            "linux-image-6.1.0-56-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "linux-binary-7.3.4+deb13-amd64",
            "linux-binary-unsigned-7.3.4+deb13-amd64",
            "linux-modules-7.3.4+deb13-amd64",
            "linux-binary-7.3.4+deb13-rt-amd64",
            "linux-binary-7.4.1+deb14-amd64",
        ]);
        assert_eq!(
            newest_build(&n, "6.1"),
            Some(Build {
                version: "6.1.0-57-amd64".into(),
                packages: vec!["linux-image-6.1.0-57-amd64-unsigned".into()]
            })
        );
        assert_eq!(
            newest_build(&n, "6.12").map(|b| b.version),
            Some("6.12.95+deb12-amd64".into())
        );
        // 7.4.1 has no modules package: not bootable, so not chosen.
        assert_eq!(
            newest_build(&n, "newest"),
            Some(Build {
                version: "7.3.4+deb13-amd64".into(),
                packages: vec![
                    "linux-binary-7.3.4+deb13-amd64".into(),
                    "linux-modules-7.3.4+deb13-amd64".into()
                ]
            })
        );
        assert_eq!(newest_build(&n, "6.18"), None);
    }
}
