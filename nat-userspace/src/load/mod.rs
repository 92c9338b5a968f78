//! `nat load`, one phase per module in the order they run: validate the
//! command line, open or adopt the pinned instance, load the object against
//! its maps, populate them, attach (or update the pinned links), hand over
//! from a replaced daemon, arm the expiry sweep, serve (sweeps, reject
//! responder, event log) until
//! a signal, stop the control plane.

mod attach;
mod fast_path;
mod handover;
mod object;
mod pin;
mod populate;
mod serve;
mod validate;

use std::{io::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use log::{info, warn};

pub use fast_path::{FastChange, FastPath};
pub use object::{Globals, load_object, load_pinned, object_bytes};
pub use pin::PINNED_MAPS;
pub use populate::populate;

use nat_common::names::MAP_EXT_ADDRS;

use crate::{cli::LoadArgs, pidfile, pins};

pub async fn run(mut args: LoadArgs, netns: Option<&str>) -> Result<()> {
    let stop = serve::StopSignals::install()?;
    // Before anything else, so an early SIGHUP cannot end the daemon.
    let hangups = crate::ops::catch_hangups()?;
    pins::require_bpffs()?;
    writeln!(std::io::stdout(), "{}", crate::kernel::probe()?.summary())?;
    // What a reload compares its file with: the keys as given, before the
    // defaults below settle the hook and the fast path.
    let fixed = crate::pool::fixed(&args);
    let plan = validate::check(&mut args, netns)?;
    let replaced = handover::running_daemon(&args, netns, &plan.scope)?;
    let mut instance = pin::Instance::open(plan.pins.clone(), &plan.scope, &args)?;
    report_found(&instance)?;
    validate::warn_ephemeral_overlap(args.ports.lo, args.ports.hi);

    let map_paths = instance.map_paths();
    let loaded = load_pinned(
        args.max_sessions,
        args.max_cooldowns,
        plan.globals,
        &map_paths,
    );
    instance.maps_loaded();
    let mut ebpf = loaded?;
    populate(
        &mut ebpf,
        &args.internal,
        &args.external,
        args.ports,
        plan.config,
    )?;
    // Checked in validate against the prefixes and the pool; an adopted
    // instance's forwards become the ones given now, as its settings do.
    crate::port_forward::ForwardTable::open(&instance.pins)?.replace_all(&args.forward)?;
    let (mode, ingress) = attach::attach(&mut ebpf, &args, &mut instance)?;
    let hook = attach::FastHook::new(&args, ingress);
    populate::populate_fast_path(&mut ebpf, &args.iface, plan.ext_ifindex, &plan.fast)?;
    let in_xdp = attach::attach_fast_path(&mut ebpf, &hook, &plan.fast, &mut instance)?;
    attach::attach_hairpin(&mut ebpf, &in_xdp, &mut instance)?;
    let claim = handover::take_over(netns, &args.iface, replaced).await?;
    let sweeper = serve::first_sweep(&mut ebpf, args.reap_interval_ms)?;
    let workers = serve::start_workers(&mut ebpf)?;
    let ext_addrs = ebpf
        .take_map(MAP_EXT_ADDRS)
        .context("map NAT_EXT_ADDRS missing from the object")?;
    let ebpf = std::sync::Arc::new(std::sync::Mutex::new(ebpf));
    let fast = FastPath::new(
        std::sync::Arc::clone(&ebpf),
        instance.pins.clone(),
        &plan,
        &args,
        hook,
    );
    // Metrics, reloads and systemd readiness, once attached.
    let ops = crate::ops::Ops::start(&args, &instance.pins, ext_addrs, fixed, fast, hangups)?;
    announce(&args, &plan, mode)?;
    // A failure before this point removes what this load pinned (see
    // pin::Instance); from here on the datapath outlives this process.
    instance.started();
    claim.keep();
    if let Err(e) = instance.remove_stale_links(&plan.fast, &in_xdp) {
        warn!("{e:#}; the next load removes the rest");
    }

    // The stop phase runs whatever serving ended with: it needs no object.
    let served = serve::serve(ebpf, sweeper, workers, &ops, args.reap_interval_ms, stop).await;
    ops.stopping();
    drop(ops);

    stop_control_plane(&mut instance, &args, netns)?;
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
    args: &LoadArgs,
    netns: Option<&str>,
) -> Result<()> {
    let iface = &args.iface;
    let mut stdout = std::io::stdout();
    if let Some(pid) = pidfile::named(netns, iface).filter(|_| !pidfile::is_mine(netns, iface)) {
        writeln!(
            stdout,
            "nat: handed over to pid {pid}; the datapath on {iface} keeps running"
        )?;
        return Ok(());
    }
    if args.unload_on_exit {
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
fn announce(args: &LoadArgs, plan: &validate::Plan, mode: &str) -> Result<()> {
    let external: Vec<String> = args.external.iter().map(Ipv4Addr::to_string).collect();
    let fast_note = if plan.fast.is_empty() {
        String::new()
    } else {
        format!(", fast path on {}", args.fast_path.join(","))
    };
    let mut stdout = std::io::stdout();
    for note in &plan.choices {
        writeln!(stdout, "nat: {note}")?;
    }
    writeln!(
        stdout,
        "nat: attached to {}{} (external {}, ports {}-{}, ingress {mode}{fast_note}); pins in {}",
        args.iface,
        plan.scope,
        external.join(","),
        args.ports.lo,
        args.ports.hi,
        plan.pins.dir.display()
    )?;
    stdout.flush().context("cannot write to stdout")
}
