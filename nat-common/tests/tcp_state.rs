//! Session state from the two directions' seen bits.

use nat_common::{
    config::Config,
    flow::{PROTO_TCP, PROTO_UDP, seen},
    headers::tcp_flags::{ACK, FIN, RST, SYN},
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

#[test]
fn bits() {
    assert_eq!(seen_bits(SYN), seen::SYN);
    assert_eq!(seen_bits(SYN | ACK), seen::SYN_ACK);
    assert_eq!(seen_bits(FIN | ACK), seen::FIN);
    assert_eq!(seen_bits(ACK), 0);
}

#[test]
fn timeouts_follow_the_rfcs() {
    let cfg = Config::default();
    assert_eq!(idle_timeout_ms(State::Established, &cfg), 7_440_000);
    assert_eq!(idle_timeout_ms(State::SynSent, &cfg), 240_000);
    assert_eq!(idle_timeout_ms(State::Closed, &cfg), 240_000);
    assert_eq!(idle_timeout_ms(State::Udp, &cfg), 300_000);
}
