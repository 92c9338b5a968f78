//! Phase 5 of `nat load`: the programs loaded into the kernel and attached
//! through bpf links, which are pinned so the datapath does not depend on
//! this process holding file descriptors. A link an adopted instance pinned
//! gets the new program by link update, which swaps it atomically: every
//! packet sees either the old program or the new one.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{DevMapHash, MapError},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink,
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use log::info;
use nat_common::names::{
    LINK_EGRESS, LINK_FAST_PREFIX, LINK_HAIRPIN_PREFIX, LINK_INGRESS, MAP_FAST_DEVS, PROG_EGRESS,
    PROG_FAST, PROG_FAST_TC, PROG_HAIRPIN, PROG_INGRESS, PROG_INGRESS_TC,
};

use super::pin::Instance;
use crate::cli::{IngressArg, LoadArgs, XdpModeArg};

/// Attaches egress and ingress to the external interface; returns the
/// mode's name and the hook that took the ingress program.
pub fn attach(
    ebpf: &mut Ebpf,
    args: &LoadArgs,
    instance: &mut Instance,
) -> Result<(&'static str, IngressArg)> {
    let egress = classifier(ebpf, PROG_EGRESS, "egress")?;
    attach_tcx(
        egress,
        &args.iface,
        TcAttachType::Egress,
        LINK_EGRESS,
        instance,
    )?;
    if args.ingress == IngressArg::Xdp {
        let ingress = xdp(ebpf, PROG_INGRESS, "ingress")?;
        if !args.tc_unless_native_xdp {
            let mode = attach_xdp(ingress, &args.iface, args.xdp_mode, LINK_INGRESS, instance)?;
            return Ok((mode, IngressArg::Xdp));
        }
        // `--ingress auto`: generic XDP would be slower than TC. An adopted
        // instance whose replies are translated in TC stays there too.
        match attach_xdp(
            ingress,
            &args.iface,
            XdpModeArg::Native,
            LINK_INGRESS,
            instance,
        ) {
            Ok(mode) => return Ok((mode, IngressArg::Xdp)),
            Err(e) => info!("{e:#}; translating replies in TC instead"),
        }
    }
    let ingress = classifier(ebpf, PROG_INGRESS_TC, "TC ingress")?;
    attach_tcx(
        ingress,
        &args.iface,
        TcAttachType::Ingress,
        LINK_INGRESS,
        instance,
    )?;
    Ok(("tc", IngressArg::Tc))
}

/// How the fast path attaches: in the hook that took the ingress program,
/// settled at load (a reload attaches new interfaces the same way).
#[derive(Clone, Copy, Debug)]
pub struct FastHook {
    pub ingress: IngressArg,
    pub tc_unless_native_xdp: bool,
    pub xdp_mode: XdpModeArg,
}

impl FastHook {
    /// `ingress` is the hook [`attach`] returned.
    pub fn new(args: &LoadArgs, ingress: IngressArg) -> Self {
        Self {
            ingress,
            tc_unless_native_xdp: args.tc_unless_native_xdp,
            xdp_mode: args.xdp_mode,
        }
    }

    /// The hook the automatic fast path chooses its interfaces for.
    pub fn hook(&self) -> crate::defaults::Hook {
        match self.ingress {
            IngressArg::Xdp => crate::defaults::Hook::Xdp,
            IngressArg::Auto | IngressArg::Tc => crate::defaults::Hook::Tc,
        }
    }
}

/// Attaches the fast path to each internal interface, in the hook the
/// replies are translated in. Under `--ingress auto` with XDP chosen, an
/// interface that refuses native XDP gets the TC fast path rather than
/// generic XDP (slower than TC): its packets reach the external interface
/// by a TC redirect, and it leaves the XDP redirect map, so replies toward
/// it are handed to the stack instead of being redirected to a device that
/// cannot take XDP frames. Returns the interfaces whose fast path runs in
/// XDP: the TC fast path hairpins too, these need the hairpin program
/// ([`attach_hairpin`]). Links of interfaces left out stay until the
/// caller removes them ([`Instance::remove_stale_links`]), so a load that
/// fails leaves an adopted instance as it found it.
pub fn attach_fast_path(
    ebpf: &mut Ebpf,
    hook: &FastHook,
    fast: &[(String, u32)],
    instance: &mut Instance,
) -> Result<Vec<(String, u32)>> {
    let mut in_xdp = Vec::new();
    for (name, index) in fast {
        let link = format!("{LINK_FAST_PREFIX}{name}");
        let mode = match hook.ingress {
            IngressArg::Auto | IngressArg::Xdp if hook.tc_unless_native_xdp => {
                let prog = xdp(ebpf, PROG_FAST, "fast-path")?;
                match attach_xdp(prog, name, XdpModeArg::Native, &link, instance) {
                    Ok(mode) => mode,
                    Err(e) => {
                        info!("{e:#}; the fast path on {name} runs in TC instead");
                        leave_xdp_redirects(ebpf, *index)?;
                        let prog = classifier(ebpf, PROG_FAST_TC, "TC fast-path")?;
                        attach_tcx(prog, name, TcAttachType::Ingress, &link, instance)?;
                        "tc, no native XDP"
                    }
                }
            }
            IngressArg::Auto | IngressArg::Xdp => {
                let prog = xdp(ebpf, PROG_FAST, "fast-path")?;
                attach_xdp(prog, name, hook.xdp_mode, &link, instance)?
            }
            IngressArg::Tc => {
                let prog = classifier(ebpf, PROG_FAST_TC, "TC fast-path")?;
                attach_tcx(prog, name, TcAttachType::Ingress, &link, instance)?;
                "tc"
            }
        };
        if mode.starts_with("xdp") {
            in_xdp.push((name.clone(), *index));
        }
        info!("fast path on {name} ({mode})");
    }
    Ok(in_xdp)
}

/// Takes `ifindex` out of the XDP fast path's redirect map.
fn leave_xdp_redirects(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mut devs: DevMapHash<_> = ebpf
        .map_mut(MAP_FAST_DEVS)
        .context("map NAT_FAST_DEVS missing from the object")?
        .try_into()?;
    match devs.remove(ifindex) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).context("cannot update the fast path's redirect map"),
    }
}

/// Attaches hairpinning to the internal interfaces whose fast path runs in
/// XDP (`lan`), in TC ingress, first on the hook: a hairpinned packet is
/// addressed to the NAT itself, which the XDP fast path would look up in
/// vain and hand to the stack. Where the fast path runs in TC its program
/// hairpins too; a hairpin link an earlier load left there goes once this
/// load succeeds ([`Instance::remove_stale_links`]).
pub fn attach_hairpin(
    ebpf: &mut Ebpf,
    lan: &[(String, u32)],
    instance: &mut Instance,
) -> Result<()> {
    if crate::kernel::tc_hooks() == crate::kernel::TcHooks::Netlink {
        if !lan.is_empty() {
            info!(
                "no hairpinning beside the XDP fast path: it needs TCX links (Linux 6.6+); the TC fast path (--ingress tc) hairpins"
            );
        }
        return Ok(());
    }
    for (name, _) in lan {
        let link = format!("{LINK_HAIRPIN_PREFIX}{name}");
        let prog = classifier(ebpf, PROG_HAIRPIN, "hairpin")?;
        if let Some(pinned) = instance.pinned_link(&link)? {
            let pinned = SchedClassifierLink::try_from(pinned)
                .with_context(|| format!("the pinned {link} on {name} is not a TCX link"))?;
            prog.attach_to_link(pinned)
                .with_context(|| format!("cannot update the pinned {link} on {name}"))?;
            continue;
        }
        let id = prog
            .attach_with_options(
                name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .with_context(|| format!("cannot attach the hairpin program to {name}"))?;
        let fd: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("TCX link is not a bpf link")?;
        instance.pin_link(fd, &link)?;
        info!("hairpinning on {name}");
    }
    Ok(())
}

/// A TC program of the object, loaded into the kernel (once).
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str, what: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("{what} program missing from the object"))?
        .try_into()?;
    if prog.fd().is_err() {
        // One line: the verifier's last words, not its whole log.
        prog.load().map_err(|e| {
            anyhow::anyhow!(
                "the kernel rejected the {what} program: {}",
                crate::verify::rejection(&e)
            )
        })?;
    }
    Ok(prog)
}

/// An XDP program of the object, loaded into the kernel (once).
fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str, what: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("{what} program missing from the object"))?
        .try_into()?;
    if prog.fd().is_err() {
        // One line: the verifier's last words, not its whole log.
        prog.load().map_err(|e| {
            anyhow::anyhow!(
                "the kernel rejected the {what} program: {}",
                crate::verify::rejection(&e)
            )
        })?;
    }
    Ok(prog)
}

/// Attaches a TC program through a TCX link and pins the link as
/// `link_name`, or hands the program to the link pinned there.
fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    link_name: &str,
    instance: &mut Instance,
) -> Result<()> {
    if crate::kernel::tc_hooks() == crate::kernel::TcHooks::Netlink {
        // A filter outlives the daemon; the attach replaces the recorded one.
        if let Some(record) = crate::tc_attach::attach(prog, iface, hook, &instance.pins)? {
            instance.filter_added(record);
        }
        return Ok(());
    }
    if let Some(pinned) = instance.pinned_link(link_name)? {
        let link = SchedClassifierLink::try_from(pinned)
            .with_context(|| format!("the pinned {link_name} on {iface} is not a TCX link"))?;
        prog.attach_to_link(link)
            .with_context(|| format!("cannot update the pinned {link_name} on {iface}"))?;
        return Ok(());
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

/// Attaches an XDP program in the mode asked for, pins the link and names
/// the mode; or hands the program to the link pinned there, which keeps its mode.
fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    mode: XdpModeArg,
    link_name: &str,
    instance: &mut Instance,
) -> Result<&'static str> {
    if let Some(pinned) = instance.pinned_link(link_name)? {
        let link = XdpLink::try_from(pinned)
            .with_context(|| format!("the pinned {link_name} on {iface} is not an XDP link"))?;
        prog.attach_to_link(link)
            .with_context(|| format!("cannot update the pinned {link_name} on {iface}"))?;
        return Ok("xdp, mode kept");
    }
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
