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
//! element it was handed: the hash map walk (kernel/bpf/hashtab.c
//! `bpf_for_each_hash_elem`) holds the RCU read lock per bucket and steps on
//! through the element's `next`, which a delete leaves intact; an element of
//! a preallocated map that another CPU reuses meanwhile can at worst end that
//! bucket's walk early or show an element twice, and the next sweep sees
//! what this one missed. Work per run is bounded by a budget of deletions
//! (and, for the timer's runs, of entries looked at); a run that stops early
//! returns a resume token, and the next run passes over what it looked at.
//!
//! The guarantees of the user-space reaper stay: a key is cooled before its
//! session is freed (cooldown first, then the forward entry, then the reverse
//! one, which keeps the port claimed until the last moment: never unclaimed
//! and not cooling), and a packet that arrives while the sweep looks at a
//! session keeps it (`last_seen` is read again right before the delete; an
//! expired session's next packet always writes it, being older than the
//! touch granularity).
//!
//! A quiet session (forward entry idle past the shortest timeout) needs its
//! reverse entry read to be judged, a lookup that misses the cache. The run
//! that reads both entries and finds the session live stamps the forward
//! entry with how long that proof holds (`live_until`,
//! nat_common::expiry::live_stamp: the session's own expiry, or the
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
    bindings::{BPF_NOEXIST, bpf_timer},
    helpers::generated::{
        bpf_for_each_map_elem, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
    },
    macros::classifier,
    programs::TcContext,
};
use nat_common::{
    config::TOUCH_GRANULARITY_NS,
    expiry::{
        ORPHAN_GRACE_NS, ORPHAN_WALK_EVERY, SWEEP_BUDGET, SweepTotal, TIMER_RESUME_NS,
        TIMER_TAKEOVER_INTERVALS, cooldown_until, epoch_trusts, epoch_word, expired, expiry_sig,
        first_epoch_word, live_at, live_stamp, live_window_ns, phase, shortest_idle_ns,
        sweep_pause_ns,
    },
    flow::{FlowKey, PROTO_TCP, Session},
    mapping::SESSION_INBOUND,
    seen_word::{bits, current_rev_bits},
    tcp_state::{close_kind, expiry_kind, idle_timeout_ms, state_of},
};

use crate::{
    maps::{
        NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, NAT_SWEEP_CTL, NAT_SWEEP_STATS, NAT_SWEEP_STOP,
        NAT_SWEEP_TIMER, NAT_SWEEP_WALK, SweepTimer,
    },
    packet::{now_ns, read},
};

/// bpf_for_each_map_elem callbacks: go on, or stop the walk.
const NEXT: u64 = 0;
const STOP: u64 = 1;

const CLOCK_BOOTTIME: u64 = 7;

/// Added to the timer's takeover delay: longer than a daemon's run.
const TAKEOVER_SLACK_NS: u64 = 1_000_000_000;

/// State of one run. It lives in a per-CPU map slot, not on the stack:
/// the verifier follows a callback until its state stops changing, and
/// counters on the stack change with every element it simulates, while a
/// map value is just some number to it. Slot 0 is the daemon's run, slot 1
/// the timer's: the timer's softirq may interrupt a daemon run on the same
/// CPU, nothing else nests.
#[repr(C)]
pub struct Walk {
    now: u64,
    shortest: u64,
    budget: u32,
    work: u32,
    stopped: u32,
    /// 1: the forward entries' liveness stamps may be used this run.
    trust: u32,
    /// 1: a daemon's run, which ends early once the daemon is stopping.
    watch_stop: u32,
    _pad: u32,
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
    /// Whether the callback looks at this element (false: passed over).
    #[inline(always)]
    fn enter(&mut self) -> bool {
        if self.passed < self.skip {
            self.passed += 1;
            return false;
        }
        self.visited += 1;
        true
    }

    /// Ends one element's visit; `STOP` once the budget of deletions or of
    /// entries looked at is spent.
    #[inline(always)]
    fn leave(&mut self, removed: bool) -> u64 {
        if removed {
            self.removed += 1;
            self.work += 1;
        }
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

/// One sweep run for the daemon. The first four bytes of the test frame
/// are the resume token the previous run returned (0: a new sweep); the
/// return value is the next run's token, 0 ([`phase::DONE`]) when the sweep
/// is complete. The next four bytes are how many entries the run may look
/// at (0: no limit), the four after them how many it may delete (0: the
/// control map's budget, which the timer's runs use). A daemon's run also
/// ends at the next entry once NAT_SWEEP_STOP is set, so a stopping daemon
/// never waits for a run.
#[classifier]
pub fn nat_sweep(ctx: TcContext) -> i32 {
    let start = read::<u32>(ctx.data(), ctx.data_end(), 0).unwrap_or(0);
    let scan = read::<u32>(ctx.data(), ctx.data_end(), 4).unwrap_or(0);
    let deletions = read::<u32>(ctx.data(), ctx.data_end(), 8).unwrap_or(0);
    let Some(ctl) = NAT_SWEEP_CTL.get(0) else {
        return phase::DONE as i32;
    };
    if ctl.interval_ns != 0 {
        // The daemon sweeps a large table less often than every interval
        // (sweep_pause_ns) and its runs are long: the timer must not fire
        // in between, only once the daemon is gone.
        let scanned = NAT_SWEEP_WALK
            .get(0)
            .map_or(0, |w| w.last_scanned.max(w.sweep_scanned));
        arm(
            sweep_pause_ns(ctl.interval_ns, scanned) * TIMER_TAKEOVER_INTERVALS + TAKEOVER_SLACK_NS,
        );
    }
    let budget = if deletions != 0 {
        deletions
    } else {
        ctl.budget
    };
    sweep(now_ns(), budget, scan as u64, false, start) as i32
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
    // writes its token, and the kernel never runs it on two CPUs at once.
    unsafe {
        // In softirq context: the entries one run looks at are bounded too.
        let next = sweep(
            now_ns(),
            ctl.budget,
            ctl.timer_scan as u64,
            true,
            (*value).resume,
        );
        (*value).resume = next;
        let delay = if next == phase::DONE as u32 {
            // A large table is swept less often: see SWEEP_SCAN_RATE.
            let scanned = NAT_SWEEP_WALK.get(1).map_or(0, |w| w.sweep_scanned);
            sweep_pause_ns(ctl.interval_ns, scanned)
        } else {
            TIMER_RESUME_NS
        };
        bpf_timer_start(&raw mut (*value).timer, delay, 0);
    }
    0
}

/// Walks the cooldowns, the forward sessions and, every
/// [`ORPHAN_WALK_EVERY`] sweeps, the reverse entries, from the resume token
/// `resume` on; returns the next run's token, 0 when it walked everything.
#[inline(always)]
fn sweep(now: u64, budget: u32, scan_budget: u64, timer: bool, resume: u32) -> u32 {
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
        _pad: 0,
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
                end_cooldown as *mut c_void,
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
                expire_session as *mut c_void,
                ctx,
                0,
            );
            next = phase::SESSIONS;
        }
        if w.stopped == 0 && orphans_due {
            if start < phase::ORPHANS {
                w.next_phase();
            }
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

/// Makes `key` cool until at least `until`; false if it could not be
/// recorded (the cooldown map is full). A longer cooldown already there
/// stays: this only ever extends.
#[inline(always)]
pub(crate) fn cool(key: &FlowKey, until: u64) -> bool {
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
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if !w.enter() {
        return NEXT;
    }
    let removed = end_one(w, key, until);
    w.leave(removed)
}

#[inline(always)]
fn end_one(w: &mut Walk, key: *const FlowKey, until: *const u64) -> bool {
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

/// A session idle past its state's timeout is cooled, then freed.
extern "C" fn expire_session(
    _map: *mut c_void,
    key: *const FlowKey,
    fwd: *mut Session,
    ctx: *mut c_void,
) -> u64 {
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if !w.enter() {
        return NEXT;
    }
    w.scanned += 1;
    let removed = expire_one(w, key, fwd);
    w.leave(removed)
}

#[inline(always)]
fn expire_one(w: &mut Walk, key: *const FlowKey, fwd: *mut Session) -> bool {
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
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: element key and value pointers.
    let (key, addr, port, f_word) = unsafe { (*key, (*fwd).addr, (*fwd).port, (*fwd).seen) };
    let f_seen = bits(f_word);
    let rev_key = key.translated(addr, port);
    // The reverse entry counts only if it points back: one that belongs to
    // another flow (this forward entry lost its own) is not ours to free.
    let rev = match NAT_REV.get_ptr(rev_key) {
        // SAFETY: map value pointer from the lookup.
        Some(r) if unsafe { (*r).addr == key.saddr && (*r).port == key.sport } => Some(r),
        _ => None,
    };
    // SAFETY: as above.
    let (r_seen, r_last) = rev.map_or((0, 0), |r| unsafe {
        (
            current_rev_bits(f_word, (*r).seen),
            read_volatile(&(*r).last_seen),
        )
    });
    let last = f_last.max(r_last);
    let timeout_ms = idle_timeout_ms(state_of(key.proto, f_seen, r_seen), cfg);
    if !expired(w.now, last, timeout_ms) {
        if rev.is_some() {
            let expires = last
                .saturating_add(timeout_ms * 1_000_000)
                .saturating_add(TOUCH_GRANULARITY_NS);
            let next = live_stamp(w.now, expires, live_window_ns(key.proto, cfg));
            if next != stamp {
                // SAFETY: element value pointer; only the sweep writes it.
                unsafe { write_volatile(&mut (*fwd).live_until, next) };
            }
        }
        return false;
    }
    let kind = expiry_kind(key.proto, f_seen, r_seen);
    free_session(
        w,
        &key,
        fwd,
        f_last,
        &rev_key,
        rev,
        r_last,
        cooldown_until(kind, cfg, w.now, last),
    )
}

/// Frees an expired session: cools its key until `cool_until` (if it must
/// cool), then deletes the forward entry and then the reverse one (`rev`,
/// if it points back), so the key is never unclaimed and not cooling. A
/// packet since the caller's reads (`f_last`, `r_last` moved) keeps the
/// session. The one place a session is freed: what must happen when one
/// goes belongs here.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn free_session(
    w: &mut Walk,
    key: &FlowKey,
    fwd: *mut Session,
    f_last: u64,
    rev_key: &FlowKey,
    rev: Option<*const Session>,
    r_last: u64,
    cool_until: Option<u64>,
) -> bool {
    if let Some(until) = cool_until
        && !cool(rev_key, until)
    {
        // Never free a key without cooling it: the session and its port
        // stay until the cooldown map has room.
        w.kept += 1;
        return false;
    }
    // A packet since the reads above: the session lives on (the cooldown
    // just written does no harm while the key is claimed).
    // SAFETY: element and lookup value pointers, still mapped.
    let moved = unsafe {
        read_volatile(&(*fwd).last_seen) != f_last
            || rev.is_some_and(|r| read_volatile(&(*r).last_seen) != r_last)
    };
    if moved {
        return false;
    }
    // The forward entry goes with its mapping reference, and only the run
    // whose delete succeeded counts the session off its host.
    if let Some(marks) = crate::mapping::remove_forward(key, fwd)
        && marks & SESSION_INBOUND == 0
    {
        crate::hosts::released(key.saddr);
    }
    if rev.is_some() {
        let _ = NAT_REV.remove(rev_key);
    }
    w.expired += 1;
    true
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
    let Some(w) = walk(ctx) else {
        return STOP;
    };
    if !w.enter() {
        return NEXT;
    }
    let removed = reap_one(w, key, rev);
    w.leave(removed)
}

#[inline(always)]
fn reap_one(w: &mut Walk, key: *const FlowKey, rev: *mut Session) -> bool {
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
