//! What the running kernel offers the NAT, probed once at load: the
//! programs, maps and helpers it cannot run without (refused with the
//! missing feature and the first Linux version that has it), and how the
//! TC programs are attached (TCX links from Linux 6.6, netlink filters before).

use std::sync::OnceLock;

use aya::{
    maps::MapType,
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel the NAT runs on: bpf_loop, which the port allocator
/// probes under, is the newest requirement. Everything else the loader uses
/// is older and so comes with it: batch map operations on hash maps (5.6),
/// XDP bpf links (5.9), global data (5.2), bpf-to-bpf calls (4.16).
pub const MIN_KERNEL: &str = "5.17";

/// How the TC programs are attached to their hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHooks {
    /// TCX bpf links (Linux 6.6+), pinned like the XDP links.
    Tcx,
    /// cls_bpf filters in direct-action mode on a clsact qdisc (before 6.6).
    Netlink,
}

/// What a probe looks for.
enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
}

/// A feature the NAT cannot run without and the first Linux version that has it.
struct Requirement {
    feature: &'static str,
    since: &'static str,
    probe: Probe,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        feature: "TC (sched_cls) programs",
        since: "4.1",
        probe: Probe::Program(ProgramType::SchedClassifier),
    },
    Requirement {
        feature: "XDP programs",
        since: "4.8",
        probe: Probe::Program(ProgramType::Xdp),
    },
    Requirement {
        feature: "hash maps",
        since: "3.19",
        probe: Probe::Map(MapType::Hash),
    },
    Requirement {
        feature: "per-CPU array maps",
        since: "4.6",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    Requirement {
        feature: "LRU hash maps",
        since: "4.10",
        probe: Probe::Map(MapType::LruHash),
    },
    Requirement {
        feature: "LPM trie maps",
        since: "4.11",
        probe: Probe::Map(MapType::LpmTrie),
    },
    Requirement {
        feature: "devmap hash maps",
        since: "5.4",
        probe: Probe::Map(MapType::DevMapHash),
    },
    Requirement {
        feature: "ring buffer maps",
        since: "5.8",
        probe: Probe::Map(MapType::RingBuf),
    },
    Requirement {
        feature: "bpf_fib_lookup in TC programs",
        since: "4.18",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Requirement {
        feature: "bpf_fib_lookup in XDP programs",
        since: "4.18",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Requirement {
        feature: "bpf_ktime_get_boot_ns",
        since: "5.8",
        probe: Probe::Helper(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_ktime_get_boot_ns,
        ),
    },
    Requirement {
        feature: "bpf_ringbuf_reserve",
        since: "5.8",
        probe: Probe::Helper(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_ringbuf_reserve,
        ),
    },
    Requirement {
        feature: "bpf_loop",
        since: "5.17",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop),
    },
];

/// The probe's findings.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub release: String,
    pub tc_hooks: TcHooks,
}

impl Kernel {
    /// The one line `nat load` prints about what it chose.
    pub fn summary(&self) -> String {
        let hooks = match self.tc_hooks {
            TcHooks::Tcx => "TC programs through TCX links",
            TcHooks::Netlink => {
                "TC programs through netlink cls_bpf filters (TCX links need Linux 6.6)"
            }
        };
        format!("nat: kernel {}: {hooks}", self.release)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this kernel ({release}) lacks {feature} (Linux {since}+); the NAT needs Linux {MIN_KERNEL} or newer"
    )]
    Missing {
        release: String,
        feature: &'static str,
        since: &'static str,
    },
    #[error("cannot probe the kernel for {feature}: {reason}")]
    Probe {
        feature: &'static str,
        reason: String,
    },
}

static PROBED: OnceLock<Kernel> = OnceLock::new();

/// Set to 1, TC programs are attached through netlink even where TCX exists.
pub const FORCE_NETLINK_ENV: &str = "NAT_TC_NETLINK";

/// Probes the kernel (once per process) and fails on the first missing requirement.
pub fn probe() -> Result<&'static Kernel, KernelError> {
    if let Some(kernel) = PROBED.get() {
        return Ok(kernel);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned());
    for req in REQUIREMENTS {
        let found = match req.probe {
            Probe::Program(kind) => is_program_supported(kind).map_err(|e| e.to_string()),
            Probe::Map(kind) => is_map_supported(kind).map_err(|e| e.to_string()),
            Probe::Helper(kind, helper) => {
                is_helper_supported(kind, helper).map_err(|e| e.to_string())
            }
        }
        .map_err(|reason| KernelError::Probe {
            feature: req.feature,
            reason,
        })?;
        if !found {
            return Err(KernelError::Missing {
                release,
                feature: req.feature,
                since: req.since,
            });
        }
    }
    let kernel = Kernel {
        release,
        tc_hooks: tc_hooks(),
    };
    Ok(PROBED.get_or_init(|| kernel))
}

/// How TC programs are attached; TCX when nothing was probed (tools that
/// load the object without `nat load`, on the kernels this project builds on).
pub fn tc_hooks() -> TcHooks {
    if let Some(kernel) = PROBED.get() {
        return kernel.tc_hooks;
    }
    // Lets the test suite run the netlink attach on a kernel that has TCX.
    if std::env::var_os(FORCE_NETLINK_ENV).is_some_and(|v| v == "1") {
        return TcHooks::Netlink;
    }
    // Querying a TCX hook fails with EINVAL on kernels without TCX; the
    // loopback device exists in every network namespace.
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => TcHooks::Tcx,
        Err(e) => {
            log::debug!("TCX query on lo failed ({e}); using netlink filters");
            TcHooks::Netlink
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KernelError, MIN_KERNEL, REQUIREMENTS};

    fn version(v: &str) -> Vec<u32> {
        v.split('.').map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn no_requirement_is_newer_than_the_minimum() {
        for req in REQUIREMENTS {
            assert!(
                version(req.since) <= version(MIN_KERNEL),
                "{} needs {}, above MIN_KERNEL {MIN_KERNEL}",
                req.feature,
                req.since
            );
        }
    }

    #[test]
    fn a_missing_feature_is_one_line_naming_it_and_its_version() {
        let e = KernelError::Missing {
            release: "5.15.0-91-generic".to_owned(),
            feature: "bpf_loop",
            since: "5.17",
        };
        assert_eq!(
            e.to_string(),
            "this kernel (5.15.0-91-generic) lacks bpf_loop (Linux 5.17+); the NAT needs Linux 5.17 or newer"
        );
    }
}
