//! Developer tasks for the NAT workspace, run as `cargo xtask <task>`.

mod bench;
mod build_nat;
mod cmd;
mod demo;
mod dist;
mod fuzz;
mod install;
mod kernels;
mod links;
mod lint;
mod paths;
mod run_tests;
mod setup;
mod setup_vm;
mod test_summary;
mod verify;
mod vm;

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
    /// Check and install what building and testing need: the nightly
    /// toolchain with rust-src and bpf-linker (no root needed), then, as root,
    /// Debian packages and bpffs
    Setup,
    /// Build the `nat` binary (with its eBPF programs) and the bench-only
    /// `nat-bench`; needs neither root nor apt
    Build {
        /// Build with the release profile (target/release/nat)
        #[arg(long)]
        release: bool,
    },
    /// Check formatting (cargo fmt), the relative links of the markdown files
    /// and lints (clippy -D warnings) of every crate, the eBPF crate included
    /// (for the bpf target and its empty host build); needs no root
    Lint,
    /// Build the release `nat` and write it with its shell completions
    /// (bash, zsh, fish), man pages and Prometheus alerting rules into
    /// target/dist/; needs no root
    Dist,
    /// As root: set up, build `nat`, then run the test suite against it
    Test {
        /// Run the suite in a VM on this kernel instead: a version (e.g. 6.1,
        /// Debian's newest build of it), `newest` (Debian's newest kernel), or
        /// the path of a kernel image; Debian's are fetched into the tools cache
        #[arg(long, value_name = "VERSION|newest|PATH")]
        kernel: Option<String>,
        /// Passed to the test binaries, e.g. `-- --test-threads 2` or `-- some_test_name`
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// As root: load every kernel program into the verifier of each kernel (this
    /// machine's, and in VMs Debian's 6.1, 6.12 and newest) and print instructions
    /// processed, peak states, stack and time per program and kernel; fails when a
    /// program is rejected or over the budget
    Verify {
        /// Only these kernels (repeatable): `host`, a version (6.1, 6.12, ...), `newest`
        /// or an image path
        #[arg(long, value_name = "host|VERSION|newest|PATH")]
        kernel: Vec<String>,
        /// Instructions processed a program may take on any kernel (default 250,000, a
        /// quarter of the verifier's limit; also NAT_VERIFY_BUDGET)
        #[arg(long)]
        budget: Option<u64>,
        /// Also write every kernel's figures to FILE as JSON
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also keep each program's whole verifier log (every instruction it walked) in
        /// target/verify/logs-N-KERNEL/PROGRAM.log
        #[arg(long)]
        logs: bool,
    },
    /// As root: fuzz the kernel programs (mutated frames through
    /// BPF_PROG_TEST_RUN, checked by an oracle) and the host-side parsers
    /// (bolero), one target after the other; findings go to target/fuzz-findings
    Fuzz {
        /// Minutes per target (fractions allowed)
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Only this target: datapath, common-headers, common-state or userspace-text
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Seed of the generators, to repeat a run (default: a fresh one, printed)
        #[arg(long)]
        seed: Option<u64>,
    },
    /// As root: set up, build, and show the NAT translating traffic between
    /// namespaces, then the TIME_WAIT collisions it prevents (under a minute)
    Demo,
    /// Set up, build the release `nat`, and install it with the systemd unit
    /// (nat@IFACE) and the example config (/etc/nat/nat.toml.example)
    Install {
        /// Install below this directory instead of / (for packaging)
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Where the binary goes (PREFIX/sbin/nat); the unit is rewritten to match
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// As root: set up, build the release `nat` and `nat-bench`, and run `nat-bench suite`:
    /// this NAT against plain routing and nftables masquerade (throughput, packet rate,
    /// connection rate and connect time, server-first connections to one destination, cost
    /// as the tables grow, CPU per packet) plus its datapath micro-figures; reports, never
    /// fails on a missed target
    Bench {
        /// Passed to `nat-bench suite`: --quick (one repetition of short runs, under 2
        /// minutes), --json FILE, --plot FILE.svg, ... (`nat-bench suite --help` lists them)
        #[arg(
            value_name = "ARGS",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prepared = match &cli.task {
        Task::Setup => setup::everything(),
        Task::Build { .. } | Task::Lint | Task::Dist | Task::Install { .. } => setup::for_build(),
        Task::Test { .. } => setup::for_running("test"),
        Task::Verify { .. } => setup::for_running("verify"),
        Task::Fuzz { .. } => setup::for_running("fuzz"),
        Task::Demo => setup::for_running("demo"),
        Task::Bench { .. } => setup::for_running("bench"),
    };
    if let Err(e) = prepared {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.task {
        Task::Setup => Ok(()),
        Task::Build { release } => build_nat::build(release).map(|_| ()),
        Task::Lint => lint::run(),
        Task::Dist => dist::run(),
        Task::Test {
            kernel: Some(kernel),
            test_args,
        } => vm::run(&kernel, &test_args),
        Task::Verify {
            kernel,
            budget,
            json,
            logs,
        } => budget
            .map_or_else(verify::budget_from_env, Ok)
            .and_then(|budget| {
                verify::run(&verify::Options {
                    kernels: kernel,
                    budget,
                    json,
                    logs,
                })
            }),
        Task::Test {
            kernel: None,
            test_args,
            ..
        } => run_tests::run(&test_args),
        Task::Fuzz {
            minutes,
            target,
            seed,
        } => fuzz::run(&fuzz::Options {
            minutes,
            target,
            seed,
        }),
        Task::Demo => demo::run(),
        Task::Install { root, prefix } => install::run(&install::Options { root, prefix }),
        Task::Bench { args } => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
