//! The alerting rules shipped in dist/: promtool accepts them, their unit
//! tests pass, and every rule has a test in which it fires and one in
//! which it stays silent. (That every metric they name is one the daemon
//! serves is checked against a live scrape in `blocks.rs`.)

use std::path::PathBuf;
use std::process::Command;

fn dist(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist")).join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dist(""))
        .output()
        .expect("promtool runs (Debian package prometheus; cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The `alert:` names of the rules file, in order.
fn alerts() -> Vec<String> {
    let rules = std::fs::read_to_string(dist("nat-alerts.yml")).expect("dist/nat-alerts.yml");
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn rules_pass_promtool_check() {
    let text = promtool(&["check", "rules", "nat-alerts.yml"]);
    let rules = alerts().len();
    assert!(rules >= 9, "{text}");
    assert!(text.contains(&format!("{rules} rules found")), "{text}");
}

#[test]
fn rules_pass_their_unit_tests() {
    let text = promtool(&["test", "rules", "nat-alerts.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_rule_is_tested_firing_and_silent() {
    let tests =
        std::fs::read_to_string(dist("nat-alerts.test.yml")).expect("dist/nat-alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    // (alert name, whether the case expects it to fire)
    let cases: Vec<(&str, bool)> = lines
        .windows(2)
        .filter_map(|w| {
            let name = w[0].strip_prefix("alertname:")?.trim();
            match w[1] {
                "exp_alerts: []" => Some((name, false)),
                "exp_alerts:" => Some((name, true)),
                other => panic!("alertname {name} followed by {other:?}"),
            }
        })
        .collect();
    let alerts = alerts();
    for alert in &alerts {
        for firing in [true, false] {
            assert!(
                cases.contains(&(alert.as_str(), firing)),
                "{alert} has no case in which it {}",
                if firing { "fires" } else { "stays silent" }
            );
        }
    }
    for (name, _) in &cases {
        assert!(
            alerts.iter().any(|a| a == name),
            "the tests name {name}, which no rule defines"
        );
    }
}
