//! The seed corpus and the map states the fuzzer starts its episodes from.
//!
//! Seeds are valid frames built with [`crate::packet`]: TCP (with options),
//! UDP (with and without checksum), ICMP echo, ICMP errors quoting a whole
//! and a truncated packet, both fragments of a datagram, IPv4 options, and
//! frames the NAT only passes (foreign sources, not IPv4), and IPv4 under
//! VLAN tags (802.1Q, 802.1ad, QinQ) both ways. Outbound seeds
//! come from the internal hosts, inbound ones from outside toward the
//! external address; most of them belong to a session of the seeded state,
//! and some reach its endpoint-independent mapping and port forwards.

use std::net::{Ipv4Addr, SocketAddrV4};

use nat_common::{
    config::Config,
    flow::seen,
    hosts::{HOST_OPENINGS, HostEntry},
    mapping::SESSION_MAPPED,
};

use crate::fixture::{
    CLIENT, CLIENT_MAC, CLIENT2, EXT_IF, EXTERNAL, Flow, INT_IF, INTERNAL_NET, Maps, NEXT_HOP_MAC,
    OWN_EXT_MAC, OWN_INT_MAC, REMOTE, ROUTER, ep, next_hop,
};
use crate::packet::{
    ETHERTYPE_8021AD, ETHERTYPE_8021Q, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, Pkt, tcp_flags, vlan_tagged,
};

/// Which way a seed crosses the NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From an internal host: egress and the fast path.
    Out,
    /// From outside: the ingress programs.
    In,
}

/// The pool the fuzzer's states hand out: 8 ports, so allocation, cooldown
/// skips and exhaustion are all reachable.
pub const PORTS: (u16, u16) = (40_000, 40_007);

/// Capacity of every session and cooldown map of the fuzzer's harness: small,
/// so that [`State::NearlyFull`] costs little to write and read back.
pub const CAPACITY: u32 = 64;

/// Another host outside.
pub const REMOTE2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
/// A source outside every internal prefix, on the internal side.
pub const FOREIGN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

const TCP_PORT: u16 = 33_333;
const UDP_PORT: u16 = 5_353;
const ECHO_ID: u16 = 77;

/// The sessions of [`State::Sessions`], each on its own external port.
pub fn flows() -> [Flow; 5] {
    let ext = |i: u16| ep(EXTERNAL, PORTS.0 + i);
    [
        Flow::new(PROTO_TCP, ep(CLIENT, TCP_PORT), ext(0), ep(REMOTE, 443)),
        Flow::new(PROTO_UDP, ep(CLIENT, UDP_PORT), ext(1), ep(REMOTE, 53)),
        Flow::new(PROTO_ICMP, ep(CLIENT, ECHO_ID), ext(2), ep(REMOTE, 0)),
        Flow::new(PROTO_TCP, ep(CLIENT2, 44_444), ext(3), ep(REMOTE, 80)),
        Flow::new(PROTO_TCP, ep(CLIENT, TCP_PORT + 1), ext(4), ep(REMOTE, 443)),
    ]
}

/// The map states of the issue: empty, sessions seeded, cooldowns seeded,
/// nearly full; and the seeded sessions under the carrier-grade allocation
/// modes: port blocks of 4 (two in the pool, one per host) and
/// deterministic shares of one port each over 10.0.0.0/29.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    Sessions,
    Cooldowns,
    NearlyFull,
    Blocks,
    Deterministic,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Empty,
        State::Sessions,
        State::Cooldowns,
        State::NearlyFull,
        State::Blocks,
        State::Deterministic,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Sessions => "sessions",
            State::Cooldowns => "cooldowns",
            State::NearlyFull => "nearly-full",
            State::Blocks => "blocks",
            State::Deterministic => "deterministic",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The maps of this state.
    pub fn maps(self) -> Maps {
        let mut maps = Maps::nat();
        maps.ports = PORTS;
        maps.config = Config {
            pool_len: 1,
            // CLIENT's seeded sessions leave it one below the limit.
            max_sessions_per_host: 5,
            ..Config::default()
        };
        maps.internal = vec![INTERNAL_NET];
        // XDP runs arrive on loopback (EXT_IF); the fast path may redirect
        // to either side.
        maps.if_macs.push((EXT_IF, OWN_INT_MAC));
        maps.fast_devs.extend([EXT_IF, INT_IF]);
        match self {
            State::Empty => maps,
            State::Sessions => sessions(maps),
            State::Blocks => sessions(maps).blocks(4, 1),
            State::Deterministic => {
                maps.internal = vec![(Ipv4Addr::new(10, 0, 0, 0), 29)];
                sessions(maps).deterministic()
            }
            State::Cooldowns => {
                let mut maps = sessions(maps);
                // Every port of the pool cools toward the seeds' remotes.
                for port in PORTS.0..=PORTS.1 {
                    for (proto, remote) in [
                        (PROTO_TCP, ep(REMOTE, 443)),
                        (PROTO_UDP, ep(REMOTE, 53)),
                        (PROTO_TCP, ep(REMOTE2, 443)),
                    ] {
                        let f = Flow::new(proto, ep(CLIENT, 1), ep(EXTERNAL, port), remote);
                        maps = maps.cooling(&f);
                    }
                }
                maps
            }
            State::NearlyFull => {
                let mut maps = sessions(maps);
                // Fill both session maps and the cooldown map to one entry
                // below capacity with other hosts' sessions toward REMOTE2.
                let mut i = 0u16;
                while (maps.fwd.len() as u32) < CAPACITY - 1 {
                    let host = Ipv4Addr::new(10, 9, (i >> 8) as u8, i as u8);
                    let f = Flow::new(
                        PROTO_UDP,
                        ep(host, 1000 + i),
                        ep(EXTERNAL, PORTS.0 + (i % 8)),
                        ep(REMOTE2, 2000 + i),
                    );
                    maps = maps.session(&f, 0, 0);
                    i += 1;
                }
                let mut j = 0u16;
                while (maps.cooldown.len() as u32) < CAPACITY - 1 {
                    let f = Flow::new(
                        PROTO_TCP,
                        ep(CLIENT, 1),
                        ep(EXTERNAL, PORTS.0 + (j % 8)),
                        ep(REMOTE2, 3000 + j),
                    );
                    maps = maps.cooling(&f);
                    j += 1;
                }
                // The fillers' hosts go uncounted (a count may fall short,
                // never exceed); the total is the table's: under pressure.
                maps.live = maps.fwd.len() as u64;
                maps
            }
        }
    }
}

/// A TCP port forward outside the pool, and a UDP one on the pool's last
/// port (which the allocator must then skip), both to [`CLIENT2`].
pub const FORWARD_TCP: u16 = 8080;
pub const FORWARD_UDP: u16 = PORTS.1;

/// The five sessions of [`flows`], in different TCP states, the first two
/// with a fresh route cached both ways so the fast path can take them; the
/// UDP one on its endpoint's endpoint-independent mapping, which has sent
/// to [`REMOTE`] only; the hosts' counts as the datapath keeps them; and
/// the port forwards.
fn sessions(mut maps: Maps) -> Maps {
    let [tcp, udp, echo, syn_sent, closed] = flows();
    maps = maps
        .session(&tcp, seen::SYN, seen::SYN_ACK)
        .session(&udp, 0, 0)
        .session(&echo, 0, 0)
        .session(&syn_sent, seen::SYN, 0)
        .session(
            &closed,
            seen::SYN | seen::FIN | seen::FIN_FIRST,
            seen::SYN_ACK | seen::FIN,
        );
    for f in [&tcp, &udp] {
        maps = maps
            .route(f, true, next_hop(EXT_IF, NEXT_HOP_MAC, OWN_EXT_MAC, 1500))
            .route(f, false, next_hop(INT_IF, CLIENT_MAC, OWN_INT_MAC, 1500));
    }
    let udp_key = udp.fwd_key();
    for (k, e) in &mut maps.fwd {
        if *k == udp_key {
            e.mapping = SESSION_MAPPED;
        }
    }
    maps = maps
        .mapping(&udp, 1, MAPPING_BORN, &[REMOTE])
        .forward(PROTO_TCP, ep(EXTERNAL, FORWARD_TCP), ep(CLIENT2, 80))
        .forward(PROTO_UDP, ep(EXTERNAL, FORWARD_UDP), ep(CLIENT2, 5000));
    // CLIENT holds four of the sessions, CLIENT2 one.
    for (host, n) in [(CLIENT, 4), (CLIENT2, 1)] {
        let addr = u32::from(host).to_be();
        maps.hosts.push((
            addr,
            HostEntry {
                sessions: n,
                next: 0,
                addr,
                openings: [0; HOST_OPENINGS],
            },
        ));
    }
    maps.live = maps.fwd.len() as u64;
    maps
}

/// Any boot-clock time: what ties the mapping's owner and peer entries.
const MAPPING_BORN: u64 = 1_000_000_000;

fn tcp(from: SocketAddrV4, to: SocketAddrV4, flags: u8) -> Pkt {
    Pkt::tcp(from, to, flags)
}

/// Every seed, with its direction.
pub fn seeds() -> Vec<(Dir, Vec<u8>)> {
    let [tcp_f, udp_f, echo_f, syn_f, _closed] = flows();
    let mss = [2, 4, 0x05, 0xb4]; // MSS 1460
    let record_route = [7, 7, 4, 0, 0, 0, 0, 0]; // RR with one slot, NOP-padded below
    let mut out: Vec<Pkt> = vec![
        tcp(tcp_f.internal, tcp_f.remote, tcp_flags::SYN),
        {
            let mut p = tcp(ep(CLIENT, 50_000), ep(REMOTE2, 443), tcp_flags::SYN);
            if let crate::packet::L4::Tcp { options, .. } = &mut p.l4 {
                options.extend_from_slice(&mss);
            }
            p
        },
        tcp(
            tcp_f.internal,
            tcp_f.remote,
            tcp_flags::ACK | tcp_flags::PSH,
        )
        .payload(b"GET / HTTP/1.1\r\n"),
        tcp(
            tcp_f.internal,
            tcp_f.remote,
            tcp_flags::FIN | tcp_flags::ACK,
        ),
        tcp(tcp_f.internal, tcp_f.remote, tcp_flags::RST),
        tcp(syn_f.internal, syn_f.remote, tcp_flags::ACK),
        Pkt::udp(udp_f.internal, udp_f.remote).payload(b"dns query"),
        // Joins the UDP session's mapping toward another remote.
        Pkt::udp(udp_f.internal, ep(REMOTE2, 53)).payload(b"same mapping"),
        {
            let mut p = Pkt::udp(ep(CLIENT2, 6000), ep(REMOTE2, 53)).payload(b"no checksum");
            p.l4 = crate::packet::L4::Udp {
                sport: 6000,
                dport: 53,
                checksum: false,
            };
            p
        },
        Pkt::echo(CLIENT, REMOTE, true, echo_f.internal.port()),
        tcp(tcp_f.internal, tcp_f.remote, tcp_flags::ACK)
            .payload(b"options")
            .ip_options(&[record_route.as_slice(), &[1, 1, 1, 0]].concat()),
        Pkt::udp(ep(FOREIGN, 7000), ep(REMOTE, 53)).payload(b"not ours"),
        Pkt::udp(ep(EXTERNAL, 7001), ep(REMOTE, 53)).payload(b"the host's own"),
        Pkt::other(CLIENT, REMOTE, 47),
    ];
    // Errors from the internal host about a translated inbound packet.
    let inbound_udp = Pkt::udp(udp_f.remote, udp_f.internal).payload(b"answer");
    for len in [usize::MAX, 28] {
        out.push(Pkt::icmp_error(
            CLIENT,
            REMOTE,
            ICMP_DEST_UNREACH,
            3,
            &inbound_udp,
            len,
        ));
    }
    let mut frames: Vec<(Dir, Vec<u8>)> = out
        .iter()
        .map(|p| (Dir::Out, p.clone().macs(OWN_INT_MAC, CLIENT_MAC).frame()))
        .collect();
    for f in Pkt::udp(udp_f.internal, udp_f.remote)
        .payload(&[0x5a; 40])
        .fragments(16)
    {
        frames.push((Dir::Out, f));
    }
    frames.push((Dir::Out, {
        let mut f = Pkt::udp(udp_f.internal, udp_f.remote).frame();
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f
    }));
    // Tagged for a VLAN: a session's segment, a new flow, the host's own.
    for p in [
        tcp(
            tcp_f.internal,
            tcp_f.remote,
            tcp_flags::ACK | tcp_flags::PSH,
        )
        .payload(b"tagged"),
        tcp(ep(CLIENT2, 51_000), ep(REMOTE2, 443), tcp_flags::SYN),
        Pkt::udp(ep(EXTERNAL, 7002), ep(REMOTE, 53)).payload(b"own, tagged"),
    ] {
        frames.extend(
            tagged(&p.macs(OWN_INT_MAC, CLIENT_MAC).frame())
                .into_iter()
                .map(|f| (Dir::Out, f)),
        );
    }

    let ext = |f: &Flow| f.external;
    let mut inbound: Vec<Pkt> = vec![
        tcp(tcp_f.remote, ext(&tcp_f), tcp_flags::SYN | tcp_flags::ACK),
        tcp(tcp_f.remote, ext(&tcp_f), tcp_flags::ACK | tcp_flags::PSH).payload(b"HTTP/1.1 200 OK"),
        tcp(tcp_f.remote, ext(&tcp_f), tcp_flags::FIN | tcp_flags::ACK),
        tcp(tcp_f.remote, ext(&tcp_f), tcp_flags::RST),
        tcp(syn_f.remote, ext(&syn_f), tcp_flags::SYN | tcp_flags::ACK),
        tcp(ep(REMOTE2, 443), ep(EXTERNAL, PORTS.0 + 5), tcp_flags::SYN),
        Pkt::udp(udp_f.remote, ext(&udp_f)).payload(b"dns answer"),
        // To the mapping from a known address's other port (admitted) and
        // from an address it never sent to (filtered).
        Pkt::udp(ep(REMOTE, 5353), ext(&udp_f)).payload(b"known address"),
        Pkt::udp(ep(REMOTE2, 53), ext(&udp_f)).payload(b"stranger"),
        // To the port forwards.
        tcp(ep(REMOTE2, 5555), ep(EXTERNAL, FORWARD_TCP), tcp_flags::SYN),
        Pkt::udp(ep(REMOTE2, 6666), ep(EXTERNAL, FORWARD_UDP)).payload(b"forwarded"),
        Pkt::echo(REMOTE, EXTERNAL, false, ext(&echo_f).port()),
        Pkt::udp(udp_f.remote, ext(&udp_f))
            .payload(b"options")
            .ip_options(&[1, 1, 1, 0]),
    ];
    // Errors from a router about translated outbound packets.
    let outbound_tcp = tcp(ext(&tcp_f), tcp_f.remote, tcp_flags::ACK).payload(b"data");
    let outbound_echo = Pkt::echo(EXTERNAL, REMOTE, true, ext(&echo_f).port());
    let outbound_udp = Pkt::udp(ext(&udp_f), udp_f.remote).payload(b"q");
    for len in [usize::MAX, 28] {
        inbound.push(Pkt::icmp_error(
            ROUTER,
            EXTERNAL,
            ICMP_TIME_EXCEEDED,
            0,
            &outbound_tcp,
            len,
        ));
        inbound.push(Pkt::icmp_error(
            ROUTER,
            EXTERNAL,
            ICMP_DEST_UNREACH,
            4,
            &outbound_udp,
            len,
        ));
    }
    inbound.push(Pkt::icmp_error(
        ROUTER,
        EXTERNAL,
        ICMP_TIME_EXCEEDED,
        0,
        &outbound_echo,
        usize::MAX,
    ));
    frames.extend(
        inbound
            .iter()
            .map(|p| (Dir::In, p.clone().macs(OWN_INT_MAC, NEXT_HOP_MAC).frame())),
    );
    for f in Pkt::udp(udp_f.remote, ext(&udp_f))
        .payload(&[0xa5; 40])
        .fragments(16)
    {
        frames.push((Dir::In, f));
    }
    let reply = Pkt::udp(udp_f.remote, ext(&udp_f)).payload(b"tagged answer");
    frames.extend(
        tagged(&reply.macs(OWN_INT_MAC, NEXT_HOP_MAC).frame())
            .into_iter()
            .map(|f| (Dir::In, f)),
    );
    frames
}

/// `frame` under one 802.1Q tag, one 802.1ad tag, and both (QinQ).
fn tagged(frame: &[u8]) -> [Vec<u8>; 3] {
    [
        vlan_tagged(frame, ETHERTYPE_8021Q, 100),
        vlan_tagged(frame, ETHERTYPE_8021AD, 200),
        vlan_tagged(
            &vlan_tagged(frame, ETHERTYPE_8021Q, 100),
            ETHERTYPE_8021AD,
            200,
        ),
    ]
}
