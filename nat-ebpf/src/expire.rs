//! The expiry sweep: removes idle sessions, ended cooldowns and orphaned
//! reverse entries, in the kernel, with no system call per entry.
//!
//! One program, two triggers. The daemon runs `nat_sweep` through
//! BPF_PROG_TEST_RUN every `--reap-interval-ms` (it is a TC program only so
//! that aya can run it; it is never attached). Each run also (re)arms one
//! `bpf_timer` for [`TIMER_TAKEOVER_INTERVALS`] intervals later, so while a
//! daemon sweeps the timer never fires; once the daemon is gone it fires and
//! runs the same walk every interval, re-arming itself. The timer lives in a
//! pinned map and holds a reference to the program whose callback it runs,
//! so it outlives the daemon; removing the pins (`nat unload`) cancels it.
//! One timer for the whole table, never one per entry (per-entry timers
//! fail with -ENOMEM under load and cost a timer per session).
//!
//! Each map is walked with bpf_for_each_map_elem. A callback may delete the
//! element it was handed (the hash map walk runs under RCU and steps to the
//! next element through the bucket's nulls list, so an element that is
//! freed or reused meanwhile at worst ends that bucket early or shows an
//! element twice: the next run sees what this one missed). Work per run is
//! bounded by a budget of deletions; a run that stops early reports it and
//! the next run, which walks from the start, picks up what is left.
//!
//! The guarantees of the user-space reaper stay: a key is cooled before its
//! session is freed (cooldown first, then the forward entry, then the reverse
//! one, which keeps the port claimed until the last moment: never unclaimed
//! and not cooling), and a packet that arrives while the sweep looks at a
//! session keeps it (`last_seen` is read again right before the delete; an
//! expired session's next packet always writes it, being older than the
//! touch granularity).

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_timer},
    helpers::generated::{
        bpf_for_each_map_elem, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
    },
    macros::classifier,
    programs::TcContext,
};
use nat_common::{
    expiry::{
        ORPHAN_GRACE_NS, ORPHAN_WALK_EVERY, SWEEP_BUDGET, SweepTotal, TIMER_RESUME_NS,
        TIMER_TAKEOVER_INTERVALS, cooldown_until, expired, phase, shortest_idle_ns,
    },
    flow::{FlowKey, PROTO_TCP, Session},
    tcp_state::{close_kind, expiry_kind, idle_timeout_ms, state_of},
};

use crate::{
    maps::{
        NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, NAT_SWEEP_CTL, NAT_SWEEP_STATS,
        NAT_SWEEP_TIMER, SweepTimer,
    },
    packet::{now_ns, read},
};

/// bpf_for_each_map_elem callbacks: go on, or stop the walk.
const NEXT: u64 = 0;
const STOP: u64 = 1;

const CLOCK_BOOTTIME: u64 = 7;

/// State of one run, on the stack of the run's entry point and handed to
/// each callback by pointer.
#[repr(C)]
struct Walk {
    now: u64,
    shortest: u64,
    budget: u32,
    work: u32,
    stopped: u32,
    _pad: u32,
    scanned: u64,
    expired: u64,
    ended: u64,
    kept: u64,
    orphans: u64,
}

impl Walk {
    /// Counts one deletion; `STOP` once the budget is spent.
    #[inline(always)]
    fn spend(&mut self) -> u64 {
        self.work += 1;
        if self.work >= self.budget {
            self.stopped = 1;
            STOP
        } else {
            NEXT
        }
    }
}

/// One sweep run for the daemon. The first byte of the test frame is the
/// [`phase`] to start at, as the previous run returned it; the return value
/// is where the next run resumes ([`phase::DONE`]: the sweep is complete).
#[classifier]
pub fn nat_sweep(ctx: TcContext) -> i32 {
    // Two bytes read for one: LLVM turns a one-byte bound into
    // `data >= data_end`, which the verifier does not take as a bound.
    let start = read::<[u8; 2]>(ctx.data(), ctx.data_end(), 0).map_or(phase::DONE, |b| b[0]);
    let Some(ctl) = NAT_SWEEP_CTL.get(0) else {
        return phase::DONE as i32;
    };
    if ctl.interval_ns != 0 {
        arm(ctl.interval_ns * TIMER_TAKEOVER_INTERVALS);
    }
    sweep(now_ns(), ctl.budget, false, start) as i32
}

/// Initialises the timer (once: later calls get -EBUSY and change nothing),
/// points it at this program's callback, so that after an upgrade it runs
/// the new binary's sweep, and starts it `delay` from now, replacing any
/// earlier start.
#[inline(always)]
fn arm(delay: u64) {
    let Some(slot) = NAT_SWEEP_TIMER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `slot` is the map value; the helpers take the timer inside it.
    unsafe {
        let timer: *mut bpf_timer = &raw mut (*slot).timer;
        bpf_timer_init(
            timer,
            &NAT_SWEEP_TIMER as *const _ as *mut c_void,
            CLOCK_BOOTTIME,
        );
        bpf_timer_set_callback(timer, on_timer as *mut c_void);
        bpf_timer_start(timer, delay, 0);
    }
}

/// The timer's callback: no daemon has swept for a while.
extern "C" fn on_timer(_map: *mut c_void, _key: *mut u32, value: *mut SweepTimer) -> i32 {
    let Some(ctl) = NAT_SWEEP_CTL.get(0) else {
        return 0;
    };
    if ctl.interval_ns == 0 {
        return 0;
    }
    // SAFETY: `value` is the timer's own map value; only this callback
    // writes its phase, and the kernel never runs it on two CPUs at once.
    unsafe {
        let next = sweep(now_ns(), ctl.budget, true, (*value).phase as u8);
        (*value).phase = next as u32;
        let delay = if next == phase::DONE {
            ctl.interval_ns
        } else {
            TIMER_RESUME_NS
        };
        bpf_timer_start(&raw mut (*value).timer, delay, 0);
    }
    0
}

/// Walks the cooldowns, the forward sessions and, every
/// [`ORPHAN_WALK_EVERY`] sweeps, the reverse entries, from phase `start` on;
/// returns the phase the next run resumes at, [`phase::DONE`] when it
/// walked everything.
#[inline(always)]
fn sweep(now: u64, budget: u32, timer: bool, start: u8) -> u8 {
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return phase::DONE;
    };
    let mut w = Walk {
        now,
        shortest: shortest_idle_ns(cfg),
        budget: if budget == 0 { SWEEP_BUDGET } else { budget },
        work: 0,
        stopped: 0,
        _pad: 0,
        scanned: 0,
        expired: 0,
        ended: 0,
        kept: 0,
        orphans: 0,
    };
    let sweeps = if start == phase::DONE {
        add(SweepTotal::Sweeps, 1)
    } else {
        0
    };
    add(SweepTotal::Runs, 1);
    if timer {
        add(SweepTotal::TimerRuns, 1);
    }
    let ctx = &mut w as *mut Walk as *mut c_void;
    // Each phase is walked once per sweep; a run that stops at its budget
    // leaves the rest of its phase to the next run, which walks that map
    // from its start again (what this run deleted is gone from it).
    let mut next = phase::DONE;
    // SAFETY: each callback only touches the `Walk` it is handed and the
    // element the kernel hands it.
    unsafe {
        // Ended cooldowns first: they make room for the ones expiring
        // sessions are about to record.
        if start <= phase::COOLDOWNS {
            bpf_for_each_map_elem(
                &NAT_COOLDOWN as *const _ as *mut c_void,
                end_cooldown as *mut c_void,
                ctx,
                0,
            );
            next = phase::COOLDOWNS;
        }
        if w.stopped == 0 && start <= phase::SESSIONS {
            bpf_for_each_map_elem(
                &NAT_FWD as *const _ as *mut c_void,
                expire_session as *mut c_void,
                ctx,
                0,
            );
            next = phase::SESSIONS;
        }
        if w.stopped == 0 && (start == phase::ORPHANS || sweeps % ORPHAN_WALK_EVERY == 0) {
            bpf_for_each_map_elem(
                &NAT_REV as *const _ as *mut c_void,
                reap_orphan as *mut c_void,
                ctx,
                0,
            );
            next = phase::ORPHANS;
        }
    }
    add(SweepTotal::Scanned, w.scanned);
    add(SweepTotal::Expired, w.expired);
    add(SweepTotal::CooldownsEnded, w.ended);
    add(SweepTotal::Kept, w.kept);
    add(SweepTotal::Orphans, w.orphans);
    if w.stopped == 0 {
        return phase::DONE;
    }
    add(SweepTotal::Truncated, 1);
    next
}

/// Adds to this CPU's total and returns the new value.
#[inline(always)]
fn add(total: SweepTotal, n: u64) -> u64 {
    match NAT_SWEEP_STATS.get_ptr_mut(total as u32) {
        Some(slot) => {
            // SAFETY: per-CPU slot; runs on one CPU do not overlap (a timer
            // callback and a test run are not nested on a CPU).
            unsafe {
                *slot += n;
                *slot
            }
        }
        None => 0,
    }
}

/// Makes `key` cool until at least `until`; false if it could not be
/// recorded (the cooldown map is full). A longer cooldown already there
/// stays: this only ever extends.
#[inline(always)]
fn cool(key: &FlowKey, until: u64) -> bool {
    // Most keys have no entry: one insert, no lookup.
    match NAT_COOLDOWN.insert(key, until, BPF_NOEXIST as u64) {
        Ok(()) => return true,
        Err(e) if e != -EEXIST => return false,
        Err(_) => {}
    }
    if let Some(cur) = NAT_COOLDOWN.get_ptr(key)
        // SAFETY: map value pointer from the lookup.
        && unsafe { read_volatile(cur) } >= until
    {
        return true;
    }
    NAT_COOLDOWN.insert(key, until, 0).is_ok()
}

const EEXIST: i32 = 17;

/// An ended cooldown goes, unless the key is claimed.
///
/// A cooldown is written for a key only by a close or an expiry of a
/// session that holds the key in NAT_REV (track.rs `start_cooldown`, this
/// sweep); the allocator only removes cooldowns. So:
/// - while a session holds the key, the ended entry stays (harmless: the
///   key is claimed anyway) and goes in a later run, after the session;
/// - the value is read again after NAT_REV was found empty: an expiry or
///   close that wrote a fresh cooldown before its session was freed wrote
///   it before that check, so the re-read sees it and the entry stays;
/// - a session that claims the key after the check (the allocator takes an
///   ended cooldown as free) and closes before the delete would lose its
///   fresh cooldown to the delete: NAT_REV is read once more after the
///   delete and the cooldown re-derived from that session's close, from
///   its `last_seen`, which ends no earlier than the lost one (the close
///   stamped it). Such a session cannot also have expired and been freed
///   in that window: it is younger than the one-second expiry slack.
extern "C" fn end_cooldown(
    _map: *mut c_void,
    key: *const FlowKey,
    until: *const u64,
    ctx: *mut c_void,
) -> u64 {
    // SAFETY: the kernel hands the element and the caller's `Walk`.
    let (w, key) = unsafe { (&mut *(ctx as *mut Walk), *key) };
    // SAFETY: element value pointer.
    if unsafe { read_volatile(until) } > w.now {
        return NEXT;
    }
    // SAFETY: read-only lookup.
    if unsafe { NAT_REV.get(&key) }.is_some() {
        return NEXT;
    }
    // A fresh lookup: an update replaces the element, so the one handed to
    // this callback may be the old one.
    match NAT_COOLDOWN.get_ptr(&key) {
        // SAFETY: map value pointer from the lookup.
        Some(cur) if unsafe { read_volatile(cur) } <= w.now => {}
        _ => return NEXT,
    }
    let _ = NAT_COOLDOWN.remove(&key);
    w.ended += 1;
    if let Some(rev) = NAT_REV.get_ptr(&key) {
        restore(&key, rev, w.now);
    }
    w.spend()
}

/// Re-derives the cooldown of a session holding `key` from its close, if it
/// has one.
#[inline(always)]
fn restore(key: &FlowKey, rev: *const Session, now: u64) {
    if key.proto != PROTO_TCP {
        return;
    }
    let Some(cfg) = NAT_CONFIG.get(0) else { return };
    // SAFETY: map value pointer from the caller's lookup.
    let (addr, port, r_seen, r_last) = unsafe {
        (
            (*rev).addr,
            (*rev).port,
            (*rev).seen,
            read_volatile(&(*rev).last_seen),
        )
    };
    let fwd_key = FlowKey::new(key.proto, addr, port, key.daddr, key.dport);
    // SAFETY: read-only lookup.
    let (f_seen, f_last) =
        unsafe { NAT_FWD.get(&fwd_key) }.map_or((0, 0), |f| (f.seen, f.last_seen));
    if let Some(kind) = close_kind(f_seen, r_seen)
        && let Some(until) = cooldown_until(kind, cfg, now, f_last.max(r_last))
    {
        cool(key, until);
    }
}

/// A session idle past its state's timeout is cooled, then freed.
extern "C" fn expire_session(
    _map: *mut c_void,
    key: *const FlowKey,
    fwd: *mut Session,
    ctx: *mut c_void,
) -> u64 {
    // SAFETY: the caller's `Walk`.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    w.scanned += 1;
    // SAFETY: element value pointer.
    let f_last = unsafe { read_volatile(&(*fwd).last_seen) };
    if w.now.saturating_sub(f_last) <= w.shortest {
        return NEXT;
    }
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return STOP;
    };
    // SAFETY: element key and value pointers.
    let (key, addr, port, f_seen) = unsafe { (*key, (*fwd).addr, (*fwd).port, (*fwd).seen) };
    let rev_key = key.translated(addr, port);
    // The reverse entry counts only if it points back: one that belongs to
    // another flow (this forward entry lost its own) is not ours to free.
    let rev = match NAT_REV.get_ptr(&rev_key) {
        // SAFETY: map value pointer from the lookup.
        Some(r) if unsafe { (*r).addr == key.saddr && (*r).port == key.sport } => Some(r),
        _ => None,
    };
    // SAFETY: as above.
    let (r_seen, r_last) = rev.map_or((0, 0), |r| unsafe {
        ((*r).seen, read_volatile(&(*r).last_seen))
    });
    let last = f_last.max(r_last);
    if !expired(
        w.now,
        last,
        idle_timeout_ms(state_of(key.proto, f_seen, r_seen), cfg),
    ) {
        return NEXT;
    }
    let kind = expiry_kind(key.proto, f_seen, r_seen);
    if let Some(until) = cooldown_until(kind, cfg, w.now, last)
        && !cool(&rev_key, until)
    {
        // Never free a key without cooling it: the session and its port
        // stay until the cooldown map has room.
        w.kept += 1;
        return NEXT;
    }
    // A packet since the reads above: the session lives on (the cooldown
    // just written does no harm while the key is claimed).
    // SAFETY: element and lookup value pointers, still mapped.
    let moved = unsafe {
        read_volatile(&(*fwd).last_seen) != f_last
            || rev.is_some_and(|r| read_volatile(&(*r).last_seen) != r_last)
    };
    if moved {
        return NEXT;
    }
    let _ = NAT_FWD.remove(&key);
    if rev.is_some() {
        let _ = NAT_REV.remove(&rev_key);
    }
    w.expired += 1;
    w.spend()
}

/// A reverse entry whose forward entry is gone (or points elsewhere) keeps
/// its port toward that destination claimed for nothing: cool the key, then
/// free it.
extern "C" fn reap_orphan(
    _map: *mut c_void,
    key: *const FlowKey,
    rev: *mut Session,
    ctx: *mut c_void,
) -> u64 {
    // SAFETY: the caller's `Walk`.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    // SAFETY: element value pointer.
    let r_last = unsafe { read_volatile(&(*rev).last_seen) };
    if w.now.saturating_sub(r_last) <= ORPHAN_GRACE_NS.max(w.shortest) {
        return NEXT;
    }
    // SAFETY: element key and value pointers.
    let (key, addr, port, r_seen) = unsafe { (*key, (*rev).addr, (*rev).port, (*rev).seen) };
    let fwd_key = FlowKey::new(key.proto, addr, port, key.daddr, key.dport);
    // SAFETY: read-only lookup.
    if let Some(f) = unsafe { NAT_FWD.get(&fwd_key) }
        && f.addr == key.saddr
        && f.port == key.sport
    {
        return NEXT;
    }
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return STOP;
    };
    // Only this direction's bits are left: a TCP orphan counts as idle
    // (the longest cooldown) unless it saw a reset.
    let kind = expiry_kind(key.proto, 0, r_seen);
    if let Some(until) = cooldown_until(kind, cfg, w.now, r_last)
        && !cool(&key, until)
    {
        w.kept += 1;
        return NEXT;
    }
    // SAFETY: element value pointer.
    if unsafe { read_volatile(&(*rev).last_seen) } != r_last {
        return NEXT;
    }
    let _ = NAT_REV.remove(&key);
    w.orphans += 1;
    w.spend()
}
