//! The datapath fuzzer: mutated frames through the real programs
//! (BPF_PROG_TEST_RUN, [`crate::fixture`]) with the [`oracle`] checked after
//! every run.
//!
//! An episode writes one of the map states of [`corpus::State`], then runs
//! a few mutated seeds through programs of their direction (now and then
//! through any program), keeping the maps between runs so that a frame may
//! meet the session an earlier one opened. The generator is seeded, so a
//! run is repeatable with its seed. A violation ends the episode and is a
//! [`Case`]: the state and the runs that led to it, saved as a text file
//! that [`replay`] runs again (the regression suite replays every file in
//! `tests/fuzz-regressions/`).

pub mod corpus;
pub mod mutate;
pub mod oracle;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::fixture::{Harness, LOOPBACK_MAC, OWN_INT_MAC, Prog};
use corpus::{CAPACITY, Dir, State};

/// How long and from which seed to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    pub seed: u64,
    /// Where findings are written (one `.case` file each); None: nowhere.
    pub findings_dir: Option<PathBuf>,
    /// Stop at the first finding.
    pub stop_at_first: bool,
}

/// One program run of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub prog: Prog,
    pub frame: Vec<u8>,
}

/// A replayable sequence: a map state and the runs made from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub state: State,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub case: Case,
    pub violation: String,
    pub file: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub runs: u64,
    pub episodes: u64,
    pub elapsed: Duration,
    /// Runs per program, in [`Prog::ALL`] order.
    pub per_prog: [u64; 5],
    /// Runs whose frame came out rewritten, and dropped.
    pub rewritten: u64,
    pub dropped: u64,
    /// Mutants the kernel would refuse to run ([`runnable`]), skipped.
    pub refused: u64,
    pub findings: Vec<Finding>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} runs in {} episodes in {:.1} s ({:.0}/s): ",
            self.runs,
            self.episodes,
            self.elapsed.as_secs_f64(),
            self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        for (p, n) in Prog::ALL.iter().zip(self.per_prog) {
            write!(f, "{} {n}, ", p.name())?;
        }
        write!(
            f,
            "{} rewritten, {} dropped, {} skipped as unrunnable; {} findings",
            self.rewritten,
            self.dropped,
            self.refused,
            self.findings.len()
        )
    }
}

/// The fuzzer's harness: its own small maps ([`CAPACITY`]).
pub fn harness() -> Harness {
    Harness::load_sized(CAPACITY)
}

fn prog_index(p: Prog) -> usize {
    Prog::ALL.iter().position(|&q| q == p).expect("a program")
}

fn pick_prog(rng: &mut StdRng, dir: Dir) -> Prog {
    if rng.random_bool(0.1) {
        return Prog::ALL[rng.random_range(0..Prog::ALL.len())];
    }
    match dir {
        Dir::Out => [Prog::Egress, Prog::Egress, Prog::Fast, Prog::FastTc][rng.random_range(0..4)],
        Dir::In => [Prog::Ingress, Prog::IngressTc][rng.random_range(0..2)],
    }
}

/// The fast path only takes frames addressed to the NAT: mostly give them
/// the destination MAC their hook checks (see [`crate::fixture`]).
fn address_for(rng: &mut StdRng, prog: Prog, frame: &mut [u8]) {
    if frame.len() >= 6 && rng.random_bool(0.8) {
        match prog {
            Prog::Fast => frame[..6].copy_from_slice(&OWN_INT_MAC),
            Prog::FastTc => frame[..6].copy_from_slice(&LOOPBACK_MAC),
            _ => {}
        }
    }
}

/// Whether BPF_PROG_TEST_RUN takes the frame at all: it refuses (EINVAL)
/// a frame shorter than an Ethernet header, and for TC programs one whose
/// ethertype is IPv4 or IPv6 but which is shorter than that header (the
/// kernel pulls the network header before the program runs). No device
/// hands the programs such frames, so they are not generated.
pub fn runnable(prog: Prog, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    if prog.is_xdp() {
        return true;
    }
    match [frame[12], frame[13]] {
        [0x08, 0x00] => frame.len() >= 14 + 20,
        [0x86, 0xdd] => frame.len() >= 14 + 40,
        _ => true,
    }
}

/// Runs one step and checks the oracle.
fn step(h: &mut Harness, state: State, s: &Step) -> Result<crate::fixture::Outcome, String> {
    let out = h.try_run_frame(s.prog, &s.frame)?;
    oracle::check(s.prog, &s.frame, &out, &state.maps().internal)?;
    Ok(out)
}

/// Runs the fuzzer on `h` until `opts.duration` has passed.
pub fn run(h: &mut Harness, opts: &Options) -> Report {
    let seeds = corpus::seeds();
    let states: Vec<_> = State::ALL.iter().map(|s| (*s, s.maps())).collect();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut report = Report::default();
    let start = Instant::now();
    while start.elapsed() < opts.duration {
        let (state, maps) = &states[rng.random_range(0..states.len())];
        let internal = &maps.internal;
        h.set(maps);
        report.episodes += 1;
        let mut case = Case {
            state: *state,
            steps: Vec::new(),
        };
        for _ in 0..rng.random_range(1..=16) {
            let (dir, seed) = &seeds[rng.random_range(0..seeds.len())];
            let other = &seeds[rng.random_range(0..seeds.len())].1;
            let prog = pick_prog(&mut rng, *dir);
            let mut frame = mutate::mutate(&mut rng, seed, other);
            address_for(&mut rng, prog, &mut frame);
            if !runnable(prog, &frame) {
                report.refused += 1;
                continue;
            }
            let s = Step { prog, frame };
            report.runs += 1;
            report.per_prog[prog_index(prog)] += 1;
            let checked = h
                .try_run_frame(prog, &s.frame)
                .and_then(|out| oracle::check(prog, &s.frame, &out, internal).map(|()| out));
            case.steps.push(s);
            match checked {
                Ok(out) => {
                    if out.verdict == crate::fixture::Verdict::Drop {
                        report.dropped += 1;
                    } else if out.frame != case.steps.last().expect("a step").frame {
                        report.rewritten += 1;
                    }
                }
                Err(violation) => {
                    let file = opts.findings_dir.as_deref().map(|dir| {
                        save(
                            dir,
                            &format!("{}-{}", opts.seed, report.findings.len()),
                            &case,
                            &violation,
                        )
                    });
                    report.findings.push(Finding {
                        case: case.clone(),
                        violation,
                        file,
                    });
                    break;
                }
            }
        }
        if opts.stop_at_first && !report.findings.is_empty() {
            break;
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// Runs a case again from its state; the first violation, if any.
pub fn replay(h: &mut Harness, case: &Case) -> Result<(), String> {
    h.set(&case.state.maps());
    for (i, s) in case.steps.iter().enumerate() {
        step(h, case.state, s).map_err(|e| format!("step {}: {e}", i + 1))?;
    }
    Ok(())
}

fn prog_by_name(name: &str) -> Option<Prog> {
    Prog::ALL.into_iter().find(|p| p.name() == name)
}

/// The text form of a case: comment lines, `state NAME`, then one
/// `PROGRAM HEX-FRAME` line per run.
pub fn format_case(case: &Case, violation: &str) -> String {
    let mut s = String::new();
    for line in violation.lines() {
        let _ = writeln!(s, "# {line}");
    }
    let _ = writeln!(s, "state {}", case.state.name());
    for st in &case.steps {
        let hex: String = st.frame.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(s, "{} {hex}", st.prog.name());
    }
    s
}

pub fn parse_case(text: &str) -> Result<Case, String> {
    let mut state = None;
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "state" {
            state =
                Some(State::parse(rest).ok_or(format!("line {}: unknown state {rest}", n + 1))?);
            continue;
        }
        let prog = prog_by_name(word).ok_or(format!("line {}: unknown program {word}", n + 1))?;
        let frame = (0..rest.len())
            .step_by(2)
            .map(|i| {
                rest.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(format!("line {}: bad hex", n + 1))
            })
            .collect::<Result<Vec<u8>, String>>()?;
        steps.push(Step { prog, frame });
    }
    Ok(Case {
        state: state.ok_or("no state line")?,
        steps,
    })
}

fn save(dir: &Path, name: &str, case: &Case, violation: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.case"));
    std::fs::write(&path, format_case(case, violation))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}
