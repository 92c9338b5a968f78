//! Kernel programs: TC egress does SNAT, XDP ingress translates replies back,
//! and the fast path on the internal interfaces carries established flows
//! past the stack.
//!
//! Built for the bpf target by nat-userspace's build script; on the host this
//! crate compiles to an empty binary so `cargo build --workspace` stays green.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// BPF_CMPXCHG: the bpf target's core has no compare-and-exchange
// (atomic-cas is off for it), the intrinsic lowers to the instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod alloc;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod expire;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod frag;
#[cfg(target_arch = "bpf")]
mod hairpin;
mod hosts;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod mapping;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod port_forward;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod shared;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod tc_rewrite;
#[cfg(target_arch = "bpf")]
mod track;
#[cfg(target_arch = "bpf")]
mod xdp_rewrite;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is no unwinding in BPF.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
