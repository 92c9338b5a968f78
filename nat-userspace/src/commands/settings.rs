//! `nat get` and `nat set`: the live settings of a running NAT.

use std::io::Write as _;

use anyhow::Result;

use crate::{
    cli::settings::{self, SETTINGS, Setting},
    datapath::tables::Tables,
};

pub fn get(tables: &Tables, key: Option<&str>, as_json: bool) -> Result<()> {
    let cfg = tables.config()?;
    let chosen: Vec<&Setting> = match key {
        Some(k) => vec![settings::find(k).map_err(anyhow::Error::msg)?],
        None => SETTINGS.iter().collect(),
    };
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut map = serde_json::Map::new();
        for s in &chosen {
            map.insert(s.name.to_string(), s.json(&cfg));
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&map)?)?;
    } else if let [one] = chosen.as_slice()
        && key.is_some()
    {
        writeln!(out, "{}", one.format(&cfg))?;
    } else {
        for s in &chosen {
            writeln!(out, "{:<24} {:<12} {}", s.name, s.format(&cfg), s.help)?;
        }
    }
    Ok(())
}

pub fn set(tables: &mut Tables, key: &str, value: &str) -> Result<()> {
    let setting = settings::find(key).map_err(anyhow::Error::msg)?;
    let v = setting.parse(value).map_err(anyhow::Error::msg)?;
    let mut cfg = tables.config()?;
    setting.apply(&mut cfg, v);
    tables.set_config(cfg)?;
    writeln!(
        std::io::stdout(),
        "{} = {}",
        setting.name,
        setting.format(&cfg)
    )?;
    Ok(())
}
