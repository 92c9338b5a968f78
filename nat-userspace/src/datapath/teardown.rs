//! An instance removed whole: its netlink filters, links and maps, whatever
//! its layout version (`nat unload`, a load that fails before it started,
//! `--unload-on-exit`).

use anyhow::Result;

use crate::datapath::{
    pins::{PinDir, layout_of, remove_dir, remove_link, remove_pin},
    tc_attach,
};

/// Removes every pin of an instance whatever its layout version: links
/// first (removing a link's last reference detaches it), then maps. Entries
/// without a version suffix are left alone.
pub fn remove_all(pins: &PinDir) -> Result<()> {
    // Netlink filters (kernels before 6.6) are recorded as directories.
    tc_attach::detach_recorded(pins)?;
    let Ok(entries) = std::fs::read_dir(&pins.dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| layout_of(n).is_some() && !n.starts_with(tc_attach::RECORD_PREFIX))
        .collect();
    // Links first: a map a link's program still uses would outlive its pin anyway.
    names.sort_by_key(|n| !n.starts_with("link_"));
    for name in names {
        let path = pins.dir.join(&name);
        if name.starts_with("link_") {
            remove_link(&path)?;
        } else {
            remove_pin(&path)?;
        }
    }
    remove_dir(pins)
}
