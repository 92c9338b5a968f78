//! `nat load`'s first phase: the command line (with its config file's keys)
//! and the defaults resolved once into a [`Plan`], checked before anything
//! is created in the kernel. Every later phase takes its part of the plan.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Result, bail};
use log::warn;

use nat_common::{
    config::Config,
    deterministic::{Layout, Numbering, Prefix},
    probe::{span, stride_for},
};

use crate::{
    cli::{
        AllocationArg, ExportFlags, IngressArg, LoadArgs, MetricsFlags, XdpModeArg, settings::find,
    },
    datapath::{
        forward::Forward,
        object::Globals,
        pins::PinDir,
        pool::{Cidr, PortRange},
    },
};

/// Everything `nat load` does, decided.
pub struct Plan {
    pub target: Target,
    pub object: ObjectPlan,
    pub pool: Pool,
    /// The live settings to write into the config map.
    pub config: Config,
    /// The port forwards the map is to hold.
    pub forwards: Vec<Forward>,
    pub attach: AttachPlan,
    pub serve: ServePlan,
    /// What `--ingress auto` and the fast-path default chose, and why.
    pub choices: Vec<String>,
    /// The keys a reload cannot apply, as given ([`fixed`]).
    pub fixed: Vec<(&'static str, String)>,
}

/// Which instance: the external interface, its pins, and what the load
/// does about a running daemon and at its own exit.
pub struct Target {
    pub iface: String,
    /// " in network namespace NAME", or empty: for messages.
    pub scope: String,
    pub pins: PinDir,
    /// Take over from a running daemon (`--replace`).
    pub replace: bool,
    /// Detach and unpin when the daemon stops (`--unload-on-exit`).
    pub unload_on_exit: bool,
}

/// What the kernel object is loaded with.
pub struct ObjectPlan {
    pub max_sessions: u32,
    pub max_cooldowns: u32,
    /// Entries of the block table.
    pub max_blocks: u32,
    pub globals: Globals,
}

/// The address pool.
pub struct Pool {
    pub internal: Vec<Cidr>,
    pub external: Vec<Ipv4Addr>,
    pub ports: PortRange,
    /// `deterministic`: each internal prefix with the number of its first
    /// address ([`nat_common::deterministic::Numbering`]), in order.
    pub numbering: Vec<(Cidr, u32)>,
}

/// What attaches where: egress and the replies' hook on the external
/// interface, the fast path (and hairpinning) on the internal ones.
pub struct AttachPlan {
    pub iface: String,
    pub ext_ifindex: u32,
    /// Xdp or Tc: `auto` is settled.
    pub ingress: IngressArg,
    pub xdp_mode: XdpModeArg,
    /// Under `--ingress auto` with XDP chosen: where native XDP is refused,
    /// TC rather than generic XDP.
    pub tc_unless_native_xdp: bool,
    /// Fast-path interfaces with their ifindexes.
    pub fast: Vec<(String, u32)>,
}

/// What the daemon serves once attached.
pub struct ServePlan {
    pub sweep_interval_ms: u64,
    pub metrics: MetricsFlags,
    /// The config file a reload re-reads.
    pub config_file: Option<PathBuf>,
    /// Where compliance events go.
    pub export: ExportFlags,
}

/// Resolves and checks `args` (the command line with its config file's
/// keys) for the instance in `netns`.
pub fn resolve(mut args: LoadArgs, netns: Option<&str>) -> Result<Plan> {
    // What a reload compares its file with: the keys as given, before the
    // defaults settle the hook and the fast path.
    let fixed = fixed(&args);
    let scope = netns
        .map(|ns| format!(" in network namespace {ns}"))
        .unwrap_or_default();
    let ifindex = |name: &str| {
        nix::net::if_::if_nametoindex(name)
            .map_err(|_| anyhow::anyhow!("no interface named '{name}'{scope}"))
    };
    let ext_ifindex = ifindex(&args.iface)?;
    // Explicit --fast-path names are checked before the defaults look at them.
    fast_path_interfaces(&args.iface, &args.fast_path, ifindex)?;
    let choices = crate::cli::defaults::resolve(&mut args)?;
    let fast = fast_path_interfaces(&args.iface, &args.fast_path, ifindex)?;
    check_pool(&args)?;
    args.export.check().map_err(anyhow::Error::msg)?;
    let globals = Globals {
        ext_ifindex,
        fast_path: !fast.is_empty(),
        ext_addr: args.external.first().map_or(0, |a| u32::from(*a).to_be()),
        ext_addrs: args.external.len() as u32,
    };
    let mut config = config_for(&args)?;
    let numbering = allocation_for(&args, &mut config)?;
    Ok(Plan {
        target: Target {
            pins: PinDir::new(netns, &args.iface),
            iface: args.iface.clone(),
            scope,
            replace: args.replace,
            unload_on_exit: args.unload_on_exit,
        },
        object: ObjectPlan {
            max_sessions: args.max_sessions,
            max_cooldowns: args.max_cooldowns,
            max_blocks: crate::datapath::object::blocks_capacity(args.block_size),
            globals,
        },
        config,
        forwards: args.forward,
        attach: AttachPlan {
            iface: args.iface,
            ext_ifindex,
            ingress: args.ingress,
            xdp_mode: args.xdp_mode,
            tc_unless_native_xdp: args.tc_unless_native_xdp,
            fast,
        },
        serve: ServePlan {
            sweep_interval_ms: args.sweep_interval_ms,
            metrics: args.metrics,
            config_file: args.config.config,
            export: args.export,
        },
        pool: Pool {
            internal: args.internal,
            external: args.external,
            ports: args.ports,
            numbering,
        },
        choices,
        fixed,
    })
}

/// The allocation mode's fields of `cfg` from `args`: its strides, and
/// for `deterministic` its layout, checked to give every internal host a
/// port; returns the numbering of the internal prefixes it uses.
fn allocation_for(args: &LoadArgs, cfg: &mut Config) -> Result<Vec<(Cidr, u32)>> {
    let ports = span(args.ports.lo, args.ports.hi);
    cfg.allocation = args.allocation.code();
    cfg.block_size = args.block_size;
    match args.allocation {
        AllocationArg::Walk => Ok(Vec::new()),
        AllocationArg::Blocks => {
            let blocks = ports / args.block_size;
            if blocks == 0 {
                bail!(
                    "--block-size {} is larger than the port range {}-{} ({ports} ports)",
                    args.block_size,
                    args.ports.lo,
                    args.ports.hi
                );
            }
            cfg.share_step = stride_for(args.block_size);
            cfg.index_step = stride_for(blocks);
            Ok(Vec::new())
        }
        AllocationArg::Deterministic => {
            let mut prefixes: Vec<Prefix> = args
                .internal
                .iter()
                .map(|c| Prefix {
                    network: u32::from(c.addr),
                    len: c.len,
                })
                .collect();
            prefixes.sort_by_key(|p| p.network);
            if let Some(w) = prefixes.windows(2).find(|w| w[0].contains(w[1].network)) {
                bail!(
                    "allocation deterministic numbers the internal prefixes in order: {}/{} and {}/{} overlap",
                    Ipv4Addr::from(w[0].network),
                    w[0].len,
                    Ipv4Addr::from(w[1].network),
                    w[1].len
                );
            }
            let numbering = Numbering {
                prefixes: &prefixes,
            };
            let layout = Layout {
                hosts: numbering.hosts(),
                addresses: args.external.len() as u32,
                port_min: args.ports.lo,
                port_max: args.ports.hi,
            };
            let range = layout.range();
            if range == 0 || layout.per_address() > u32::MAX as u64 {
                bail!(
                    "allocation deterministic: {} internal addresses over {} external address(es) leave each less than one port of {}-{}; add external addresses, narrow --internal or widen --ports",
                    layout.hosts,
                    layout.addresses,
                    args.ports.lo,
                    args.ports.hi
                );
            }
            if range < 64 {
                warn!(
                    "allocation deterministic gives each internal address {range} ports: toward one busy server its connections wait for cooling keys within seconds"
                );
            }
            cfg.det_per_address = layout.per_address() as u32;
            cfg.det_range = range;
            cfg.share_step = stride_for(range);
            Ok(numbering
                .bases()
                .map(|(p, base)| {
                    (
                        Cidr {
                            addr: Ipv4Addr::from(p.network),
                            len: p.len,
                        },
                        base as u32,
                    )
                })
                .collect())
        }
    }
}

/// The rules `nat check-config` and a reload use too.
fn check_pool(args: &LoadArgs) -> Result<()> {
    crate::datapath::pool::check_addresses(&args.external, &args.internal)
        .map_err(anyhow::Error::msg)?;
    crate::cli::forward::check_all(&args.forward, &args.internal, &args.external)
        .map_err(anyhow::Error::msg)
}

/// The live settings `args` ask for: defaults, overridden by the flags and the file.
pub fn config_for(args: &LoadArgs) -> Result<Config> {
    let mut cfg = Config {
        pool_len: args.external.len() as u32,
        ..Config::default()
    };
    for (name, value) in args.settings.given() {
        if let Some(v) = value {
            find(name).map_err(anyhow::Error::msg)?.apply(&mut cfg, v);
        }
    }
    Ok(cfg)
}

/// The keys a reload cannot apply, as given (before `nat load` settles its
/// defaults), to tell the operator which changes wait for the next load.
/// The fast path is not among them: a reload moves it ([`FastPath`]).
pub fn fixed(args: &LoadArgs) -> Vec<(&'static str, String)> {
    vec![
        ("iface", args.iface.clone()),
        ("internal", format!("{:?}", args.internal)),
        ("ingress", format!("{:?}", args.ingress)),
        ("xdp-mode", format!("{:?}", args.xdp_mode)),
        ("max-sessions", args.max_sessions.to_string()),
        ("max-cooldowns", args.max_cooldowns.to_string()),
        ("sweep-interval-ms", args.sweep_interval_ms.to_string()),
        ("allocation", format!("{:?}", args.allocation)),
        ("block-size", args.block_size.to_string()),
        ("metrics", format!("{:?}", args.metrics.metrics)),
        ("metrics-top", args.metrics.metrics_top.to_string()),
        (
            "metrics-interval-ms",
            args.metrics.metrics_interval_ms.to_string(),
        ),
    ]
}

/// The fast-path interfaces with their ifindexes, checked against the
/// external interface `iface`.
pub fn fast_path_interfaces(
    iface: &str,
    names: &[String],
    ifindex: impl Fn(&str) -> Result<u32>,
) -> Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for name in names {
        if name == iface {
            bail!("--fast-path names the external interface {name}; give the internal ones");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--fast-path names {name} twice");
        }
        out.push((name.clone(), ifindex(name)?));
    }
    Ok(out)
}

/// The host's own connections take ports from ip_local_port_range; sharing
/// them with the NAT makes the two collide toward the same server.
pub fn warn_ephemeral_overlap(lo: u16, hi: u16) {
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
