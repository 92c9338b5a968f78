//! Port pressure: how close each destination is to running out of ports on
//! each external address, counting ports in use and cooling keys (what
//! `nat top` prints and the metrics export).

use std::collections::{HashMap, HashSet};

use nat_common::{config::PoolAddr, flow::FlowKey, probe::span};

/// Ports in use and cooling toward one destination on one external address.
#[derive(Clone, Debug, Default)]
pub struct PressureRow {
    /// Network byte order, as in the maps.
    pub external: u32,
    pub proto: u8,
    pub daddr: u32,
    pub dport: u16,
    pub in_use: u64,
    /// Cooling and not held by a session.
    pub cooling: u64,
    /// Ports in the external address's range.
    pub capacity: u64,
    /// (in_use + cooling) / capacity.
    pub used: f64,
}

/// Port pressure per (external address, protocol, destination), fullest
/// first, from the reverse keys and the cooling keys.
pub fn port_pressure(
    rev_keys: impl IntoIterator<Item = FlowKey>,
    cooling: &[(FlowKey, u64)],
    pool: &[PoolAddr],
) -> Vec<PressureRow> {
    let mut per: HashMap<(u32, u8, u32, u16), (u64, u64)> = HashMap::new();
    // A key both live and cooling (a reopened session) counts as in use
    // only. Cooling keys are usually far fewer than sessions, so those are
    // the ones put in a set.
    let cooling_keys: HashSet<FlowKey> = cooling.iter().map(|(k, _)| *k).collect();
    let mut both: HashSet<FlowKey> = HashSet::new();
    for k in rev_keys {
        per.entry((k.saddr, k.proto, k.daddr, k.dport))
            .or_default()
            .0 += 1;
        if !cooling_keys.is_empty() && cooling_keys.contains(&k) {
            both.insert(k);
        }
    }
    for k in cooling_keys.iter().filter(|k| !both.contains(k)) {
        per.entry((k.saddr, k.proto, k.daddr, k.dport))
            .or_default()
            .1 += 1;
    }
    let spans: HashMap<u32, u64> = pool
        .iter()
        .map(|p| (p.addr, span(p.port_min, p.port_max) as u64))
        .collect();
    let mut rows: Vec<PressureRow> = per
        .into_iter()
        .map(|((external, proto, daddr, dport), (in_use, cooling))| {
            let capacity = spans.get(&external).copied().unwrap_or(0).max(1);
            PressureRow {
                external,
                proto,
                daddr,
                dport,
                in_use,
                cooling,
                capacity,
                used: (in_use + cooling) as f64 / capacity as f64,
            }
        })
        .collect();
    // Fullest first; ties in a fixed order, so `nat top` and the metrics agree.
    rows.sort_by(|a, b| {
        b.used.total_cmp(&a.used).then(
            (a.external, a.proto, a.daddr, a.dport).cmp(&(b.external, b.proto, b.daddr, b.dport)),
        )
    });
    rows
}
