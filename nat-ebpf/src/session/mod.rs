//! The third layer: the session core, on `base` and nothing else. How a
//! session pair is claimed (`claim`), how its TCP state is tracked and a
//! reset judged (`track`), how sessions are counted per host (`hosts`),
//! how an endpoint-independent mapping's references are taken and given
//! back (`mapping_ref`), how a session is freed, by whoever frees it
//! (`free`), and which of a host's openings is evicted under table
//! pressure (`evict`).
//!
//! Inside the layer: `free` on `hosts` and `mapping_ref`, `evict` on
//! `free`; `claim` and `track` stand alone.

pub mod blocks;
pub mod claim;
pub mod evict;
pub mod free;
pub mod hosts;
pub mod mapping_ref;
pub mod track;
