//! Fuzz target for the parsers of untrusted text (bolero): the config file
//! (`nat check-config`, the same code `nat load --config` and reloads run),
//! `nat set` values, and the command line's addresses, prefixes, port
//! ranges and durations. Under `cargo test` it runs for bolero's default
//! second (a smoke run in CI); `cargo xtask fuzz --target userspace-text`
//! runs it for longer. An error must be one line; nothing may panic; what
//! parses must mean what it says.
//!
//! Inputs are built from tokens (keys, values, TOML punctuation) chosen by
//! the fuzzer's bytes, mixed with raw bytes, so most files get past the
//! TOML parser into the key and value checks.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use nat_userspace::cli::{self, config_file, settings};

const TOKENS: &[&str] = &[
    "iface",
    "external",
    "internal",
    "ports",
    "cooldown",
    "policy",
    "max-sessions",
    "max-cooldowns",
    "timeout-udp",
    "cooldown-enabled",
    "on-exhaustion",
    "fast-path",
    "ingress",
    "metrics",
    "sweep-interval-ms",
    "colddown",
    " = ",
    "=",
    "\n",
    "\"",
    "'",
    "[",
    "]",
    ",",
    "#",
    " ",
    "\"eth0\"",
    "\"veth-ext\"",
    "\"203.0.113.7\"",
    "[\"10.0.0.0/8\"]",
    "\"10.0.0.0/8\"",
    "\"10.0.0.1/8\"",
    "\"16384-32767\"",
    "\"9-1\"",
    "\"0-5\"",
    "\"240s\"",
    "\"4m\"",
    "\"2h\"",
    "\"1500ms\"",
    "\"99999999999999999999s\"",
    "240",
    "true",
    "false",
    "\"on\"",
    "\"off\"",
    "\"strict\"",
    "\"fallback\"",
    "\"drop\"",
    "\"reject\"",
    "\"auto\"",
    "\"tc\"",
    "\"xdp\"",
    "262144",
    "0",
    "-1",
    "1e9",
    "4294967296",
    "18446744073709551616",
    "\"127.0.0.1:9109\"",
    "[table]",
    "{ a = 1 }",
    "\u{0}",
    "\u{feff}",
    "é",
    "\r\n",
    "\t",
];

/// Text from the input bytes: a byte below 0xc0 picks a token, the rest
/// are literal characters.
fn text(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if b < 0xc0 {
            s.push_str(TOKENS[usize::from(b) % TOKENS.len()]);
        } else {
            s.push(char::from(b - 0x80));
        }
    }
    s
}

/// An error is one line, unless it quotes input that has line breaks of
/// its own (values are echoed as given: a known limit, see docs/testing.md).
fn one_line(what: &str, input: &str, e: &str) {
    assert!(!e.is_empty(), "{what}: an empty error");
    if !input.contains(['\n', '\r']) {
        assert!(!e.contains('\n'), "{what}: not one line: {e:?}");
    }
}

fn config_case(bytes: &[u8]) {
    let body = text(bytes);
    let mut file = tempfile();
    file.1
        .write_all(body.as_bytes())
        .expect("write the config file");
    match config_file::check(&file.0) {
        Ok(_) => {}
        Err(e) => one_line("config file", &body, &e.to_string()),
    }
    let _ = std::fs::remove_file(&file.0);
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    // A name per call: tests of this process write their configs at the same time.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "nat-fuzz-config-{}-{call}.toml",
        std::process::id()
    ));
    let f = std::fs::File::create(&path).expect("create the config file");
    (path, f)
}

fn values_case(bytes: &[u8]) {
    let value = String::from_utf8_lossy(bytes);
    let value = if bytes.first().is_some_and(|b| b & 1 == 0) {
        text(bytes)
    } else {
        value.into_owned()
    };
    for s in settings::SETTINGS {
        match s.parse(&value) {
            Ok(v) => {
                // What parses round-trips through what `nat get` prints.
                let mut cfg = nat_common::config::Config::default();
                s.apply(&mut cfg, v);
                assert_eq!(s.parse(&s.format(&cfg)), Ok(v), "{} {value:?}", s.name);
            }
            Err(e) => one_line(s.name, &value, &e),
        }
    }
    if let Err(e) = settings::find(&value) {
        one_line("setting name", &value, &e);
    }
    match cli::parse_cidr(&value) {
        Ok(c) => {
            assert!(c.len <= 32);
            assert!(c.contains(c.addr), "a prefix holds its own address");
        }
        Err(e) => one_line("prefix", &value, &e),
    }
    match cli::parse_port_range(&value) {
        Ok(r) => assert!(r.lo >= 1 && r.lo <= r.hi),
        Err(e) => one_line("port range", &value, &e),
    }
    match cli::parse_duration_ms(&value) {
        Ok(ms) => assert!(ms <= cli::MAX_DURATION_MS),
        Err(e) => one_line("duration", &value, &e),
    }
    if let Err(e) = cli::parse_ipv4(&value) {
        one_line("address", &value, &e);
    }
}

#[test]
fn fuzz_userspace_text() {
    bolero::check!().for_each(|b: &[u8]| {
        if b.first().is_some_and(|x| x & 0x80 != 0) {
            config_case(&b[1..]);
        } else {
            values_case(b);
        }
    });
}

/// Inputs worth keeping (findings go here too).
#[test]
fn fuzz_userspace_text_regressions() {
    for v in [
        "",
        "-",
        "0-0",
        "65535-65535",
        "0/0",
        "255.255.255.255/32",
        "18446744073709551615s",
        "1h",
    ] {
        values_case(v.as_bytes());
    }
    config_case(b"");
    config_case(&[0, 16, 27, 1]);
}
