//! Allocation in the real egress program (BPF_PROG_TEST_RUN via `nat-bench
//! alloc`) while one destination's range is nearly full.

use std::process::Command;

use nat_tests::{nat_bench_bin, serde_json};

fn bench(occupancy: u32, policy: &str) -> serde_json::Value {
    let out = Command::new(nat_bench_bin())
        .args(["alloc", "--json", "--attempts", "10000", "--policy", policy])
        .args(["--occupancy", &occupancy.to_string()])
        .output()
        .expect("nat-bench runs");
    assert!(
        out.status.success(),
        "nat-bench alloc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Strict policy, cooldown on: 95% of the range in use or cooling (half of
/// each), and still at least 99.9% of new flows find one of the free 5%.
#[test]
fn strict_allocation_succeeds_at_95_percent_occupancy() {
    let r = bench(95, "strict");
    println!("{r}");
    assert_eq!(r["occupied"], 950);
    let success = r["success_pct"].as_f64().unwrap();
    assert!(
        success >= 99.9,
        "only {success}% allocated at 95% occupancy: {r}"
    );
    assert_eq!(r["probes"]["fallback"], 0, "strict never falls back");
}

/// 99% full: 256 probes miss the free 1% now and then (0.99^256 = 7.6%).
/// Strict drops those flows; fallback takes the soonest-cooling port instead.
#[test]
fn fallback_covers_what_strict_drops_when_nearly_full() {
    let strict = bench(99, "strict");
    let fallback = bench(99, "fallback");
    println!("{strict}\n{fallback}");
    let strict_pct = strict["success_pct"].as_f64().unwrap();
    assert!(strict_pct < 100.0 && strict_pct > 85.0, "{strict}");
    assert_eq!(
        fallback["success_pct"].as_f64().unwrap(),
        100.0,
        "{fallback}"
    );
    assert!(
        fallback["probes"]["fallback"].as_u64().unwrap() > 0,
        "{fallback}"
    );
}
