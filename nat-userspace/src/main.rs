//! `nat`: loader daemon and CLI of the in-kernel NAT. Parses the command
//! line (with its config file) and hands it to the command it names.

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};

use nat_userspace::{cli::Cli, commands};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // A config file's keys become flags the command line does not give itself.
    let (argv, overrides) =
        match nat_userspace::cli::config_file::expand_argv(std::env::args_os().collect()) {
            Ok(expanded) => (expanded.argv, expanded.overrides),
            Err(e) => {
                eprintln!("nat: {e}");
                return ExitCode::from(2);
            }
        };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error of ours; --help has the rest.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("nat: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match commands::run(cli, &overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nat: {e:#}");
            ExitCode::FAILURE
        }
    }
}
