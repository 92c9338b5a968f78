//! The fourth layer: how flows get their sessions and lose them, on the
//! session core. Endpoint-independent mappings and their filtering
//! (`mapping`), port forwards opening sessions from outside
//! (`port_forward`), the port allocator (`alloc`), ICMP (`icmp`), the
//! hairpin between internal hosts (`hairpin`) and the sweep that frees
//! idle sessions (`sweep`). Each decides which sessions exist; the layers
//! below only carry out what it decides.
//!
//! Inside the layer: `alloc` on `mapping`; `icmp` on `alloc`; `hairpin`
//! on `alloc`, `mapping` and `port_forward`; `sweep` stands alone.

pub mod alloc;
pub mod blocks;
pub mod hairpin;
pub mod icmp;
pub mod mapping;
pub mod port_forward;
pub mod sweep;
