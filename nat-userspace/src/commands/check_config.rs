//! `nat check-config FILE`: a config file checked as `nat load` would read
//! it, with no privileges and nothing created.

use std::path::Path;

use anyhow::Result;

use crate::cli::config_file;

pub fn run(file: &Path) -> Result<()> {
    let args = config_file::check(file)?;
    println!(
        "nat: {} is valid (iface {}, {} external address(es))",
        file.display(),
        args.iface,
        args.external.len()
    );
    Ok(())
}
