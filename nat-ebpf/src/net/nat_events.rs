//! Compliance events, in the net layer: the records the daemon exports as
//! IPFIX and syslog (`nat_common::nat_event`), put into the NAT_EVENTS
//! ring buffer. A full buffer (the daemon behind, or gone) loses the
//! event and counts it (`events_dropped`); the packet is never held up.
//! The exhaustion and quota kinds come from drops an outsider can cause at
//! packet rate, so each CPU writes at most one of each kind a second.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use nat_common::{
    counters::Counter,
    flow::FlowKey,
    nat_event::{NatEvent, kind},
};

use crate::base::{
    maps::{NAT_CONFIG, NAT_EVENTS, count},
    packet::now_ns,
};

/// When each CPU last wrote an event of each rate-limited kind (boot ns);
/// never pinned.
#[map(name = "NAT_EVENT_LAST")]
static NAT_EVENT_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

/// The least time between two rate-limited events of a kind on one CPU.
const RATE_NS: u64 = 1_000_000_000;

/// A host got the block `index` of `external`, ports `first` and on.
#[inline(always)]
pub fn block(kind: u16, host: u32, external: u32, first: u16, ports: u32) {
    emit(
        kind as u64,
        host as u64 | (external as u64) << 32,
        (ports as u64) << 32,
        (first as u64) << 48,
    );
}

/// A drop for want of addresses, ports or quota: `value` is the limit
/// that was met, if there is one.
#[inline(always)]
pub fn exhausted(kind: u16, fwd: &FlowKey, external: u32, value: u32) {
    emit(
        kind as u64 | (fwd.proto as u64) << 16 | (value as u64) << 32,
        fwd.saddr as u64 | (external as u64) << 32,
        fwd.daddr as u64,
        fwd.sport as u64 | (fwd.dport as u64) << 32,
    );
}

/// An external address's blocks in use passed the threshold: `percent` now.
#[inline(always)]
pub fn threshold(external: u32, percent: u32) {
    emit(
        kind::THRESHOLD_REACHED as u64 | (percent as u64) << 32,
        (external as u64) << 32,
        0,
        0,
    );
}

/// A session of `fwd` on (`ext_addr`, `ext_port`) opened or ended.
#[inline(always)]
pub fn session(kind: u16, fwd: &FlowKey, ext_addr: u32, ext_port: u16) {
    emit(
        kind as u64 | (fwd.proto as u64) << 16,
        fwd.saddr as u64 | (ext_addr as u64) << 32,
        fwd.daddr as u64,
        fwd.sport as u64 | (ext_port as u64) << 16 | (fwd.dport as u64) << 32,
    );
}

/// A session opened from outside, on the external endpoint of `rev_key`
/// toward internal (`int_addr`, `int_port`), logged when `log-sessions`
/// asks: from the reverse key as it is, with no forward key put together
/// on frames that have no bytes to spare.
#[inline(always)]
pub fn inbound_session(rev_key: &FlowKey, int_addr: u32, int_port: u16) {
    if !NAT_CONFIG.get(0).is_some_and(|c| c.log_sessions != 0) {
        return;
    }
    emit(
        kind::SESSION_CREATED as u64 | (rev_key.proto as u64) << 16,
        int_addr as u64 | (rev_key.saddr as u64) << 32,
        rev_key.daddr as u64,
        int_port as u64 | (rev_key.sport as u64) << 16 | (rev_key.dport as u64) << 32,
    );
}

/// The record's fields packed in four words: a global function takes
/// scalars only, and this one is called from frames with no stack to spare.
#[inline(always)]
fn emit(w0: u64, w1: u64, w2: u64, w3: u64) {
    nat_event(w0, w1, w2, w3);
}

/// Writes one [`NatEvent`] as a global BPF function, verified once: `w0`
/// kind (0..16), protocol (16..24), value (32..64); `w1` internal address
/// (0..32), external (32..64); `w2` remote address (0..32), block size
/// (32..64); `w3` internal port (0..16), external port (16..32), remote
/// port (32..48), a block's first port (48..64).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_event(w0: u64, w1: u64, w2: u64, w3: u64) -> i64 {
    let kind = w0 as u16;
    let now = now_ns();
    let limited = matches!(
        kind,
        kind::ADDRESSES_EXHAUSTED | kind::PORTS_EXHAUSTED | kind::QUOTA_REACHED
    );
    if limited && let Some(last) = NAT_EVENT_LAST.get_ptr_mut(kind as u32) {
        // SAFETY: this CPU's own slot of a live per-CPU map value.
        let last = unsafe { &mut *last };
        if now.wrapping_sub(*last) < RATE_NS {
            return 0;
        }
        *last = now;
    }
    let Some(mut entry) = NAT_EVENTS.reserve::<NatEvent>(0) else {
        count(Counter::EventsDropped);
        return 0;
    };
    // SAFETY: the entry is ours until submitted; every field is written.
    unsafe {
        entry.as_mut_ptr().write(NatEvent {
            time_ns: now,
            kind,
            proto: (w0 >> 16) as u8,
            _pad: 0,
            value: (w0 >> 32) as u32,
            internal: w1 as u32,
            external: (w1 >> 32) as u32,
            remote: w2 as u32,
            internal_port: w3 as u16,
            external_port: (w3 >> 16) as u16,
            remote_port: (w3 >> 32) as u16,
            block_first: (w3 >> 48) as u16,
            block_ports: (w2 >> 32) as u32,
        });
    }
    entry.submit(0);
    0
}
