//! Datapath micro-figures: the benchmarks of the bench-only `nat-bench`
//! binary, map memory and BPF program run time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use nat_common::names::{LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX};
use nat_tests::INT_IFACE;

use super::capture;
use super::cpu::{Snapshot, Window};

const PIN_ROOT: &str = "/sys/fs/bpf/nat";
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs `nat-bench <args>` (printing one JSON object) and returns it with
/// the CPU window it ran in.
fn bench_json(nat_bench: &Path, args: &[&str]) -> Result<(Value, Window)> {
    let snapshot = Snapshot::take()?;
    let stdout = capture(Command::new(nat_bench).args(args))?;
    let window = snapshot.finish()?;
    let value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("nat-bench {} printed no JSON: {stdout}", args.join(" ")))?;
    Ok((value, window))
}

fn number(value: &Value, pointer: &str) -> Result<f64> {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number at {pointer} in {value}"))
}

pub struct Alloc {
    pub success_pct: f64,
    pub median_ns: f64,
    pub p99_ns: f64,
    pub raw: Value,
}

/// `nat-bench alloc --json --occupancy N --attempts A --policy strict`.
pub fn alloc(nat_bench: &Path, occupancy: u32, attempts: u32) -> Result<(Alloc, Window)> {
    let (raw, window) = bench_json(
        nat_bench,
        &[
            "alloc",
            "--json",
            "--occupancy",
            &occupancy.to_string(),
            "--attempts",
            &attempts.to_string(),
            "--policy",
            "strict",
        ],
    )?;
    let alloc = Alloc {
        success_pct: number(&raw, "/success_pct")?,
        median_ns: number(&raw, "/median_ns")?,
        p99_ns: number(&raw, "/p99_ns")?,
        raw,
    };
    Ok((alloc, window))
}

pub struct Sweep {
    /// A sweep that expires none, every session busy (seen within the
    /// shortest timeout).
    pub scan_wall_s: f64,
    pub scan_cpu_s: f64,
    /// The first sweep that sees every session quiet (both entries read)
    /// and a routine one after it (the forward entry's stamp suffices).
    pub quiet_first_cpu_s: f64,
    pub quiet_cpu_s: f64,
    pub expire_wall_s: f64,
    pub expire_cpu_s: f64,
    pub raw: Value,
}

/// `nat-bench sweep --json --sessions N`.
pub fn sweep(nat_bench: &Path, sessions: u32) -> Result<(Sweep, Window)> {
    let (raw, window) = bench_json(
        nat_bench,
        &["sweep", "--json", "--sessions", &sessions.to_string()],
    )?;
    let sweep = Sweep {
        scan_wall_s: number(&raw, "/scan/wall_s")?,
        scan_cpu_s: number(&raw, "/scan/cpu_s")?,
        quiet_first_cpu_s: number(&raw, "/scan_quiet_first/cpu_s")?,
        quiet_cpu_s: number(&raw, "/scan_quiet/cpu_s")?,
        expire_wall_s: number(&raw, "/expire/wall_s")?,
        expire_cpu_s: number(&raw, "/expire/cpu_s")?,
        raw,
    };
    Ok((sweep, window))
}

/// The pin directory of the instance running in `nat_ns` on veth-ext.
pub fn pin_dir(nat_ns: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(nat_ns).join(nat_tests::EXT_IFACE)
}

/// The pinned object whose name is `name` plus a layout suffix (`NAT_FWD_v3`).
fn pinned(dir: &Path, name: &str) -> Result<PathBuf> {
    let prefix = format!("{name}_v");
    fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit()))
        })
        .with_context(|| format!("nothing named {prefix}* pinned in {}", dir.display()))
}

fn bpftool_pinned(kind: &str, path: &Path) -> Result<Value> {
    let out = capture(
        Command::new("bpftool")
            .args(["-j", kind, "show", "pinned"])
            .arg(path),
    )?;
    serde_json::from_str(&out).with_context(|| format!("bpftool printed no JSON: {out}"))
}

pub struct MapMemory {
    pub per_session: f64,
    pub per_cooling_key: f64,
    pub raw: Value,
}

/// bytes_memlock / max_entries of the instance's session and cooldown maps.
pub fn map_memory(dir: &Path) -> Result<MapMemory> {
    let mut raw = serde_json::Map::new();
    let mut per_entry = |name: &str| -> Result<f64> {
        let info = bpftool_pinned("map", &pinned(dir, name)?)?;
        let bytes = number(&info, "/bytes_memlock")?;
        let entries = number(&info, "/max_entries")?;
        raw.insert(
            name.to_owned(),
            json!({ "bytes_memlock": bytes, "max_entries": entries, "bytes_key": info["bytes_key"], "bytes_value": info["bytes_value"] }),
        );
        if entries <= 0.0 {
            bail!("{name} has no entries");
        }
        Ok(bytes / entries)
    };
    let per_session = per_entry("NAT_FWD")? + per_entry("NAT_REV")?;
    let per_cooling_key = per_entry("NAT_COOLDOWN")?;
    Ok(MapMemory {
        per_session,
        per_cooling_key,
        raw: Value::Object(raw),
    })
}

/// The programs behind the instance's pinned links.
pub struct Programs {
    pub egress: u64,
    pub ingress: u64,
    /// The fast path on the internal interface, when the nat mode runs it.
    pub fast: Option<u64>,
    /// Hairpinning on the internal interface, which every packet from the
    /// internal side meets before the fast path.
    pub hairpin: Option<u64>,
}

pub fn programs(dir: &Path) -> Result<Programs> {
    let prog_of = |link: &str| -> Result<u64> {
        let info = bpftool_pinned("link", &pinned(dir, link)?)?;
        info.get("prog_id")
            .and_then(Value::as_u64)
            .with_context(|| format!("{link}: no prog_id in {info}"))
    };
    let optional = |link: String| -> Result<Option<u64>> {
        pinned(dir, &link)
            .is_ok()
            .then(|| prog_of(&link))
            .transpose()
    };
    Ok(Programs {
        egress: prog_of("link_egress")?,
        ingress: prog_of("link_ingress")?,
        fast: optional(format!("{LINK_FAST_PREFIX}{INT_IFACE}"))?,
        hairpin: optional(format!("{LINK_HAIRPIN_PREFIX}{INT_IFACE}"))?,
    })
}

/// (run_time_ns, run_cnt) of program `id`; 0 before stats were ever enabled.
pub fn run_stats(id: u64) -> Result<(u64, u64)> {
    let out = capture(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
    let info: Value =
        serde_json::from_str(&out).with_context(|| format!("bpftool printed no JSON: {out}"))?;
    let field = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok((field("run_time_ns"), field("run_cnt")))
}

/// Set when this process turned kernel.bpf_stats_enabled on, so every exit
/// path (drop, signal) turns it off again exactly once.
static STATS_ENABLED_BY_US: AtomicBool = AtomicBool::new(false);

/// Turns kernel.bpf_stats_enabled back off if we turned it on; safe to call
/// from the signal cleanup.
pub fn restore_bpf_stats() {
    if STATS_ENABLED_BY_US.swap(false, Ordering::SeqCst)
        && let Err(e) = fs::write(BPF_STATS_SYSCTL, "0\n")
    {
        eprintln!("bench: cannot restore kernel.bpf_stats_enabled=0: {e}");
    }
}

/// kernel.bpf_stats_enabled=1 while alive (left alone if it already was 1).
pub struct BpfStats(());

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let was = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("cannot read {BPF_STATS_SYSCTL}"))?;
        if was.trim() != "1" {
            STATS_ENABLED_BY_US.store(true, Ordering::SeqCst);
            fs::write(BPF_STATS_SYSCTL, "1\n")
                .with_context(|| format!("cannot write {BPF_STATS_SYSCTL}"))?;
        }
        Ok(BpfStats(()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        restore_bpf_stats();
    }
}
