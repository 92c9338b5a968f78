//! Network-namespace testbed for the NAT.
//!
//! A [`Topology`] wires three namespaces together (client — nat — server), a
//! [`NatProcess`] runs the `nat` binary inside the nat namespace, and the
//! server/traffic helpers move verifiable TCP and UDP payloads across it.
//!
//! Everything here panics on setup failure: it is test infrastructure, and a
//! panic with a clear message is the most useful report a test can give.
//! Traffic helpers return `Result<_, String>` instead, because a failed
//! transfer is the thing a test usually asserts on.

mod command;
mod lock;
mod nat_process;
mod netns;
mod protocol;
mod servers;
mod sockets;
mod topology;
mod traffic;

pub use nat_process::{ATTACH_TIMEOUT_ENV, NatProcess, nat_bin, nat_cmd, nat_json};
pub use netns::{run_in_ns, spawn_in_ns};
pub use servers::{ServerHandle, tcp_sink_server, udp_echo_server};
pub use topology::{
    CLIENT_IFACE, CLIENT_IP, EXT_IFACE, EXTERNAL_IP, INT_IFACE, INTERNAL_PREFIX, NAT_INTERNAL_IP,
    OUTSIDE_CLIENT_IP, SERVER_IFACE, SERVER_IP, Side, Topology, TopologyOpts, in_internal_prefix,
};
pub use traffic::{concurrent_tcp, tcp_exchange, tcp_transfer, udp_exchange, udp_roundtrip};

/// Re-exported so tests can inspect [`nat_json`] output without their own dependency.
pub use serde_json;
