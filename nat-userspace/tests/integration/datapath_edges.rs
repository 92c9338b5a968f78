//! Edge cases of the real programs, run with BPF_PROG_TEST_RUN on crafted
//! frames and maps in known states (nothing is attached): a full session
//! map, an ICMP error followed by link-layer padding, and a reopened
//! session whose reverse entry egress must not write. (Runt frames cannot
//! be had this way: the kernel refuses an XDP test frame shorter than an
//! Ethernet header, metadata or not.)

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use nat_common::{
    config::Config,
    counters::Counter,
    csum::{fold, ipv4_header_checksum, l4_checksum, sum_bytes},
    flow::{FlowKey, PROTO_ICMP, PROTO_TCP, Session, seen},
    names::{MAP_COOLDOWN, MAP_FWD, MAP_REV, MAP_STATS, PROG_EGRESS, PROG_INGRESS},
    seen_word::current_rev_bits,
    seen_word::{bits, generation},
    tcp_state::{State, state_of},
};
use nat_userspace::datapath::{
    object::{Globals, load_object},
    pool::{Cidr, PortRange},
    populate::populate,
    tables::boot_ns,
};

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const INTERNAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const REMOTE_PORT: u16 = 443;
const PORTS: PortRange = PortRange {
    lo: 20_000,
    hi: 20_063,
};
/// TC: dropped; TCX "next" (passed or translated).
const TC_ACT_SHOT: u32 = 2;
const TC_NEXT: u32 = -1i32 as u32;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

fn be(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

/// The loaded object and the maps the tests read and fill, taken out of it
/// so that its programs can be borrowed beside them.
struct Datapath {
    ebpf: Ebpf,
    fwd: HashMap<MapData, FlowKey, Session>,
    rev: HashMap<MapData, FlowKey, Session>,
    cooldown: HashMap<MapData, FlowKey, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl Datapath {
    fn new(max_sessions: u32) -> Self {
        let globals = Globals {
            ext_addr: be(EXTERNAL),
            ext_addrs: 1,
            ..Globals::default()
        };
        let mut ebpf = load_object(max_sessions, 4096, globals).expect("object loads");
        let internal = [Cidr {
            addr: Ipv4Addr::new(10, 0, 0, 0),
            len: 8,
        }];
        let cfg = Config {
            pool_len: 1,
            ..Config::default()
        };
        populate(&mut ebpf, &internal, &[EXTERNAL], PORTS, cfg).expect("maps populate");
        let mut take = |name| ebpf.take_map(name).expect("map in the object");
        let (fwd, rev, cooldown, stats) = (
            take(MAP_FWD),
            take(MAP_REV),
            take(MAP_COOLDOWN),
            take(MAP_STATS),
        );
        Self {
            fwd: fwd.try_into().unwrap(),
            rev: rev.try_into().unwrap(),
            cooldown: cooldown.try_into().unwrap(),
            stats: stats.try_into().unwrap(),
            ebpf,
        }
    }

    fn tc(&mut self, name: &str) -> &SchedClassifier {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        if prog.fd().is_err() {
            prog.load().expect("the verifier accepts the program");
        }
        prog
    }

    fn xdp(&mut self, name: &str) -> &Xdp {
        let prog: &mut Xdp = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        if prog.fd().is_err() {
            prog.load().expect("the verifier accepts the program");
        }
        prog
    }

    fn counter(&self, c: Counter) -> u64 {
        self.stats.get(&(c as u32), 0).unwrap().iter().sum()
    }

    fn fwd(&self, key: &FlowKey) -> Session {
        self.fwd.get(key, 0).expect("forward entry")
    }

    fn rev(&self, key: &FlowKey) -> Session {
        self.rev.get(key, 0).expect("reverse entry")
    }
}

/// Runs `prog` on `frame`; its verdict and the frame it left.
fn run<P>(prog: &P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 64];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("test run");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    ip
}

/// An Ethernet + IPv4 + TCP segment with correct checksums.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    tcp_seq(src, sport, dst, dport, flags, [0, 0], 0)
}

/// [`tcp`] with sequence and acknowledgment numbers and a window field.
fn tcp_seq(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    [seq, ack]: [u32; 2],
    window: u16,
) -> Vec<u8> {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&seq.to_be_bytes());
    seg[8..12].copy_from_slice(&ack.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&window.to_be_bytes());
    let c = l4_checksum(src.octets(), dst.octets(), PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_ne_bytes());
    let mut p = eth(0x0800);
    p.extend_from_slice(&ipv4(src, dst, PROTO_TCP, seg.len()));
    p.extend_from_slice(&seg);
    p
}

fn valid(bytes: &[u8]) -> bool {
    fold(sum_bytes(bytes, 0)) == 0xffff
}

/// A full NAT_REV is not a taken port: the first candidate's failed insert
/// ends the walk, and the drop says why. Every other port toward the
/// destination is cooling, so each candidate a walk visited would count a
/// cooldown skip.
#[test]
fn a_full_session_table_stops_probing_and_is_counted() {
    let mut dp = Datapath::new(64);
    let now = boot_ns();
    for i in 0..64u32 {
        let elsewhere = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
        let key = FlowKey::new(
            PROTO_TCP,
            be(EXTERNAL),
            PORTS.lo.to_be(),
            be(elsewhere),
            REMOTE_PORT.to_be(),
        );
        dp.rev
            .insert(key, Session::default(), 0)
            .expect("64 entries fit");
    }
    for port in PORTS.lo + 1..=PORTS.hi {
        let key = FlowKey::new(
            PROTO_TCP,
            be(EXTERNAL),
            port.to_be(),
            be(REMOTE),
            REMOTE_PORT.to_be(),
        );
        dp.cooldown.insert(key, now + 3_600_000_000_000, 0).unwrap();
    }
    let egress = dp.tc(PROG_EGRESS);
    // Its own source port is the (free, not cooling) first candidate.
    let (verdict, _) = run(egress, &tcp(INTERNAL, PORTS.lo, REMOTE, REMOTE_PORT, 0x02));
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "an opening packet without a session is dropped"
    );
    assert_eq!(dp.counter(Counter::SessionTableFull), 1);
    assert_eq!(
        dp.counter(Counter::AllocFail),
        0,
        "not reported as port exhaustion"
    );
    assert_eq!(
        dp.counter(Counter::CooldownSkip),
        0,
        "no candidate after the failed insert was probed"
    );
}

/// An ICMP error quoting 8 bytes of a TCP header, followed by 16 bytes of
/// link-layer padding: the quote ends with the outer total length, so the
/// padding is neither rewritten nor folded into the ICMP checksum.
#[test]
fn an_icmp_quote_ends_with_the_ip_packet_not_the_frame() {
    let mut dp = Datapath::new(1024);
    let ext_port = 20_010u16;
    let internal_port = 40_000u16;
    dp.rev
        .insert(
            FlowKey::new(
                PROTO_TCP,
                be(EXTERNAL),
                ext_port.to_be(),
                be(REMOTE),
                REMOTE_PORT.to_be(),
            ),
            Session {
                addr: be(INTERNAL),
                port: internal_port.to_be(),
                ..Session::default()
            },
            0,
        )
        .unwrap();
    // The quoted packet as it left: from the external endpoint.
    let quoted_ip = ipv4(EXTERNAL, REMOTE, PROTO_TCP, 20);
    let mut quoted_tcp = [0u8; 8];
    quoted_tcp[0..2].copy_from_slice(&ext_port.to_be_bytes());
    quoted_tcp[2..4].copy_from_slice(&REMOTE_PORT.to_be_bytes());
    quoted_tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    let mut icmp = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted_ip);
    icmp.extend_from_slice(&quoted_tcp);
    let c = ipv4_header_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    let router = Ipv4Addr::new(198, 18, 0, 9);
    let mut frame = eth(0x0800);
    frame.extend_from_slice(&ipv4(router, EXTERNAL, PROTO_ICMP, icmp.len()));
    frame.extend_from_slice(&icmp);
    let padding = [0xab; 16];
    frame.extend_from_slice(&padding);

    let (verdict, out) = run(dp.xdp(PROG_INGRESS), &frame);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dp.counter(Counter::XlateIn), 1, "the error was translated");
    let ip = &out[14..34];
    assert_eq!(ip[16..20], INTERNAL.octets(), "outer destination");
    assert!(valid(ip), "outer IPv4 checksum");
    let icmp_out = &out[34..34 + icmp.len()];
    assert_eq!(icmp_out[8 + 12..8 + 16], INTERNAL.octets(), "quoted source");
    assert_eq!(
        u16::from_be_bytes([icmp_out[28], icmp_out[29]]),
        internal_port,
        "quoted port"
    );
    assert!(valid(&icmp_out[8..28]), "quoted IPv4 checksum");
    assert!(
        valid(icmp_out),
        "ICMP checksum over the message the IP length bounds"
    );
    assert_eq!(out[34 + icmp.len()..], padding, "the padding is untouched");
}

/// A SYN that reopens a reset session starts a new generation in the
/// forward entry and leaves the reverse entry alone (ingress owns it); the
/// reverse's bits of the old connection no longer count, and the answer to
/// the new SYN moves the reverse entry to the new generation.
#[test]
fn a_reopen_leaves_the_reverse_entry_to_ingress() {
    let mut dp = Datapath::new(1024);
    dp.tc(PROG_EGRESS);
    dp.xdp(PROG_INGRESS);
    let sport = PORTS.lo + 7;
    let fwd_key = FlowKey::new(
        PROTO_TCP,
        be(INTERNAL),
        sport.to_be(),
        be(REMOTE),
        REMOTE_PORT.to_be(),
    );
    let (syn, ack, rst) = (0x02, 0x10, 0x04);
    let out = |dp: &mut Datapath, flags| {
        run(
            dp.tc(PROG_EGRESS),
            &tcp(INTERNAL, sport, REMOTE, REMOTE_PORT, flags),
        )
        .0
    };
    assert_eq!(out(&mut dp, syn), TC_NEXT);
    let fwd = dp.fwd(&fwd_key);
    let ext_port = u16::from_be(fwd.port);
    let rev_key = fwd_key.translated(fwd.addr, fwd.port);
    let reply = |dp: &mut Datapath, flags| {
        run(
            dp.xdp(PROG_INGRESS),
            &tcp(REMOTE, REMOTE_PORT, EXTERNAL, ext_port, flags),
        )
        .0
    };
    assert_eq!(reply(&mut dp, syn | ack), XDP_PASS);
    // The internal host acknowledged nothing yet: a reset counts when it
    // acknowledges the SYN (sequence number 0, so it ends at 1).
    let refusal = tcp_seq(
        REMOTE,
        REMOTE_PORT,
        EXTERNAL,
        ext_port,
        rst | ack,
        [0, 1],
        0,
    );
    assert_eq!(run(dp.xdp(PROG_INGRESS), &refusal).0, XDP_PASS);
    let rev_reset = dp.rev(&rev_key).seen;
    assert_eq!(bits(rev_reset), seen::SYN_ACK | seen::ACK | seen::RST);

    // The client's new SYN on the same 5-tuple.
    assert_eq!(out(&mut dp, syn), TC_NEXT);
    assert_eq!(dp.counter(Counter::Reopened), 1);
    let fwd = dp.fwd(&fwd_key).seen;
    let rev = dp.rev(&rev_key).seen;
    assert_eq!(rev, rev_reset, "egress did not write the reverse entry");
    assert_eq!(generation(fwd), generation(rev) + 1);
    assert_eq!(bits(fwd), seen::SYN);
    let state = |f: u64, r: u64| state_of(PROTO_TCP, bits(f), current_rev_bits(f, r));
    assert_eq!(
        state(fwd, rev),
        State::SynSent,
        "the old reset no longer counts"
    );

    assert_eq!(reply(&mut dp, syn | ack), XDP_PASS);
    let rev = dp.rev(&rev_key).seen;
    assert_eq!(generation(rev), generation(fwd));
    assert_eq!(bits(rev), seen::SYN_ACK | seen::ACK);
    assert_eq!(state(fwd, rev), State::Established);
}

/// An established session as a handshake leaves it: the remote's initial
/// sequence number is `remote_isn`, the internal host acknowledged it with
/// window field 502. Returns the keys and the external port.
fn established(dp: &mut Datapath, sport: u16, remote_isn: u32) -> (FlowKey, FlowKey, u16) {
    let out = |dp: &mut Datapath, flags, nums, win| {
        let seg = tcp_seq(INTERNAL, sport, REMOTE, REMOTE_PORT, flags, nums, win);
        run(dp.tc(PROG_EGRESS), &seg).0
    };
    assert_eq!(out(dp, SYN, [1000, 0], 64_240), TC_NEXT);
    let fwd_key = FlowKey::new(
        PROTO_TCP,
        be(INTERNAL),
        sport.to_be(),
        be(REMOTE),
        REMOTE_PORT.to_be(),
    );
    let fwd = dp.fwd(&fwd_key);
    let ext_port = u16::from_be(fwd.port);
    let synack = tcp_seq(
        REMOTE,
        REMOTE_PORT,
        EXTERNAL,
        ext_port,
        SYN | ACK,
        [remote_isn, 1001],
        65_160,
    );
    assert_eq!(run(dp.xdp(PROG_INGRESS), &synack).0, XDP_PASS);
    assert_eq!(out(dp, ACK, [1001, remote_isn + 1], 502), TC_NEXT);
    (fwd_key, fwd_key.translated(fwd.addr, fwd.port), ext_port)
}

fn state(dp: &Datapath, fwd_key: &FlowKey, rev_key: &FlowKey) -> State {
    let (f, r) = (dp.fwd(fwd_key).seen, dp.rev(rev_key).seen);
    state_of(PROTO_TCP, bits(f), current_rev_bits(f, r))
}

/// RFC 5961: a reset from outside whose sequence number misses the internal
/// host's window is dropped and counted, and neither closes the session
/// nor starts a cooldown; one in the window does both.
#[test]
fn a_blind_reset_from_outside_is_dropped_and_changes_nothing() {
    let mut dp = Datapath::new(1024);
    let isn = 0x7000_0000;
    let (fwd_key, rev_key, ext_port) = established(&mut dp, PORTS.lo + 3, isn);
    assert_eq!(state(&dp, &fwd_key, &rev_key), State::Established);
    let reset = |seq| tcp_seq(REMOTE, REMOTE_PORT, EXTERNAL, ext_port, RST, [seq, 0], 0);

    for guess in [isn.wrapping_add(1 << 31), isn.wrapping_sub(1 << 24), 12_345] {
        assert_eq!(run(dp.xdp(PROG_INGRESS), &reset(guess)).0, XDP_DROP);
    }
    assert_eq!(dp.counter(Counter::RstOutOfWindow), 3);
    assert_eq!(state(&dp, &fwd_key, &rev_key), State::Established);
    assert!(dp.cooldown.get(&rev_key, 0).is_err(), "no cooldown");

    // The remote's real reset: its next sequence number.
    assert_eq!(run(dp.xdp(PROG_INGRESS), &reset(isn + 1)).0, XDP_PASS);
    assert_eq!(dp.counter(Counter::RstOutOfWindow), 3);
    assert_eq!(state(&dp, &fwd_key, &rev_key), State::Reset);
    assert!(
        dp.cooldown.get(&rev_key, 0).is_ok(),
        "the reset cools the key"
    );
}

/// A SYN either way on an established session is not a reopen: the state,
/// the generation and the reset check stay as they were.
#[test]
fn a_syn_on_an_established_session_keeps_its_state() {
    let mut dp = Datapath::new(1024);
    let sport = PORTS.lo + 4;
    let isn = 0x1234_5678;
    let (fwd_key, rev_key, ext_port) = established(&mut dp, sport, isn);
    let before = dp.fwd(&fwd_key);
    let syn_out = tcp_seq(INTERNAL, sport, REMOTE, REMOTE_PORT, SYN, [5, 0], 1000);
    assert_eq!(run(dp.tc(PROG_EGRESS), &syn_out).0, TC_NEXT);
    let syn_in = tcp_seq(REMOTE, REMOTE_PORT, EXTERNAL, ext_port, SYN, [9, 0], 1000);
    assert_eq!(run(dp.xdp(PROG_INGRESS), &syn_in).0, XDP_PASS);
    assert_eq!(dp.counter(Counter::Reopened), 0);
    let after = dp.fwd(&fwd_key);
    assert_eq!(after.seen, before.seen);
    assert_eq!(after.acked, before.acked);
    assert_eq!(state(&dp, &fwd_key, &rev_key), State::Established);
    let reset = tcp_seq(REMOTE, REMOTE_PORT, EXTERNAL, ext_port, RST, [9, 0], 0);
    assert_eq!(run(dp.xdp(PROG_INGRESS), &reset).0, XDP_DROP);
}
