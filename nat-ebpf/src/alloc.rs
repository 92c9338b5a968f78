//! External port allocation for a new flow.
//!
//! A candidate is claimed by inserting its reverse entry with BPF_NOEXIST:
//! the reverse key is (protocol, external address, external port, remote
//! address, remote port), so the claim is atomic across CPUs and the same port
//! stays free for every other destination. The forward entry follows with
//! BPF_NOEXIST too; if another CPU created the flow first, the claim is rolled
//! back and the winner's entry used.

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    config::MAX_PROBES,
    counters::Counter,
    flow::{FlowKey, Session},
    probe::{flow_hash, pool_index, preservable, walk},
    tcp_state::seen_bits,
};

use crate::{
    maps::{NAT_CONFIG, NAT_FWD, NAT_POOL, NAT_REV, count, hash_seed},
    packet::Drop,
};

enum Claim {
    Won(Session),
    /// Another CPU created this very flow meanwhile.
    Lost(Session),
    Taken,
}

#[inline(always)]
fn claim(
    fwd: &FlowKey,
    ext_addr: u32,
    port_host: u16,
    tcp_flags: u8,
    now: u64,
) -> Result<Claim, Drop> {
    let port = port_host.to_be();
    let rev_key = fwd.translated(ext_addr, port);
    let rev = Session {
        addr: fwd.saddr,
        port: fwd.sport,
        seen: 0,
        _pad: 0,
        last_seen: now,
    };
    if NAT_REV.insert(&rev_key, &rev, BPF_NOEXIST as u64).is_err() {
        return Ok(Claim::Taken);
    }
    let out = Session {
        addr: ext_addr,
        port,
        seen: seen_bits(tcp_flags),
        _pad: 0,
        last_seen: now,
    };
    if NAT_FWD.insert(fwd, &out, BPF_NOEXIST as u64).is_ok() {
        return Ok(Claim::Won(out));
    }
    let _ = NAT_REV.remove(&rev_key);
    // SAFETY: read-only copy of a map value.
    match unsafe { NAT_FWD.get(fwd) } {
        Some(winner) => Ok(Claim::Lost(*winner)),
        None => Err(Drop::AllocFail),
    }
}

/// Finds an external address and port for `fwd` and inserts the session pair.
#[inline(always)]
pub fn allocate(fwd: &FlowKey, tcp_flags: u8, now: u64) -> Result<Session, Drop> {
    let cfg = NAT_CONFIG.get(0).ok_or(Drop::AllocFail)?;
    let seed = hash_seed();
    let pool = NAT_POOL
        .get(pool_index(fwd.saddr, seed, cfg.pool_len))
        .ok_or(Drop::AllocFail)?;
    if cfg.pool_len == 0 || pool.step == 0 {
        return Err(Drop::AllocFail);
    }

    let src_port = u16::from_be(fwd.sport);
    if preservable(pool, src_port) {
        match claim(fwd, pool.addr, src_port, tcp_flags, now)? {
            Claim::Won(s) => return Ok(opened(s)),
            Claim::Lost(s) => return Ok(raced(s)),
            Claim::Taken => {}
        }
    }

    let start = flow_hash(fwd, seed);
    let mut i = 0u32;
    while i < MAX_PROBES {
        match claim(fwd, pool.addr, walk(pool, start, i), tcp_flags, now)? {
            Claim::Won(s) => return Ok(opened(s)),
            Claim::Lost(s) => return Ok(raced(s)),
            Claim::Taken => {}
        }
        i += 1;
    }
    Err(Drop::AllocFail)
}

#[inline(always)]
fn opened(s: Session) -> Session {
    count(Counter::Opened);
    s
}

#[inline(always)]
fn raced(s: Session) -> Session {
    count(Counter::InsertRace);
    s
}
