//! The three-namespace testbed: client — nat — server, joined by two veth pairs.
//!
//! ```text
//!  client ns                 nat ns                          server ns
//!  veth-cl 10.200.1.2..  <-> veth-in 10.200.1.1
//!          10.200.1.200      veth-ext 198.18.0.1        <->  veth-sv 198.18.0.2
//! ```
//!
//! Addresses are the same in every topology: the namespaces isolate them, so
//! only the namespace names need to be unique.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::command::{run, run_ignoring_failure, run_with_stdin};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
pub const NAT_INTERNAL_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// On the client's link but outside [`INTERNAL_PREFIX`]: the NAT must leave it alone.
pub const OUTSIDE_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 200);
pub const INTERNAL_PREFIX: &str = "10.200.1.0/25";
pub const EXT_IFACE: &str = "veth-ext";
pub const INT_IFACE: &str = "veth-in";
pub const CLIENT_IFACE: &str = "veth-cl";
pub const SERVER_IFACE: &str = "veth-sv";

/// Whether `ip` lies in [`INTERNAL_PREFIX`], i.e. whether the NAT translates it.
pub fn in_internal_prefix(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    (a, b, c) == (10, 200, 1) && d < 128
}

/// The last client address must stay inside the /25 (and away from the NAT's .1).
const MAX_CLIENT_ADDRS: u8 = 125;

#[derive(Debug, Clone, Copy)]
pub struct TopologyOpts {
    /// How many addresses inside the internal prefix the client gets,
    /// starting at [`CLIENT_IP`]: 10.200.1.2 ..= 10.200.1.(2 + n - 1).
    pub client_addrs: u8,
    /// `false` turns off checksum offloads, GSO, TSO and GRO on all veth ends,
    /// so every packet reaches the NAT with a fully computed checksum. `true`
    /// keeps the veth defaults, under which locally generated packets carry
    /// CHECKSUM_PARTIAL checksums.
    pub offloads: bool,
    /// `true` makes client and server behave like hosts behind real NICs:
    /// they compute checksums themselves (transmit checksum offload off) and
    /// receive through NAPI (GRO on). The XDP fast path between veth
    /// interfaces needs both: complete checksums, and peers that accept
    /// redirected frames.
    pub wire_hosts: bool,
}

impl Default for TopologyOpts {
    /// Eight client addresses, offloads as the kernel leaves them.
    fn default() -> Self {
        TopologyOpts {
            client_addrs: 8,
            offloads: true,
            wire_hosts: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Nat,
    Server,
}

const SIDES: [(Side, &str); 3] = [
    (Side::Client, "cl"),
    (Side::Nat, "nat"),
    (Side::Server, "sv"),
];

/// Three namespaces wired as described in the module docs; deleted on drop.
#[derive(Debug)]
pub struct Topology {
    tag: String,
    names: [String; 3],
    client_addrs: u8,
}

impl Topology {
    /// Creates and wires the namespaces `nat-<tag>-<pid>-{cl,nat,sv}`.
    ///
    /// Topologies alive at the same time in one process need distinct tags.
    pub fn new(tag: &str, opts: TopologyOpts) -> Topology {
        assert_valid_tag(tag);
        assert!(
            (1..=MAX_CLIENT_ADDRS).contains(&opts.client_addrs),
            "client_addrs must be 1..={MAX_CLIENT_ADDRS} to stay inside {INTERNAL_PREFIX}, got {}",
            opts.client_addrs
        );
        remove_stale_namespaces(tag, &SIDES.map(|(_, suffix)| suffix));

        // Built before anything is created, so that a panic halfway through
        // setup drops it and removes whatever part already exists.
        let topology = Topology {
            tag: tag.to_owned(),
            names: Self::namespace_names(tag),
            client_addrs: opts.client_addrs,
        };
        for name in &topology.names {
            if Path::new("/var/run/netns").join(name).exists() {
                panic!(
                    "namespace {name} already exists: two live topologies in this process share the tag {tag:?}"
                );
            }
            run(Command::new("ip").args(["netns", "add", name]));
        }
        topology.wire(opts);
        topology
    }

    /// The namespace names a topology with `tag` has in this process, whether
    /// or not it exists: lets a signal handler clean up without the value.
    pub fn namespace_names(tag: &str) -> [String; 3] {
        let pid = std::process::id();
        SIDES.map(|(_, suffix)| format!("nat-{tag}-{pid}-{suffix}"))
    }

    pub fn ns_name(&self, side: Side) -> &str {
        let index = SIDES
            .iter()
            .position(|(s, _)| *s == side)
            .expect("every side has a name");
        &self.names[index]
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Gives `side` one more address in the /24 of its interface (the
    /// NAT's external one): a second pool address, another server.
    pub fn add_address(&self, side: Side, addr: Ipv4Addr) {
        let iface = match side {
            Side::Client => CLIENT_IFACE,
            Side::Nat => EXT_IFACE,
            Side::Server => SERVER_IFACE,
        };
        ip_batch(
            self.ns_name(side),
            &[format!("addr add {addr}/24 dev {iface}")],
        );
    }

    /// `ip route ROUTE` in `side`'s namespace (for example `del
    /// 10.200.1.0/24 dev veth-in`).
    pub fn route(&self, side: Side, route: &str) {
        ip_batch(self.ns_name(side), &[format!("route {route}")]);
    }

    /// The client's addresses inside the internal prefix, [`CLIENT_IP`] first.
    pub fn client_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.client_addrs)
            .map(|i| Ipv4Addr::new(10, 200, 1, 2 + i))
            .collect()
    }

    fn wire(&self, opts: TopologyOpts) {
        let client = self.ns_name(Side::Client);
        let nat = self.ns_name(Side::Nat);
        let server = self.ns_name(Side::Server);

        // Both pairs are created inside the nat namespace with the peer placed
        // straight into its own namespace, so the fixed interface names never
        // exist in the root namespace, where parallel topologies would collide.
        ip_batch(
            nat,
            &[
                format!("link add {INT_IFACE} type veth peer name {CLIENT_IFACE} netns {client}"),
                format!("link add {EXT_IFACE} type veth peer name {SERVER_IFACE} netns {server}"),
                format!("addr add {NAT_INTERNAL_IP}/24 dev {INT_IFACE}"),
                format!("addr add {EXTERNAL_IP}/24 dev {EXT_IFACE}"),
                "link set lo up".to_owned(),
                format!("link set {INT_IFACE} up"),
                format!("link set {EXT_IFACE} up"),
            ],
        );

        let mut client_cmds: Vec<String> = self
            .client_ips()
            .iter()
            .chain([&OUTSIDE_CLIENT_IP])
            .map(|ip| format!("addr add {ip}/24 dev {CLIENT_IFACE}"))
            .collect();
        client_cmds.extend([
            "link set lo up".to_owned(),
            format!("link set {CLIENT_IFACE} up"),
            format!("route add default via {NAT_INTERNAL_IP}"),
        ]);
        ip_batch(client, &client_cmds);

        // Only the upper half of the client's /24 is routable from the server:
        // a reply can reach OUTSIDE_CLIENT_IP untranslated, but a leak of an
        // untranslated internal address gets no answer.
        ip_batch(
            server,
            &[
                format!("addr add {SERVER_IP}/24 dev {SERVER_IFACE}"),
                "link set lo up".to_owned(),
                format!("link set {SERVER_IFACE} up"),
                format!("route add 10.200.1.128/25 via {EXTERNAL_IP}"),
            ],
        );

        // A fresh namespace does not forward, and reverse-path filtering would
        // drop the asymmetric traffic that some tests deliberately create.
        run(Command::new("ip").args([
            "netns",
            "exec",
            nat,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            &format!("net.ipv4.conf.{INT_IFACE}.rp_filter=0"),
            &format!("net.ipv4.conf.{EXT_IFACE}.rp_filter=0"),
        ]));

        if !opts.offloads {
            for (ns, iface) in [
                (client, CLIENT_IFACE),
                (nat, INT_IFACE),
                (nat, EXT_IFACE),
                (server, SERVER_IFACE),
            ] {
                run(Command::new("ip").args([
                    "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off", "rx", "off", "gso",
                    "off", "tso", "off", "gro", "off",
                ]));
            }
        }
        if opts.wire_hosts {
            for (ns, iface) in [(client, CLIENT_IFACE), (server, SERVER_IFACE)] {
                run(Command::new("ip").args([
                    "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off", "gro", "on",
                ]));
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in &self.names {
            run_ignoring_failure(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

/// Namespace names embed the tag: it must be short and free of separators
/// other than `-` and `_`.
pub(crate) fn assert_valid_tag(tag: &str) {
    assert!(
        !tag.is_empty()
            && tag.len() <= 64
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "topology tag {tag:?} must be 1-64 characters of [A-Za-z0-9_-]"
    );
}

/// Runs `ip -n <ns> -batch -` over `commands`, one per line.
pub(crate) fn ip_batch(ns: &str, commands: &[String]) {
    let mut script = commands.join("\n");
    script.push('\n');
    run_with_stdin(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(&script),
    );
}

/// Deletes namespaces `nat-<tag>-<pid>-<suffix>` of earlier runs whose
/// process is gone (a test run that was killed never ran `Drop`). Namespaces
/// of live processes are left alone: they may be a parallel run using the
/// same tag.
pub(crate) fn remove_stale_namespaces(tag: &str, suffixes: &[&str]) {
    let listing = run(Command::new("ip").args(["netns", "list"]));
    let prefix = format!("nat-{tag}-");
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some((pid, suffix)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if suffixes.contains(&suffix) && !Path::new(&format!("/proc/{pid}")).exists() {
            run_ignoring_failure(Command::new("ip").args(["netns", "del", name]));
        }
    }
}
