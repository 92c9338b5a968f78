//! The hairpin's program, `nat_hairpin`, in the programs layer: TC ingress
//! on internal interfaces whose fast path runs in XDP. The hairpin itself
//! is `flows::hairpin`.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    flows::hairpin::{nat_hairpin_tc, outcome},
    net::verdict::tc_action_or_next,
};

/// Hairpinning alone, on internal interfaces whose fast path runs in XDP;
/// where it runs in TC, `nat_fast_tc` does both in one program.
#[classifier]
pub fn nat_hairpin(ctx: TcContext) -> i32 {
    tc_action_or_next(&ctx, outcome(nat_hairpin_tc(ctx.skb.skb)))
}
