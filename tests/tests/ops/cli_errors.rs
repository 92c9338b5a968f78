//! Bad input is one clear line on stderr and a non-zero exit, never a panic.

use std::process::{Command, Output};

use nat_tests::nat_bin;

fn nat(args: &[&str]) -> Output {
    Command::new(nat_bin())
        .args(args)
        .output()
        .expect("nat runs")
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let out = nat(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{args:?}: one line expected: {err}"
    );
    assert!(err.starts_with("nat: "), "{err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
}

const LOAD: [&str; 7] = [
    "load",
    "--iface",
    "lo",
    "--external",
    "192.0.2.1",
    "--internal",
    "10.0.0.0/8",
];

fn load_with(replace: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = LOAD.iter().map(|s| s.to_string()).collect();
    for (flag, value) in replace {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn check(replace: &[(&str, &str)], extra: &[&str], needle: &str) {
    let args = load_with(replace, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_one_line_error(&refs, needle);
}

#[test]
fn bad_load_flags() {
    check(&[("--iface", "nope0")], &[], "no interface named 'nope0'");
    check(&[("--external", "192.0.2")], &[], "not an IPv4 address");
    check(
        &[("--external", "192.0.2.1,bogus")],
        &[],
        "not an IPv4 address",
    );
    check(
        &[("--internal", "10.0.0.1/8")],
        &[],
        "did you mean 10.0.0.0/8",
    );
    check(&[("--internal", "10.0.0.0/40")], &[], "prefix length");
    check(&[("--internal", "10.0.0.0")], &[], "not a prefix");
    check(&[], &["--ports", "3000-2000"], "inverted");
    check(&[], &["--ports", "0-100"], "not a port");
    check(&[], &["--ports", "100-70000"], "not a port");
    check(&[], &["--ports", "100"], "not a port range");
    check(&[], &["--xdp-mode", "hw"], "--xdp-mode");
    check(&[], &["--max-sessions", "5"], "--max-sessions");
    check(&[], &["--timeout-udp", "3 weeks"], "--timeout-udp");
    check(&[], &["--cooldown", "100000001"], "--cooldown");
    check(
        &[("--external", "10.0.0.1")],
        &[],
        "inside internal prefix 10.0.0.0/8",
    );
}

#[test]
fn bad_scopes_and_commands() {
    assert_one_line_error(&["--netns", "no-such-ns-here", "stats"], "does not exist");
    assert_one_line_error(
        &["--netns", "../etc", "stats"],
        "not a network namespace name",
    );
    assert_one_line_error(
        &["stats", "--iface", "no-such-iface"],
        "no NAT is loaded on no-such-iface",
    );
    assert_one_line_error(&["frobnicate"], "unrecognized subcommand");
    // The benchmarks live in the developer-only nat-bench, not in the operator's binary.
    assert_one_line_error(&["alloc-bench"], "unrecognized subcommand");
    assert_one_line_error(&["sweep-bench"], "unrecognized subcommand");
}

#[test]
fn not_root_is_refused() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(nat_bin())
        .args(["stats"])
        .output()
        .expect("setpriv runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
