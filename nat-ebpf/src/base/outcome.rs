//! What becomes of a packet, in the bottom layer: a counter (translated,
//! passed for a reason) or a [`DropReason`], and the encoding of either as
//! the one scalar a BPF global function may return. Every layer above
//! returns these; `net::verdict` turns them into a program's action.

use nat_common::{counters::Counter, headers::HeaderError};

/// Why a packet is dropped. Every variant has a counter.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum DropReason {
    NoSession,
    AllocFail,
    /// A reset, either way, outside its receiver's window.
    RstOutOfWindow,
    /// A session map is full: no candidate can be claimed.
    SessionTableFull,
    Malformed,
    Unsupported,
    FragUnknown,
    RewriteError,
    StrictCooling,
    IcmpUnmatched,
    /// A port forward's internal host already has a session with the remote on that port.
    ForwardConflict,
    /// A hairpinned packet has no route to its internal host.
    HairpinUnrouted,
    /// The internal host holds `max-sessions-per-host` sessions.
    HostLimit,
    /// A frame tagged for a VLAN with an internal IPv4 source, at egress.
    TaggedInternal,
    /// The host's blocks have no usable port and it holds `max-blocks-per-host`.
    BlockLimit,
    /// No external address has a free block.
    NoBlock,
}

impl DropReason {
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            DropReason::NoSession => Counter::NoSession,
            DropReason::AllocFail => Counter::AllocFail,
            DropReason::RstOutOfWindow => Counter::RstOutOfWindow,
            DropReason::SessionTableFull => Counter::SessionTableFull,
            DropReason::Malformed => Counter::Malformed,
            DropReason::Unsupported => Counter::Unsupported,
            DropReason::FragUnknown => Counter::FragUnknown,
            DropReason::RewriteError => Counter::RewriteError,
            DropReason::StrictCooling => Counter::StrictCooling,
            DropReason::IcmpUnmatched => Counter::IcmpUnmatched,
            DropReason::ForwardConflict => Counter::ForwardConflict,
            DropReason::HairpinUnrouted => Counter::HairpinUnrouted,
            DropReason::HostLimit => Counter::HostLimit,
            DropReason::TaggedInternal => Counter::TaggedInternal,
            DropReason::BlockLimit => Counter::BlockLimit,
            DropReason::NoBlock => Counter::NoBlock,
        }
    }
}

impl From<HeaderError> for DropReason {
    #[inline(always)]
    fn from(_: HeaderError) -> Self {
        DropReason::Malformed
    }
}

/// Drop reasons: their codes are 0..DROP_REASONS, in declaration order
/// (named after the last variant: a new one goes after it, and here).
const DROP_REASONS: u32 = DropReason::NoBlock as u32 + 1;

/// An outcome as the one scalar a BPF global function may return: a
/// counter's index, or a drop reason's code as -1 - code.
#[inline(always)]
pub const fn encode(outcome: Result<Counter, DropReason>) -> i64 {
    match outcome {
        Ok(counter) => counter as i64,
        Err(drop) => -1 - drop as i64,
    }
}

/// [`encode`] undone. A code out of range (none is returned) reads as Malformed.
/// A range check and a cast rather than a match, so the caller's verifier
/// walk goes on with one state per sign, not one per variant.
#[inline(always)]
pub fn decode(code: i64) -> Result<Counter, DropReason> {
    use nat_common::counters::COUNTER_COUNT;
    if code >= 0 {
        if code < COUNTER_COUNT as i64 {
            // SAFETY: Counter is repr(u32) with the discriminants 0..COUNTER_COUNT.
            return Ok(unsafe { core::mem::transmute::<u32, Counter>(code as u32) });
        }
        return Err(DropReason::Malformed);
    }
    let drop = (-1 - code) as u64;
    if drop < DROP_REASONS as u64 {
        // SAFETY: DropReason is repr(u32) with the discriminants 0..DROP_REASONS.
        return Err(unsafe { core::mem::transmute::<u32, DropReason>(drop as u32) });
    }
    Err(DropReason::Malformed)
}
