//! Order in which the allocator tries external ports for a new flow.
//!
//! Candidate 0 is the internal source port when it lies in the range (port
//! preservation). After that a keyed hash of the flow picks a start point
//! and a stride of the flow's own ([`for_flow`]), coprime to the range size,
//! so the sequence visits every port of the range exactly once per lap.
//!
//! The stride is the flow's own because one stride for every flow is linear
//! probing in disguise: two flows whose walks meet share every candidate
//! after that, so the taken ports gather into runs that grow with the
//! occupancy (primary clustering). Toward one destination with 90% of a
//! 64,512-port range taken, some flows then met 256 taken candidates in a
//! row (the walk's bound) although one port in ten was free, and were
//! dropped, and so were their SYN retransmissions, which walk the same
//! candidates. With a stride per flow, walks that meet part again at once.

use crate::{
    config::{MAX_PROBES, PoolAddr, SPILL_PROBES},
    flow::FlowKey,
};

/// Number of ports in `[min, max]`; 0 for an inverted range.
#[inline(always)]
pub const fn span(min: u16, max: u16) -> u32 {
    if max < min {
        0
    } else {
        max as u32 - min as u32 + 1
    }
}

const fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// A stride near the golden section of `span` that is coprime with it.
pub const fn stride_for(span: u32) -> u32 {
    if span <= 2 {
        return 1;
    }
    let mut step = (span as u64 * 618 / 1000) as u32;
    if step == 0 {
        step = 1;
    }
    while gcd(step, span) != 1 {
        step += 1;
    }
    step
}

/// `pool` with the stride of the flow whose walk starts at `start`: the
/// pool's stride raised to a power the flow's hash picks, modulo the range
/// size. A power of a number coprime to the size is coprime to it too, so
/// the flow's walk still visits every port once per lap; the powers of the
/// pool's stride are many (768 distinct ones for the 64,512 ports of
/// 1024-65535, 4,096 for the default 16,384), which is what breaks the
/// runs up. Sixteen square-and-multiply steps written out, without a loop
/// or a branch: the same cost for every flow, and nothing for the verifier
/// to iterate (Linux 6.1 took a loop here for an infinite one).
#[inline(always)]
pub const fn for_flow(pool: &PoolAddr, start: u32) -> PoolAddr {
    let span = span(pool.port_min, pool.port_max) as u64;
    let mut flow = *pool;
    if span <= 2 {
        return flow;
    }
    let exp = (mix(start ^ STRIDE_SALT) >> 16) as u64;
    // The pool's stride is coprime to the size, so never 0 modulo it.
    let base = pool.step as u64 % span;
    let s = (1, base);
    let s = power_step(s, exp, 0, span);
    let s = power_step(s, exp, 1, span);
    let s = power_step(s, exp, 2, span);
    let s = power_step(s, exp, 3, span);
    let s = power_step(s, exp, 4, span);
    let s = power_step(s, exp, 5, span);
    let s = power_step(s, exp, 6, span);
    let s = power_step(s, exp, 7, span);
    let s = power_step(s, exp, 8, span);
    let s = power_step(s, exp, 9, span);
    let s = power_step(s, exp, 10, span);
    let s = power_step(s, exp, 11, span);
    let s = power_step(s, exp, 12, span);
    let s = power_step(s, exp, 13, span);
    let s = power_step(s, exp, 14, span);
    let s = power_step(s, exp, 15, span);
    flow.step = s.0 as u32;
    flow
}

/// One square-and-multiply step on (power so far, base^(2^bit)): the power
/// takes the base when bit `bit` of `exp` is set, by arithmetic rather than
/// a branch. The base is a unit modulo `span`, so at least 1, and every
/// product stays below 2^32. Wrapping operations all the same: an overflow
/// check is a branch to the panic handler, an endless loop the verifier
/// refuses, and a pool whose stride is not coprime (never written by the
/// loader) must not make the host tests panic.
#[inline(always)]
const fn power_step((power, base): (u64, u64), exp: u64, bit: u32, span: u64) -> (u64, u64) {
    let set = (exp >> bit) & 1;
    let factor = base.wrapping_sub(1).wrapping_mul(set).wrapping_add(1);
    (
        power.wrapping_mul(factor) % span,
        base.wrapping_mul(base) % span,
    )
}

/// Keeps the exponent's hash apart from the start point's.
const STRIDE_SALT: u32 = 0x9e37_79b9;

/// The `i`-th port of the walk that starts at `start` (host byte order).
#[inline(always)]
pub fn walk(pool: &PoolAddr, start: u32, i: u32) -> u16 {
    let span = span(pool.port_min, pool.port_max) as u64;
    if span == 0 {
        return pool.port_min;
    }
    let off = (start as u64 + i as u64 * pool.step as u64) % span;
    pool.port_min + off as u16
}

/// The order in which one allocation visits the pool: up to [`MAX_PROBES`]
/// candidates of the host's own address, then up to [`SPILL_PROBES`] of
/// each other address in turn, none past one lap of a range. Numbered as one
/// sequence, so that a single loop (one bpf_loop, one callback the verifier
/// checks once) walks it all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tour {
    /// Candidates on the host's own address.
    pub own: u32,
    /// Candidates on each other address.
    pub other: u32,
    /// Addresses in the pool.
    pub addresses: u32,
}

impl Tour {
    /// The tour of a pool of `addresses` whose addresses share a range of `span` ports.
    pub const fn new(span: u32, addresses: u32) -> Self {
        Self {
            own: if span < MAX_PROBES { span } else { MAX_PROBES },
            other: if span < SPILL_PROBES {
                span
            } else {
                SPILL_PROBES
            },
            addresses,
        }
    }

    /// A tour of `slots` windows of `window` candidates each: a host's
    /// blocks, or its deterministic share (one slot).
    pub const fn uniform(window: u32, slots: u32) -> Self {
        Self {
            own: window,
            other: window,
            addresses: slots,
        }
    }

    /// Candidates in the whole tour.
    pub const fn len(&self) -> u32 {
        if self.addresses == 0 {
            return 0;
        }
        self.own + (self.addresses - 1) * self.other
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate `i` of the tour: the address it is on (0 the host's own, k
    /// the k-th after it in the pool) and its index in that address's walk.
    pub const fn at(&self, i: u32) -> Option<(u32, u32)> {
        if self.addresses == 0 {
            return None;
        }
        if i < self.own {
            return Some((0, i));
        }
        if self.other == 0 {
            return None;
        }
        let k = i - self.own;
        let address = 1 + k / self.other;
        if address >= self.addresses {
            return None;
        }
        Some((address, k % self.other))
    }
}

/// Whether the internal port (host order) can be kept as the external one.
#[inline(always)]
pub const fn preservable(pool: &PoolAddr, port: u16) -> bool {
    port >= pool.port_min && port <= pool.port_max
}

#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    // murmur3 finalizer: cheap and good enough to spread start points.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Keyed hash of a forward flow; the seed is a load-time secret so outsiders
/// cannot predict which port a flow will get.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = mix(seed ^ key.saddr);
    h = mix(h ^ key.daddr);
    h = mix(h ^ ((key.sport as u32) << 16 | key.dport as u32));
    mix(h ^ key.proto as u32)
}

/// Index into the pool for an internal host: a host keeps one external
/// address for all its flows (paired pooling, RFC 4787 REQ-2).
#[inline(always)]
pub const fn pool_index(internal_addr: u32, seed: u32, pool_len: u32) -> u32 {
    if pool_len == 0 {
        0
    } else {
        mix(internal_addr ^ seed.rotate_left(7)) % pool_len
    }
}

/// Buckets of the probe histogram: 1, 2, 3-4, 5-8, ... 129-256, then fallbacks.
pub const PROBE_BUCKETS: u32 = 10;

/// Histogram bucket for an allocation that succeeded on its `probes`-th
/// candidate (1-based); [`PROBE_BUCKETS`]` - 1` holds fallbacks.
#[inline(always)]
pub const fn probe_bucket(probes: u32) -> u32 {
    if probes <= 1 {
        return 0;
    }
    let b = 32 - (probes - 1).leading_zeros();
    if b > PROBE_BUCKETS - 2 {
        PROBE_BUCKETS - 2
    } else {
        b
    }
}

/// Label of a histogram bucket, for `nat stats`.
pub const fn probe_bucket_label(bucket: u32) -> &'static str {
    match bucket {
        0 => "1",
        1 => "2",
        2 => "3-4",
        3 => "5-8",
        4 => "9-16",
        5 => "17-32",
        6 => "33-64",
        7 => "65-128",
        8 => "129+",
        _ => "fallback",
    }
}
