//! The `nat` daemon and CLI as a library: the `nat` binary, the bench
//! crate's `nat-bench` and the test suite's datapath fixtures share the
//! embedded kernel object, the map handles and the loader.

pub mod batch;
pub mod cli;
pub mod config_file;
pub mod defaults;
pub mod event_log;
pub mod expiry;
pub mod iface;
pub mod kernel;
pub mod load;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod ops;
pub mod pidfile;
pub mod pins;
pub mod pool;
pub mod port_forward;
pub mod reaper;
pub mod reject;
pub mod settings;
pub mod show;
pub mod tables;
pub mod tc_attach;
pub mod unload;
pub mod verify;
