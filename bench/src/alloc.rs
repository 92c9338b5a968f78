//! `nat-bench alloc`: allocation success and latency of the real egress
//! program while one destination's range is filled to a given share, or,
//! with `--hosts`, as many internal hosts open flows in an allocation mode
//! ([`hosts`]). Runs the program with BPF_PROG_TEST_RUN on crafted SYNs;
//! nothing is attached.

mod hosts;

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use nat_common::{
    blocks::{DEFAULT_MAX_BLOCKS_PER_HOST, MAX_BLOCKS_PER_HOST, MIN_BLOCK_SIZE},
    config::{Config, MAX_POOL, policy},
    csum::{ipv4_header_checksum, l4_checksum},
    flow::{FlowKey, PROTO_TCP, Session},
    names::PROG_EGRESS,
    probe::{probe_bucket_label, span},
};
use nat_userspace::{
    cli::{AllocationArg, parse_port_range},
    datapath::{
        object::{Globals, load_object},
        pool::{Cidr, PortRange},
        populate::populate,
        tables::{Tables, boot_ns},
    },
};
use serde_json::json;

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const REMOTE_PORT: u16 = 443;
/// What `nat_egress` returns for a translated packet: TC_ACT_UNSPEC (-1),
/// TCX's "next program", which passes it on.
const TRANSLATED: u32 = -1i32 as u32;

#[derive(clap::Args, Debug)]
pub struct AllocArgs {
    /// Share of the destination's range in use or cooling, in percent.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u32).range(0..=99))]
    pub occupancy: u32,
    /// Of the occupied ports, the share that is cooling rather than live, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub cooling: u32,
    /// External port range [default: 20000-20999, the destination being filled; with --hosts,
    /// 1024-65535 on every external address]
    #[arg(long, value_name = "LO-HI", value_parser = parse_port_range)]
    pub ports: Option<PortRange>,
    /// New flows to allocate (each is removed again to keep the occupancy).
    #[arg(long, default_value_t = 10_000)]
    pub attempts: u32,
    /// Allocation policy when every candidate is live or cooling.
    #[arg(long, value_name = "strict|fallback", default_value = "strict")]
    pub policy: String,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of filling one destination's range: N internal hosts, each its own address, open
    /// --flows-per-host flows each to one destination (round by round, sessions kept) in the
    /// --allocation mode; reports allocations per second of program time, drops by reason, blocks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4_000_000))]
    pub hosts: Option<u32>,
    /// How a new flow's external port is found, as `nat load --allocation` (with --hosts)
    #[arg(long, value_enum, default_value_t = AllocationArg::Walk)]
    pub allocation: AllocationArg,
    /// Flows each host opens to the destination, each from a source port of its own (with --hosts)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub flows_per_host: u32,
    /// External addresses in the pool (with --hosts)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=MAX_POOL as i64))]
    pub external_addrs: u32,
    /// Ports in a block (--allocation blocks) [default: the largest multiple of 8, at most 256, at
    /// which the pool holds a block for every host]
    #[arg(long, value_parser = clap::value_parser!(u32).range(MIN_BLOCK_SIZE as i64..=32_768))]
    pub block_size: Option<u32>,
    /// Blocks a host may hold at once (--allocation blocks), as `nat load --max-blocks-per-host`
    #[arg(long, default_value_t = DEFAULT_MAX_BLOCKS_PER_HOST, value_parser = clap::value_parser!(u32).range(1..=MAX_BLOCKS_PER_HOST as i64))]
    pub max_blocks_per_host: u32,
}

pub fn run(args: &AllocArgs) -> Result<()> {
    let policy = match args.policy.as_str() {
        "strict" => policy::STRICT,
        "fallback" => policy::FALLBACK,
        other => bail!("--policy: '{other}' is not strict or fallback"),
    };
    if let Some(n) = args.hosts {
        return hosts::run(args, n, policy);
    }
    if args.allocation != AllocationArg::Walk {
        bail!("--allocation {:?} needs --hosts", args.allocation);
    }
    let ports = args.ports.unwrap_or(PortRange {
        lo: 20_000,
        hi: 20_999,
    });
    let span = span(ports.lo, ports.hi);
    let mut ebpf = load_object(65_536, 65_536, Globals::default())?;
    let cfg = Config {
        pool_len: 1,
        policy,
        ..Config::default()
    };
    let internal = [Cidr {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        len: 8,
    }];
    populate(&mut ebpf, &internal, &[EXTERNAL], ports, cfg)?;

    // Occupy a share of the range toward REMOTE: some ports live, some cooling.
    let occupied = (span as u64 * args.occupancy as u64 / 100) as u32;
    let cooling = (occupied as u64 * args.cooling as u64 / 100) as u32;
    let now = boot_ns();
    let mut tables = Tables::from_ebpf(&mut ebpf)?;
    {
        let mut order: Vec<u16> = (ports.lo..=ports.hi).collect();
        shuffle(&mut order, 0x9e37_79b9);
        for (i, port) in order.iter().take(occupied as usize).enumerate() {
            let key = FlowKey::new(
                PROTO_TCP,
                u32::from(EXTERNAL).to_be(),
                port.to_be(),
                u32::from(REMOTE).to_be(),
                REMOTE_PORT.to_be(),
            );
            if (i as u32) < cooling {
                tables.cool(key, now + 3_600_000_000_000)?;
            } else {
                let holder = Session {
                    addr: u32::from(Ipv4Addr::new(10, 9, 9, 9)).to_be(),
                    port: port.to_be(),
                    ..Session::default()
                };
                tables.hold_reverse(key, holder)?;
            }
        }
    }

    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_EGRESS)
        .context("egress program")?
        .try_into()?;
    prog.load()
        .context("the kernel rejected the egress program")?;
    let mut latencies = Vec::with_capacity(args.attempts as usize);
    let mut ok = 0u32;
    let mut out = vec![0u8; 128];
    let mut created = Vec::new();
    for i in 0..args.attempts {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + (i / 20_000));
        let sport = 40_000 + (i % 20_000) as u16;
        let pkt = syn(src, sport);
        let res = prog.test_run(TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        latencies.push(res.duration);
        if res.return_value == TRANSLATED {
            let ext_port = u16::from_be_bytes([out[34], out[35]]);
            if out[26..30] != EXTERNAL.octets() || !(ports.lo..=ports.hi).contains(&ext_port) {
                bail!(
                    "mistranslated: source {}.{}.{}.{}:{ext_port}",
                    out[26],
                    out[27],
                    out[28],
                    out[29]
                );
            }
            ok += 1;
            created.push((
                FlowKey::new(
                    PROTO_TCP,
                    u32::from(src).to_be(),
                    sport.to_be(),
                    u32::from(REMOTE).to_be(),
                    REMOTE_PORT.to_be(),
                ),
                ext_port,
            ));
        }
        // Keep the occupancy where it was: give the port back.
        for (fwd_key, ext_port) in created.drain(..) {
            tables.release_session(
                &fwd_key,
                &fwd_key.translated(u32::from(EXTERNAL).to_be(), ext_port.to_be()),
            )?;
        }
    }
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(Duration::ZERO)
    };
    let success = 100.0 * ok as f64 / args.attempts.max(1) as f64;
    let hist = tables.probe_histogram()?;
    if args.json {
        let mut probes = serde_json::Map::new();
        for (b, v) in hist.iter().enumerate() {
            probes.insert(probe_bucket_label(b as u32).to_string(), json!(v));
        }
        println!(
            "{}",
            json!({
                "range": span, "occupancy_pct": args.occupancy, "occupied": occupied, "cooling": cooling,
                "policy": args.policy, "attempts": args.attempts, "allocated": ok, "success_pct": success,
                "median_ns": pct(0.5).as_nanos() as u64, "p99_ns": pct(0.99).as_nanos() as u64, "probes": probes,
            })
        );
    } else {
        println!(
            "range {span} ports, {occupied} occupied ({cooling} cooling) toward one destination, policy {}: \
             {ok}/{} allocated ({success:.3}%), median {:?}, p99 {:?}",
            args.policy,
            args.attempts,
            pct(0.5),
            pct(0.99)
        );
    }
    Ok(())
}

/// A deterministic Fisher-Yates shuffle (xorshift), so runs are comparable.
fn shuffle(v: &mut [u16], mut state: u32) {
    for i in (1..v.len()).rev() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        v.swap(i, state as usize % (i + 1));
    }
}

/// An Ethernet + IPv4 + TCP SYN from `src:sport` to REMOTE with correct checksums.
fn syn(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&REMOTE.octets());
    let c = ipv4_header_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&REMOTE_PORT.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    let c = l4_checksum(src.octets(), REMOTE.octets(), PROTO_TCP, tcp);
    tcp[16..18].copy_from_slice(&c.to_ne_bytes());
    p
}
