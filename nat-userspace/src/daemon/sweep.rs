//! Expires idle sessions, ended cooldowns and orphaned reverse entries: one
//! full run of the kernel sweep (nat-ebpf/src/flows/sweep.rs, driven through
//! [`crate::datapath::sweep`]), summarised for the log.
//!
//! The kernel walks the maps itself: for an expiring session the key is
//! cooled first, then the forward entry goes (egress can no longer pick the
//! pair up), then the reverse entry, which keeps the external port claimed
//! (BPF_NOEXIST) until that moment: at no point is the key both unclaimed
//! and not cooling. The same program keeps running from its timer when no
//! daemon drives it.

use std::{sync::atomic::AtomicBool, time::Duration};

use anyhow::Result;
use aya::Ebpf;
use nat_common::sweep::SweepTotal;

use crate::datapath::sweep::KernelSweep;

#[derive(Debug, Default, Clone, Copy)]
pub struct Sweep {
    pub scanned: u64,
    pub expired: u64,
    /// Cooldown entries removed because they ended.
    pub cooled: u64,
    /// Expired sessions kept because their cooldown could not be recorded.
    pub kept: u64,
    /// Reverse entries removed because their forward entry was gone.
    pub orphans: u64,
    /// Program runs it took (more than one when a run hit its budget).
    pub runs: u64,
    /// How long the sweep program ran, by the kernel's clock.
    pub program: Duration,
}

/// One full sweep, or what of it ran before `stop` was set.
pub fn sweep(kernel: &KernelSweep, ebpf: &Ebpf, stop: &AtomicBool) -> Result<Sweep> {
    let (t, program) = kernel.run(ebpf, stop)?;
    Ok(Sweep {
        scanned: t.get(SweepTotal::Scanned),
        expired: t.get(SweepTotal::Expired),
        cooled: t.get(SweepTotal::CooldownsEnded),
        kept: t.get(SweepTotal::Kept),
        orphans: t.get(SweepTotal::Orphans),
        runs: t.get(SweepTotal::Runs),
        program,
    })
}
