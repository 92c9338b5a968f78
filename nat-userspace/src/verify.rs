//! Loading the kernel programs into the verifier, and what it answered.
//!
//! aya 0.14 runs the verifier once without a log, and only when that fails
//! once more with a 10 KiB log (growing tenfold on ENOSPC, up to ten times).
//! At the statistics level the loader asks for, a rejection's messages fit
//! the first buffer, so a program the kernel rejects costs two verifier
//! runs, never more; aya offers no way to hand the first run a buffer.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

/// How many of the verifier's last lines a rejection shows.
const LOG_TAIL: usize = 3;

/// One program's answer from the verifier.
pub struct Verdict {
    pub name: String,
    pub elapsed: Duration,
    /// Instructions the verifier processed (`verified_insns`, Linux 5.16+).
    pub verified: Option<u32>,
    /// The rejection as one line, when the kernel refused the program.
    pub rejected: Option<String>,
}

/// The verifier's last lines of a failed load, joined into one line.
pub fn rejection(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            // The statistics close every log; the reason comes before them.
            let is_stat = |l: &&str| {
                l.starts_with("verification time")
                    || l.starts_with("stack depth")
                    || l.starts_with("processed ")
            };
            let reason: Vec<&str> = lines.iter().filter(|l| !is_stat(l)).copied().collect();
            let mut tail: Vec<&str> = reason[reason.len().saturating_sub(LOG_TAIL)..].to_vec();
            tail.extend(lines.iter().filter(|l| l.starts_with("processed ")));
            if tail.is_empty() {
                format!("{io_error} (the verifier gave no reason)")
            } else {
                format!("{io_error}; the verifier ended with: {}", tail.join(" | "))
            }
        }
        other => other.to_string(),
    }
}

/// Loads (verifies) one TC or XDP program of the object, unless it is loaded already.
pub fn load(prog: &mut Program) -> Result<(), ProgramError> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    match prog {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        // The object holds TC and XDP programs only.
        _ => Ok(()),
    }
}

/// Loads every program of `ebpf`, each timed, and reports what the verifier said.
pub fn verify_all(ebpf: &mut Ebpf) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        let started = Instant::now();
        let outcome = load(prog);
        let elapsed = started.elapsed();
        let verified = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        verdicts.push(Verdict {
            name: name.to_string(),
            elapsed,
            verified,
            rejected: outcome.err().map(|e| rejection(&e)),
        });
    }
    verdicts.sort_by(|a, b| a.name.cmp(&b.name));
    verdicts
}
