//! What must hold after every run, whatever the input (issue 11):
//!
//! - no packet with a source inside an internal prefix leaves untranslated
//!   (egress passing it, or the fast path redirecting it), whatever the
//!   frame's ethertype: an IPv4 packet under one or two VLAN tags (802.1Q,
//!   802.1ad, QinQ) is looked at as an untagged one is;
//! - a rewritten packet whose input checksums were valid has valid IPv4 and
//!   transport checksums, recomputed here with `nat_common::csum` (and a
//!   UDP checksum of zero, "none", stays zero);
//! - a packet is translated only by a session, to that session's endpoint
//!   (or, for a later fragment, by its first fragment's entry);
//! - every forward entry has its reverse entry and the other way round;
//! - a program returns one of its verdicts, and exactly one outcome counter
//!   moves per run (the datapath's "every packet ends in one counter").

use std::collections::HashMap;
use std::net::Ipv4Addr;

use nat_common::{
    counters::Counter,
    csum::{fold, ipv4_header_checksum, l4_checksum, sum_bytes},
    flow::{FRAG_IN, FRAG_OUT, FlowKey, FragKey, Session},
    headers::VLAN_MAX_TAGS,
};

use crate::fixture::{Outcome, Prog, Verdict};
use crate::packet::{L3_AT, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Counters that record an event along the way, not how a packet ended.
/// A counter added to nat-common is taken for an outcome unless listed here.
pub const EVENTS: [Counter; 16] = [
    Counter::Opened,
    Counter::Evicted,
    Counter::EimConflict,
    Counter::EimInbound,
    Counter::ForwardOpened,
    Counter::CooldownSkip,
    Counter::Fallback,
    Counter::Spill,
    Counter::Collision,
    Counter::SynRefused,
    Counter::RstInexact,
    Counter::Reopened,
    Counter::CooldownFull,
    Counter::InsertRace,
    Counter::BlockAllocated,
    Counter::BlockReleased,
];

/// The addressing of an IPv4 packet as far as its bytes show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    proto: u8,
    src: u32,
    dst: u32,
    /// Source and destination port, the echo identifier in the port of the
    /// side that owns it; None for later fragments and short segments.
    ports: Option<(u16, u16)>,
    id: u16,
    later_fragment: bool,
    icmp_type: Option<u8>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses the IPv4 header at `ip` of `b` (an outer one or a quoted one)
/// and the start of its transport header. An echo identifier is the
/// internal side's port: the source's of a packet travelling out
/// (`outbound_travel`), the destination's of one travelling in.
fn view(b: &[u8], ip: usize, outbound_travel: bool) -> Option<View> {
    let ver_ihl = *b.get(ip)?;
    if ver_ihl >> 4 != 4 || (ver_ihl & 0x0f) < 5 {
        return None;
    }
    let hl = usize::from(ver_ihl & 0x0f) * 4;
    let frag = be16(b, ip + 6)?;
    let proto = *b.get(ip + 9)?;
    let l4 = ip + hl;
    let later_fragment = frag & 0x1fff != 0;
    let mut icmp_type = None;
    let ports = if later_fragment {
        None
    } else {
        match proto {
            PROTO_TCP | PROTO_UDP => Some((be16(b, l4)?, be16(b, l4 + 2)?)),
            PROTO_ICMP => {
                icmp_type = b.get(l4).copied();
                match icmp_type {
                    Some(0 | 8) => {
                        be16(b, l4 + 4).map(|id| if outbound_travel { (id, 0) } else { (0, id) })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    };
    Some(View {
        proto,
        src: be32(b, ip + 12)?,
        dst: be32(b, ip + 16)?,
        ports,
        id: be16(b, ip + 4)?,
        later_fragment,
        icmp_type,
    })
}

/// Where the frame's IPv4 header starts, untagged or under up to
/// [`VLAN_MAX_TAGS`] VLAN tags (what the datapath promises to look
/// through); None for any other ethertype. Walked here on its own, not
/// with nat-common's parser, which the datapath uses.
fn ipv4_at(frame: &[u8]) -> Option<usize> {
    let mut type_at = 12;
    for _ in 0..=VLAN_MAX_TAGS {
        match be16(frame, type_at)? {
            0x0800 => return Some(type_at + 2),
            0x8100 | 0x88a8 => type_at += 4,
            _ => return None,
        }
    }
    None
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= L3_AT + 20 && frame[12..14] == [0x08, 0x00]
}

fn a(x: u32) -> Ipv4Addr {
    Ipv4Addr::from(x)
}

/// Whether every checksum the frame carries and its lengths allow checking
/// is right (nat-common's arithmetic). None: not a checkable IPv4 frame.
/// Also returns the UDP checksum field of an unfragmented datagram.
fn checksums(frame: &[u8]) -> Option<(bool, Option<u16>)> {
    if !is_ipv4(frame) {
        return None;
    }
    let ip = &frame[L3_AT..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let tot = usize::from(be16(ip, 2)?);
    if ip[0] >> 4 != 4 || hl < 20 || ip.len() < hl || tot < hl || tot > ip.len() {
        return None;
    }
    let mut ok = ipv4_header_checksum(&ip[..hl]) == 0;
    let frag = be16(ip, 6)?;
    let mut udp = None;
    if frag & 0x3fff == 0 {
        let seg = &ip[hl..tot];
        let (s, d) = (ip[12..16].try_into().ok()?, ip[16..20].try_into().ok()?);
        match ip[9] {
            PROTO_TCP if seg.len() >= 20 => ok &= l4_checksum(s, d, PROTO_TCP, seg) == 0,
            PROTO_UDP if seg.len() >= 8 => {
                let c = be16(seg, 6)?;
                udp = Some(c);
                if c != 0 {
                    ok &= l4_checksum(s, d, PROTO_UDP, seg) == 0;
                }
            }
            PROTO_ICMP if seg.len() >= 8 => {
                ok &= !fold(sum_bytes(seg, 0)) == 0;
                let inner = &seg[8..];
                if matches!(seg[0], 3 | 11 | 12) && inner.len() >= 20 {
                    let ihl = usize::from(inner[0] & 0x0f) * 4;
                    if ihl >= 20 && inner.len() >= ihl {
                        ok &= ipv4_header_checksum(&inner[..ihl]) == 0;
                    }
                }
            }
            _ => {}
        }
    }
    Some((ok, udp))
}

fn in_prefixes(addr: u32, internal: &[(Ipv4Addr, u8)]) -> bool {
    internal.iter().any(|&(net, len)| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        addr & mask == u32::from(net) & mask
    })
}

fn key(proto: u8, s: u32, sp: u16, d: u32, dp: u16) -> FlowKey {
    FlowKey::new(proto, s.to_be(), sp.to_be(), d.to_be(), dp.to_be())
}

fn endpoint(s: &Session) -> (u32, u16) {
    (u32::from_be(s.addr), u16::from_be(s.port))
}

/// Checks one run of `prog` on `input`; `internal` are the state's prefixes.
pub fn check(
    prog: Prog,
    input: &[u8],
    out: &Outcome,
    internal: &[(Ipv4Addr, u8)],
) -> Result<(), String> {
    verdict(prog, out)?;
    leak(prog, out, internal)?;
    if out.verdict != Verdict::Drop && out.frame != input {
        checksum_kept(input, &out.frame)?;
        translation(prog, input, out)?;
    }
    pairs(&out.fwd, &out.rev)
}

fn verdict(prog: Prog, out: &Outcome) -> Result<(), String> {
    if let Verdict::Unexpected(code) = out.verdict {
        return Err(format!("{} returned {code:#x}", prog.name()));
    }
    if prog == Prog::Egress && out.verdict == Verdict::Redirect {
        return Err("nat_egress redirected".into());
    }
    let outcomes: Vec<_> = out
        .counters
        .iter()
        .filter(|(c, _)| !EVENTS.contains(c))
        .collect();
    match outcomes.as_slice() {
        [(c, 1)] => {
            let fast = matches!(c, Counter::FastIn | Counter::FastOut);
            if fast != (out.verdict == Verdict::Redirect) {
                return Err(format!(
                    "verdict {:?} with outcome {}",
                    out.verdict,
                    c.name()
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "{} outcome counters moved, not exactly one by one: {:?}",
            other.len(),
            other.iter().map(|(c, n)| (c.name(), n)).collect::<Vec<_>>()
        )),
    }
}

fn leak(prog: Prog, out: &Outcome, internal: &[(Ipv4Addr, u8)]) -> Result<(), String> {
    let leaves = match prog {
        Prog::Egress => out.verdict == Verdict::Pass,
        Prog::Fast | Prog::FastTc => out.verdict == Verdict::Redirect,
        Prog::Ingress | Prog::IngressTc => false,
    };
    if !leaves {
        return Ok(());
    }
    let Some(ip) = ipv4_at(&out.frame) else {
        return Ok(());
    };
    match be32(&out.frame, ip + 12) {
        Some(src) if in_prefixes(src, internal) => Err(format!(
            "{} let a packet from internal {} leave untranslated ({:?}{})",
            prog.name(),
            a(src),
            out.verdict,
            if ip == L3_AT { "" } else { ", VLAN-tagged" }
        )),
        _ => Ok(()),
    }
}

fn checksum_kept(input: &[u8], output: &[u8]) -> Result<(), String> {
    let Some((true, udp_in)) = checksums(input) else {
        return Ok(());
    };
    match checksums(output) {
        Some((true, udp_out)) => match (udp_in, udp_out) {
            (Some(0), Some(c)) if c != 0 => Err("a zero UDP checksum became non-zero".into()),
            (Some(c), Some(0)) if c != 0 => Err("a UDP checksum became zero (none)".into()),
            _ => Ok(()),
        },
        Some((false, _)) => Err("valid checksums in, a bad one out".into()),
        None => Err("a checkable IPv4 frame in, an uncheckable one out".into()),
    }
}

/// A rewritten frame's addresses and ports must follow a session.
fn translation(prog: Prog, input: &[u8], out: &Outcome) -> Result<(), String> {
    if !is_ipv4(input) {
        return Err(format!("{} rewrote a frame that is not IPv4", prog.name()));
    }
    let outbound = matches!(prog, Prog::Egress | Prog::Fast | Prog::FastTc);
    let (Some(i), Some(o)) = (
        view(input, L3_AT, outbound),
        view(&out.frame, L3_AT, outbound),
    ) else {
        return Ok(());
    };
    if (i.src, i.dst, i.ports) == (o.src, o.dst, o.ports) {
        return Ok(());
    }
    let what = |m: &str| {
        Err(format!(
            "{}: {} -> {} {:?} rewritten to {} -> {} {:?}: {m}",
            prog.name(),
            a(i.src),
            a(i.dst),
            i.ports,
            a(o.src),
            a(o.dst),
            o.ports
        ))
    };
    if i.proto != o.proto {
        return what("protocol changed");
    }
    // The side that must not change.
    if (outbound && i.dst != o.dst) || (!outbound && i.src != o.src) {
        return what("the remote side changed");
    }
    if i.later_fragment {
        let (k, new) = if outbound {
            (
                FragKey {
                    saddr: i.src.to_be(),
                    daddr: i.dst.to_be(),
                    id: i.id.to_be(),
                    proto: i.proto,
                    dir: FRAG_OUT,
                },
                o.src,
            )
        } else {
            (
                FragKey {
                    saddr: i.src.to_be(),
                    daddr: i.dst.to_be(),
                    id: i.id.to_be(),
                    proto: i.proto,
                    dir: FRAG_IN,
                },
                o.dst,
            )
        };
        return match out.frags.get(&k) {
            Some(e) if u32::from_be(e.addr) == new => Ok(()),
            Some(_) => what("not to its first fragment's address"),
            None => what("a later fragment without its first fragment's entry"),
        };
    }
    if i.proto == PROTO_ICMP && i.icmp_type.is_some_and(|t| matches!(t, 3 | 11 | 12)) {
        return icmp_error(prog, input, out, outbound, &i, &o);
    }
    let (Some((isp, idp)), Some((osp, odp))) = (i.ports, o.ports) else {
        return what("ports appeared or vanished");
    };
    if outbound {
        let k = key(i.proto, i.src, isp, i.dst, idp);
        let Some(f) = out.fwd.get(&k) else {
            return what("no forward entry");
        };
        if endpoint(f) != (o.src, osp) || odp != idp {
            return what("not to its session's external endpoint");
        }
    } else {
        let k = key(i.proto, i.dst, idp, i.src, isp);
        let Some(r) = out.rev.get(&k) else {
            return what("no reverse entry");
        };
        if endpoint(r) != (o.dst, odp) || osp != isp {
            return what("not to its session's internal endpoint");
        }
    }
    Ok(())
}

/// An ICMP error is translated by the session of the packet it quotes.
fn icmp_error(
    prog: Prog,
    input: &[u8],
    out: &Outcome,
    outbound: bool,
    i: &View,
    o: &View,
) -> Result<(), String> {
    let inner_at = L3_AT + usize::from(input[L3_AT] & 0x0f) * 4 + 8;
    let err = |m: &str| {
        Err(format!(
            "{}: ICMP error {} -> {} rewritten to {} -> {}: {m}",
            prog.name(),
            a(i.src),
            a(i.dst),
            a(o.src),
            a(o.dst)
        ))
    };
    // The quote is of a packet that travelled the other way.
    let Some(q) = view(input, inner_at, !outbound) else {
        return err("translated without a readable quote");
    };
    let qo = view(&out.frame, inner_at, !outbound);
    if outbound {
        // The quote went from the remote to the internal host.
        let (sp, dp) = q.ports.unwrap_or((0, 0));
        let Some(f) = out.fwd.get(&key(q.proto, q.dst, dp, q.src, sp)) else {
            return err("no forward entry for the quoted packet");
        };
        let (ea, ep) = endpoint(f);
        if o.src != ea {
            return err("outer source is not the session's external address");
        }
        if let Some(qo) = qo
            && (qo.dst != ea || qo.ports.is_some_and(|(_, d)| d != ep))
        {
            return err("the quote is not rewritten to the session's external endpoint");
        }
    } else {
        let (sp, dp) = q.ports.unwrap_or((0, 0));
        let Some(r) = out.rev.get(&key(q.proto, q.src, sp, q.dst, dp)) else {
            return err("no reverse entry for the quoted packet");
        };
        let (ia, ip) = endpoint(r);
        if o.dst != ia {
            return err("outer destination is not the session's internal host");
        }
        if let Some(qo) = qo
            && (qo.src != ia || qo.ports.is_some_and(|(s, _)| s != ip))
        {
            return err("the quote is not rewritten to the session's internal endpoint");
        }
    }
    Ok(())
}

/// Every forward entry's reverse entry exists and points back, and every
/// reverse entry has the forward entry it points to.
pub fn pairs(
    fwd: &HashMap<FlowKey, Session>,
    rev: &HashMap<FlowKey, Session>,
) -> Result<(), String> {
    for (k, f) in fwd {
        match rev.get(&k.translated(f.addr, f.port)) {
            Some(r) if (r.addr, r.port) == (k.saddr, k.sport) => {}
            Some(_) => {
                return Err(format!(
                    "forward entry {k:?}: its reverse entry points elsewhere"
                ));
            }
            None => return Err(format!("forward entry {k:?} has no reverse entry")),
        }
    }
    for (k, r) in rev {
        let fk = FlowKey::new(k.proto, r.addr, r.port, k.daddr, k.dport);
        match fwd.get(&fk) {
            Some(f) if (f.addr, f.port) == (k.saddr, k.sport) => {}
            Some(_) => {
                return Err(format!(
                    "reverse entry {k:?}: its forward entry points elsewhere"
                ));
            }
            None => return Err(format!("reverse entry {k:?} has no forward entry")),
        }
    }
    Ok(())
}
