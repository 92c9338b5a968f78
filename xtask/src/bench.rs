//! `cargo xtask bench`: builds the release `nat` and `nat-bench`, then runs
//! `nat-bench suite` (bench/src/suite) with the task's arguments.

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::build_nat;
use crate::cmd::describe;

pub fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let bins = build_nat::build(true)?;
    let mut suite = Command::new(&bins.nat_bench);
    suite
        .arg("suite")
        .arg("--nat")
        .arg(&bins.nat)
        .arg("--build-secs")
        .arg(format!("{:.1}", started.elapsed().as_secs_f64()))
        .args(args);
    // In this process's place: a Ctrl-C or SIGTERM meant for the task reaches
    // the suite, which removes its testbed before it exits, and the suite's
    // exit status is the task's.
    let error = suite.exec();
    Err(error).with_context(|| format!("cannot run {}", describe(&suite)))
}
