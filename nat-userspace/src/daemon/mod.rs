//! The daemon `nat load` runs: the load phases (`load`), then what it
//! serves until it stops: the sweep, reloads and metrics (`ops`,
//! `reload`, `metrics`), systemd notification, the pid file, the reject
//! responder, the event log and the compliance export (`export`: IPFIX
//! and syslog).

pub mod event_log;
pub mod export;
pub mod fast_path;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pidfile;
pub mod reject;
pub mod reload;
pub mod sweep;
