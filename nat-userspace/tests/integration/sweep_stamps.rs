//! The expiry sweep's liveness stamps, on the real program and maps through
//! BPF_PROG_TEST_RUN (nothing is attached, the timer is not armed): a sweep
//! that reads a quiet session whole stamps its forward entry, the stamp
//! never outlives the session's own expiry, and stamps written under other
//! timeouts are not trusted.

use std::{net::Ipv4Addr, sync::atomic::AtomicBool, thread, time::Duration};

use nat_common::{
    config::Config,
    flow::{FlowKey, PROTO_TCP, PROTO_UDP},
};
use nat_userspace::{
    daemon::sweep::{self, Sweep},
    datapath::{
        object::{Globals, load_object},
        sweep::{DAEMON_BUDGET, DAEMON_SCAN, KernelSweep},
        tables::{Tables, boot_ns},
    },
};

const SESSIONS: u32 = 64;
/// How long ago every session's last packet was: past the shortest
/// timeout (10 s), so each is quiet.
const IDLE_S: u64 = 30;

struct Bench {
    ebpf: aya::Ebpf,
    sweeper: KernelSweep,
    tables: Tables,
}

impl Bench {
    fn new(cfg: Config, proto: u8) -> Self {
        let mut ebpf = load_object(1024, 2048, Globals::default()).expect("load the object");
        let sweeper =
            KernelSweep::load(&mut ebpf, 0, DAEMON_BUDGET, DAEMON_SCAN).expect("load the sweep");
        let mut tables = Tables::from_ebpf(&mut ebpf).expect("tables");
        tables.set_config(cfg).expect("config");
        let last = boot_ns() - IDLE_S * 1_000_000_000;
        let ext = u32::from(Ipv4Addr::new(198, 18, 0, 1)).to_be();
        let (mut fwd, mut rev) = (Vec::new(), Vec::new());
        for i in 0..SESSIONS {
            let port = (20_000 + i) as u16;
            let key = FlowKey::new(
                proto,
                u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
                port.to_be(),
                u32::from(Ipv4Addr::new(198, 19, 0, 1)).to_be(),
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

    fn sweep(&self) -> Sweep {
        sweep::sweep(&self.sweeper, &self.ebpf, &AtomicBool::new(false)).expect("sweep")
    }

    fn stamps(&self) -> Vec<u16> {
        let entries = self.tables.forward_entries().expect("forward entries");
        entries.iter().map(|(_, s)| s.live_until).collect()
    }
}

fn established_timeout(cfg: Config, s: u64) -> Config {
    Config {
        timeout_tcp_established_ms: s * 1_000,
        ..cfg
    }
}

#[test]
fn a_quiet_live_session_is_stamped_and_stays() {
    let b = Bench::new(Config::default(), PROTO_TCP);
    assert!(b.stamps().iter().all(|&s| s == 0));
    let first = b.sweep();
    assert_eq!((first.scanned, first.expired), (u64::from(SESSIONS), 0));
    assert!(
        b.stamps().iter().all(|&s| s != 0),
        "a sweep that read both entries of a live session stamps it: {:?}",
        b.stamps()
    );
    let again = b.sweep();
    assert_eq!((again.scanned, again.expired), (u64::from(SESSIONS), 0));
    assert_eq!(
        b.tables.forward_entries().expect("fwd").len(),
        SESSIONS as usize
    );
    assert_eq!(
        b.tables.reverse_entries().expect("rev").len(),
        SESSIONS as usize
    );
}

#[test]
fn a_stamp_ends_no_later_than_the_session() {
    // Each session expires 3 s from now (30 s idle, 32 s timeout, 1 s
    // slack): its stamp may not vouch for it past that.
    let b = Bench::new(
        established_timeout(Config::default(), IDLE_S + 2),
        PROTO_TCP,
    );
    assert_eq!(b.sweep().expired, 0);
    thread::sleep(Duration::from_millis(4_200));
    let s = b.sweep();
    assert_eq!(
        s.expired,
        u64::from(SESSIONS),
        "stamped sessions past their own expiry were kept"
    );
    assert!(b.tables.forward_entries().expect("fwd").is_empty());
    assert!(b.tables.reverse_entries().expect("rev").is_empty());
    assert_eq!(
        b.tables.cooldown_entries().expect("cooldowns").len(),
        SESSIONS as usize,
        "every freed key cools"
    );
}

#[test]
fn stamps_of_other_timeouts_are_not_trusted() {
    let mut b = Bench::new(Config::default(), PROTO_UDP);
    assert_eq!(b.sweep().expired, 0);
    assert!(b.stamps().iter().all(|&s| s != 0));
    // UDP's own timeout drops below the sessions' idle time: the stamps,
    // proven under 300 s, must not keep them.
    b.tables
        .set_config(Config {
            timeout_udp_ms: 20_000,
            ..Config::default()
        })
        .expect("config");
    let s = b.sweep();
    assert_eq!(s.expired, u64::from(SESSIONS));
    assert!(b.tables.forward_entries().expect("fwd").is_empty());
}
