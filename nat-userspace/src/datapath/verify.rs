//! Loading the kernel programs into the verifier, and what it answered.
//!
//! Two ways in. `nat load` goes through aya, which runs the verifier once
//! without a log and, only when that fails, once more with a 10 KiB log
//! (growing tenfold on ENOSPC): [`load`] and [`rejection`] serve it. aya
//! keeps no log of a program it loaded, and the verifier's statistics
//! (instructions processed, states, stack depth, time) are only in that
//! log, so the verifier budget ([`report_all`]) loads each program itself:
//! aya creates the maps and relocates nothing, aya-obj relocates a second
//! parse of the same object against aya's maps, and one BPF_PROG_LOAD per
//! program runs with a log buffer of our own. Its programs are closed
//! again: nothing is attached or pinned.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
    programs::{Program, ProgramError},
};
use aya_obj::{
    EbpfSectionKind, Object, ProgramSection,
    generated::{bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type},
};
use object::{Object as _, ObjectSection as _};
use serde::Serialize;

/// How many of the verifier's last lines a rejection shows.
const LOG_TAIL: usize = 3;

/// The verifier's last lines of a failed load, joined into one line.
pub fn rejection(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => reason(&io_error.to_string(), &verifier_log.to_string()),
        other => other.to_string(),
    }
}

/// A failed load's error and the reason its log gives, in one line.
fn reason(error: &str, log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The statistics close every log; the reason comes before them.
    let is_stat = |l: &&str| {
        l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("processed ")
    };
    let reason: Vec<&str> = lines.iter().filter(|l| !is_stat(l)).copied().collect();
    let mut tail: Vec<&str> = reason[reason.len().saturating_sub(LOG_TAIL)..].to_vec();
    tail.extend(lines.iter().filter(|l| l.starts_with("processed ")));
    if tail.is_empty() {
        format!("{error} (the verifier gave no reason)")
    } else {
        format!("{error}; the verifier ended with: {}", tail.join(" | "))
    }
}

/// Loads (verifies) one TC or XDP program of the object, unless it is loaded already.
pub fn load(prog: &mut Program) -> Result<(), ProgramError> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    match prog {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        // The object holds TC and XDP programs only.
        _ => Ok(()),
    }
}

/// One program's verification, as the verifier's statistics report it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub program: String,
    /// Instructions processed (the budget's measure; the kernel stops at 1,000,000).
    pub processed: Option<u64>,
    pub peak_states: Option<u64>,
    pub total_states: Option<u64>,
    pub max_states_per_insn: Option<u64>,
    /// Stack bytes per subprogram as the kernel lists them, the program's own first.
    pub stack: Vec<u64>,
    /// The deepest call chain's stack bytes (limit 512), where the kernel
    /// reports it (`stack depth max`, newer kernels).
    pub stack_max: Option<u64>,
    /// Per subprogram, where the kernel reports it (newer kernels): name,
    /// linkage, instructions processed in it alone and with its callees.
    pub subprograms: Vec<Subprogram>,
    /// The verifier's own measure of its time.
    pub verification_us: Option<u64>,
    /// Wall time of the load, for kernels whose log has no time line.
    pub elapsed_ms: u64,
    /// Functions of the program that the BTF marks static: the verifier
    /// walks such a function again at every call site (callbacks of
    /// bpf_loop and aya-log's formatting closures are static by nature).
    pub static_subprograms: Vec<String>,
    /// The rejection in one line, when the kernel refused the program.
    pub rejected: Option<String>,
}

/// One line of a newer kernel's per-subprogram statistics:
/// `subprog 11 (nat_allocate) global insns_self 922 insns_total 1341 stack 176`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Subprogram {
    pub name: String,
    /// `main`, `global` or `static`.
    pub linkage: String,
    pub insns_self: Option<u64>,
    pub insns_total: Option<u64>,
    pub stack: Option<u64>,
}

/// How much the verifier writes for each program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogDetail {
    /// The statistics only: what [`Report`] holds.
    Stats,
    /// Every instruction it walked, with the states at branches: tens of
    /// MB for the larger programs (the kernel keeps the last part).
    Instructions,
}

/// BPF_LOG_LEVEL1 and BPF_LOG_STATS.
const LOG_LEVEL1: u32 = 1;
const LOG_STATS: u32 = 4;
/// Room for the statistics: they are a handful of lines.
const STATS_LOG_BYTES: usize = 1 << 20;
/// Room for an instruction log; kernels since 6.4 keep its tail when it
/// overflows, older ones fail the load with ENOSPC.
const FULL_LOG_BYTES: usize = 256 << 20;

/// Loads every program of `object` into this kernel's verifier against the
/// maps of `ebpf` (the same object, loaded by aya with its programs not yet
/// loaded) and reports what the verifier said of each. With `log_dir`, each
/// program's whole log is written there as PROGRAM.log.
pub fn report_all(
    ebpf: &Ebpf,
    object: &[u8],
    detail: LogDetail,
    log_dir: Option<&Path>,
) -> Result<Vec<Report>> {
    let features = aya::features();
    let mut obj = Object::parse(object).context("cannot parse the kernel object")?;
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj
            .fixup_and_sanitize_btf(btf_features)
            .context("cannot prepare the object's BTF")?
        {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        },
        None => None,
    };
    let statics = static_functions(object)?;
    let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut relocations: Vec<(&str, RawFd, &aya_obj::Map)> = Vec::new();
    for (name, map) in &maps {
        let global_data = matches!(
            map.section_kind(),
            EbpfSectionKind::Bss | EbpfSectionKind::Data | EbpfSectionKind::Rodata
        );
        if global_data && !features.bpf_global_data() {
            continue;
        }
        let loaded = ebpf
            .map(name)
            .with_context(|| format!("aya created no map {name}"))?;
        relocations.push((name, map_data(loaded)?.fd().as_fd().as_raw_fd(), map));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(relocations.into_iter(), &text_sections)
        .context("cannot relocate the object's map references")?;
    obj.relocate_calls(&text_sections)
        .context("cannot relocate the object's calls")?;
    obj.sanitize_functions(features);

    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    let mut reports = Vec::new();
    for name in names {
        let prog = &obj.programs[name];
        let function = &obj.functions[&prog.function_key()];
        let kind = match prog.section {
            ProgramSection::SchedClassifier => bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
            ProgramSection::Xdp { .. } => bpf_prog_type::BPF_PROG_TYPE_XDP,
            ref other => bail!("{name}: a program of a kind the NAT does not use ({other:?})"),
        };
        let started = Instant::now();
        let (outcome, log) =
            load_program(name, kind, function, &prog.license, btf_fd.as_ref(), detail)?;
        let mut report = parse_stats(name, &log);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        report.static_subprograms = function
            .func_info
            .func_info
            .iter()
            .skip(1)
            .filter_map(|f| statics.iter().find(|(id, _)| *id == f.type_id))
            .map(|(_, n)| n.clone())
            .collect();
        if let Err(e) = outcome {
            report.rejected = Some(reason(&e.to_string(), &log));
        }
        if let Some(dir) = log_dir {
            let path = dir.join(format!("{name}.log"));
            std::fs::write(&path, &log)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The BTF type ids and names of the functions the object's BTF (as the
/// linker emitted it, before aya adapts it to the kernel) marks static.
fn static_functions(object: &[u8]) -> Result<Vec<(u32, String)>> {
    let elf = object::File::parse(object).context("cannot read the kernel object as ELF")?;
    let Some(section) = elf.section_by_name(".BTF") else {
        return Ok(Vec::new());
    };
    let raw = section.data().context("cannot read the object's .BTF")?;
    btf_static_functions(raw).context("the object's .BTF is malformed")
}

/// The kinds of BTF types (`BTF_KIND_*`, include/uapi/linux/btf.h) and how
/// many bytes follow each one's 12-byte header: enough to walk the type
/// section to the FUNC entries, whose `vlen` is their linkage.
fn btf_static_functions(raw: &[u8]) -> Option<Vec<(u32, String)>> {
    const FUNC: u32 = 12;
    const STATIC: u32 = 0;
    let u32_at = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Header: magic (u16), version, flags, hdr_len, then type_off,
    // type_len, str_off, str_len relative to its end.
    if raw.get(0..2)? != [0x9f, 0xeb] {
        return None;
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off..hdr_len + type_off + type_len;
    let strings = hdr_len + str_off;
    let name = |off: u32| {
        let start = strings + off as usize;
        let bytes = raw.get(start..)?;
        let end = bytes.iter().position(|b| *b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    };
    let mut found = Vec::new();
    let (mut at, mut id) = (types.start, 1u32);
    while at < types.end {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == FUNC && vlen as u32 == STATIC {
            found.push((id, name(name_off)?));
        }
        let extra = match kind {
            // INT, VAR, DECL_TAG
            1 | 14 | 17 => 4,
            // ARRAY
            3 => 12,
            // STRUCT, UNION, DATASEC
            4 | 5 | 15 => 12 * vlen,
            // ENUM, FUNC_PROTO
            6 | 13 => 8 * vlen,
            // ENUM64
            19 => 12 * vlen,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
            _ => return None,
        };
        at += 12 + extra;
        id += 1;
    }
    Some(found)
}

/// The MapData of any map kind the object declares.
fn map_data(map: &Map) -> Result<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::LpmTrie(m)
        | Map::RingBuf(m)
        | Map::DevMapHash(m)
        | Map::ProgramArray(m)
        | Map::Unsupported(m) => Ok(m),
        other => Err(anyhow!("a map of a kind the NAT does not use: {other:?}")),
    }
}

/// BPF_BTF_LOAD of the object's BTF, which the program's function and line
/// records point into (global functions are verified against it).
fn load_btf(raw: &[u8]) -> Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is the neutral value of every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BTF_LOAD member of the union, which this command reads.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = raw.as_ptr() as u64;
    u.btf_size = raw.len() as u32;
    bpf_fd(bpf_cmd::BPF_BTF_LOAD, &mut attr).context("the kernel refused the object's BTF")
}

/// One BPF_PROG_LOAD with a log buffer of our own: the outcome and the log.
fn load_program(
    name: &str,
    kind: bpf_prog_type,
    function: &aya_obj::Function,
    license: &CString,
    btf_fd: Option<&OwnedFd>,
    detail: LogDetail,
) -> Result<(std::io::Result<OwnedFd>, String)> {
    let insns: &[bpf_insn] = &function.instructions;
    let (level, size) = match detail {
        LogDetail::Stats => (LOG_STATS, STATS_LOG_BYTES),
        LogDetail::Instructions => (LOG_LEVEL1 | LOG_STATS, FULL_LOG_BYTES),
    };
    let mut log = vec![0u8; size];
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let prog_name = CString::new(name.chars().take(15).collect::<String>())?;
    // SAFETY: as in load_btf.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the PROG_LOAD member of the union, which this command reads.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = kind as u32;
    u.insns = insns.as_ptr() as u64;
    u.insn_cnt = insns.len() as u32;
    u.license = license.as_ptr() as u64;
    for (dst, src) in u.prog_name.iter_mut().zip(prog_name.as_bytes()) {
        *dst = *src as _;
    }
    if let Some(btf) = btf_fd {
        u.prog_btf_fd = btf.as_raw_fd() as u32;
        if function.func_info_rec_size > 0 {
            u.func_info = func_info.as_ptr() as u64;
            u.func_info_cnt = function.func_info.len() as u32;
            u.func_info_rec_size = function.func_info_rec_size as u32;
        }
        if function.line_info_rec_size > 0 {
            u.line_info = line_info.as_ptr() as u64;
            u.line_info_cnt = function.line_info.len() as u32;
            u.line_info_rec_size = function.line_info_rec_size as u32;
        }
    }
    u.log_level = level;
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    let outcome = bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    log.truncate(end);
    Ok((outcome, String::from_utf8_lossy(&log).into_owned()))
}

/// A bpf(2) command that returns a new file descriptor.
fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed, filled for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// The statistics lines that close every verifier log:
/// `processed N insns (limit 1000000) max_states_per_insn A total_states B peak_states C mark_read D`,
/// `stack depth X+Y+...` and `verification time T usec`.
pub fn parse_stats(program: &str, log: &str) -> Report {
    let mut r = Report {
        program: program.to_string(),
        ..Report::default()
    };
    for line in log.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("processed ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            r.processed = words.first().and_then(|w| w.parse().ok());
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|w| w.parse().ok())
            };
            r.max_states_per_insn = after("max_states_per_insn");
            r.total_states = after("total_states");
            r.peak_states = after("peak_states");
        } else if let Some(rest) = line.strip_prefix("stack depth max ") {
            r.stack_max = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("stack depth ") {
            r.stack = rest
                .split('+')
                .filter_map(|n| n.trim().parse().ok())
                .collect();
        } else if let Some(sub) = subprogram(line) {
            r.subprograms.push(sub);
        } else if let Some(rest) = line.strip_prefix("verification time ") {
            r.verification_us = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    if r.stack.is_empty() {
        r.stack = r.subprograms.iter().filter_map(|s| s.stack).collect();
    }
    r
}

fn subprogram(line: &str) -> Option<Subprogram> {
    let rest = line.strip_prefix("subprog ")?;
    let open = rest.find('(')?;
    let close = rest.rfind(')')?;
    let words: Vec<&str> = rest[close + 1..].split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|w| w.parse().ok())
    };
    Some(Subprogram {
        name: rest[open + 1..close].to_string(),
        linkage: words.first()?.to_string(),
        insns_self: after("insns_self"),
        insns_total: after("insns_total"),
        stack: after("stack"),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_stats;

    #[test]
    fn statistics_lines_are_read() {
        let log = "func#0 @0\nverification time 5875605 usec\nstack depth 176+0+32+72\n\
                   processed 50258 insns (limit 1000000) max_states_per_insn 20 total_states 19072 peak_states 41548 mark_read 0\n";
        let r = parse_stats("nat_egress", log);
        assert_eq!(r.processed, Some(50258));
        assert_eq!(r.peak_states, Some(41548));
        assert_eq!(r.total_states, Some(19072));
        assert_eq!(r.max_states_per_insn, Some(20));
        assert_eq!(r.stack, vec![176, 0, 32, 72]);
        assert_eq!(r.verification_us, Some(5875605));
    }

    #[test]
    fn newer_kernels_statistics_are_read() {
        let log = "stack depth max 496\n\
                   subprog 0 (nat_egress) main insns_self 3227 insns_total 26396 stack 176\n\
                   subprog 21 (probe_step) static insns_self 336 insns_total 336 stack 32\n\
                   processed 49390 insns (limit 1000000) max_states_per_insn 11 total_states 2643 peak_states 1939 mark_read 0\n";
        let r = parse_stats("nat_egress", log);
        assert_eq!(r.stack_max, Some(496));
        assert_eq!(r.stack, vec![176, 32]);
        assert_eq!(r.subprograms.len(), 2);
        assert_eq!(r.subprograms[1].name, "probe_step");
        assert_eq!(r.subprograms[1].linkage, "static");
        assert_eq!(r.subprograms[1].insns_self, Some(336));
        assert_eq!(r.processed, Some(49390));
    }

    #[test]
    fn a_log_without_statistics_reads_as_unknown() {
        let r = parse_stats("nat_fast", "BPF program is too large\n");
        assert_eq!(r.processed, None);
        assert!(r.stack.is_empty());
    }
}
