//! What `nat load` chooses when the operator gives no tuning flags: the
//! ingress hook (`--ingress auto`) and the fast path's interfaces (the ones
//! the internal prefixes are routed through). Each choice comes with the
//! reason `nat load` prints.
//!
//! Interfaces are classified with the ethtool driver query on a socket of
//! the current network namespace, not through /sys/class/net, which shows
//! the namespace /sys was mounted in (the daemon enters its namespace with
//! setns and does not remount /sys).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

use crate::cli::{Cidr, IngressArg, LoadArgs};

/// Drivers of software interfaces: no wire behind them, so their frames may
/// carry partial checksums, and XDP on them copies every frame (veth) or
/// runs in generic mode.
const VIRTUAL_DRIVERS: &[&str] = &[
    "veth",
    "tun",
    "bridge",
    "dummy",
    "vxlan",
    "geneve",
    "macvlan",
    "macvtap",
    "ipvlan",
    "vrf",
    "wireguard",
    "netkit",
    "openvswitch",
    "gre",
    "ip_gre",
    "ipip",
    "sit",
    "bareudp",
    "nlmon",
];

/// How an interface is driven, as far as the hook choice cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Driver {
    pub name: String,
    /// A device on a bus (PCI, virtio, ...): frames come from a wire or a
    /// hypervisor's NIC model and carry complete checksums.
    pub wire: bool,
}

impl Driver {
    pub fn of(driver: &str, bus_info: &str) -> Driver {
        Driver {
            name: driver.to_owned(),
            wire: !bus_info.is_empty() && !VIRTUAL_DRIVERS.contains(&driver),
        }
    }
}

/// Interfaces (comma-separated) that count as having a wire behind them
/// whatever their driver says: no interface a network namespace can make
/// has one, and the tests need `--ingress auto` to choose XDP.
pub const ASSUME_WIRE_ENV: &str = "NAT_ASSUME_WIRE";

/// The driver of `iface` (ETHTOOL_GDRVINFO), in the calling thread's
/// network namespace. An interface without ethtool support (loopback, some
/// tunnels) counts as virtual, unless [`ASSUME_WIRE_ENV`] names it.
pub fn driver(iface: &str) -> Result<Driver> {
    let mut found = queried_driver(iface)?;
    found.wire |=
        std::env::var(ASSUME_WIRE_ENV).is_ok_and(|names| names.split(',').any(|n| n == iface));
    Ok(found)
}

fn queried_driver(iface: &str) -> Result<Driver> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        bail!("'{iface}' is not an interface name");
    }
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        ..EthtoolDrvinfo::default()
    };
    // SAFETY: ifreq is a plain C struct; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: `req` points at a valid ethtool_drvinfo for this ioctl.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODEV) {
            bail!("no interface named '{iface}'");
        }
        return Ok(Driver::of("", ""));
    }
    Ok(Driver::of(&c_str(&info.driver), &c_str(&info.bus_info)))
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` of linux/ethtool.h.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

impl Default for EthtoolDrvinfo {
    fn default() -> Self {
        // SAFETY: integers and byte arrays only; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The hook replies are translated in, and the fast path runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// `--ingress auto`: XDP only where every interface the NAT runs on is
/// driven by a device with a wire behind it (complete checksums, no copy
/// into an XDP buffer); TC everywhere else. Whether the driver runs XDP
/// natively is only known by attaching: the loader falls back to TC, not to
/// generic XDP, when a native attach is refused under `auto`.
pub fn choose_hook(external: (&str, &Driver), fast: &[(&str, Driver)]) -> (Hook, String) {
    if let Some((name, d)) = std::iter::once(external)
        .chain(fast.iter().map(|(n, d)| (*n, d)))
        .find(|(_, d)| !d.wire)
    {
        let kind = if d.name.is_empty() {
            "a virtual interface".to_owned()
        } else {
            format!("a {} interface", d.name)
        };
        return (
            Hook::Tc,
            format!(
                "{name} is {kind}: TC accepts its partial checksums and avoids XDP's per-frame copy and batching latency"
            ),
        );
    }
    (
        Hook::Xdp,
        format!(
            "{} ({}) has a wire behind it: XDP translates before the stack allocates anything",
            external.0, external.1.name
        ),
    )
}

/// The hook an explicit `--ingress` names, or `None` for `auto`.
pub fn explicit_hook(arg: IngressArg) -> Option<Hook> {
    match arg {
        IngressArg::Xdp => Some(Hook::Xdp),
        IngressArg::Tc => Some(Hook::Tc),
        IngressArg::Auto => None,
    }
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dst: Ipv4Addr,
    pub len: u8,
}

/// Parses /proc/net/route (the main table of the reader's namespace):
/// destination and mask are the raw network-order words printed in hex.
pub fn parse_routes(text: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dst, mask) = (f.first()?, word(f.get(1)?)?, word(f.get(7)?)?);
            // Unreachable, blackhole and prohibit routes name no interface.
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || *iface == "*" {
                return None;
            }
            let mask = u32::from_be_bytes(mask);
            Some(Route {
                iface: (*iface).to_owned(),
                dst: Ipv4Addr::from(dst),
                len: mask.count_ones() as u8,
            })
        })
        .collect()
}

/// The interfaces through which any internal prefix is routed, without the
/// external one and loopback, in the order of the routing table. A prefix
/// is routed by the routes inside it and by the longest route that holds
/// it whole; a wider route that a longer one shadows (a management 10/8, a
/// VPN's 0/1) routes none of it. Default routes never count.
pub fn internal_interfaces(routes: &[Route], internal: &[Cidr], external: &str) -> Vec<String> {
    let mask = |len: u8| if len == 0 { 0 } else { u32::MAX << (32 - len) };
    // `outer` holds `inner` whole.
    let holds = |outer: (Ipv4Addr, u8), inner: (Ipv4Addr, u8)| {
        outer.1 <= inner.1
            && u32::from(outer.0) & mask(outer.1) == u32::from(inner.0) & mask(outer.1)
    };
    let mut out: Vec<String> = Vec::new();
    for c in internal {
        let prefix = (c.addr, c.len);
        let longest_holder = routes
            .iter()
            .filter(|r| r.len > 0 && holds((r.dst, r.len), prefix))
            .max_by_key(|r| r.len);
        let routing = routes
            .iter()
            .filter(|r| r.len > c.len && holds(prefix, (r.dst, r.len)))
            .chain(longest_holder);
        for r in routing {
            if r.iface != external && r.iface != "lo" && !out.contains(&r.iface) {
                out.push(r.iface.clone());
            }
        }
    }
    out
}

/// The fast path's interfaces when the operator named none: those the
/// internal prefixes are routed through, read from the routing table now.
/// With XDP only interfaces with a wire qualify: an XDP rewrite of a frame
/// with a partial checksum would send it out wrong.
pub fn fast_path_auto(
    internal: &[Cidr],
    external: &str,
    hook: Hook,
) -> Result<(Vec<String>, String)> {
    let text = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| anyhow::anyhow!("cannot read the routing table (/proc/net/route): {e}"))?;
    let routed = internal_interfaces(&parse_routes(&text), internal, external);
    if routed.is_empty() {
        return Ok((
            Vec::new(),
            "fast path off: no route toward the internal prefixes leaves by another interface"
                .to_owned(),
        ));
    }
    let mut take = Vec::new();
    let mut skipped = Vec::new();
    for name in routed {
        if hook == Hook::Xdp && !driver(&name)?.wire {
            skipped.push(name);
        } else {
            take.push(name);
        }
    }
    let mut why = if take.is_empty() {
        "fast path off".to_owned()
    } else {
        format!(
            "fast path on {} (the internal prefixes are routed there)",
            take.join(",")
        )
    };
    if !skipped.is_empty() {
        why.push_str(&format!(
            "; not on {} (virtual: XDP needs complete checksums; use --ingress tc)",
            skipped.join(",")
        ));
    }
    Ok((take, why))
}

/// Settles `--ingress auto` and the fast path's interfaces in `args` (the
/// explicit flags stay as given) and returns the lines `nat load` prints
/// about what it chose and why.
pub fn resolve(args: &mut LoadArgs) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let explicit = explicit_hook(args.ingress);
    if args.fast_path.is_empty() && !args.no_fast_path {
        // An explicit XDP drops virtual candidates; under auto they decide the hook.
        let (fast, why) =
            fast_path_auto(&args.internal, &args.iface, explicit.unwrap_or(Hook::Tc))?;
        args.fast_path = fast;
        notes.push(why);
    }
    if explicit.is_none() {
        let external = driver(&args.iface)?;
        let fast = args
            .fast_path
            .iter()
            .map(|n| Ok((n.as_str(), driver(n)?)))
            .collect::<Result<Vec<_>>>()?;
        let (hook, why) = choose_hook((&args.iface, &external), &fast);
        args.ingress = match hook {
            Hook::Xdp => IngressArg::Xdp,
            Hook::Tc => IngressArg::Tc,
        };
        args.tc_unless_native_xdp = hook == Hook::Xdp;
        notes.insert(0, format!("ingress {}: {why}", ingress_name(hook)));
    }
    Ok(notes)
}

fn ingress_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        veth-ext\t00000000\t020012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        veth-in\t0001C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        veth-ext\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth2\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n\
        *\t0000000A\t00000000\t0201\t0\t0\t0\t000000FF\t0\t0\t0\n\
        eth3\t0000800A\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    fn cidr(a: [u8; 4], len: u8) -> Cidr {
        Cidr {
            addr: Ipv4Addr::from(a),
            len,
        }
    }

    #[test]
    fn routes_parse_from_network_order_words() {
        let r = parse_routes(ROUTES);
        // The unreachable route (no interface) and the route that is down are left out.
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[1],
            Route {
                iface: "veth-in".into(),
                dst: Ipv4Addr::new(10, 200, 1, 0),
                len: 24
            }
        );
        assert_eq!(r[0].len, 0);
        assert_eq!(r[3].dst, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(r[3].len, 8);
    }

    #[test]
    fn internal_interfaces_are_the_routes_overlapping_a_prefix() {
        let r = parse_routes(ROUTES);
        // 10.200.1.0/25 lies inside veth-in's /24, which shadows eth2's 10/8.
        assert_eq!(
            internal_interfaces(&r, &[cidr([10, 200, 1, 0], 25)], "veth-ext"),
            ["veth-in"]
        );
        // 10/8 is routed through eth2, and its /24 through veth-in.
        assert_eq!(
            internal_interfaces(&r, &[cidr([10, 0, 0, 0], 8)], "veth-ext"),
            ["veth-in", "eth2"]
        );
        // The default route and the external interface never count.
        assert!(internal_interfaces(&r, &[cidr([198, 18, 0, 0], 24)], "veth-ext").is_empty());
        assert!(internal_interfaces(&r, &[cidr([172, 16, 0, 0], 12)], "veth-ext").is_empty());
    }

    #[test]
    fn hook_is_xdp_only_when_every_interface_has_a_wire() {
        let nic = Driver::of("ixgbe", "0000:03:00.0");
        let veth = Driver::of("veth", "");
        let virtio = Driver::of("virtio_net", "virtio0");
        assert_eq!(choose_hook(("eth0", &nic), &[]).0, Hook::Xdp);
        assert_eq!(
            choose_hook(("eth0", &nic), &[("eth1", virtio.clone())]).0,
            Hook::Xdp
        );
        let (hook, why) = choose_hook(("eth0", &nic), &[("veth1", veth.clone())]);
        assert_eq!(hook, Hook::Tc);
        assert!(why.contains("veth1 is a veth interface"), "{why}");
        assert_eq!(choose_hook(("veth-ext", &veth), &[]).0, Hook::Tc);
        // No bus behind it: virtual, whatever the driver is called.
        assert!(!Driver::of("mydrv", "").wire);
    }
}
