//! The datapath fuzzer in the suite: a bounded smoke run with a fixed seed,
//! every saved finding replayed, and the oracle shown to catch what it
//! must (`cargo xtask fuzz` runs the fuzzer for longer).

use std::collections::HashMap;
use std::time::Duration;

use nat_common::counters::Counter;
use nat_tests::fixture::{CLIENT, EXTERNAL, INTERNAL_NET, Outcome, Prog, REMOTE, Verdict, ep};
use nat_tests::fuzz::{self, Options, oracle};
use nat_tests::packet::{ETHERTYPE_8021AD, ETHERTYPE_8021Q, Pkt, tcp_flags, vlan_tagged};

/// Seconds of the smoke run (`NAT_FUZZ_SMOKE_SECS` overrides).
const SMOKE_SECS: f64 = 5.0;

#[test]
fn fuzz_datapath_smoke() {
    let secs = std::env::var("NAT_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SMOKE_SECS);
    let mut h = fuzz::harness();
    let report = fuzz::run(
        &mut h,
        &Options {
            duration: Duration::from_secs_f64(secs),
            seed: 11,
            findings_dir: None,
            stop_at_first: true,
        },
    );
    println!("fuzz_datapath_smoke: {report}");
    assert!(report.runs > 100, "the fuzzer hardly ran: {report}");
    assert!(report.rewritten > 0 && report.dropped > 0, "{report}");
    if let Some(f) = report.findings.first() {
        panic!(
            "{}\n{}",
            f.violation,
            fuzz::format_case(&f.case, &f.violation)
        );
    }
}

#[test]
fn fuzz_datapath_regressions_replay_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression cases in {}",
        dir.display()
    );
    let mut h = fuzz::harness();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("case file");
        let case = fuzz::parse_case(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            fuzz::parse_case(&fuzz::format_case(&case, "")).as_ref(),
            Ok(&case),
            "a case survives its text form"
        );
        if let Err(e) = fuzz::replay(&mut h, &case) {
            panic!("{}: {e}", path.display());
        }
    }
}

fn outcome(verdict: Verdict, frame: Vec<u8>, counters: Vec<(Counter, u64)>) -> Outcome {
    Outcome {
        verdict,
        retval: 0,
        frame,
        counters,
        fwd: HashMap::new(),
        rev: HashMap::new(),
        cooldown: HashMap::new(),
        frags: HashMap::new(),
        rejects: Vec::new(),
        hosts: HashMap::new(),
        live: 0,
        before_ns: 0,
        after_ns: 0,
    }
}

/// Each rule of the oracle rejects an outcome that breaks it.
#[test]
fn fuzz_oracle_catches_violations() {
    let internal = [INTERNAL_NET];
    let syn = Pkt::tcp(ep(CLIENT, 1234), ep(REMOTE, 443), tcp_flags::SYN).frame();
    let pass = |frame: &[u8]| {
        outcome(
            Verdict::Pass,
            frame.to_vec(),
            vec![(Counter::NotOursOut, 1)],
        )
    };
    // An internal source passed by egress untranslated.
    let leak = oracle::check(Prog::Egress, &syn, &pass(&syn), &internal);
    assert!(leak.unwrap_err().contains("leave untranslated"));
    // Translated without a session.
    let moved = Pkt::tcp(ep(EXTERNAL, 40_000), ep(REMOTE, 443), tcp_flags::SYN).frame();
    let e = oracle::check(Prog::Egress, &syn, &pass(&moved), &internal).unwrap_err();
    assert!(e.contains("no forward entry"), "{e}");
    // A bad checksum out of a valid packet.
    let mut bad = moved.clone();
    bad[14 + 20 + 16] ^= 0xff;
    let e = oracle::check(Prog::Egress, &syn, &pass(&bad), &internal).unwrap_err();
    assert!(e.contains("bad one out"), "{e}");
    // No outcome counter, two of them, a redirect from egress, an unknown code.
    let dropped = |c: Vec<(Counter, u64)>| outcome(Verdict::Drop, syn.clone(), c);
    assert!(oracle::check(Prog::Egress, &syn, &dropped(vec![]), &internal).is_err());
    let two = vec![(Counter::Malformed, 1), (Counter::NoSession, 1)];
    assert!(oracle::check(Prog::Egress, &syn, &dropped(two), &internal).is_err());
    let redirect = outcome(Verdict::Redirect, syn.clone(), vec![(Counter::FastOut, 1)]);
    assert!(oracle::check(Prog::Egress, &syn, &redirect, &internal).is_err());
    let odd = outcome(
        Verdict::Unexpected(9),
        syn.clone(),
        vec![(Counter::Malformed, 1)],
    );
    assert!(oracle::check(Prog::Ingress, &syn, &odd, &internal).is_err());
    // A drop with one drop counter is fine.
    let ok = dropped(vec![(Counter::NoSession, 1)]);
    assert_eq!(oracle::check(Prog::Egress, &syn, &ok, &internal), Ok(()));
}

/// The leak rule looks behind VLAN tags: an internal source under an
/// 802.1Q, an 802.1ad or both tags (QinQ) that egress passes or the fast
/// path redirects is a leak; under a third tag, or from outside the
/// internal prefixes, it is not the rule's.
#[test]
fn fuzz_oracle_catches_tagged_leaks() {
    let internal = [INTERNAL_NET];
    let syn = Pkt::tcp(ep(CLIENT, 1234), ep(REMOTE, 443), tcp_flags::SYN).frame();
    let q = vlan_tagged(&syn, ETHERTYPE_8021Q, 100);
    let ad = vlan_tagged(&syn, ETHERTYPE_8021AD, 100);
    let qinq = vlan_tagged(&q, ETHERTYPE_8021AD, 20);
    let passed = |f: &[u8]| outcome(Verdict::Pass, f.to_vec(), vec![(Counter::NotIpv4, 1)]);
    for (form, f) in [("802.1Q", &q), ("802.1ad", &ad), ("QinQ", &qinq)] {
        let e = oracle::check(Prog::Egress, f, &passed(f), &internal).unwrap_err();
        assert!(
            e.contains("leave untranslated") && e.contains("VLAN"),
            "{form}: {e}"
        );
        let redirect = outcome(Verdict::Redirect, f.clone(), vec![(Counter::FastOut, 1)]);
        for prog in [Prog::Fast, Prog::FastTc] {
            let e = oracle::check(prog, f, &redirect, &internal).unwrap_err();
            assert!(e.contains("leave untranslated"), "{prog:?} {form}: {e}");
        }
        // Dropped, or toward the inside: no leak.
        let dropped = outcome(Verdict::Drop, f.clone(), vec![(Counter::TaggedInternal, 1)]);
        assert_eq!(oracle::check(Prog::Egress, f, &dropped, &internal), Ok(()));
        assert_eq!(
            oracle::check(Prog::Ingress, f, &passed(f), &internal),
            Ok(())
        );
    }
    let deep = vlan_tagged(&qinq, ETHERTYPE_8021Q, 3);
    assert_eq!(
        oracle::check(Prog::Egress, &deep, &passed(&deep), &internal),
        Ok(())
    );
    let own = Pkt::tcp(ep(EXTERNAL, 1234), ep(REMOTE, 443), tcp_flags::SYN).frame();
    let own = vlan_tagged(&own, ETHERTYPE_8021Q, 100);
    assert_eq!(
        oracle::check(Prog::Egress, &own, &passed(&own), &internal),
        Ok(())
    );
}

/// The seeded states reach the port forwards, the endpoint-independent
/// mapping's filter both ways, a join of the mapping and the host limit:
/// the seeds, unmutated, on the sessions state, each from a fresh state.
#[test]
fn fuzz_datapath_states_reach_forwards_mappings_and_host_limits() {
    use nat_tests::fuzz::corpus::{Dir, State, seeds};
    let mut h = fuzz::harness();
    let maps = State::Sessions.maps();
    let mut seen: Vec<Counter> = Vec::new();
    for (dir, frame) in seeds() {
        let prog = match dir {
            Dir::Out => Prog::Egress,
            Dir::In => Prog::IngressTc,
        };
        if !fuzz::runnable(prog, &frame) {
            continue;
        }
        let out = h.run(prog, &maps, &frame);
        oracle::check(prog, &frame, &out, &maps.internal).expect("the oracle holds");
        seen.extend(out.counters.iter().map(|(c, _)| *c));
    }
    for c in [
        Counter::ForwardOpened,
        Counter::EimInbound,
        Counter::Filtered,
        Counter::TaggedInternal,
    ] {
        assert!(seen.contains(&c), "no seed reached {}", c.name());
    }
    // CLIENT is one below its limit: its second new flow is refused.
    h.set(&maps);
    let out = h.run_frame(
        Prog::Egress,
        &Pkt::tcp(ep(CLIENT, 1), ep(REMOTE, 9), tcp_flags::SYN).frame(),
    );
    assert_eq!(out.verdict, Verdict::Pass, "{:?}", out.counters);
    let out = h.run_frame(
        Prog::Egress,
        &Pkt::tcp(ep(CLIENT, 2), ep(REMOTE, 9), tcp_flags::SYN).frame(),
    );
    assert!(
        out.counters.contains(&(Counter::HostLimit, 1)),
        "{:?}",
        out.counters
    );
}
