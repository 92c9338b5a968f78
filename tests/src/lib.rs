//! Network-namespace testbed for the NAT.
//!
//! A [`Topology`] wires three namespaces together (client — nat — server), a
//! [`ScaleOut`] puts several NAT nodes behind a multipath router, a
//! [`NatProcess`] runs the `nat` binary inside a nat namespace, and the
//! server/traffic helpers move verifiable TCP and UDP payloads across it.
//! [`packet`] builds frames with independently computed checksums for the
//! datapath fixtures; [`fixture`] runs the real programs on them through
//! BPF_PROG_TEST_RUN and [`fuzz`] drives mutated frames through it with an
//! oracle (both behind the default `datapath` feature). [`interrupt`] removes
//! a testbed when the program that built it (the demo, the bench) gets a
//! termination signal. [`collectors`] runs the real decoders of the
//! compliance export (tshark, nfcapd and nfdump) and [`event_ring`] writes
//! events into a running daemon's event ring buffer as the datapath does.
//!
//! Everything here panics on setup failure: it is test infrastructure, and a
//! panic with a clear message is the most useful report a test can give.
//! Traffic helpers return `Result<_, String>` instead, because a failed
//! transfer is the thing a test usually asserts on.

pub mod collectors;
mod command;
#[cfg(feature = "datapath")]
pub mod event_ring;
#[cfg(feature = "datapath")]
pub mod fixture;
#[cfg(feature = "datapath")]
pub mod fuzz;
pub mod interrupt;
mod lock;
mod nat_process;
mod netns;
mod paced;
pub mod packet;
mod proc_net;
mod protocol;
pub mod raw;
mod scale_out;
mod servers;
mod sockets;
mod topology;
mod traffic;

pub use nat_process::{
    ATTACH_TIMEOUT_ENV, NatProcess, nat_bench_bin, nat_bin, nat_cmd, nat_cmd_in, nat_json,
    nat_json_in, unload_instance,
};
pub use netns::{run_in_ns, spawn_in_ns};
pub use paced::{PacedFlows, PacedReport};
pub use proc_net::{PAWS_TIMEWAIT, proc_net_counter, tcp_ext};
pub use scale_out::{
    GROUP_BUCKETS, MAX_NODES, NEXTHOP_GROUP_ID, ROUTER_IP, ScaleOut, ScaleOutOpts,
};
pub use servers::{
    ServerHandle, short_connection_server, tcp_closing_server, tcp_echo_server, tcp_sink_server,
    udp_echo_server,
};
pub use topology::{
    CLIENT_IFACE, CLIENT_IP, EXT_IFACE, EXTERNAL_IP, INT_IFACE, INTERNAL_PREFIX, NAT_INTERNAL_IP,
    OUTSIDE_CLIENT_IP, SERVER_IFACE, SERVER_IP, Side, Topology, TopologyOpts, in_internal_prefix,
};
pub use traffic::{
    EchoConnection, concurrent_tcp, concurrent_tcp_server_closes, short_connection,
    short_connection_burst, tcp_exchange, tcp_transfer, udp_exchange, udp_roundtrip,
};

/// Re-exported so tests can inspect [`nat_json`] output without their own dependency.
pub use serde_json;
