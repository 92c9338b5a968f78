//! What the operator says: the command line (`args`), the config file and
//! its precedence, the live settings, the defaults `nat load` chooses, and
//! port forwards as written.

pub mod args;
pub mod config_file;
pub mod defaults;
pub mod forward;
pub mod parse;
pub mod plan;
pub mod settings;

pub use args::*;
pub use parse::*;
