//! `nat load`: attach, pin, populate, reap until stopped, then clean up.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    io::Write as _,
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{Array, DevMapHash, HashMap, LpmTrie, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use log::{info, warn};
use nat_common::{
    config::{Config, MAX_POOL, PoolAddr},
    names::{
        GLOBAL_EXT_ADDR, GLOBAL_EXT_ADDRS, GLOBAL_EXT_IFINDEX, GLOBAL_FAST_PATH, GLOBAL_HASH_SEED,
        LINK_EGRESS, LINK_FAST_PREFIX, LINK_INGRESS, MAP_CONFIG, MAP_COOLDOWN, MAP_EXT_ADDRS,
        MAP_FAST_DEVS, MAP_FRAGS, MAP_FWD, MAP_IF_MACS, MAP_INTERNAL, MAP_POOL, MAP_PROBES,
        MAP_REJECTS, MAP_REV, MAP_STATS, PROG_EGRESS, PROG_FAST, PROG_FAST_TC, PROG_INGRESS,
        PROG_INGRESS_TC,
    },
    probe::{span, stride_for},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cidr, IngressArg, LoadArgs, PortRange, XdpModeArg},
    pidfile, pins,
    pins::PinDir,
    reaper, reject, settings,
    tables::{Tables, boot_ns},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat-ebpf"));

/// Every map the instance pins.
pub const PINNED_MAPS: [&str; 9] = [
    MAP_FWD,
    MAP_REV,
    MAP_COOLDOWN,
    MAP_FRAGS,
    MAP_CONFIG,
    MAP_POOL,
    MAP_INTERNAL,
    MAP_STATS,
    MAP_PROBES,
];
/// Every link the instance pins.
pub const PINNED_LINKS: [&str; 2] = [LINK_EGRESS, LINK_INGRESS];

pub async fn run(args: LoadArgs, netns: Option<&str>) -> Result<()> {
    // Installed first: a signal during startup is then handled by the loop
    // below, after everything created so far can be removed again.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    pins::require_bpffs()?;
    writeln!(std::io::stdout(), "{}", crate::kernel::probe()?.summary())?;
    let scope = netns
        .map(|ns| format!(" in network namespace {ns}"))
        .unwrap_or_default();
    let ifindex = |name: &str| {
        nix::net::if_::if_nametoindex(name)
            .map_err(|_| anyhow::anyhow!("no interface named '{name}'{scope}"))
    };
    let ext_ifindex = ifindex(&args.iface)?;
    let fast = fast_path_interfaces(&args, ifindex)?;
    if args.external.len() > MAX_POOL as usize {
        bail!(
            "at most {MAX_POOL} external addresses are supported, {} given",
            args.external.len()
        );
    }
    if let Some((addr, cidr)) = args.external.iter().find_map(|a| {
        args.internal
            .iter()
            .find(|c| c.contains(*a))
            .map(|c| (a, c))
    }) {
        bail!(
            "external address {addr} lies inside internal prefix {}/{}: its own traffic would be translated",
            cidr.addr,
            cidr.len
        );
    }
    let pins = PinDir::new(netns, &args.iface);
    if pins.is_loaded()
        || PINNED_LINKS.iter().any(|l| pins.path(l).exists())
        || !pins.fast_links().is_empty()
    {
        bail!(
            "a NAT is already loaded on {}{scope} (pins in {}); stop it, or run `nat unload --iface {}` if it crashed",
            args.iface,
            pins.dir.display(),
            args.iface
        );
    }
    warn_ephemeral_overlap(args.ports.lo, args.ports.hi);

    std::fs::create_dir_all(&pins.dir)
        .with_context(|| format!("cannot create {}", pins.dir.display()))?;
    let mut instance = Instance {
        pins,
        links: Vec::new(),
    };
    let globals = Globals {
        ext_ifindex,
        fast_path: !fast.is_empty(),
        ext_addr: args.external.first().map_or(0, |a| u32::from(*a).to_be()),
        ext_addrs: args.external.len() as u32,
    };
    let mut ebpf = load_object(args.max_sessions, args.max_cooldowns, globals)?;
    for name in PINNED_MAPS {
        let map = ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))?;
        map.pin(instance.pins.path(name)).with_context(|| {
            format!(
                "cannot pin map {name} at {}",
                instance.pins.path(name).display()
            )
        })?;
    }
    let mut cfg = Config {
        pool_len: args.external.len() as u32,
        ..Config::default()
    };
    for (name, value) in args.settings.given() {
        if let Some(v) = value {
            settings::find(name)
                .map_err(anyhow::Error::msg)?
                .apply(&mut cfg, v);
        }
    }
    populate(&mut ebpf, &args.internal, &args.external, args.ports, cfg)?;
    let mode = attach(&mut ebpf, &args, &mut instance)?;
    attach_fast_path(&mut ebpf, &args, ext_ifindex, &fast, &mut instance)?;
    pidfile::write(netns, &args.iface)?;

    let mut tables = Tables::from_ebpf(&mut ebpf)?;
    let _responder = reject::spawn(
        ebpf.take_map(MAP_REJECTS)
            .context("map NAT_REJECTS missing from the object")?,
    )?;
    let external: Vec<String> = args.external.iter().map(Ipv4Addr::to_string).collect();
    let mut stdout = std::io::stdout();
    let fast_note = if fast.is_empty() {
        String::new()
    } else {
        format!(", fast path on {}", args.fast_path.join(","))
    };
    writeln!(
        stdout,
        "nat: attached to {}{scope} (external {}, ports {}-{}, ingress {mode}{fast_note}); pins in {}",
        args.iface,
        external.join(","),
        args.ports.lo,
        args.ports.hi,
        instance.pins.dir.display()
    )?;
    stdout.flush()?;

    let mut tick = tokio::time::interval(Duration::from_millis(args.reap_interval_ms));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                match reaper::sweep(&mut tables, boot_ns()) {
                    Ok(s) if s.kept > 0 => warn!(
                        "reaper: {} expired sessions kept: the cooldown map is full (raise --max-cooldowns)",
                        s.kept
                    ),
                    Ok(s) if s.expired > 0 || s.cooled > 0 => info!(
                        "reaper: {} of {} sessions expired, {} cooldowns ended",
                        s.expired, s.scanned, s.cooled
                    ),
                    Ok(_) => {}
                    Err(e) => warn!("reaper: {e:#}"),
                }
            }
        }
    }
    info!("stopping: detaching from {}", args.iface);
    drop(tables);
    instance.remove()?;
    pidfile::remove(netns, &args.iface);
    drop(ebpf);
    writeln!(std::io::stdout(), "nat: detached from {}", args.iface)?;
    Ok(())
}

/// Load-time constants of the programs besides the hash seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Globals {
    pub ext_ifindex: u32,
    pub fast_path: bool,
    /// The first external address, in network byte order.
    pub ext_addr: u32,
    pub ext_addrs: u32,
}

/// Loads the embedded object (programs not yet loaded into the kernel).
pub fn load_object(max_sessions: u32, max_cooldowns: u32, globals: Globals) -> Result<Ebpf> {
    // A per-load secret: which port a flow gets must not be predictable from outside.
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32;
    EbpfLoader::new()
        // Statistics and the verifier's own messages, not the instruction
        // trace: a rejection then costs one more verifier run and shows its
        // reason, where the trace (tens of MB for nat_egress) overflows every
        // buffer aya retries with, hiding the reason after up to 10 more runs
        // (an hour under TCG).
        .verifier_log_level(VerifierLogLevel::STATS)
        .override_global(GLOBAL_HASH_SEED, &seed, true)
        .override_global(GLOBAL_EXT_IFINDEX, &globals.ext_ifindex, true)
        .override_global(GLOBAL_FAST_PATH, &u32::from(globals.fast_path), true)
        .override_global(GLOBAL_EXT_ADDR, &globals.ext_addr, true)
        .override_global(GLOBAL_EXT_ADDRS, &globals.ext_addrs, true)
        .map_max_entries(MAP_FWD, max_sessions)
        .map_max_entries(MAP_REV, max_sessions)
        .map_max_entries(MAP_COOLDOWN, max_cooldowns)
        .load(EBPF_OBJECT)
        .context("cannot load the kernel programs (root with CAP_BPF and CAP_NET_ADMIN and a kernel with BTF are needed)")
}

/// Fills the prefix, pool and config maps.
pub fn populate(
    ebpf: &mut Ebpf,
    internal: &[Cidr],
    external: &[Ipv4Addr],
    ports: PortRange,
    cfg: Config,
) -> Result<()> {
    let mut prefixes: LpmTrie<_, u32, u8> = ebpf
        .map_mut(MAP_INTERNAL)
        .context("internal map")?
        .try_into()?;
    for cidr in internal {
        prefixes
            .insert(
                &Key::new(cidr.len.into(), u32::from(cidr.addr).to_be()),
                1,
                0,
            )
            .with_context(|| format!("cannot add internal prefix {}/{}", cidr.addr, cidr.len))?;
    }
    let mut addrs: HashMap<_, u32, u32> = ebpf
        .map_mut(MAP_EXT_ADDRS)
        .context("external address map")?
        .try_into()?;
    for (i, addr) in external.iter().enumerate() {
        addrs
            .insert(u32::from(*addr).to_be(), i as u32, 0)
            .context("cannot fill the external address map")?;
    }
    let mut pool: Array<_, PoolAddr> = ebpf.map_mut(MAP_POOL).context("pool map")?.try_into()?;
    let span = span(ports.lo, ports.hi);
    for (i, addr) in external.iter().enumerate() {
        let entry = PoolAddr {
            addr: u32::from(*addr).to_be(),
            port_min: ports.lo,
            port_max: ports.hi,
            step: stride_for(span),
            _pad: 0,
        };
        pool.set(i as u32, entry, 0)
            .context("cannot fill the pool map")?;
    }
    let mut config: Array<_, Config> =
        ebpf.map_mut(MAP_CONFIG).context("config map")?.try_into()?;
    config
        .set(0, cfg, 0)
        .context("cannot write the config map")?;
    Ok(())
}

/// Attaches both programs through bpf links and pins the links, so the
/// datapath does not depend on this process holding file descriptors.
fn attach(ebpf: &mut Ebpf, args: &LoadArgs, instance: &mut Instance) -> Result<&'static str> {
    let egress: &mut SchedClassifier = ebpf
        .program_mut(PROG_EGRESS)
        .context("egress program missing from the object")?
        .try_into()?;
    egress
        .load()
        .context("the kernel rejected the egress program")?;
    attach_tcx(
        egress,
        &args.iface,
        TcAttachType::Egress,
        LINK_EGRESS,
        instance,
    )?;

    let mode = match args.ingress {
        IngressArg::Tc => {
            let ingress: &mut SchedClassifier = ebpf
                .program_mut(PROG_INGRESS_TC)
                .context("TC ingress program missing from the object")?
                .try_into()?;
            ingress
                .load()
                .context("the kernel rejected the TC ingress program")?;
            attach_tcx(
                ingress,
                &args.iface,
                TcAttachType::Ingress,
                LINK_INGRESS,
                instance,
            )?;
            "tc"
        }
        IngressArg::Xdp => {
            let ingress: &mut Xdp = ebpf
                .program_mut(PROG_INGRESS)
                .context("ingress program missing from the object")?
                .try_into()?;
            ingress
                .load()
                .context("the kernel rejected the ingress program")?;
            attach_xdp(ingress, &args.iface, args.xdp_mode, LINK_INGRESS, instance)?
        }
    };
    Ok(mode)
}

/// Attaches a TC program through a TCX link and pins the link as `link_name`.
fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    link_name: &str,
    instance: &mut Instance,
) -> Result<()> {
    if crate::kernel::tc_hooks() == crate::kernel::TcHooks::Netlink {
        return crate::tc_attach::attach(prog, iface, hook, &instance.pins);
    }
    let id = prog
        .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| {
            format!("cannot attach a TC {hook:?} program to {iface} (TCX needs Linux 6.6+)")
        })?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("TCX link is not a bpf link")?;
    instance.pin_link(link, link_name)
}

/// Attaches an XDP program in the mode asked for, pins the link and names the mode.
fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    mode: XdpModeArg,
    link_name: &str,
    instance: &mut Instance,
) -> Result<&'static str> {
    let (id, mode) = match mode {
        XdpModeArg::Native => (
            prog.attach(iface, XdpMode::Driver).with_context(|| {
                format!("native XDP attach to {iface} failed (try --xdp-mode skb)")
            })?,
            "xdp native",
        ),
        XdpModeArg::Skb => (
            prog.attach(iface, XdpMode::Skb)
                .with_context(|| format!("generic XDP attach to {iface} failed"))?,
            "xdp skb",
        ),
        XdpModeArg::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "xdp native"),
            Err(e) => {
                info!("native XDP unavailable on {iface} ({e}); using generic mode");
                (
                    prog.attach(iface, XdpMode::Skb)
                        .with_context(|| format!("generic XDP attach to {iface} failed"))?,
                    "xdp skb",
                )
            }
        },
    };
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("XDP link is not a bpf link")?;
    instance.pin_link(link, link_name)?;
    Ok(mode)
}

/// The fast-path interfaces with their ifindexes, checked against the rest of the arguments.
fn fast_path_interfaces(
    args: &LoadArgs,
    ifindex: impl Fn(&str) -> Result<u32>,
) -> Result<Vec<(String, u32)>> {
    if args.fast_path.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    for name in &args.fast_path {
        if name == &args.iface {
            bail!("--fast-path names the external interface {name}; give the internal ones");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--fast-path names {name} twice");
        }
        out.push((name.clone(), ifindex(name)?));
    }
    Ok(out)
}

/// Fills the fast path's redirect map and attaches its program to each internal interface.
fn attach_fast_path(
    ebpf: &mut Ebpf,
    args: &LoadArgs,
    ext_ifindex: u32,
    fast: &[(String, u32)],
    instance: &mut Instance,
) -> Result<()> {
    if fast.is_empty() {
        return Ok(());
    }
    let mut devs: DevMapHash<_> = ebpf
        .map_mut(MAP_FAST_DEVS)
        .context("map NAT_FAST_DEVS missing from the object")?
        .try_into()?;
    for &(_, index) in fast.iter().chain([&(String::new(), ext_ifindex)]) {
        devs.insert(index, index, None, 0)
            .context("cannot fill the fast path's redirect map")?;
    }
    // XDP sees frames addressed to other hosts too (a promiscuous
    // interface); the fast path takes only those sent to the interface.
    let mut macs: HashMap<_, u32, [u8; 8]> = ebpf
        .map_mut(MAP_IF_MACS)
        .context("map NAT_IF_MACS missing from the object")?
        .try_into()?;
    for (name, index) in fast
        .iter()
        .map(|(n, i)| (n.as_str(), *i))
        .chain([(args.iface.as_str(), ext_ifindex)])
    {
        let mac = crate::iface::hw_addr(name)?;
        let mut value = [0u8; 8];
        value[..6].copy_from_slice(&mac);
        macs.insert(index, value, 0)
            .context("cannot fill the fast path's MAC map")?;
    }
    for (name, _) in fast {
        let link = format!("{LINK_FAST_PREFIX}{name}");
        // The fast path runs in the hook the replies are translated in.
        let mode = match args.ingress {
            IngressArg::Xdp => {
                let prog: &mut Xdp = ebpf
                    .program_mut(PROG_FAST)
                    .context("fast-path program missing from the object")?
                    .try_into()?;
                if prog.fd().is_err() {
                    prog.load()
                        .context("the kernel rejected the fast-path program")?;
                }
                attach_xdp(prog, name, args.xdp_mode, &link, instance)?
            }
            IngressArg::Tc => {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(PROG_FAST_TC)
                    .context("TC fast-path program missing from the object")?
                    .try_into()?;
                if prog.fd().is_err() {
                    prog.load()
                        .context("the kernel rejected the TC fast-path program")?;
                }
                attach_tcx(prog, name, TcAttachType::Ingress, &link, instance)?;
                "tc"
            }
        };
        info!("fast path on {name} ({mode})");
    }
    Ok(())
}

/// What this process pinned; removed again on every exit path.
struct Instance {
    pins: PinDir,
    links: Vec<PinnedLink>,
}

impl Instance {
    fn pin_link(&mut self, link: FdLink, name: &str) -> Result<()> {
        let path = self.pins.path(name);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("cannot pin link at {}", path.display()))?;
        self.links.push(pinned);
        Ok(())
    }

    fn remove(&mut self) -> Result<()> {
        for link in self.links.drain(..) {
            // Unpinning hands back the last reference; dropping it detaches.
            drop(link.unpin());
        }
        remove_pins(&self.pins)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            warn!("cleanup: {e:#}");
        }
    }
}

/// Removes every pin of an instance: links first (which detaches them), then maps.
pub fn remove_pins(pins: &PinDir) -> Result<()> {
    let links = PINNED_LINKS
        .iter()
        .map(|l| (*l).to_owned())
        .chain(pins.fast_links());
    for name in links {
        let path = pins.path(&name);
        if path.exists() {
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("cannot open pinned link {}", path.display()))?;
            drop(
                link.unpin()
                    .with_context(|| format!("cannot unpin {}", path.display()))?,
            );
        }
    }
    crate::tc_attach::detach_recorded(pins)?;
    for name in PINNED_MAPS {
        match std::fs::remove_file(pins.path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove {}", pins.path(name).display()));
            }
        }
    }
    pins::remove_dir(pins)
}

/// The host's own connections take ports from ip_local_port_range; sharing
/// them with the NAT makes the two collide toward the same server.
fn warn_ephemeral_overlap(lo: u16, hi: u16) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    if let (Some(elo), Some(ehi)) = (it.next(), it.next())
        && lo <= ehi
        && elo <= hi
    {
        warn!(
            "port range {lo}-{hi} overlaps the host's ephemeral range {elo}-{ehi} (net.ipv4.ip_local_port_range); the host's own connections may collide with translated ones"
        );
    }
}
