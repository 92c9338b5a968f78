//! Access to a TC program's skb shared by the TC programs.

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
