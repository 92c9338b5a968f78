//! Kernel programs: TC egress does SNAT, XDP ingress translates replies back,
//! and the fast path on the internal interfaces carries established flows
//! past the stack.
//!
//! The crate is built in layers, each importing only from the layers below
//! it: `base` (maps, packet access, outcomes), `net` (rewriting,
//! routing, fragments, verdicts), `session` (claiming, tracking, counting
//! and freeing sessions), `flows` (how flows get and lose their
//! sessions: mappings, port forwards, the allocator, ICMP, the hairpin, the
//! sweep) and `programs`, the entry points the loader attaches.
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
mod base;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod session;

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
