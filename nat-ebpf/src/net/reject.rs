//! The reject queue, in the net layer. `on-exhaustion reject`: a SYN that
//! got no port is quoted into a ring buffer; the daemon answers it with
//! ICMP administratively prohibited.

use aya_ebpf::{EbpfContext as _, helpers::bpf_skb_load_bytes, programs::TcContext};
use nat_common::{
    config::{REJECT_QUOTE, RejectEvent, exhaustion},
    counters::Counter,
    headers::ETH_HLEN,
};

use crate::base::maps::{NAT_CONFIG, NAT_REJECTS, count};

/// Bytes of the TCP header an ICMP error quotes (RFC 792: the first 64 bits).
const QUOTED_TCP: usize = 8;

/// Queues the refused packet (IPv4 header of `ip_hdr_len` bytes, then TCP)
/// when the operator chose to reject. A subprogram of its own, so its locals
/// do not add to the frame the allocator's bpf_loop callback stacks on
/// (512 bytes for a whole call chain).
#[inline(never)]
pub fn refuse(ctx: &TcContext, ip_hdr_len: usize) {
    if NAT_CONFIG
        .get(0)
        .is_none_or(|c| c.on_exhaustion != exhaustion::REJECT)
    {
        return;
    }
    let Some(mut entry) = NAT_REJECTS.reserve::<RejectEvent>(0) else {
        return;
    };
    // The packet was parsed through its TCP header, so the quote is there;
    // the bound also tells the verifier it fits the entry and is not empty.
    // black_box: the compiler knows the header is at most 60 bytes and would
    // drop the bound, but the verifier tracks the length with a looser range.
    let want = core::hint::black_box(ip_hdr_len + QUOTED_TCP);
    if want == 0 || want > REJECT_QUOTE {
        entry.discard(0);
        return;
    }
    // SAFETY: the entry is ours until submitted or discarded; every field
    // user space reads is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: copies `want` (28..=68) bytes into the 68-byte quote.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            ETH_HLEN as u32,
            ev.quote.as_mut_ptr().cast(),
            want as u32,
        )
    };
    if rc != 0 {
        entry.discard(0);
        return;
    }
    ev.len = want as u32;
    ev._pad = 0;
    entry.submit(0);
    count(Counter::Rejected);
}
