//! The kernel side as user space reaches it: the embedded object and its
//! loading, the pinned maps (tables, batch reads, forwards, the pool, port
//! pressure, who holds which ports under each allocation mode), pins and
//! TC attachment, the kernel probe, the verifier check, interfaces,
//! namespaces, the sweep program's runs, and the boot clock as wall-clock
//! time.

pub mod batch;
pub mod clock;
pub mod forward;
pub mod iface;
pub mod kernel;
pub mod netns;
pub mod object;
pub mod ownership;
pub mod pins;
pub mod pool;
pub mod populate;
pub mod pressure;
pub mod sweep;
pub mod tables;
pub mod tc_attach;
pub mod teardown;
pub mod verify;
