//! `nat-bench`: the developer's companion of `nat`, kept out of the
//! operator's binary: the benchmark suite `cargo xtask bench` runs, the
//! datapath benchmarks it and the tests run, the verifier report of
//! `cargo xtask verify`, and the generator of the shell completions and man
//! pages that `cargo xtask dist` ships (generated from `nat`'s own clap
//! definition, so they cannot drift from it).

mod alloc;
mod suite;
mod sweep;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

use nat_userspace::{
    cli,
    datapath::{
        object::{Globals, load_object, object_bytes},
        verify,
    },
};

use crate::alloc::AllocArgs;

#[derive(Parser, Debug)]
#[command(
    name = "nat-bench",
    version,
    about = "Benchmarks of the NAT and the generator of `nat`'s completions and man pages (developer-only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measures this NAT against plain routing and nftables masquerade on a netns testbed
    /// (throughput, packet rate, connection rate and connect time, server-first connections
    /// to one destination, cost as the tables grow, CPU per packet) plus its datapath
    /// micro-figures; reports, never fails on a missed target (root; `cargo xtask bench`
    /// builds and runs it).
    Suite(suite::Args),
    /// Measures allocation in the real egress program (BPF_PROG_TEST_RUN) with one
    /// destination's range filled to a given share; no interface is touched (root).
    Alloc(AllocArgs),
    /// Measures one sweep over N sessions in real BPF maps; nothing is attached (root).
    Sweep {
        /// Sessions to fill the maps with before the sweep.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=8_000_000))]
        sessions: u32,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Loads every kernel program into this kernel's verifier (nothing is attached) and prints,
    /// per program, the instructions it processed, its peak states, stack and time, or the
    /// rejection; fails when one is rejected or over the budget (root).
    Verify {
        /// Verify with the fast path off (the verifier skips what a load-time switch disables).
        #[arg(long)]
        no_fast_path: bool,
        /// External addresses the programs are told of (2 or more: the multi-address paths).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        ext_addrs: u32,
        /// Instructions processed a program may take at most; 0: no budget.
        #[arg(long, default_value_t = 0)]
        budget: u64,
        /// Also write the reports as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write each program's whole verifier log (every instruction walked) to DIR/PROGRAM.log.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
    },
    /// Writes `nat`'s shell completions (bash, zsh, fish) and its man pages
    /// (nat.1 and one per subcommand) into DIR.
    Docs {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Suite(args) => {
            need_root()?;
            suite::run(&args)
        }
        Command::Alloc(args) => {
            need_root()?;
            alloc::run(&args)
        }
        Command::Sweep { sessions, json } => {
            need_root()?;
            sweep::run(sessions, json)
        }
        Command::Verify {
            no_fast_path,
            ext_addrs,
            budget,
            json,
            log_dir,
        } => {
            need_root()?;
            verify_programs(
                !no_fast_path,
                ext_addrs,
                budget,
                json.as_deref(),
                log_dir.as_deref(),
            )
        }
        Command::Docs { out } => docs(&out),
    }
}

fn verify_programs(
    fast_path: bool,
    ext_addrs: u32,
    budget: u64,
    json: Option<&Path>,
    log_dir: Option<&Path>,
) -> Result<()> {
    let globals = Globals {
        ext_ifindex: 1,
        fast_path,
        ext_addr: u32::from_ne_bytes([192, 0, 2, 1]),
        ext_addrs,
    };
    let ebpf = load_object(65_536, 65_536, globals)?;
    let detail = if log_dir.is_some() {
        verify::LogDetail::Instructions
    } else {
        verify::LogDetail::Stats
    };
    if let Some(dir) = log_dir {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let reports = verify::report_all(&ebpf, object_bytes(), detail, log_dir)?;
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("kernel {kernel}");
    let show = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    let mut failed = Vec::new();
    for r in &reports {
        if let Some(why) = &r.rejected {
            println!("{:<16} REJECTED  {why}", r.program);
            failed.push(format!("{} rejected", r.program));
            continue;
        }
        let time = r
            .verification_us
            .map_or(format!("{} ms", r.elapsed_ms), |us| {
                format!("{:.1} ms", us as f64 / 1000.0)
            });
        let stack = match (r.stack.first(), r.stack_max) {
            (Some(own), Some(max)) => format!("{own} (chain {max})"),
            (Some(own), None) => own.to_string(),
            _ => "-".to_string(),
        };
        println!(
            "{:<16} ok  {:>8} insns verified  peak states {:>6}  stack {stack}  {time}  static subprograms {}",
            r.program,
            show(r.processed),
            show(r.peak_states),
            r.static_subprograms.len()
        );
        if budget > 0 && r.processed.is_some_and(|n| n > budget) {
            failed.push(format!(
                "{} processed {} instructions, over the budget of {budget}",
                r.program,
                show(r.processed)
            ));
        }
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "kernel": kernel, "budget": budget, "programs": reports });
        fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn need_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it loads BPF programs)");
    }
    Ok(())
}

fn docs(out: &Path) -> Result<()> {
    let completions = out.join("completions");
    let man = out.join("man");
    for dir in [&completions, &man] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut cmd = cli::Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "nat", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
        println!("{}", path.display());
    }
    clap_mangen::generate_to(cli::Cli::command(), &man)
        .with_context(|| format!("cannot write the man pages into {}", man.display()))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| format!("cannot list {}", man.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}
