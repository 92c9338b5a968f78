//! `nat load`, one phase per module in the order they run: validate the
//! command line, open the kernel object, pin, populate the maps, attach,
//! serve (reaper and reject responder) until a signal, stop.

mod attach;
mod object;
mod pin;
mod populate;
mod serve;
mod validate;

use std::{io::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use log::info;

pub use object::{Globals, load_object};
pub use pin::{PINNED_LINKS, PINNED_MAPS, remove_pins};
pub use populate::populate;

use crate::{cli::LoadArgs, pidfile, pins};

pub async fn run(args: LoadArgs, netns: Option<&str>) -> Result<()> {
    let stop = serve::StopSignals::install()?;
    pins::require_bpffs()?;
    let plan = validate::check(&args, netns)?;
    let mut instance = pin::Instance::create(plan.pins.clone(), &plan.scope)?;
    validate::warn_ephemeral_overlap(args.ports.lo, args.ports.hi);

    let mut ebpf = load_object(args.max_sessions, args.max_cooldowns, plan.globals)?;
    instance.pin_maps(&ebpf)?;
    populate(
        &mut ebpf,
        &args.internal,
        &args.external,
        args.ports,
        plan.config,
    )?;
    let mode = attach::attach(&mut ebpf, &args, &mut instance)?;
    populate::populate_fast_path(&mut ebpf, &args.iface, plan.ext_ifindex, &plan.fast)?;
    attach::attach_fast_path(&mut ebpf, &args, &plan.fast, &mut instance)?;
    pidfile::write(netns, &args.iface)?;
    announce(&args, &plan, mode)?;

    serve::serve(&mut ebpf, args.reap_interval_ms, stop).await?;

    info!("stopping: detaching from {}", args.iface);
    instance.remove()?;
    pidfile::remove(netns, &args.iface);
    drop(ebpf);
    writeln!(std::io::stdout(), "nat: detached from {}", args.iface)?;
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
