//! The sweep, in the flows layer: removes idle sessions, ended cooldowns
//! and orphaned reverse entries, in the kernel, with no system call per
//! entry. Each session goes through the session layer's one free
//! (`session::free`); the program and the timer that run it are
//! `programs::sweep`.
//!
//! One walk, two triggers. The daemon runs `nat_sweep` through
//! BPF_PROG_TEST_RUN every `--sweep-interval-ms` (it is a TC program only so
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
//! element it was handed, and (a batch's frees) elements handed before it:
//! the hash map walk (kernel/bpf/hashtab.c `bpf_for_each_hash_elem`) holds
//! the RCU read lock per bucket and steps on through the current element's
//! `next`, which a delete of it or of an element before it leaves intact;
//! no callback deletes an element the walk has not reached. An element of
//! a preallocated map that another CPU reuses meanwhile can at worst end that
//! bucket's walk early or show an element twice, and the next sweep sees
//! what this one missed. Work per run is bounded by a budget of deletions
//! and one of entries looked at (the daemon's runs and the timer's have
//! their own); a run that stops early returns a resume token, and the next
//! run passes over what earlier ones looked at. Passing over is the part no
//! budget bounds (bpf_for_each_map_elem always starts at the first bucket):
//! a resumed run costs a cache miss per element before its resume point,
//! so the daemon's runs look at many entries each (few runs a sweep), and
//! its stop switch is checked while passing over too.
//!
//! Two guarantees hold for every session it frees: its key is cooled
//! before the session is freed (cooldown first, then the forward entry,
//! then the reverse one, which keeps the port claimed until the last
//! moment: never unclaimed and not cooling), and a packet that arrives
//! while the sweep looks at a session keeps it (`last_seen` is read again
//! right before the delete; an expired session's next packet always
//! writes it, being older than the touch granularity).
//!
//! Quiet sessions are judged in batches of [`BATCH`]: the walk's callback
//! only records one, and once the batch is full four passes over it do
//! the reverse lookups, the verdicts, the cooldown lookups of the sessions
//! to free, and the frees. The lookups of a pass take no lock, so their
//! cache misses (the cost of freeing a session in tables of a million
//! entries) overlap instead of queueing behind each other and behind the
//! deletes' locks; the frees then find every bucket they need cached. The
//! frees look the entries up again (a walk's element pointer does not
//! outlive its callback) and free nothing whose `last_seen` moved since
//! the walk read it: a packet keeps its session in a batch too.
//!
//! A quiet session (forward entry idle past the shortest timeout) needs its
//! reverse entry read to be judged, a lookup that misses the cache. The run
//! that reads both entries and finds the session live stamps the forward
//! entry with how long that proof holds (`live_until`,
//! nat_common::sweep::live_stamp: the session's own expiry, or the
//! shortest timeout a packet could move it to, at most 17 s); later runs
//! skip the reverse lookup until then. The proof is tied to the timeouts it
//! was computed under: after they change, no stamp is trusted until every
//! older one has run out (`config_seen` in the timer map). A stamp only
//! ever delays a full check, never frees anything.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::bpf_timer,
    btf_maps,
    helpers::generated::{bpf_for_each_map_elem, bpf_loop},
    macros::{btf_map, map},
    maps::PerCpuArray,
};
use nat_common::{
    config::TOUCH_GRANULARITY_NS,
    flow::{FlowKey, PROTO_TCP, Session},
    seen_word::{bits, current_rev_bits},
    sweep::{
        ORPHAN_GRACE_NS, ORPHAN_WALK_EVERY, SWEEP_BUDGET, SweepTotal, cooldown_until, epoch_trusts,
        epoch_word, expired, expiry_sig, first_epoch_word, live_at, live_stamp, live_window_ns,
        phase, shortest_idle_ns,
    },
    tcp_state::{close_kind, expiry_kind, idle_timeout_ms, state_of},
};

use crate::{
    base::maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, NAT_SWEEP_STATS, NAT_SWEEP_STOP},
    session::free::{Fate, cool, free_session},
};

/// Scratch state of a sweep run: slot 0 for the daemon's runs, 1 for the
/// timer's ([`Walk`]); never pinned.
#[map(name = "NAT_SWEEP_WALK")]
static NAT_SWEEP_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(2, 0);

/// The sweep's batch of quiet sessions to judge ([`Batch`]): slot 0 for the
/// daemon's runs, 1 for the timer's; never pinned.
#[map(name = "NAT_SWEEP_BATCH")]
static NAT_SWEEP_BATCH: PerCpuArray<Batch> = PerCpuArray::with_max_entries(2, 0);

/// The value of the sweep timer map. The kernel finds the `bpf_timer` in it
/// through the map's BTF, which is why this one map is a BTF map (`.maps`)
/// while the others keep the legacy definitions the loader sizes at load.
#[repr(C)]
pub struct SweepTimer {
    pub timer: bpf_timer,
    /// Where the timer's next run resumes (a resume token, 0: a new
    /// sweep); written by the timer's callback only.
    pub resume: u32,
    /// The timeouts the sweep's liveness stamps are written under and when
    /// a run first saw them (nat_common::sweep::epoch_word); written by
    /// any sweep run with one 32-bit store.
    pub config_seen: u32,
}

/// The one timer that runs the sweep while no daemon does
/// (`programs::sweep` arms it); pinned, so it outlives the daemon.
#[btf_map(name = "NAT_SWEEP_TIMER")]
pub static NAT_SWEEP_TIMER: btf_maps::Array<SweepTimer, 1, 0> = btf_maps::Array::new();

/// The slots of a daemon's run and of a timer's run.
const DAEMON: u32 = 0;
const TIMER: u32 = 1;

/// bpf_for_each_map_elem callbacks: go on, or stop the walk.
const NEXT: u64 = 0;
const STOP: u64 = 1;

/// State of one run. It lives in a per-CPU map slot, not on the stack:
/// the verifier follows a callback until its state stops changing, and
/// counters on the stack change with every element it simulates, while a
/// map value is just some number to it. Slot 0 is the daemon's run, slot 1
/// the timer's: the timer's softirq may interrupt a daemon run on the same
/// CPU, nothing else nests.
#[repr(C)]
struct Walk {
    now: u64,
    shortest: u64,
    budget: u32,
    work: u32,
    stopped: u32,
    /// 1: the forward entries' liveness stamps may be used this run.
    trust: u32,
    /// 1: a daemon's run, which ends early once the daemon is stopping.
    watch_stop: u32,
    /// This run's slot in NAT_SWEEP_WALK and NAT_SWEEP_BATCH.
    slot: u32,
    /// Entries of this phase's map to pass over first: the previous run of
    /// this sweep looked at them already.
    skip: u64,
    passed: u64,
    /// Entries of this phase looked at, and of those deleted.
    visited: u64,
    removed: u64,
    /// Entries this run may still look at, over all phases; 0: no limit.
    scan_left: u64,
    scanned: u64,
    expired: u64,
    ended: u64,
    kept: u64,
    orphans: u64,
    /// Forward entries looked at by this sweep's runs so far (on this CPU:
    /// a timer's runs stay on the CPU that started it); paces the timer.
    sweep_scanned: u64,
    /// What the last complete sweep of this slot looked at, on this CPU.
    last_scanned: u64,
}

impl Walk {
    /// `None` when the callback looks at this element; else what it
    /// returns at once: `NEXT` past an element an earlier run of this
    /// sweep looked at, `STOP` when the daemon is stopping. Passing over
    /// costs a cache miss an element too, and a run deep into a large
    /// table passes over millions, so a stop is seen here as well: it
    /// ends the run within one element wherever it is. The cursor then
    /// stays where it was (nothing of this phase was visited), so the
    /// next run passes over the same elements.
    #[inline(always)]
    fn enter(&mut self) -> Option<u64> {
        if self.passed < self.skip {
            if self.watch_stop != 0 && stop_requested() {
                self.stopped = 1;
                return Some(STOP);
            }
            self.passed += 1;
            return Some(NEXT);
        }
        self.visited += 1;
        None
    }

    /// Ends one element's visit; `STOP` once the budget of deletions or of
    /// entries looked at is spent.
    #[inline(always)]
    fn leave(&mut self, removed: u32) -> u64 {
        self.removed += removed as u64;
        self.work += removed;
        let scanned_out = match self.scan_left {
            0 => false,
            1 => true,
            n => {
                self.scan_left = n - 1;
                false
            }
        };
        if self.work >= self.budget || scanned_out || (self.watch_stop != 0 && stop_requested()) {
            self.stopped = 1;
            STOP
        } else {
            NEXT
        }
    }

    /// Starts the walk of the next phase's map from its first entry.
    #[inline(always)]
    fn next_phase(&mut self) {
        self.skip = 0;
        self.passed = 0;
        self.visited = 0;
        self.removed = 0;
    }

    /// How many entries of the current map the next run passes over: the
    /// ones looked at that are still there. Entries inserted or deleted by
    /// others meanwhile shift it a little: an entry it then misses is
    /// looked at in the next sweep (late, never early).
    #[inline(always)]
    fn cursor(&self) -> u64 {
        (self.skip + self.visited).saturating_sub(self.removed)
    }
}

/// Whether the daemon running this sweep is stopping.
#[inline(always)]
fn stop_requested() -> bool {
    // SAFETY: the map's value, written whole by user space.
    NAT_SWEEP_STOP
        .get_ptr(0)
        .is_some_and(|v| unsafe { read_volatile(v) } != 0)
}

/// A resume token: the phase in the low two bits, then whether this sweep
/// walks the reverse map for orphans ([`ORPHANS_DUE`]), the cursor above
/// them (all fit: no map holds 2^28 entries).
#[inline(always)]
const fn token(phase: u8, orphans_due: bool, cursor: u64) -> u32 {
    let due = if orphans_due { ORPHANS_DUE } else { 0 };
    if cursor >= 1 << 28 {
        return due | phase as u32;
    }
    ((cursor as u32) << 3) | due | phase as u32
}

/// Token bit: the sweep being resumed walks the orphans too. Decided once
/// per sweep, by its first run: a resumed run does not know the sweep's
/// number, and walking the reverse map in every resumed sweep cost a
/// forward lookup per quiet reverse entry each time.
const ORPHANS_DUE: u32 = 4;

/// Forward entries the daemon's sweeps looked at lately (the sweep in
/// progress, or the last whole one if it looked at more): how long the
/// timer must wait before it takes over.
#[inline(always)]
pub fn daemon_scanned() -> u64 {
    NAT_SWEEP_WALK
        .get(DAEMON)
        .map_or(0, |w| w.last_scanned.max(w.sweep_scanned))
}

/// Forward entries the timer's sweep in progress looked at so far.
#[inline(always)]
pub fn timer_scanned() -> u64 {
    NAT_SWEEP_WALK.get(TIMER).map_or(0, |w| w.sweep_scanned)
}

/// One run: walks the cooldowns, the forward sessions and, every
/// [`ORPHAN_WALK_EVERY`] sweeps, the reverse entries, from the resume token
/// `resume` on; returns the next run's token, 0 when it walked everything.
/// `timer`: the timer's run, not a daemon's.
#[inline(always)]
pub fn run(now: u64, budget: u32, scan_budget: u64, timer: bool, resume: u32) -> u32 {
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return phase::DONE as u32;
    };
    let start = (resume & 3) as u8;
    let slot = timer as u32;
    let Some(w) = NAT_SWEEP_WALK.get_ptr_mut(slot) else {
        return phase::DONE as u32;
    };
    // SAFETY: this CPU's slot for this kind of run; see [`Walk`].
    let w = unsafe { &mut *w };
    let (sweep_scanned, last_scanned) = (
        if start == phase::DONE {
            0
        } else {
            w.sweep_scanned
        },
        w.last_scanned,
    );
    *w = Walk {
        now,
        shortest: shortest_idle_ns(cfg),
        budget: if budget == 0 { SWEEP_BUDGET } else { budget },
        work: 0,
        stopped: 0,
        trust: stamps_trusted(cfg, now) as u32,
        watch_stop: !timer as u32,
        slot,
        skip: (resume >> 3) as u64,
        passed: 0,
        visited: 0,
        removed: 0,
        scan_left: scan_budget,
        scanned: 0,
        expired: 0,
        ended: 0,
        kept: 0,
        orphans: 0,
        sweep_scanned,
        last_scanned,
    };
    // A run always ends with its batch flushed; a slot left otherwise
    // (never) must not carry sessions into another run.
    if let Some(b) = NAT_SWEEP_BATCH.get_ptr_mut(slot) {
        // SAFETY: this CPU's batch slot.
        unsafe { (*b).n = 0 };
    }
    let orphans_due = if start == phase::DONE {
        add(SweepTotal::Sweeps, 1).is_multiple_of(ORPHAN_WALK_EVERY)
    } else {
        resume & ORPHANS_DUE != 0
    };
    add(SweepTotal::Runs, 1);
    if timer {
        add(SweepTotal::TimerRuns, 1);
    }
    // The callbacks find their `Walk` from the slot number handed to them.
    let mut walk_slot = slot;
    let ctx = &mut walk_slot as *mut u32 as *mut c_void;
    // Each phase is walked once per sweep; a run that stops at its budget
    // leaves the rest of its phase to the next run, which passes over what
    // this one looked at (bpf_for_each_map_elem always starts at the first
    // bucket, and passing over an entry costs far less than looking at it).
    let mut next = phase::DONE;
    // SAFETY: each callback only touches the `Walk` it is handed and the
    // element the kernel hands it.
    unsafe {
        // Ended cooldowns first: they make room for the ones expiring
        // sessions are about to record.
        if start <= phase::COOLDOWNS {
            bpf_for_each_map_elem(
                &NAT_COOLDOWN as *const _ as *mut c_void,
                on_cooldown as *mut c_void,
                ctx,
                0,
            );
            next = phase::COOLDOWNS;
        }
        if w.stopped == 0 && start <= phase::SESSIONS {
            if start < phase::SESSIONS {
                w.next_phase();
            }
            bpf_for_each_map_elem(
                &NAT_FWD as *const _ as *mut c_void,
                on_session as *mut c_void,
                ctx,
                0,
            );
            // The sessions the walk left in the batch, before the cursor
            // is taken: what they free counts as removed from this map.
            let freed = flush(slot);
            w.removed += freed as u64;
            w.work += freed;
            next = phase::SESSIONS;
        }
        if w.stopped == 0 && orphans_due {
            if start < phase::ORPHANS {
                w.next_phase();
            }
            bpf_for_each_map_elem(
                &NAT_REV as *const _ as *mut c_void,
                on_orphan as *mut c_void,
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
    w.sweep_scanned += w.scanned;
    if w.stopped == 0 {
        w.last_scanned = w.sweep_scanned;
        return phase::DONE as u32;
    }
    add(SweepTotal::Truncated, 1);
    token(next, orphans_due, w.cursor())
}

/// Whether the liveness stamps in the forward entries were written under
/// the timeouts in force (and long enough ago that none from earlier
/// timeouts is left); records the timeouts when they are new.
#[inline(always)]
fn stamps_trusted(cfg: &nat_common::config::Config, now: u64) -> bool {
    let Some(t) = NAT_SWEEP_TIMER.get_ptr_mut(0) else {
        return false;
    };
    let sig = expiry_sig(cfg);
    // SAFETY: the timer map's value; `config_seen` is read and written
    // whole (one 32-bit access each). Two runs that both see new timeouts
    // write records of the same timeouts a moment apart: either will do.
    unsafe {
        let seen = read_volatile(&(*t).config_seen);
        if seen == 0 {
            // No sweep ran with this timer map: no stamp exists yet.
            write_volatile(&mut (*t).config_seen, first_epoch_word(sig, now));
            return true;
        }
        if (seen >> 16) as u16 != sig {
            write_volatile(&mut (*t).config_seen, epoch_word(sig, now));
            return false;
        }
        epoch_trusts(seen, sig, now)
    }
}

/// The `Walk` of the run whose slot number `ctx` points to.
#[inline(always)]
fn walk<'a>(ctx: *mut c_void) -> Option<&'a mut Walk> {
    // SAFETY: `ctx` is the caller's slot number on its stack.
    let slot = unsafe { *(ctx as *const u32) };
    // SAFETY: this CPU's slot, see [`Walk`].
    NAT_SWEEP_WALK.get_ptr_mut(slot).map(|w| unsafe { &mut *w })
}

/// Adds to this CPU's total and returns the new value.
#[inline(always)]
fn add(total: SweepTotal, n: u64) -> u64 {
    match NAT_SWEEP_STATS.get_ptr_mut(total as u32) {
        Some(slot) => {
            // SAFETY: per-CPU slot. A timer run interrupting a daemon run
            // on this CPU between the load and the store would lose one
            // of the two additions: these are statistics, nothing decides
            // on them.
            unsafe {
                *slot += n;
                *slot
            }
        }
        None => 0,
    }
}

/// An ended cooldown goes, unless the key is claimed.
///
/// A cooldown is written for a key only by a close or a free of a session
/// that holds the key in NAT_REV (`session::track`'s `start_cooldown`,
/// `session::free`); the allocator only removes cooldowns. So:
/// - while a session holds the key, the ended entry stays (harmless: the
///   key is claimed anyway) and goes in a later run, after the session;
/// - the value is read again after NAT_REV was found empty: a free or a
///   close that wrote a fresh cooldown before its session was freed wrote
///   it before that check, so the re-read sees it and the entry stays;
/// - a session that claims the key after the check (the allocator takes an
///   ended cooldown as free) and closes before the delete would lose its
///   fresh cooldown to the delete: NAT_REV is read once more after the
///   delete and the cooldown re-derived from that session's close, from
///   its `last_seen`, which ends no earlier than the lost one (the close
///   stamped it). Such a session cannot also have expired and been freed
///   in that window: it is younger than the one-second slack every idle
///   timeout is given.
extern "C" fn on_cooldown(
    _map: *mut c_void,
    key: *const FlowKey,
    until: *const u64,
    ctx: *mut c_void,
) -> u64 {
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if let Some(code) = w.enter() {
        return code;
    }
    let removed = end_cooldown(w, key, until);
    w.leave(removed as u32)
}

#[inline(always)]
fn end_cooldown(w: &mut Walk, key: *const FlowKey, until: *const u64) -> bool {
    // SAFETY: element key and value pointers.
    let (key, until) = unsafe { (*key, read_volatile(until)) };
    if until > w.now {
        return false;
    }
    // SAFETY: read-only lookup.
    if unsafe { NAT_REV.get(key) }.is_some() {
        return false;
    }
    // A fresh lookup: an update replaces the element, so the one handed to
    // this callback may be the old one.
    match NAT_COOLDOWN.get_ptr(key) {
        // SAFETY: map value pointer from the lookup.
        Some(cur) if unsafe { read_volatile(cur) } <= w.now => {}
        _ => return false,
    }
    let _ = NAT_COOLDOWN.remove(key);
    w.ended += 1;
    if let Some(rev) = NAT_REV.get_ptr(key) {
        restore(&key, rev, w.now);
    }
    true
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
    let (f_word, f_last) =
        unsafe { NAT_FWD.get(fwd_key) }.map_or((0, 0), |f| (f.seen, f.last_seen));
    // Reverse bits of a connection since reopened on this mapping do not count.
    let (f_seen, r_seen) = (bits(f_word), current_rev_bits(f_word, r_seen));
    if let Some(kind) = close_kind(f_seen, r_seen)
        && let Some(until) = cooldown_until(kind, cfg, now, f_last.max(r_last))
    {
        cool(key, until);
    }
}

/// A session idle past its state's timeout is cooled, then freed. The
/// forward entry alone clears a busy or stamped session here; a quiet one
/// joins this run's batch ([`Batch`]), judged and freed
/// once the batch is full (or the walk ends).
extern "C" fn on_session(
    _map: *mut c_void,
    key: *const FlowKey,
    fwd: *mut Session,
    ctx: *mut c_void,
) -> u64 {
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if let Some(code) = w.enter() {
        return code;
    }
    w.scanned += 1;
    let slot = w.slot;
    if !look_at(w, slot, key, fwd) {
        return w.leave(0);
    }
    // Full at BATCH, or at what the run may still delete: each batched
    // session is one deletion at most, so a run never deletes past its
    // budget.
    let room = (BATCH as u32).min(deletions_left(slot));
    let removed = match NAT_SWEEP_BATCH.get(slot) {
        Some(b) if b.n >= room => flush(slot),
        _ => 0,
    };
    match walk(ctx) {
        Some(w) => w.leave(removed),
        None => STOP,
    }
}

/// How many more sessions the run of slot `slot` may delete.
#[inline(always)]
fn deletions_left(slot: u32) -> u32 {
    NAT_SWEEP_WALK
        .get(slot)
        .map_or(0, |w| w.budget.saturating_sub(w.work))
}

/// Quiet sessions judged together: how many a batch holds. The reverse
/// lookups of a batch run back to back with no lock between them, and so
/// do the cooldown lookups, so the processor has several of their cache
/// misses in flight at once instead of one after the other (a lock's
/// atomic instruction waits for the loads before it); the deletes and
/// inserts after them find their buckets in the cache. Small enough that
/// the batch's entries are still cached when it is freed.
const BATCH: usize = 64;
const _: () = assert!(BATCH.is_power_of_two());

/// A quiet session of the walk, and what the batch found out about it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Quiet {
    key: FlowKey,
    rev_key: FlowKey,
    /// The forward entry's `last_seen` and `seen` word as the walk read them.
    f_last: u64,
    f_word: u64,
    /// The reverse entry's, if it points back (`paired`).
    r_last: u64,
    r_word: u64,
    /// Until when the key cools, if the verdict is [`FREE_COOLED`].
    until: u64,
    paired: u8,
    /// [`LIVE`], [`FREE`] or [`FREE_COOLED`].
    verdict: u8,
    /// The stamp the walk found, and the one to write if live.
    stamp: u16,
    next_stamp: u16,
    _pad: u16,
}

const LIVE: u8 = 0;
const FREE: u8 = 1;
const FREE_COOLED: u8 = 2;

/// One batch of quiet sessions; lives in a per-CPU map slot, as [`Walk`].
#[repr(C)]
struct Batch {
    n: u32,
    _pad: u32,
    c: [Quiet; BATCH],
}

/// Whether the session at `fwd` must be judged with its reverse entry:
/// it is then added to the batch. A busy session, or one its stamp proves
/// live, is cleared from its forward entry alone.
#[inline(always)]
fn look_at(w: &mut Walk, slot: u32, key: *const FlowKey, fwd: *mut Session) -> bool {
    // SAFETY: element value pointer.
    let (f_last, stamp) = unsafe {
        (
            read_volatile(&(*fwd).last_seen),
            read_volatile(&(*fwd).live_until),
        )
    };
    if w.now.saturating_sub(f_last) <= w.shortest {
        // Busy. A stamp that ran out goes, so that one left over from long
        // ago cannot come round again once the session turns quiet.
        if stamp != 0 && !live_at(stamp, w.now) {
            // SAFETY: element value pointer; only the sweep writes it.
            unsafe { write_volatile(&mut (*fwd).live_until, 0) };
        }
        return false;
    }
    if w.trust != 0 && live_at(stamp, w.now) {
        return false;
    }
    let Some(b) = NAT_SWEEP_BATCH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's batch slot for this kind of run, see [`Walk`].
    let b = unsafe { &mut *b };
    // Masked, not compared: the verifier loses a comparison's bound when
    // LLVM checks one copy of the index and adds another. The batch is
    // flushed as soon as it is full, so the mask never wraps.
    let Some(c) = b.c.get_mut(b.n as usize & (BATCH - 1)) else {
        return false;
    };
    // SAFETY: element key and value pointers.
    let (key, addr, port, f_word) = unsafe { (*key, (*fwd).addr, (*fwd).port, (*fwd).seen) };
    *c = Quiet {
        key,
        rev_key: key.translated(addr, port),
        f_last,
        f_word,
        r_last: 0,
        r_word: 0,
        until: 0,
        paired: 0,
        verdict: LIVE,
        stamp,
        next_stamp: stamp,
        _pad: 0,
    };
    b.n += 1;
    true
}

/// Judges and frees the batch of slot `slot`, in four passes over it
/// (each a bpf_loop: the verifier checks one iteration): the reverse
/// lookups, the verdicts, the cooldown lookups of the sessions to free,
/// and the frees and stamps. Returns how many sessions it freed.
#[inline(always)]
fn flush(slot: u32) -> u32 {
    let n = match NAT_SWEEP_BATCH.get(slot) {
        Some(b) if b.n > 0 => b.n.min(BATCH as u32),
        _ => return 0,
    };
    let before = NAT_SWEEP_WALK.get(slot).map_or(0, |w| w.expired);
    // Linux 6.1 wants a callback's context on this frame's stack.
    let mut ctx = slot;
    let ctx = &mut ctx as *mut u32 as *mut c_void;
    // SAFETY: each callback touches only this slot's batch and walk, and
    // the map entries it looks up.
    unsafe {
        bpf_loop(n, pair_step as *mut c_void, ctx, 0);
        bpf_loop(n, judge_step as *mut c_void, ctx, 0);
        bpf_loop(n, warm_step as *mut c_void, ctx, 0);
        bpf_loop(n, free_step as *mut c_void, ctx, 0);
    }
    if let Some(b) = NAT_SWEEP_BATCH.get_ptr_mut(slot) {
        // SAFETY: this CPU's batch slot.
        unsafe { (*b).n = 0 };
    }
    NAT_SWEEP_WALK
        .get(slot)
        .map_or(0, |w| w.expired.saturating_sub(before)) as u32
}

/// The slot number a batch pass's `ctx` points to, and its session `i`.
#[inline(always)]
fn batched<'a>(i: u32, ctx: *mut c_void) -> Option<(u32, &'a mut Quiet)> {
    // SAFETY: `ctx` is [`flush`]'s slot number on its stack.
    let slot = unsafe { *(ctx as *const u32) };
    let b = NAT_SWEEP_BATCH.get_ptr_mut(slot)?;
    // Masked (see [`look_at`]): `i` is below the batch's count anyway.
    // SAFETY: this CPU's batch slot.
    let c = unsafe { (*b).c.get_mut(i as usize & (BATCH - 1)) }?;
    Some((slot, c))
}

/// Pass 1: the reverse entry, which counts only if it points back: one
/// that belongs to another flow (this forward entry lost its own) is not
/// ours to free.
extern "C" fn pair_step(i: u32, ctx: *mut c_void) -> u64 {
    let Some((_, c)) = batched(i, ctx) else {
        return 1;
    };
    if let Some(r) = NAT_REV.get_ptr(c.rev_key) {
        // SAFETY: map value pointer from the lookup.
        unsafe {
            if (*r).addr == c.key.saddr && (*r).port == c.key.sport {
                c.paired = 1;
                c.r_word = (*r).seen;
                c.r_last = read_volatile(&(*r).last_seen);
            }
        }
    }
    0
}

/// Pass 2: the verdict, and for a live session the stamp that proves it.
extern "C" fn judge_step(i: u32, ctx: *mut c_void) -> u64 {
    let Some((slot, c)) = batched(i, ctx) else {
        return 1;
    };
    let (Some(cfg), Some(w)) = (NAT_CONFIG.get(0), NAT_SWEEP_WALK.get(slot)) else {
        return 1;
    };
    let f_seen = bits(c.f_word);
    let r_seen = if c.paired != 0 {
        current_rev_bits(c.f_word, c.r_word)
    } else {
        0
    };
    let last = c.f_last.max(c.r_last);
    let timeout_ms = idle_timeout_ms(state_of(c.key.proto, f_seen, r_seen), cfg);
    if !expired(w.now, last, timeout_ms) {
        if c.paired != 0 {
            let expires = last
                .saturating_add(timeout_ms * 1_000_000)
                .saturating_add(TOUCH_GRANULARITY_NS);
            c.next_stamp = live_stamp(w.now, expires, live_window_ns(c.key.proto, cfg));
        }
        return 0;
    }
    let kind = expiry_kind(c.key.proto, f_seen, r_seen);
    match cooldown_until(kind, cfg, w.now, last) {
        Some(until) => {
            c.until = until;
            c.verdict = FREE_COOLED;
        }
        None => c.verdict = FREE,
    }
    0
}

/// Pass 3: the cooldown lookups of the sessions to free and cool, so that
/// pass 4's inserts find their buckets cached.
extern "C" fn warm_step(i: u32, ctx: *mut c_void) -> u64 {
    let Some((_, c)) = batched(i, ctx) else {
        return 1;
    };
    if c.verdict == FREE_COOLED {
        let _ = NAT_COOLDOWN.get_ptr(c.rev_key);
    }
    0
}

/// Pass 4: frees the sessions judged expired and stamps the live ones,
/// each through a fresh lookup of its entries (the walk's pointers do not
/// outlive its callback): a forward or reverse entry whose `last_seen`
/// moved since the walk read it saw a packet meanwhile, or is another
/// session's, and the session stays.
extern "C" fn free_step(i: u32, ctx: *mut c_void) -> u64 {
    let Some((slot, c)) = batched(i, ctx) else {
        return 1;
    };
    let Some(fwd) = NAT_FWD.get_ptr_mut(c.key) else {
        return 0;
    };
    // SAFETY: map value pointer from the lookup.
    if unsafe { read_volatile(&(*fwd).last_seen) } != c.f_last {
        return 0;
    }
    if c.verdict == LIVE {
        if c.next_stamp != c.stamp {
            // SAFETY: as above; only the sweep writes it.
            unsafe { write_volatile(&mut (*fwd).live_until, c.next_stamp) };
        }
        return 0;
    }
    // A pointer set on every path (null: unpaired), not an Option built
    // in two branches: LLVM then re-read `paired` to pick the branch, and
    // Linux 6.1's verifier followed a path on which the pointer was never
    // written.
    let mut rev: *const Session = core::ptr::null();
    if c.paired != 0 {
        match NAT_REV.get_ptr(c.rev_key) {
            // SAFETY: map value pointer from the lookup.
            Some(r) if unsafe { (*r).addr == c.key.saddr && (*r).port == c.key.sport } => rev = r,
            _ => return 0,
        }
    }
    let rev = (!rev.is_null()).then_some(rev);
    let Some(w) = NAT_SWEEP_WALK.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: this CPU's walk slot, see [`Walk`].
    let w = unsafe { &mut *w };
    let until = if c.verdict == FREE_COOLED {
        Some(c.until)
    } else {
        None
    };
    let (key, rev_key, f_last, r_last) = (c.key, c.rev_key, c.f_last, c.r_last);
    match free_session(&key, fwd, f_last, &rev_key, rev, r_last, until) {
        Fate::Freed => w.expired += 1,
        Fate::Kept => w.kept += 1,
        Fate::Spared => {}
    }
    0
}

/// A reverse entry whose forward entry is gone (or points elsewhere) keeps
/// its port toward that destination claimed for nothing: cool the key, then
/// free it.
extern "C" fn on_orphan(
    _map: *mut c_void,
    key: *const FlowKey,
    rev: *mut Session,
    ctx: *mut c_void,
) -> u64 {
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if let Some(code) = w.enter() {
        return code;
    }
    let removed = free_orphan(w, key, rev);
    w.leave(removed as u32)
}

#[inline(always)]
fn free_orphan(w: &mut Walk, key: *const FlowKey, rev: *mut Session) -> bool {
    // SAFETY: element value pointer.
    let r_last = unsafe { read_volatile(&(*rev).last_seen) };
    if w.now.saturating_sub(r_last) <= ORPHAN_GRACE_NS.max(w.shortest) {
        return false;
    }
    // SAFETY: element key and value pointers.
    let (key, addr, port, r_word) = unsafe { (*key, (*rev).addr, (*rev).port, (*rev).seen) };
    let r_seen = bits(r_word);
    let fwd_key = FlowKey::new(key.proto, addr, port, key.daddr, key.dport);
    // SAFETY: read-only lookup.
    if let Some(f) = unsafe { NAT_FWD.get(fwd_key) }
        && f.addr == key.saddr
        && f.port == key.sport
    {
        return false;
    }
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return false;
    };
    // Only this direction's bits are left: a TCP orphan counts as idle
    // (the longest cooldown) unless it saw a reset.
    let kind = expiry_kind(key.proto, 0, r_seen);
    if let Some(until) = cooldown_until(kind, cfg, w.now, r_last)
        && !cool(&key, until)
    {
        w.kept += 1;
        return false;
    }
    // SAFETY: element value pointer.
    if unsafe { read_volatile(&(*rev).last_seen) } != r_last {
        return false;
    }
    let _ = NAT_REV.remove(key);
    w.orphans += 1;
    true
}
