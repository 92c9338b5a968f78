//! The bounds of one expiry sweep run, on the real program and maps through
//! BPF_PROG_TEST_RUN (nothing is attached, the timer is not armed): a run
//! looks at no more entries than its budget and the next one resumes where
//! it stopped, and a stopping daemon's switch ends a run at once, also
//! while it passes over the entries earlier runs of its sweep looked at.

use std::{net::Ipv4Addr, time::Duration};

use nat_common::{
    config::Config,
    flow::{FlowKey, PROTO_TCP},
    sweep::{SweepTotal, phase},
};
use nat_userspace::datapath::{
    object::{Globals, load_object},
    sweep::{DAEMON_BUDGET, KernelSweep},
    tables::{Tables, boot_ns},
};

const SESSIONS: u32 = 200_000;

/// Quiet but live: idle past the shortest timeout (10 s), far from the
/// established timeout, so a run reads both entries of each and frees none.
const IDLE_NS: u64 = 30_000_000_000;

struct Bench {
    ebpf: aya::Ebpf,
    sweeper: KernelSweep,
    tables: Tables,
}

impl Bench {
    /// [`SESSIONS`] quiet established sessions; runs look at `scan` entries at most.
    fn new(scan: u32) -> Self {
        let mut ebpf =
            load_object(SESSIONS + 1024, 2 * SESSIONS + 1024, Globals::default()).expect("object");
        let sweeper = KernelSweep::load(&mut ebpf, 0, DAEMON_BUDGET, scan).expect("the sweep");
        let mut tables = Tables::from_ebpf(&mut ebpf).expect("tables");
        tables.set_config(Config::default()).expect("config");
        let last = boot_ns() - IDLE_NS;
        let ext = u32::from(Ipv4Addr::new(198, 18, 0, 1)).to_be();
        let (mut fwd, mut rev) = (Vec::new(), Vec::new());
        for i in 0..SESSIONS {
            let block = i / 50_000;
            let port = (10_000 + i % 50_000) as u16;
            let key = FlowKey::new(
                PROTO_TCP,
                (u32::from(Ipv4Addr::new(10, 0, 0, 0)) + block).to_be(),
                port.to_be(),
                (u32::from(Ipv4Addr::new(198, 19, 0, 0)) + block).to_be(),
                443u16.to_be(),
            );
            let [out, back] = crate::sessions::opened_pair(key, ext, port.to_be(), last);
            fwd.push(out);
            rev.push(back);
        }
        tables.fill_sessions(&fwd, &rev).expect("fill");
        Self {
            ebpf,
            sweeper,
            tables,
        }
    }
}

#[test]
fn sweep_a_run_looks_at_its_budget_and_the_next_resumes_there() {
    const SCAN: u32 = 50_000;
    let b = Bench::new(SCAN);
    let mut token = phase::DONE as u32;
    let mut scanned = Vec::new();
    loop {
        let run = b.sweeper.run_once(&b.ebpf, token).expect("a run");
        scanned.push(run.totals.get(SweepTotal::Scanned));
        assert_eq!(run.totals.get(SweepTotal::Expired), 0);
        token = run.next;
        if token == phase::DONE as u32 {
            break;
        }
        assert!(scanned.len() < 20, "no end after runs of {scanned:?}");
    }
    assert!(
        scanned.iter().all(|&n| n <= u64::from(SCAN)),
        "a run looked at more than {SCAN}: {scanned:?}"
    );
    assert_eq!(scanned[0], u64::from(SCAN), "{scanned:?}");
    assert_eq!(
        scanned.iter().sum::<u64>(),
        u64::from(SESSIONS),
        "the runs of one sweep look at each session once: {scanned:?}"
    );
    // Each was read whole (both entries), found live and stamped.
    let fwd = b.tables.forward_entries().expect("forward entries");
    assert_eq!(fwd.len(), SESSIONS as usize);
    assert!(
        fwd.iter().all(|(_, s)| s.live_until != 0),
        "a session the resumed runs skipped has no stamp"
    );
}

#[test]
fn sweep_a_stop_ends_a_run_while_it_passes_over_earlier_runs_entries() {
    const SCAN: u32 = 150_000;
    let mut b = Bench::new(SCAN);
    let first = b
        .sweeper
        .run_once(&b.ebpf, phase::DONE as u32)
        .expect("a run");
    assert_eq!(first.totals.get(SweepTotal::Scanned), u64::from(SCAN));
    assert_ne!(
        first.next,
        phase::DONE as u32,
        "the sweep stopped at its budget"
    );
    // The daemon stops: the next run has 150,000 entries to pass over
    // before it reaches any it would look at.
    b.sweeper
        .stop_switch()
        .expect("the switch")
        .pull()
        .expect("pulled");
    let stopped = b.sweeper.run_once(&b.ebpf, first.next).expect("a run");
    println!(
        "first run: {SCAN} entries looked at in {:?}; the stopped run: {:?}",
        first.program, stopped.program
    );
    assert_eq!(
        stopped.totals.get(SweepTotal::Scanned),
        0,
        "the stopped run went on past the entries it passes over"
    );
    assert_eq!(
        stopped.next, first.next,
        "a stopped run resumes where the one before it stopped"
    );
    // Passing over 150,000 entries takes milliseconds (a cache miss each).
    assert!(
        stopped.program < Duration::from_millis(1),
        "the stopped run took {:?}",
        stopped.program
    );
}
