//! Developer tasks for the NAT workspace, run as `cargo xtask <task>`.

mod bench;
mod build_nat;
mod cmd;
mod demo;
mod interrupt;
mod paths;
mod run_tests;
mod setup;
mod test_summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for the NAT workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install what building and testing need: root, Debian
    /// packages, bpffs, the nightly toolchain with rust-src, bpf-linker
    Setup,
    /// Set up, then build the `nat` binary (with its eBPF programs)
    Build {
        /// Build with the release profile (target/release/nat)
        #[arg(long)]
        release: bool,
    },
    /// Set up, build `nat`, then run the test suite against it
    Test {
        /// Passed to the test binaries, e.g. `-- --test-threads 2` or `-- some_test_name`
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Set up, build, and show the NAT translating traffic between namespaces
    Demo,
    /// Set up, build the release `nat`, and measure it against plain routing
    /// and nftables masquerade (throughput, packet rate, connection rate,
    /// CPU per packet) plus its datapath micro-figures; reports, never fails
    /// on a missed target
    Bench {
        /// One repetition with short runs, without the 1M-session reaper and scale runs (under 2 minutes)
        #[arg(long)]
        quick: bool,
        /// Also write every figure, sample and target to FILE as JSON
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also draw the ratio table and the scale curves to FILE (SVG)
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = setup::run() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.task {
        Task::Setup => Ok(()),
        Task::Build { release } => {
            build_nat::build(release).map(|bin| println!("built {}", bin.display()))
        }
        Task::Test { test_args } => run_tests::run(&test_args),
        Task::Demo => demo::run(),
        Task::Bench { quick, json, plot } => bench::run(bench::Options { quick, json, plot }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
