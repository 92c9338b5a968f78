//! `nat-bench alloc --hosts N`: N internal hosts, each its own address,
//! open flows to one destination in the allocation mode of `--allocation`,
//! through the real egress program (BPF_PROG_TEST_RUN), with the maps
//! sized and the config map filled as `nat load` fills them. Sessions are
//! kept, so the last host's flows meet the tables the others filled: this
//! is how the blocks and deterministic modes behave past the hosts a
//! namespace testbed can hold.
//!
//! The flows go round by round (each host's first flow, then each host's
//! second, ...), as hosts that are all active at once would open them, and
//! each round's run time is reported apart: in blocks mode the first round
//! takes every host its block, the later ones walk inside it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use nat_common::{
    blocks::{BLOCK_DYING, Geometry, MIN_BLOCK_SIZE},
    config::{Config, allocation},
    counters::Counter,
    deterministic::{Layout, Numbering, Prefix},
    names::PROG_EGRESS,
    probe::{span, stride_for},
};
use nat_userspace::{
    cli::AllocationArg,
    datapath::{
        object::{Globals, blocks_capacity, load_pinned},
        pool::{Cidr, PortRange},
        populate::{populate, populate_numbering},
        tables::Tables,
    },
};
use serde_json::{Value, json};

use super::{AllocArgs, TRANSLATED, syn};

/// The internal hosts' prefix starts here; host i is its (i + 1)-th address.
const INTERNAL_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
/// The pool's first address; the others follow it.
const FIRST_EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// A host's flows come from these source ports, one per flow.
const FIRST_SOURCE_PORT: u16 = 40_000;
/// Cooling keys the object has room for: none are made here (no session ends).
const COOLDOWNS: u32 = 65_536;

/// The shape of one run, from the arguments.
struct Plan {
    flows_per_host: u32,
    internal: Cidr,
    external: Vec<Ipv4Addr>,
    ports: PortRange,
    cfg: Config,
    /// Deterministic NAT's numbering (empty in the other modes).
    numbering: Vec<(Cidr, u32)>,
    /// Deterministic NAT's layout, to check every translation against.
    layout: Option<Layout>,
    sessions: u32,
}

impl Plan {
    fn new(args: &AllocArgs, hosts: u32, policy: u32) -> Result<Plan> {
        let ports = args.ports.unwrap_or(PortRange {
            lo: 1024,
            hi: 65_535,
        });
        let range = span(ports.lo, ports.hi);
        // Host i is address i + 1 of the prefix (not its network address).
        let len = 32 - (u64::from(hosts) + 1).next_power_of_two().trailing_zeros();
        let internal = Cidr {
            addr: INTERNAL_NET,
            len: len as u8,
        };
        let external: Vec<Ipv4Addr> = (0..args.external_addrs)
            .map(|i| Ipv4Addr::from(u32::from(FIRST_EXTERNAL) + i))
            .collect();
        let mut cfg = Config {
            pool_len: args.external_addrs,
            policy,
            allocation: args.allocation.code(),
            max_blocks_per_host: args.max_blocks_per_host,
            ..Config::default()
        };
        let mut numbering = Vec::new();
        let mut layout = None;
        // The strides and layouts as `nat load` computes them (cli::plan).
        match args.allocation {
            AllocationArg::Walk => {}
            AllocationArg::Blocks => {
                let size = args
                    .block_size
                    .unwrap_or_else(|| fitting_block_size(range, args.external_addrs, hosts));
                let blocks = range / size;
                ensure!(
                    blocks > 0,
                    "--block-size {size} is larger than the port range"
                );
                cfg.block_size = size;
                cfg.share_step = stride_for(size);
                cfg.index_step = stride_for(blocks);
            }
            AllocationArg::Deterministic => {
                let prefixes = [Prefix {
                    network: u32::from(internal.addr),
                    len: internal.len,
                }];
                let l = Layout {
                    hosts: Numbering {
                        prefixes: &prefixes,
                    }
                    .hosts(),
                    addresses: args.external_addrs,
                    port_min: ports.lo,
                    port_max: ports.hi,
                };
                let share = l.range();
                // Fewer ports than flows is allowed: the flows past the
                // share are the drops the mode is measured for.
                ensure!(
                    share > 0,
                    "deterministic NAT gives each of the {} addresses of {}/{} no port on {} external address(es)",
                    l.hosts,
                    internal.addr,
                    internal.len,
                    args.external_addrs
                );
                cfg.det_per_address = l.per_address() as u32;
                cfg.det_range = share;
                cfg.share_step = stride_for(share);
                numbering.push((internal, 0));
                layout = Some(l);
            }
        }
        let flows = u64::from(hosts) * u64::from(args.flows_per_host);
        // Twice the flows, so the table never nears the pressure that
        // refuses new flows when it is almost full.
        let sessions = u32::try_from((flows * 2).next_power_of_two())
            .ok()
            .filter(|s| *s <= 1 << 24)
            .with_context(|| {
                format!(
                    "{hosts} hosts x {} flows is too many sessions",
                    args.flows_per_host
                )
            })?;
        Ok(Plan {
            flows_per_host: args.flows_per_host,
            internal,
            external,
            ports,
            cfg,
            numbering,
            layout,
            sessions,
        })
    }

    fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.internal.addr) + i + 1)
    }
}

/// The largest block size, a multiple of 8 and at most 256 (the default),
/// at which the pool holds a block for every host.
fn fitting_block_size(range: u32, addresses: u32, hosts: u32) -> u32 {
    let per_host = u64::from(range) * u64::from(addresses) / u64::from(hosts.max(1));
    ((per_host.min(256) as u32) / 8 * 8).max(MIN_BLOCK_SIZE)
}

/// One round's run times and outcomes.
#[derive(Default)]
struct Round {
    /// Kernel run time of every run (test_run's duration), failed ones included.
    durations: Vec<Duration>,
    /// The run times of the refused ones alone: a refusal can cost far
    /// more than an allocation (a search over every block of an address).
    refused: Vec<Duration>,
    translated: u64,
}

impl Round {
    fn finish(mut self) -> Round {
        self.durations.sort_unstable();
        self.refused.sort_unstable();
        self
    }

    fn program_time(&self) -> Duration {
        self.durations.iter().sum()
    }

    /// Translated first packets per second of program time.
    fn rate(&self) -> f64 {
        let secs = self.program_time().as_secs_f64();
        if secs > 0.0 {
            self.translated as f64 / secs
        } else {
            f64::NAN
        }
    }

    /// After the round's runs are sorted ([`Round::finish`]).
    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.durations, q)
    }

    fn refused_percentile(&self, q: f64) -> Duration {
        percentile(&self.refused, q)
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or(Duration::ZERO)
}

/// What a translated flow got, to check against the mode's rules.
struct Given {
    host: u32,
    external: Ipv4Addr,
    port: u16,
}

pub fn run(args: &AllocArgs, hosts: u32, policy: u32) -> Result<()> {
    let plan = Plan::new(args, hosts, policy)?;
    let globals = Globals {
        ext_addrs: args.external_addrs,
        ..Globals::default()
    };
    // The block table sized as `nat load` sizes it for this block size.
    let block_entries = if plan.cfg.allocation == allocation::BLOCKS {
        blocks_capacity(plan.cfg.block_size)
    } else {
        blocks_capacity(MIN_BLOCK_SIZE)
    };
    let mut ebpf = load_pinned(plan.sessions, COOLDOWNS, block_entries, globals, &[])?;
    populate(
        &mut ebpf,
        &[plan.internal],
        &plan.external,
        plan.ports,
        plan.cfg,
    )?;
    populate_numbering(&mut ebpf, &plan.numbering)?;
    let tables = Tables::from_ebpf(&mut ebpf)?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_EGRESS)
        .context("egress program")?
        .try_into()?;
    prog.load()
        .context("the kernel rejected the egress program")?;

    let mut rounds: Vec<Round> = Vec::with_capacity(plan.flows_per_host as usize);
    let mut given =
        Vec::with_capacity((u64::from(hosts) * u64::from(plan.flows_per_host)) as usize);
    let mut out = vec![0u8; 128];
    let began = Instant::now();
    for flow in 0..plan.flows_per_host {
        let mut round = Round {
            durations: Vec::with_capacity(hosts as usize),
            refused: Vec::new(),
            translated: 0,
        };
        let sport = FIRST_SOURCE_PORT + flow as u16;
        for host in 0..hosts {
            let pkt = syn(plan.host(host), sport);
            let res = prog.test_run(TestRunOptions {
                data_in: Some(&pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })?;
            round.durations.push(res.duration);
            if res.return_value != TRANSLATED {
                round.refused.push(res.duration);
            } else {
                round.translated += 1;
                given.push(Given {
                    host,
                    external: Ipv4Addr::new(out[26], out[27], out[28], out[29]),
                    port: u16::from_be_bytes([out[34], out[35]]),
                });
            }
        }
        rounds.push(round.finish());
    }
    let wall = began.elapsed();
    check(&plan, &tables, &given)?;

    let counters = tables.counters()?;
    let count = |c: Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| *v)
    };
    let drops: Vec<(&'static str, u64)> = counters
        .iter()
        .filter(|(c, v)| *v > 0 && c.name().starts_with("drop_"))
        .map(|(c, v)| (c.name(), *v))
        .collect();
    let blocks_in_use: u64 = tables
        .block_use()?
        .iter()
        .take(args.external_addrs as usize)
        .sum();
    let blocks_total = Geometry {
        port_min: plan.ports.lo,
        port_max: plan.ports.hi,
        block_size: plan.cfg.block_size,
    }
    .blocks()
        * args.external_addrs;
    let attempts = u64::from(hosts) * u64::from(plan.flows_per_host);
    let translated: u64 = rounds.iter().map(|r| r.translated).sum();
    let program_time: Duration = rounds.iter().map(Round::program_time).sum();
    let rate = translated as f64 / program_time.as_secs_f64().max(f64::MIN_POSITIVE);
    let mode = mode_name(&args.allocation);
    let layout = describe_layout(&plan, blocks_total);

    if args.json {
        let rounds_json: Vec<Value> = rounds
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({
                    "flow": i + 1,
                    "attempts": r.durations.len(),
                    "translated": r.translated,
                    "program_s": r.program_time().as_secs_f64(),
                    "allocations_per_s": r.rate(),
                    "median_ns": r.percentile(0.5).as_nanos() as u64,
                    "p99_ns": r.percentile(0.99).as_nanos() as u64,
                    "refused": r.refused.len(),
                    "refused_median_ns": r.refused_percentile(0.5).as_nanos() as u64,
                    "refused_p99_ns": r.refused_percentile(0.99).as_nanos() as u64,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "allocation": mode,
                "hosts": hosts,
                "internal_prefix": format!("{}/{}", plan.internal.addr, plan.internal.len),
                "external_addresses": args.external_addrs,
                "ports": format!("{}-{}", plan.ports.lo, plan.ports.hi),
                "flows_per_host": plan.flows_per_host,
                "layout": layout,
                "block_size": (plan.cfg.allocation == allocation::BLOCKS).then_some(plan.cfg.block_size),
                "max_blocks_per_host": (plan.cfg.allocation == allocation::BLOCKS).then_some(plan.cfg.max_blocks_per_host),
                "det_ports_per_host": plan.layout.map(|l| l.range()),
                "attempts": attempts,
                "translated": translated,
                "failed": attempts - translated,
                "drops": drops.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "program_s": program_time.as_secs_f64(),
                "allocations_per_s": rate,
                "wall_s": wall.as_secs_f64(),
                "blocks_allocated": count(Counter::BlockAllocated),
                "blocks_in_use": blocks_in_use,
                "blocks_total": blocks_total,
                "rounds": rounds_json,
            })
        );
        return Ok(());
    }
    println!(
        "allocation {mode}, {hosts} hosts in {}/{} x {} flow(s) each to one destination, {} external address(es), ports {}-{}: {layout}",
        plan.internal.addr,
        plan.internal.len,
        plan.flows_per_host,
        args.external_addrs,
        plan.ports.lo,
        plan.ports.hi
    );
    println!(
        "  {translated}/{attempts} translated, {:.0} allocations/s of program time ({:.3} s of program time, {:.2} s wall)",
        rate,
        program_time.as_secs_f64(),
        wall.as_secs_f64()
    );
    for (i, r) in rounds.iter().enumerate() {
        let refused = if r.refused.is_empty() {
            String::new()
        } else {
            format!(
                "; the {} refused: median {:?}, p99 {:?}",
                r.refused.len(),
                r.refused_percentile(0.5),
                r.refused_percentile(0.99)
            )
        };
        println!(
            "  flow {} of each host: {}/{} translated, {:.0}/s, median {:?}, p99 {:?}{refused}",
            i + 1,
            r.translated,
            r.durations.len(),
            r.rate(),
            r.percentile(0.5),
            r.percentile(0.99)
        );
    }
    let drops_line: Vec<String> = drops.iter().map(|(n, v)| format!("{n} {v}")).collect();
    println!(
        "  drops: {}",
        if drops_line.is_empty() {
            "none".to_owned()
        } else {
            drops_line.join(", ")
        }
    );
    if plan.cfg.allocation == allocation::BLOCKS {
        println!(
            "  blocks: {} allocated, {blocks_in_use} in use of {blocks_total}",
            count(Counter::BlockAllocated)
        );
    }
    Ok(())
}

fn mode_name(a: &AllocationArg) -> &'static str {
    match a {
        AllocationArg::Walk => "walk",
        AllocationArg::Blocks => "blocks",
        AllocationArg::Deterministic => "deterministic",
    }
}

fn describe_layout(plan: &Plan, blocks_total: u32) -> String {
    match plan.cfg.allocation {
        allocation::BLOCKS => format!(
            "blocks of {} ports, at most {} per host, {blocks_total} in the pool",
            plan.cfg.block_size, plan.cfg.max_blocks_per_host
        ),
        allocation::DETERMINISTIC => plan.layout.map_or_else(String::new, |l| {
            format!(
                "{} ports per host, {} hosts per external address",
                l.range(),
                l.per_address()
            )
        }),
        _ => "the whole range of the host's external address toward the destination".to_owned(),
    }
}

/// Every translation inside the pool and its range, and inside what the
/// mode gives the host: its deterministic share, or a block it holds.
fn check(plan: &Plan, tables: &Tables, given: &[Given]) -> Result<()> {
    let blocks = if plan.cfg.allocation == allocation::BLOCKS {
        tables.blocks()?
    } else {
        Vec::new()
    };
    // The block table as a sorted list, looked up by binary search below.
    let mut owners: Vec<((u32, u32), u32)> = blocks
        .iter()
        .filter(|(_, b)| b.sessions < BLOCK_DYING)
        .map(|(k, b)| ((k.addr, k.index), b.host))
        .collect();
    owners.sort_unstable();
    let geometry = Geometry {
        port_min: plan.ports.lo,
        port_max: plan.ports.hi,
        block_size: plan.cfg.block_size,
    };
    for g in given {
        let host = plan.host(g.host);
        let Some(pool_index) = plan.external.iter().position(|a| *a == g.external) else {
            bail!("{host} got {}:{}, outside the pool", g.external, g.port);
        };
        if !(plan.ports.lo..=plan.ports.hi).contains(&g.port) {
            bail!(
                "{host} got port {}, outside {}-{}",
                g.port,
                plan.ports.lo,
                plan.ports.hi
            );
        }
        match plan.cfg.allocation {
            allocation::DETERMINISTIC => {
                let layout = plan.layout.context("deterministic without a layout")?;
                let share = layout
                    .share(u64::from(g.host) + 1)
                    .with_context(|| format!("{host} has no deterministic share"))?;
                if share.address as usize != pool_index
                    || !(share.port_min..=share.port_max).contains(&g.port)
                {
                    bail!(
                        "{host} got {}:{}, outside its share ({} ports {}-{})",
                        g.external,
                        g.port,
                        plan.external[share.address as usize],
                        share.port_min,
                        share.port_max
                    );
                }
            }
            allocation::BLOCKS => {
                let index = geometry
                    .block_of(g.port)
                    .with_context(|| format!("{host} got port {}, in no block", g.port))?;
                let key = (u32::from(g.external).to_be(), index);
                let held_by = owners
                    .binary_search_by(|(k, _)| k.cmp(&key))
                    .ok()
                    .map(|i| owners[i].1);
                if held_by != Some(u32::from(host).to_be()) {
                    bail!(
                        "{host} got {}:{}, in block {index}, which it does not hold",
                        g.external,
                        g.port
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}
