//! A TC program's skb, in the bottom layer: its headers made readable by
//! direct access, for every TC program and the global functions that read
//! the packet again from the context.

use aya_ebpf::programs::TcContext;

/// Makes up to `max` bytes of headers readable by direct access and returns
/// (data, data_end). Headers of forwarded or locally built packets may sit
/// partly in paged data; only then is the linear area extended, so short
/// packets that are already linear cost no helper call.
#[inline(always)]
pub fn linear_headers(ctx: &TcContext, max: usize) -> (usize, usize) {
    let len = ctx.len() as usize;
    let want = if len < max { len } else { max };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
    (ctx.data(), ctx.data_end())
}
