//! The top layer: the programs the loader attaches (or runs), by the names
//! in `nat_common::names`, and the only files with `#[classifier]` or
//! `#[xdp]`. Each entry point parses the packet, hands it to the layers
//! below and turns the outcome into its action once (`net::verdict`).
//! No program imports another.

pub mod egress;
pub mod fast;
pub mod hairpin;
pub mod ingress;
pub mod sweep;
