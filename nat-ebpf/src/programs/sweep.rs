//! The sweep's program, `nat_sweep`, and the timer that runs the sweep
//! while no daemon does, in the programs layer: the daemon runs the
//! program through BPF_PROG_TEST_RUN (it is a TC program only so that aya
//! can run it; it is never attached), each run re-arms the timer, and the
//! timer's callback runs the same walk (`flows::sweep`) once the daemon
//! is gone.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_timer,
    helpers::generated::{bpf_timer_init, bpf_timer_set_callback, bpf_timer_start},
    macros::classifier,
    programs::TcContext,
};
use nat_common::sweep::{TIMER_RESUME_NS, TIMER_TAKEOVER_INTERVALS, phase, sweep_pause_ns};

use crate::{
    base::{
        maps::NAT_SWEEP_CTL,
        packet::{now_ns, read},
    },
    flows::sweep::{self, NAT_SWEEP_TIMER, SweepTimer},
};

const CLOCK_BOOTTIME: u64 = 7;

/// Added to the timer's takeover delay: longer than a daemon's run.
const TAKEOVER_SLACK_NS: u64 = 1_000_000_000;

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
        let scanned = sweep::daemon_scanned();
        arm(
            sweep_pause_ns(ctl.interval_ns, scanned) * TIMER_TAKEOVER_INTERVALS + TAKEOVER_SLACK_NS,
        );
    }
    let budget = if deletions != 0 {
        deletions
    } else {
        ctl.budget
    };
    sweep::run(now_ns(), budget, scan as u64, false, start) as i32
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
        let next = sweep::run(
            now_ns(),
            ctl.budget,
            ctl.timer_scan as u64,
            true,
            (*value).resume,
        );
        (*value).resume = next;
        let delay = if next == phase::DONE as u32 {
            // A large table is swept less often: see SWEEP_SCAN_RATE.
            sweep_pause_ns(ctl.interval_ns, sweep::timer_scanned())
        } else {
            TIMER_RESUME_NS
        };
        bpf_timer_start(&raw mut (*value).timer, delay, 0);
    }
    0
}
