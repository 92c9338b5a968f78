//! The `nat` daemon and CLI as a library, in four rooms that import only
//! downward: `datapath` (the kernel side: object, maps, pins, attachment),
//! `cli` (what the operator says: arguments, config file, settings,
//! defaults), `daemon` (`nat load`: its phases and what it serves) and
//! `commands` (one module per subcommand). The `nat` binary only
//! dispatches; the bench crate's `nat-bench` and the test suite's fixtures
//! use the datapath room.

pub mod cli;
pub mod commands;
pub mod daemon;
pub mod datapath;
