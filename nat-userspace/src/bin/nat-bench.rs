//! `nat-bench`: the developer's companion of `nat`, kept out of the
//! operator's binary: the datapath benchmarks `cargo xtask bench` and the
//! tests run, and the generator of the shell completions and man pages that
//! `cargo xtask dist` ships (generated from `nat`'s own clap definition, so
//! they cannot drift from it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

use nat_userspace::{
    alloc_bench::{self, AllocBenchArgs},
    cli,
    load::{Globals, load_object},
    reaper_bench, verify,
};

#[derive(Parser, Debug)]
#[command(
    name = "nat-bench",
    version,
    about = "Benchmarks of the NAT's datapath and the generator of `nat`'s completions and man pages (developer-only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measures allocation in the real egress program (BPF_PROG_TEST_RUN) with one
    /// destination's range filled to a given share; no interface is touched (root).
    Alloc(AllocBenchArgs),
    /// Measures one reaper sweep over N sessions in real BPF maps; nothing is attached (root).
    Reaper {
        /// Sessions to fill the maps with before the sweep.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=8_000_000))]
        sessions: u32,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Loads every kernel program into this kernel's verifier (nothing is attached) and prints,
    /// per program, the time it took and the instructions verified, or the rejection (root).
    Verify {
        /// Verify with the fast path off (the verifier skips what a load-time switch disables).
        #[arg(long)]
        no_fast_path: bool,
        /// External addresses the programs are told of (2 or more: the multi-address paths).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        ext_addrs: u32,
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
        Command::Alloc(args) => {
            need_root()?;
            alloc_bench::run(&args)
        }
        Command::Reaper { sessions, json } => {
            need_root()?;
            reaper_bench::run(sessions, json)
        }
        Command::Verify {
            no_fast_path,
            ext_addrs,
        } => {
            need_root()?;
            verify_programs(!no_fast_path, ext_addrs)
        }
        Command::Docs { out } => docs(&out),
    }
}

fn verify_programs(fast_path: bool, ext_addrs: u32) -> Result<()> {
    let globals = Globals {
        ext_ifindex: 1,
        fast_path,
        ext_addr: u32::from_ne_bytes([192, 0, 2, 1]),
        ext_addrs,
    };
    let mut ebpf = load_object(65_536, 65_536, globals)?;
    let verdicts = verify::verify_all(&mut ebpf);
    let mut rejected = 0;
    for v in &verdicts {
        let verified = v.verified.map_or("-".to_string(), |n| n.to_string());
        match &v.rejected {
            None => println!(
                "{:<16} ok        {:>8.1}s  {verified:>8} insns verified",
                v.name,
                v.elapsed.as_secs_f64()
            ),
            Some(why) => {
                rejected += 1;
                println!(
                    "{:<16} REJECTED  {:>8.1}s  {why}",
                    v.name,
                    v.elapsed.as_secs_f64()
                );
            }
        }
    }
    if rejected > 0 {
        bail!(
            "the verifier rejected {rejected} of {} programs",
            verdicts.len()
        );
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
