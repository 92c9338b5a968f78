//! `nat-fuzz`: the datapath fuzzer (`cargo xtask fuzz --target datapath`
//! runs it). Needs root (CAP_BPF) to load the programs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nat_tests::fuzz::{self, Options};

#[derive(Parser)]
#[command(about = "Fuzz the NAT's kernel programs through BPF_PROG_TEST_RUN with an oracle")]
struct Cli {
    /// How long to run, in minutes (fractions allowed)
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seed of the mutator; the same seed repeats the same inputs (default: from the clock)
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for findings, one .case file each
    #[arg(long, default_value = "target/fuzz-findings")]
    findings: PathBuf,
    /// Replay these .case files instead of fuzzing
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut h = fuzz::harness();
    if !cli.replay.is_empty() {
        let mut failed = false;
        for path in &cli.replay {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("nat-fuzz: cannot read {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            let verdict = fuzz::parse_case(&text).and_then(|c| fuzz::replay(&mut h, &c));
            match verdict {
                Ok(()) => println!("{}: clean", path.display()),
                Err(e) => {
                    println!("{}: {e}", path.display());
                    failed = true;
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("nat-fuzz: datapath, seed {seed}, {} min", cli.minutes);
    let report = fuzz::run(
        &mut h,
        &Options {
            duration: Duration::from_secs_f64(cli.minutes * 60.0),
            seed,
            findings_dir: Some(cli.findings),
            stop_at_first: false,
        },
    );
    for f in &report.findings {
        let file = f
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("finding: {} ({file})", f.violation);
    }
    println!("nat-fuzz: datapath: {report}");
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
