//! Where an instance pins its maps and links, and finding instances again.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use nat_common::names::{
    LAYOUT_VERSION, LINK_FAST_PREFIX, MAP_BLOCK_USE, MAP_BLOCKS, MAP_CONFIG, MAP_COOLDOWN,
    MAP_DET_PREFIXES, MAP_EIM, MAP_EIM_OWNER, MAP_EIM_PEERS, MAP_FORWARD, MAP_FRAGS, MAP_FWD,
    MAP_HOST_BLOCKS, MAP_HOSTS, MAP_INTERNAL, MAP_LIVE, MAP_NAT_EVENTS, MAP_POOL, MAP_PROBES,
    MAP_REV, MAP_STATS, MAP_SWEEP_CTL, MAP_SWEEP_STATS, MAP_SWEEP_TIMER, PIN_ROOT,
};

/// Every map the instance pins.
pub const PINNED_MAPS: [&str; 23] = [
    MAP_FWD,
    MAP_REV,
    // Per-host counts must survive a restart with the sessions they count.
    MAP_HOSTS,
    MAP_LIVE,
    MAP_COOLDOWN,
    // Endpoint-independent mappings and their filter state live as long
    // as their sessions do.
    MAP_EIM,
    MAP_EIM_OWNER,
    MAP_EIM_PEERS,
    MAP_FRAGS,
    MAP_CONFIG,
    MAP_POOL,
    MAP_INTERNAL,
    MAP_STATS,
    MAP_PROBES,
    // The sweep timer keeps expiring while no daemon runs, for as long as
    // its map is pinned.
    MAP_SWEEP_CTL,
    MAP_SWEEP_STATS,
    MAP_SWEEP_TIMER,
    MAP_FORWARD,
    // Blocks live as long as their sessions do; the numbering of the
    // prefixes is what `nat lookup` and a restart read back.
    MAP_BLOCKS,
    MAP_HOST_BLOCKS,
    MAP_BLOCK_USE,
    MAP_DET_PREFIXES,
    // Compliance events written while no daemon runs (a restart, an
    // upgrade) wait for the next one, which reads on where the last left.
    MAP_NAT_EVENTS,
];

/// The pin directory of one instance: `/sys/fs/bpf/nat/[NETNS/]IFACE`.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub dir: PathBuf,
    pub iface: String,
}

impl PinDir {
    pub fn new(netns: Option<&str>, iface: &str) -> Self {
        Self {
            dir: scope_dir(netns).join(iface),
            iface: iface.to_string(),
        }
    }

    /// Path of a pinned object, with the layout version in its name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}_v{LAYOUT_VERSION}"))
    }

    /// Names (without the version suffix) of the pinned fast-path links.
    pub fn fast_links(&self) -> Vec<String> {
        self.links_with(LINK_FAST_PREFIX)
    }

    /// Names (without the version suffix) of the pinned links starting with `prefix`.
    pub fn links_with(&self, prefix: &str) -> Vec<String> {
        let suffix = format!("_v{LAYOUT_VERSION}");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(prefix)?;
                name.strip_suffix(&suffix).map(str::to_owned)
            })
            .collect()
    }

    /// Creates the directory, root-only like everything under [`PIN_ROOT`].
    pub fn create(&self) -> Result<()> {
        create_private_dir(&self.dir, Path::new(PIN_ROOT))
    }

    pub fn is_loaded(&self) -> bool {
        self.path(MAP_FWD).exists()
    }

    /// What is pinned in the directory, by layout version.
    pub fn survey(&self) -> Result<Survey> {
        let mut survey = Survey::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(survey);
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match layout_of(&name) {
                Some(LAYOUT_VERSION) => survey.current.push(name),
                Some(v) => {
                    survey.other.insert(v);
                }
                None => {}
            }
        }
        survey.current.sort();
        Ok(survey)
    }
}

/// The pins found in an instance's directory.
#[derive(Debug, Default)]
pub struct Survey {
    /// Names with this binary's layout version.
    pub current: Vec<String>,
    /// Other layout versions present (entries without a version are not ours).
    pub other: std::collections::BTreeSet<u32>,
}

/// The layout version in a pinned name (`NAME_vN`).
pub fn layout_of(name: &str) -> Option<u32> {
    let (_, v) = name.rsplit_once("_v")?;
    v.parse().ok()
}

/// Unpins a link and detaches it before returning: holding a descriptor
/// across the unpin makes ours the last reference, whose release detaches
/// at once (a bare unlink would leave that to a kernel work item).
pub fn remove_link(path: &Path) -> Result<()> {
    match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(link) => drop(
            link.unpin()
                .with_context(|| format!("cannot unpin {}", path.display()))?,
        ),
        Err(_) => remove_pin(path)?,
    }
    Ok(())
}

pub fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn scope_dir(netns: Option<&str>) -> PathBuf {
    let root = PathBuf::from(PIN_ROOT);
    match netns {
        Some(ns) => root.join(ns),
        None => root,
    }
}

/// Creates `dir` and the directories above it up to the filesystem root as
/// root-only (0700), tightening those that exist already: the pins (and
/// the run directory's pid files) say which interfaces and namespaces run
/// a NAT, and nobody but root has anything to do there. The pinned files
/// themselves are 0600, and bpf() needs privileges anyway.
pub fn create_private_dir(dir: &Path, top: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for d in dir.ancestors().take_while(|d| d.starts_with(top)) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} root-only", d.display()))?;
    }
    Ok(())
}

/// Fails with a fix when /sys/fs/bpf is not a bpffs (pins would not survive us).
pub fn require_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let stat = nix::sys::statfs::statfs("/sys/fs/bpf").context("cannot stat /sys/fs/bpf")?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!("bpffs is not mounted at /sys/fs/bpf (mount it with: mount -t bpf bpf /sys/fs/bpf)");
    }
    Ok(())
}

/// The instance to read: the one named, or the only one loaded in this scope.
pub fn resolve(netns: Option<&str>, iface: Option<&str>) -> Result<PinDir> {
    if let Some(iface) = iface {
        let pins = PinDir::new(netns, iface);
        if !pins.is_loaded() {
            bail!(
                "no NAT is loaded on {iface} (no pins in {})",
                pins.dir.display()
            );
        }
        return Ok(pins);
    }
    let mut found = instances(netns)?;
    match found.len() {
        0 => bail!(
            "no NAT is loaded{} (nothing pinned under {})",
            scope_name(netns),
            scope_dir(netns).display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several NATs are loaded{}: {}; pick one with --iface",
            scope_name(netns),
            found
                .iter()
                .map(|p| p.iface.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn scope_name(netns: Option<&str>) -> String {
    netns
        .map(|ns| format!(" in network namespace {ns}"))
        .unwrap_or_default()
}

fn instances(netns: Option<&str>) -> Result<Vec<PinDir>> {
    let dir = scope_dir(netns);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let iface = entry.file_name().to_string_lossy().into_owned();
        let pins = PinDir::new(netns, &iface);
        if pins.is_loaded() {
            out.push(pins);
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// Removes the instance directory and, when empty, the namespace directory above it.
pub fn remove_dir(pins: &PinDir) -> Result<()> {
    remove_if_empty(&pins.dir)?;
    if let Some(parent) = pins.dir.parent()
        && parent != Path::new(PIN_ROOT)
    {
        remove_if_empty(parent)?;
    }
    Ok(())
}

/// Removes `dir` unless something is in it (or it is gone already).
pub fn remove_if_empty(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::layout_of;

    #[test]
    fn layout_versions_are_read_from_pinned_names() {
        assert_eq!(layout_of("NAT_FWD_v4"), Some(4));
        assert_eq!(layout_of("link_fast_veth_v1_v12"), Some(12));
        assert_eq!(layout_of("NAT_FWD"), None);
        assert_eq!(layout_of("notes_vx"), None);
    }
}
