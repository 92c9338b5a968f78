//! The second layer: what a program does to a packet once it knows what to
//! do, on `base` alone. Rewriting an endpoint with its checksums (TC
//! through the kernel's helpers, XDP with RFC 1624 arithmetic), the
//! translation of later fragments, routing and redirecting (the kernel's
//! route lookup, each session direction's route cache, the forwarding
//! hop), the drop log, the reject queue, and the verdicts: the one
//! conversion of an outcome into a program's action.
//!
//! Inside the layer: `verdict` on `events`; the others stand alone.

pub mod events;
pub mod frag;
pub mod nat_events;
pub mod reject;
pub mod route;
pub mod tc_rewrite;
pub mod verdict;
pub mod xdp_rewrite;
