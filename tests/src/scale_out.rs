//! The scale-out testbed: NAT nodes side by side behind an internal router
//! that spreads flows over them with a resilient nexthop group, and a server
//! beyond that routes each node's external address back to that node.
//!
//! ```text
//!  client ns          router ns                   node ns (one per node i)                      server ns
//!  veth-cl       <->  rt-cl 10.200.1.1/24
//!  10.200.1.2..       rt-n<i> 10.201.<i>.1/30 <-> veth-in 10.201.<i>.2/30
//!                                                 veth-ext 198.18.<10+i>.1/24          <->  sv-n<i> 198.18.<10+i>.2/24
//!                                                 + 198.19.0.<1+i>/32: the node's         lo 198.18.0.2 (the server)
//!                                                   external address, `nat load` here      198.19.0.<1+i>/32 via 198.18.<10+i>.1
//!                                                                                            src 198.18.0.2
//!                     default nhid 10: resilient group of nexthops 1.. (one per node),
//!                     fib_multipath_hash_policy=1 (addresses and L4 ports)
//! ```
//!
//! Each node owns its external address, so the server's route for that
//! address (what BGP would install on a real upstream router) brings every
//! reply back to the node that holds its session; no state is shared.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::command::{run, run_ignoring_failure};
use crate::nat_process::NatProcess;
use crate::topology::{
    CLIENT_IFACE, EXT_IFACE, INT_IFACE, INTERNAL_PREFIX, SERVER_IP, assert_valid_tag, ip_batch,
    remove_stale_namespaces,
};

/// The router's address on the client link: the clients' default gateway.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
/// The resilient nexthop group the router's default route points at.
pub const NEXTHOP_GROUP_ID: u32 = 10;
/// Hash buckets of the group: enough that each node's share moves in small steps.
pub const GROUP_BUCKETS: u16 = 64;
/// At most this many nodes: nexthop ids, link subnets and addresses are derived from the index.
pub const MAX_NODES: usize = 8;

const CLIENT_SUFFIX: &str = "cl";
const ROUTER_SUFFIX: &str = "rt";
const SERVER_SUFFIX: &str = "sv";
const NODE_SUFFIXES: [&str; MAX_NODES] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"];
const ROUTER_CLIENT_IFACE: &str = "rt-cl";
/// The last client address must stay inside the /25 (and away from the router's .1).
const MAX_CLIENT_ADDRS: u8 = 125;

#[derive(Debug, Clone, Copy)]
pub struct ScaleOutOpts {
    /// NAT nodes behind the router, 2..=[`MAX_NODES`].
    pub nodes: usize,
    /// Client addresses 10.200.1.2 ..= 10.200.1.(2 + n - 1), all inside [`INTERNAL_PREFIX`].
    pub client_addrs: u8,
    /// The group's `idle_timer`: a bucket unused this long may move to
    /// another node when the group is rebalanced (after a node is added
    /// back); a bucket in use stays where it is.
    pub idle_timer: Duration,
}

impl Default for ScaleOutOpts {
    fn default() -> Self {
        ScaleOutOpts {
            nodes: 2,
            client_addrs: 32,
            idle_timer: Duration::from_secs(5),
        }
    }
}

/// The namespaces of the module docs; deleted on drop.
#[derive(Debug)]
pub struct ScaleOut {
    client: String,
    router: String,
    server: String,
    nodes: Vec<String>,
    client_addrs: u8,
}

impl ScaleOut {
    /// Creates and wires the namespaces `nat-<tag>-<pid>-{cl,rt,n0,n1,...,sv}`.
    ///
    /// Testbeds alive at the same time in one process need distinct tags.
    pub fn new(tag: &str, opts: ScaleOutOpts) -> ScaleOut {
        assert_valid_tag(tag);
        assert!(
            (2..=MAX_NODES).contains(&opts.nodes),
            "a scale-out testbed has 2..={MAX_NODES} nodes, got {}",
            opts.nodes
        );
        assert!(
            (1..=MAX_CLIENT_ADDRS).contains(&opts.client_addrs),
            "client_addrs must be 1..={MAX_CLIENT_ADDRS} to stay inside {INTERNAL_PREFIX}, got {}",
            opts.client_addrs
        );
        let idle_timer = opts.idle_timer.as_secs();
        assert!(
            idle_timer >= 1 && u128::from(idle_timer) * 1000 == opts.idle_timer.as_millis(),
            "the group's idle_timer is whole seconds, at least 1: got {:?}",
            opts.idle_timer
        );
        let mut suffixes = vec![CLIENT_SUFFIX, ROUTER_SUFFIX, SERVER_SUFFIX];
        suffixes.extend_from_slice(&NODE_SUFFIXES);
        remove_stale_namespaces(tag, &suffixes);

        let pid = std::process::id();
        let name = |suffix: &str| format!("nat-{tag}-{pid}-{suffix}");
        // Built before anything is created, so that a panic halfway through
        // setup drops it and removes whatever part already exists.
        let testbed = ScaleOut {
            client: name(CLIENT_SUFFIX),
            router: name(ROUTER_SUFFIX),
            server: name(SERVER_SUFFIX),
            nodes: NODE_SUFFIXES[..opts.nodes]
                .iter()
                .map(|s| name(s))
                .collect(),
            client_addrs: opts.client_addrs,
        };
        for ns in testbed.namespaces() {
            if Path::new("/var/run/netns").join(ns).exists() {
                panic!(
                    "namespace {ns} already exists: two live testbeds in this process share the tag {tag:?}"
                );
            }
            run(Command::new("ip").args(["netns", "add", ns]));
        }
        testbed.wire(idle_timer);
        testbed
    }

    pub fn client_ns(&self) -> &str {
        &self.client
    }

    pub fn router_ns(&self) -> &str {
        &self.router
    }

    pub fn server_ns(&self) -> &str {
        &self.server
    }

    pub fn node_ns(&self, node: usize) -> &str {
        &self.nodes[node]
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The client's addresses, 10.200.1.2 first.
    pub fn client_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.client_addrs)
            .map(|i| Ipv4Addr::new(10, 200, 1, 2 + i))
            .collect()
    }

    /// The address node `node` translates to: 198.19.0.(1 + node).
    pub fn external_ip(&self, node: usize) -> Ipv4Addr {
        assert!(node < self.nodes.len(), "no node {node}");
        Ipv4Addr::new(198, 19, 0, 1 + node as u8)
    }

    /// Which node owns external address `ip`, if any.
    pub fn node_of(&self, ip: Ipv4Addr) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.external_ip(n) == ip)
    }

    /// Starts `nat load` on node `node`'s external interface with its own
    /// external address, the client prefix as internal, and `extra_args`.
    pub fn start_nat(&self, node: usize, extra_args: &[&str]) -> NatProcess {
        let external = self.external_ip(node).to_string();
        let mut args = vec!["--external", &external, "--internal", INTERNAL_PREFIX];
        args.extend_from_slice(extra_args);
        NatProcess::start_in(self.node_ns(node), EXT_IFACE, &args)
    }

    /// Makes the router's group exactly `nodes` (at least one), as an
    /// operator drains a node or takes it back. Buckets of a node that
    /// leaves move to the others at once; when a node joins, only buckets
    /// idle for `idle_timer` move to it.
    pub fn set_group(&self, nodes: &[usize]) {
        let weighted: Vec<(usize, u8)> = nodes.iter().map(|&n| (n, 1)).collect();
        self.set_group_weighted(&weighted);
    }

    /// [`set_group`](Self::set_group) with a weight (1..=255) per node.
    /// Lowering a node's weight drains it gently: its idle buckets move to
    /// the others, its busy ones stay until they have been idle for
    /// `idle_timer`.
    pub fn set_group_weighted(&self, nodes: &[(usize, u8)]) {
        assert!(!nodes.is_empty(), "a nexthop group needs a member");
        let members: Vec<String> = nodes
            .iter()
            .map(|&(n, weight)| {
                assert!(n < self.nodes.len(), "no node {n}");
                assert!(weight > 0, "nexthop weights are 1..=255");
                format!("{},{weight}", nexthop_id(n))
            })
            .collect();
        // The bucket count and timers are kept by a replace that leaves them out.
        run(Command::new("ip").args([
            "-n",
            &self.router,
            "nexthop",
            "replace",
            "id",
            &NEXTHOP_GROUP_ID.to_string(),
            "group",
            &members.join("/"),
            "type",
            "resilient",
        ]));
    }

    /// How many of the group's buckets point at each node now.
    pub fn buckets_per_node(&self) -> Vec<usize> {
        let out = run(Command::new("ip").args([
            "-j",
            "-n",
            &self.router,
            "nexthop",
            "bucket",
            "show",
            "id",
            &NEXTHOP_GROUP_ID.to_string(),
        ]));
        let buckets: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("`ip -j nexthop bucket show` printed invalid JSON ({e}): {out}")
        });
        let mut counts = vec![0; self.nodes.len()];
        for bucket in buckets.as_array().expect("a JSON array of buckets") {
            let nhid = bucket["bucket"]["nhid"]
                .as_u64()
                .unwrap_or_else(|| panic!("bucket without nhid: {bucket}"));
            let node = (0..self.nodes.len())
                .find(|&n| u64::from(nexthop_id(n)) == nhid)
                .unwrap_or_else(|| panic!("bucket points at unknown nexthop {nhid}"));
            counts[node] += 1;
        }
        counts
    }

    fn namespaces(&self) -> impl Iterator<Item = &String> {
        [&self.client, &self.router, &self.server]
            .into_iter()
            .chain(&self.nodes)
    }

    fn wire(&self, idle_timer: u64) {
        // Every veth pair is created in the router or a node namespace with
        // its peer placed straight into the other one, so the fixed
        // interface names never exist in the root namespace.
        let mut router_cmds = vec![
            format!(
                "link add {ROUTER_CLIENT_IFACE} type veth peer name {CLIENT_IFACE} netns {}",
                self.client
            ),
            format!("addr add {ROUTER_IP}/24 dev {ROUTER_CLIENT_IFACE}"),
            "link set lo up".to_owned(),
            format!("link set {ROUTER_CLIENT_IFACE} up"),
        ];
        for (n, node) in self.nodes.iter().enumerate() {
            let iface = router_node_iface(n);
            router_cmds.extend([
                format!("link add {iface} type veth peer name {INT_IFACE} netns {node}"),
                format!("addr add 10.201.{n}.1/30 dev {iface}"),
                format!("link set {iface} up"),
            ]);
        }
        ip_batch(&self.router, &router_cmds);

        let mut server_cmds = vec![
            format!("addr add {SERVER_IP}/32 dev lo"),
            "link set lo up".to_owned(),
        ];
        for (n, node) in self.nodes.iter().enumerate() {
            let ext_link = format!("198.18.{}", 10 + n);
            let external = self.external_ip(n);
            ip_batch(
                node,
                &[
                    format!(
                        "link add {EXT_IFACE} type veth peer name {} netns {}",
                        server_node_iface(n),
                        self.server
                    ),
                    format!("addr add 10.201.{n}.2/30 dev {INT_IFACE}"),
                    format!("addr add {ext_link}.1/24 dev {EXT_IFACE}"),
                    // Like a real gateway, the node holds its external address.
                    format!("addr add {external}/32 dev {EXT_IFACE}"),
                    "link set lo up".to_owned(),
                    format!("link set {INT_IFACE} up"),
                    format!("link set {EXT_IFACE} up"),
                    format!("route add 10.200.1.0/24 via 10.201.{n}.1"),
                    format!("route add default via {ext_link}.2"),
                ],
            );
            let iface = server_node_iface(n);
            server_cmds.extend([
                format!("addr add {ext_link}.2/24 dev {iface}"),
                format!("link set {iface} up"),
                // What BGP would install upstream: each pool toward its node.
                // The source hint makes a server on 0.0.0.0 (UDP) answer from
                // the address it was reached at, as the NAT expects.
                format!("route add {external}/32 via {ext_link}.1 src {SERVER_IP}"),
            ]);
            sysctl(
                node,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    &format!("net.ipv4.conf.{INT_IFACE}.rp_filter=0"),
                    &format!("net.ipv4.conf.{EXT_IFACE}.rp_filter=0"),
                ],
            );
        }
        ip_batch(&self.server, &server_cmds);

        let mut client_cmds: Vec<String> = self
            .client_ips()
            .iter()
            .map(|ip| format!("addr add {ip}/24 dev {CLIENT_IFACE}"))
            .collect();
        client_cmds.extend([
            "link set lo up".to_owned(),
            format!("link set {CLIENT_IFACE} up"),
            format!("route add default via {ROUTER_IP}"),
        ]);
        ip_batch(&self.client, &client_cmds);

        // Nexthops need their links up (carrier), so they come last.
        let mut nexthop_cmds: Vec<String> = (0..self.nodes.len())
            .map(|n| {
                format!(
                    "nexthop add id {} via 10.201.{n}.2 dev {}",
                    nexthop_id(n),
                    router_node_iface(n)
                )
            })
            .collect();
        let members: Vec<String> = (0..self.nodes.len())
            .map(|n| nexthop_id(n).to_string())
            .collect();
        nexthop_cmds.extend([
            format!(
                "nexthop add id {NEXTHOP_GROUP_ID} group {} type resilient buckets {GROUP_BUCKETS} idle_timer {idle_timer}",
                members.join("/")
            ),
            format!("route add default nhid {NEXTHOP_GROUP_ID}"),
        ]);
        ip_batch(&self.router, &nexthop_cmds);
        // Policy 1 hashes the L4 ports too, so the flows of one client
        // address spread over the nodes; rp_filter would refuse replies
        // arriving from a node other than the one the hash picks for the
        // way out.
        let mut router_settings = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            "net.ipv4.fib_multipath_hash_policy=1".to_owned(),
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            "net.ipv4.conf.default.rp_filter=0".to_owned(),
            format!("net.ipv4.conf.{ROUTER_CLIENT_IFACE}.rp_filter=0"),
        ];
        router_settings.extend(
            (0..self.nodes.len())
                .map(|n| format!("net.ipv4.conf.{}.rp_filter=0", router_node_iface(n))),
        );
        let router_settings: Vec<&str> = router_settings.iter().map(String::as_str).collect();
        sysctl(&self.router, &router_settings);
    }
}

impl Drop for ScaleOut {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            run_ignoring_failure(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

fn nexthop_id(node: usize) -> u32 {
    node as u32 + 1
}

fn router_node_iface(node: usize) -> String {
    format!("rt-n{node}")
}

fn server_node_iface(node: usize) -> String {
    format!("sv-n{node}")
}

fn sysctl(ns: &str, settings: &[&str]) {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
        .args(settings));
}
