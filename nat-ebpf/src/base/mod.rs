//! The bottom layer: what every other layer builds on, importing nothing
//! of the crate outside it. The maps whose values are `nat_common` types or
//! plain numbers, the load-time globals, bounds-checked packet access and
//! the one Ethernet/IPv4 parse, the outcome of a packet (a counter or a
//! drop reason) and its encoding for global functions, the skb's linear
//! headers and the atomics on shared map words.
//!
//! Inside the layer: `outcome` first, `packet` on it; `maps`, `shared`
//! and `skb` stand alone.

pub mod maps;
pub mod outcome;
pub mod packet;
pub mod shared;
pub mod skb;
