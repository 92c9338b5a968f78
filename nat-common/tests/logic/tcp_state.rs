//! Session state from the two directions' seen bits.

use nat_common::{
    config::Config,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, seen},
    headers::tcp_flags::{ACK, FIN, RST, SYN},
    tcp_state::{CloseKind, close_kind, cooldown_ms, expiry_kind, opens_flow},
    tcp_state::{State, idle_timeout_ms, seen_bits, state_of},
};

fn run(packets: &[(bool, u8)]) -> State {
    let (mut fwd, mut rev) = (0u8, 0u8);
    for &(outbound, flags) in packets {
        if outbound {
            fwd |= seen_bits(flags);
        } else {
            rev |= seen_bits(flags);
        }
    }
    state_of(PROTO_TCP, fwd, rev)
}

#[test]
fn transitions() {
    assert_eq!(run(&[(true, SYN)]), State::SynSent);
    assert_eq!(run(&[(true, SYN), (false, SYN | ACK)]), State::Established);
    assert_eq!(
        run(&[(true, SYN), (false, SYN | ACK), (true, ACK)]),
        State::Established
    );
    assert_eq!(
        run(&[(true, SYN), (false, SYN | ACK), (true, FIN | ACK)]),
        State::FinInternal
    );
    assert_eq!(
        run(&[(true, SYN), (false, SYN | ACK), (false, FIN | ACK)]),
        State::FinExternal
    );
    assert_eq!(
        run(&[
            (true, SYN),
            (false, SYN | ACK),
            (false, FIN | ACK),
            (true, FIN | ACK)
        ]),
        State::Closed
    );
    assert_eq!(run(&[(true, SYN), (false, RST | ACK)]), State::Reset);
    assert_eq!(
        run(&[(true, SYN), (false, SYN | ACK), (true, FIN), (true, RST)]),
        State::Reset
    );
    // A bare ACK from outside does not establish a session.
    assert_eq!(run(&[(true, SYN), (false, ACK)]), State::SynSent);
    assert_eq!(state_of(PROTO_UDP, 0, 0), State::Udp);
}

/// A session a port forward opened: the remote sends the SYN, the internal
/// host answers; it must time out as established, not as a half-open one.
#[test]
fn forwarded_transitions() {
    assert_eq!(run(&[(false, SYN)]), State::SynSent);
    assert_eq!(run(&[(false, SYN), (true, SYN | ACK)]), State::Established);
    assert_eq!(
        run(&[(false, SYN), (true, SYN | ACK), (false, FIN | ACK)]),
        State::FinExternal
    );
    assert_eq!(run(&[(false, SYN), (true, RST | ACK)]), State::Reset);
}

#[test]
fn bits() {
    assert_eq!(seen_bits(SYN), seen::SYN);
    assert_eq!(seen_bits(SYN | ACK), seen::SYN_ACK | seen::ACK);
    assert_eq!(seen_bits(FIN | ACK), seen::FIN | seen::ACK);
    assert_eq!(seen_bits(ACK), seen::ACK);
    assert_eq!(seen_bits(0), 0);
}

#[test]
fn timeouts_follow_the_rfcs() {
    let cfg = Config::default();
    assert_eq!(idle_timeout_ms(State::Established, &cfg), 7_440_000);
    assert_eq!(idle_timeout_ms(State::SynSent, &cfg), 240_000);
    assert_eq!(idle_timeout_ms(State::FinExternal, &cfg), 240_000);
    assert_eq!(idle_timeout_ms(State::Closed, &cfg), 10_000);
    assert_eq!(idle_timeout_ms(State::Reset, &cfg), 10_000);
    assert_eq!(idle_timeout_ms(State::Udp, &cfg), 300_000);
}

/// Bits as the datapath sets them: FIN_FIRST on a FIN while the other side has none.
fn close(packets: &[(bool, u8)]) -> (u8, u8) {
    let (mut fwd, mut rev) = (0u8, 0u8);
    for &(outbound, flags) in packets {
        let (own, other) = if outbound {
            (&mut fwd, rev)
        } else {
            (&mut rev, fwd)
        };
        let mut add = seen_bits(flags) & !*own;
        if add & seen::FIN != 0 && other & seen::FIN == 0 {
            add |= seen::FIN_FIRST;
        }
        *own |= add;
    }
    (fwd, rev)
}

#[test]
fn close_kinds() {
    let open = [(true, SYN), (false, SYN | ACK), (true, ACK)];
    let with = |tail: &[(bool, u8)]| {
        let all: Vec<_> = open.iter().chain(tail).copied().collect();
        let (f, r) = close(&all);
        close_kind(f, r)
    };
    assert_eq!(with(&[]), None);
    assert_eq!(
        with(&[(false, FIN | ACK)]),
        None,
        "half closed is not closed"
    );
    assert_eq!(
        with(&[(false, FIN | ACK), (true, FIN | ACK)]),
        Some(CloseKind::ExternalFirst)
    );
    assert_eq!(
        with(&[(true, FIN | ACK), (false, FIN | ACK)]),
        Some(CloseKind::InternalFirst)
    );
    assert_eq!(with(&[(true, RST)]), Some(CloseKind::Reset));
    assert_eq!(with(&[(false, RST | ACK)]), Some(CloseKind::Reset));
    assert_eq!(
        with(&[(true, FIN | ACK), (false, RST)]),
        Some(CloseKind::Reset)
    );
    // FINs that crossed: both marked first, the remote holds TIME_WAIT too.
    let both = seen::FIN | seen::FIN_FIRST;
    assert_eq!(close_kind(both, both), Some(CloseKind::ExternalFirst));
    assert_eq!(expiry_kind(PROTO_UDP, 0, 0), CloseKind::Udp);
    assert_eq!(expiry_kind(PROTO_ICMP, 0, 0), CloseKind::Icmp);
    assert_eq!(
        expiry_kind(PROTO_TCP, seen::SYN, seen::SYN_ACK),
        CloseKind::Idle
    );
}

#[test]
fn cooldown_per_kind() {
    let mut cfg = Config::default();
    assert_eq!(cooldown_ms(CloseKind::ExternalFirst, &cfg), 240_000);
    assert_eq!(cooldown_ms(CloseKind::Idle, &cfg), 240_000);
    assert_eq!(cooldown_ms(CloseKind::InternalFirst, &cfg), 15_000);
    assert_eq!(cooldown_ms(CloseKind::Reset, &cfg), 15_000);
    assert_eq!(cooldown_ms(CloseKind::Udp, &cfg), 0);
    assert_eq!(cooldown_ms(CloseKind::Icmp, &cfg), 0);
    // ICMP cools under its own setting, not UDP's.
    cfg.cooldown_udp_ms = 5_000;
    cfg.cooldown_icmp_ms = 7_000;
    assert_eq!(cooldown_ms(CloseKind::Udp, &cfg), 5_000);
    assert_eq!(cooldown_ms(CloseKind::Icmp, &cfg), 7_000);
    cfg.cooldown_enabled = 0;
    for kind in [
        CloseKind::ExternalFirst,
        CloseKind::InternalFirst,
        CloseKind::Reset,
        CloseKind::Idle,
        CloseKind::Udp,
        CloseKind::Icmp,
    ] {
        assert_eq!(cooldown_ms(kind, &cfg), 0);
    }
}

#[test]
fn probe_buckets() {
    use nat_common::probe::{PROBE_BUCKETS, probe_bucket};
    assert_eq!(probe_bucket(1), 0);
    assert_eq!(probe_bucket(2), 1);
    assert_eq!(probe_bucket(3), 2);
    assert_eq!(probe_bucket(4), 2);
    assert_eq!(probe_bucket(5), 3);
    assert_eq!(probe_bucket(128), 7);
    assert_eq!(probe_bucket(129), 8);
    assert_eq!(probe_bucket(100_000), PROBE_BUCKETS - 2);
}

#[test]
fn only_a_bare_syn_opens_a_tcp_flow() {
    assert!(opens_flow(PROTO_TCP, SYN));
    assert!(opens_flow(PROTO_TCP, SYN | FIN));
    assert!(!opens_flow(PROTO_TCP, SYN | ACK));
    assert!(!opens_flow(PROTO_TCP, SYN | RST));
    assert!(!opens_flow(PROTO_TCP, ACK));
    assert!(!opens_flow(PROTO_TCP, 0));
    assert!(opens_flow(PROTO_UDP, 0));
    assert!(opens_flow(PROTO_ICMP, ACK));
}
