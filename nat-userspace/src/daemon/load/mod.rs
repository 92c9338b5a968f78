//! `nat load`, its phases in the order they run: resolve the command line
//! into a plan (`crate::cli::plan`), open or adopt the pinned instance
//! (`pin`), load the object against its maps and populate them, attach (or
//! update the pinned links, `attach`), hand over from a replaced daemon
//! (`handover`), arm the sweep and serve (sweeps, reject responder, event
//! log, compliance export: `serve`) until a signal, stop the control plane. Each phase takes
//! its part of the plan.

pub(crate) mod attach;
mod handover;
pub(crate) mod pin;
mod serve;

use std::{io::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use log::{info, warn};
use nat_common::names::MAP_EXT_ADDRS;

use crate::{
    cli::{
        LoadArgs,
        plan::{self, Plan, Target},
    },
    daemon::{fast_path::FastPath, ops::Ops, pidfile},
    datapath::{forward::ForwardTable, pins, populate},
};

pub async fn run(args: LoadArgs, netns: Option<&str>) -> Result<()> {
    let stop = serve::StopSignals::install()?;
    // Before anything else, so an early SIGHUP cannot end the daemon.
    let hangups = crate::daemon::ops::catch_hangups()?;
    pins::require_bpffs()?;
    writeln!(
        std::io::stdout(),
        "{}",
        crate::datapath::kernel::probe()?.summary()
    )?;
    let plan = plan::resolve(args, netns)?;
    let replaced = handover::running_daemon(&plan.target, netns)?;
    let mut instance = pin::Instance::open(
        &plan.target,
        &plan.object,
        &plan.attach,
        &plan.config,
        &plan.pool,
    )?;
    report_found(&instance)?;
    plan::warn_ephemeral_overlap(plan.pool.ports.lo, plan.pool.ports.hi);

    let map_paths = instance.map_paths();
    let loaded = crate::datapath::object::load_pinned(
        plan.object.max_sessions,
        plan.object.max_cooldowns,
        plan.object.max_blocks,
        plan.object.globals,
        &map_paths,
    );
    instance.maps_loaded();
    let mut ebpf = loaded?;
    populate::populate(
        &mut ebpf,
        &plan.pool.internal,
        &plan.pool.external,
        plan.pool.ports,
        plan.config,
    )?;
    populate::populate_numbering(&mut ebpf, &plan.pool.numbering)?;
    // Checked by the plan against the prefixes and the pool; an adopted
    // instance's forwards become the ones given now, as its settings do.
    ForwardTable::open(&instance.pins)?.replace_all(&plan.forwards)?;
    let (mode, ingress) = attach::attach(&mut ebpf, &plan.attach, &mut instance)?;
    let hook = attach::FastHook::new(&plan.attach, ingress);
    let fast = &plan.attach.fast;
    populate::populate_fast_path(&mut ebpf, &plan.attach.iface, plan.attach.ext_ifindex, fast)?;
    let in_xdp = attach::attach_fast_path(&mut ebpf, &hook, fast, &mut instance)?;
    attach::attach_hairpin(&mut ebpf, &in_xdp, &mut instance)?;
    let claim = handover::take_over(netns, &plan.target.iface, replaced).await?;
    let sweeper = serve::first_sweep(&mut ebpf, plan.serve.sweep_interval_ms)?;
    let workers = serve::start_workers(&mut ebpf, &plan.serve.export)?;
    let ext_addrs = ebpf
        .take_map(MAP_EXT_ADDRS)
        .context("map NAT_EXT_ADDRS missing from the object")?;
    let ebpf = std::sync::Arc::new(std::sync::Mutex::new(ebpf));
    let fast = FastPath::new(
        std::sync::Arc::clone(&ebpf),
        instance.pins.clone(),
        &plan,
        hook,
    );
    // Metrics, reloads and systemd readiness, once attached.
    let ops = Ops::start(
        &plan,
        &instance.pins,
        ext_addrs,
        fast,
        workers.export(),
        hangups,
    )?;
    announce(&plan, mode)?;
    // A failure before this point removes what this load pinned (see
    // pin::Instance); from here on the datapath outlives this process.
    instance.started();
    claim.keep();
    if let Err(e) = instance.remove_stale_links(&plan.attach.fast, &in_xdp) {
        warn!("{e:#}; the next load removes the rest");
    }

    // The stop phase runs whatever serving ended with: it needs no object.
    let interval = plan.serve.sweep_interval_ms;
    let served = serve::serve(ebpf, sweeper, workers, &ops, interval, stop).await;
    ops.stopping();
    drop(ops);

    stop_control_plane(&mut instance, &plan.target, netns)?;
    drop(served?);
    Ok(())
}

/// What `nat load` found pinned, before it changes anything.
fn report_found(instance: &pin::Instance) -> Result<()> {
    if let Some(found) = &instance.adopted {
        writeln!(
            std::io::stdout(),
            "nat: adopting the instance pinned in {}: {} sessions, {} cooldown entries, {} links",
            instance.pins.dir.display(),
            found.sessions,
            found.cooling,
            found.links
        )?;
    }
    Ok(())
}

/// The stop phase: the daemon goes, the datapath stays unless
/// `--unload-on-exit` asked otherwise; a replaced daemon leaves everything
/// to its successor.
fn stop_control_plane(
    instance: &mut pin::Instance,
    target: &Target,
    netns: Option<&str>,
) -> Result<()> {
    let iface = &target.iface;
    let mut stdout = std::io::stdout();
    if let Some(pid) = pidfile::named(netns, iface).filter(|_| !pidfile::is_mine(netns, iface)) {
        writeln!(
            stdout,
            "nat: handed over to pid {pid}; the datapath on {iface} keeps running"
        )?;
        return Ok(());
    }
    if target.unload_on_exit {
        info!("stopping: detaching from {iface}");
        instance.remove()?;
        pidfile::remove(netns, iface);
        writeln!(stdout, "nat: detached from {iface}")?;
    } else {
        pidfile::remove(netns, iface);
        writeln!(
            stdout,
            "nat: stopped; the datapath keeps translating on {iface} (pins in {}); `nat unload --iface {iface}` removes it",
            instance.pins.dir.display()
        )?;
    }
    Ok(())
}

/// The one line that tells the operator (and the tests) the datapath runs.
fn announce(plan: &Plan, mode: &str) -> Result<()> {
    let external: Vec<String> = plan.pool.external.iter().map(Ipv4Addr::to_string).collect();
    let fast: Vec<&str> = plan.attach.fast.iter().map(|(n, _)| n.as_str()).collect();
    let fast_note = if fast.is_empty() {
        String::new()
    } else {
        format!(", fast path on {}", fast.join(","))
    };
    let mut stdout = std::io::stdout();
    for note in &plan.choices {
        writeln!(stdout, "nat: {note}")?;
    }
    writeln!(
        stdout,
        "nat: attached to {}{} (external {}, ports {}-{}, ingress {mode}{fast_note}); pins in {}",
        plan.target.iface,
        plan.target.scope,
        external.join(","),
        plan.pool.ports.lo,
        plan.pool.ports.hi,
        plan.target.pins.dir.display()
    )?;
    stdout.flush().context("cannot write to stdout")
}
