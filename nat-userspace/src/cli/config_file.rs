//! `nat load --config FILE`: a TOML file whose keys are the long names of the
//! `nat load` flags. The file is turned into flags before the command line is
//! parsed, so every value goes through the flag's own parser and range check,
//! and a flag given on the command line wins over the file: over the key of
//! the same name and over a key it conflicts with, at load and on every
//! reload (which re-reads the file against the daemon's own command line),
//! each time saying so in one line per key whose value it sets aside.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, CommandFactory as _, Parser, parser::ValueSource};
use toml::{Spanned, Value};

use crate::cli::{Cli, Command, LoadArgs};

/// A problem with a config file, as one line: the file, the line and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// One key of the file with its value as flag text.
#[derive(Debug, Clone)]
struct Entry {
    /// Long name of the flag.
    key: String,
    /// Clap's id of the flag.
    id: String,
    line: usize,
    /// One element per value; lists become several.
    values: Vec<String>,
    /// A switch (`replace = true`): given as a bare flag when true, left
    /// out when false.
    switch: Option<bool>,
    /// A list flag whose values may hold commas themselves (`forward`):
    /// given once per value rather than joined.
    repeated: bool,
    /// The value as the file writes it (`"1000-1999"`, `["a", "b"]`, `true`).
    shown: String,
}

/// A file key set aside for the command line's flag, for the line saying so:
/// `--ports 2000-2999 overrides ports = "1000-1999" from /etc/nat/nat.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The winning flag as the command line gives it.
    pub flag: String,
    /// `key = value` as the file has it.
    pub key: String,
    pub file: PathBuf,
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} overrides {} from {}",
            self.flag,
            self.key,
            self.file.display()
        )
    }
}

/// A command line with its config file's keys added as flags.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub argv: Vec<OsString>,
    /// The file's keys whose value the command line set aside, in file order.
    pub overrides: Vec<Override>,
}

/// A config file read and checked key by key.
#[derive(Debug)]
pub struct Document {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// The flags a file may set: every `nat load` flag except `--config` itself.
fn load_command() -> clap::Command {
    Cli::command()
        .find_subcommand("load")
        .expect("the CLI has a load subcommand")
        .clone()
}

/// Whether a `nat load` argument has a key in the file: every flag but
/// `--config` itself and `--help`.
fn settable(arg: &clap::Arg) -> bool {
    !matches!(arg.get_id().as_str(), "config" | "help" | "version")
        && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Document {
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let fail = |line: Option<usize>, message: String| FileError {
            file: path.to_path_buf(),
            line,
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(None, format!("cannot read it: {e}")))?;
        let table: BTreeMap<Spanned<String>, Spanned<Value>> =
            toml::from_str(&text).map_err(|e| {
                let line = e.span().map(|s| line_of(&text, s.start));
                fail(line, e.message().trim().replace('\n', " "))
            })?;
        let cmd = load_command();
        let relaxed = cmd.clone().mut_args(|a| a.required(false));
        let mut entries = Vec::new();
        // In file order, so the first error reported is the first in the file.
        let mut table: Vec<_> = table.into_iter().collect();
        table.sort_by_key(|(key, _)| key.span().start);
        for (key, value) in table {
            let line = line_of(&text, key.span().start);
            let name = key.get_ref().as_str();
            let arg = cmd
                .get_arguments()
                .find(|a| {
                    settable(a)
                        && (a.get_long() == Some(name)
                            || a.get_all_aliases().is_some_and(|all| all.contains(&name)))
                })
                .ok_or_else(|| {
                    let keys: Vec<&str> = cmd
                        .get_arguments()
                        .filter(|a| settable(a))
                        .filter_map(|a| a.get_long())
                        .collect();
                    fail(
                        Some(line),
                        format!("unknown key '{name}' (one of: {})", keys.join(", ")),
                    )
                })?;
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                let Value::Boolean(on) = value.get_ref() else {
                    return Err(fail(Some(line), format!("{name}: expected true or false")));
                };
                entries.push(Entry {
                    key: name.to_owned(),
                    id: arg.get_id().to_string(),
                    line,
                    values: Vec::new(),
                    switch: Some(*on),
                    repeated: false,
                    shown: value.get_ref().to_string(),
                });
                continue;
            }
            let list = matches!(arg.get_action(), ArgAction::Append);
            let values = match value.get_ref() {
                Value::Array(items) if list => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        fail(Some(line), format!("{name}: expected a list of strings"))
                    })?,
                Value::Array(_) => {
                    return Err(fail(
                        Some(line),
                        format!("{name}: takes one value, not a list"),
                    ));
                }
                v => vec![scalar(v).ok_or_else(|| {
                    fail(Some(line), format!("{name}: expected a string or a number"))
                })?],
            };
            for v in &values {
                check_value(&relaxed, name, v)
                    .map_err(|m| fail(Some(line), format!("{name}: {m}")))?;
            }
            entries.push(Entry {
                key: name.to_owned(),
                id: arg.get_id().to_string(),
                line,
                values,
                switch: None,
                repeated: list && arg.get_value_delimiter().is_none(),
                shown: value.get_ref().to_string(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The line of `key`, for errors that concern a value after parsing.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.entries.iter().find(|e| e.key == key).map(|e| e.line)
    }

    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> FileError {
        FileError {
            file: self.path.clone(),
            line: self.line(key),
            message: format!("{key}: {message}"),
        }
    }

    /// `--key=value` for every key, skipping the flags `given` says are set elsewhere.
    fn flags(&self, given: impl Fn(&str) -> bool) -> Vec<OsString> {
        self.entries
            .iter()
            .filter(|e| !given(&e.id))
            .flat_map(|e| match e.switch {
                Some(true) => vec![format!("--{}", e.key).into()],
                Some(false) => Vec::new(),
                None if e.repeated => e
                    .values
                    .iter()
                    .map(|v| format!("--{}={v}", e.key).into())
                    .collect(),
                None => vec![format!("--{}={}", e.key, e.values.join(",")).into()],
            })
            .collect()
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        _ => None,
    }
}

/// Runs the flag's own value parser on one value (through clap, with the
/// required flags relaxed), so the file accepts exactly what the command
/// line does.
fn check_value(relaxed: &clap::Command, long: &str, value: &str) -> Result<(), String> {
    let flag = format!("--{long}={value}");
    let Err(e) = relaxed
        .clone()
        .try_get_matches_from(["load", flag.as_str()])
    else {
        return Ok(());
    };
    if let Some(inner) = std::error::Error::source(&e) {
        let text = inner.to_string();
        return Err(text
            .strip_prefix(&format!("{long}: "))
            .map(str::to_owned)
            .unwrap_or(text));
    }
    let text = e.render().to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines
        .next()
        .unwrap_or("invalid value")
        .trim_start_matches("error: ");
    let first = first.split(" for '--").next().unwrap_or(first);
    Err(match lines.find(|l| l.contains("possible values")) {
        Some(p) => format!("{first} {}", p.trim()),
        None => first.to_owned(),
    })
}

/// The command line with the config file's keys added as flags, for the keys
/// the command line does not set itself. Unchanged without `load --config`;
/// a command line that does not parse is left for the real parse to report.
pub fn expand_argv(argv: Vec<OsString>) -> Result<Expanded, FileError> {
    let unchanged = |argv| {
        Ok(Expanded {
            argv,
            overrides: Vec::new(),
        })
    };
    // Required flags may come from the file, so the first look is without them.
    let relaxed = Cli::command().mut_subcommand("load", |s| s.mut_args(|a| a.required(false)));
    let Ok(matches) = relaxed.try_get_matches_from(&argv) else {
        return unchanged(argv);
    };
    let Some(("load", load)) = matches.subcommand() else {
        return unchanged(argv);
    };
    let Some(path) = load.get_one::<PathBuf>("config") else {
        return unchanged(argv);
    };
    let doc = Document::read(path)?;
    let on_command_line = |id: &str| load.value_source(id) == Some(ValueSource::CommandLine);
    let cmd = load_command();
    // A file key yields to the command line both when the same flag is given
    // there and when a flag it conflicts with is (`no-fast-path = true` in
    // the file and `--fast-path lan0` on the command line): the flag wins.
    // Clap keeps a conflict on the flag that declares it, so both sides are asked.
    let conflict = |a: &clap::Arg, b: &clap::Arg| {
        let declares = |x: &clap::Arg, y: &clap::Arg| {
            cmd.get_arg_conflicts_with(x)
                .iter()
                .any(|c| c.get_id() == y.get_id())
        };
        declares(a, b) || declares(b, a)
    };
    // The command-line flags that win over the file's key `id`.
    let winners = |id: &str| -> Vec<&clap::Arg> {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
            return Vec::new();
        };
        cmd.get_arguments()
            .filter(|c| on_command_line(c.get_id().as_str()))
            .filter(|c| c.get_id() == arg.get_id() || conflict(arg, c))
            .collect()
    };
    let given = |id: &str| !winners(id).is_empty();
    if let Some(long) = load_command()
        .get_arguments()
        .filter(|a| a.is_required_set() && !given(a.get_id().as_str()))
        .filter_map(|a| a.get_long())
        .find(|l| doc.line(l).is_none())
    {
        return Err(FileError {
            file: path.clone(),
            line: None,
            message: format!("missing key '{long}' (or give --{long})"),
        });
    }
    let overrides = doc
        .entries
        .iter()
        .flat_map(|e| {
            winners(&e.id)
                .into_iter()
                .filter(move |w| w.get_id() != e.id.as_str() || as_given(load, w) != e.as_flag())
                .map(move |w| Override {
                    flag: as_given(load, w),
                    key: format!("{} = {}", e.key, e.shown),
                    file: path.clone(),
                })
        })
        .collect();
    let extra = doc.flags(given);
    let mut out = argv;
    out.extend(extra);
    Ok(Expanded {
        argv: out,
        overrides,
    })
}

impl Entry {
    /// The flag this key stands for, written as [`as_given`] writes a flag
    /// of the command line, to tell an override from the same value twice.
    fn as_flag(&self) -> String {
        match self.switch {
            Some(true) => format!("--{}", self.key),
            Some(false) => String::new(),
            None if self.repeated => self
                .values
                .iter()
                .map(|v| format!("--{} {v}", self.key))
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("--{} {}", self.key, self.values.join(",")),
        }
    }
}

/// A flag of the command line with its values, as the operator gave them
/// (under its own name, not an alias).
fn as_given(load: &clap::ArgMatches, arg: &clap::Arg) -> String {
    let long = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return format!("--{long}");
    }
    let values: Vec<String> = load
        .get_raw(arg.get_id().as_str())
        .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if matches!(arg.get_action(), ArgAction::Append) && arg.get_value_delimiter().is_none() {
        return values
            .iter()
            .map(|v| format!("--{long} {v}"))
            .collect::<Vec<_>>()
            .join(" ");
    }
    format!("--{long} {}", values.join(","))
}

/// The `nat load` arguments this process would have from its own command
/// line and the config file as it is now: what a reload applies, with the
/// file's keys its command line sets aside.
pub fn reread() -> anyhow::Result<(LoadArgs, Vec<Override>)> {
    let Expanded { argv, overrides } = expand_argv(std::env::args_os().collect())?;
    match Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!(first_line(&e)))? {
        Cli {
            command: Command::Load(args),
            ..
        } => Ok((*args, overrides)),
        _ => anyhow::bail!("this process was not started as `nat load`"),
    }
}

fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned()
}

/// `nat check-config FILE`: the file on its own must make a complete, valid
/// `nat load` (the interface itself is not looked up).
pub fn check(file: &Path) -> Result<LoadArgs, FileError> {
    let doc = Document::read(file)?;
    let mut argv: Vec<OsString> = vec!["nat".into(), "load".into()];
    argv.extend(doc.flags(|_| false));
    let args = match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Load(args),
            ..
        }) => *args,
        Ok(_) => unreachable!("the arguments start with load"),
        Err(e) => {
            // Values were checked one by one; what is left is a missing key.
            let missing = load_command()
                .get_arguments()
                .filter(|a| a.is_required_set())
                .filter_map(|a| a.get_long())
                .find(|l| doc.line(l).is_none())
                .map(|l| format!("missing key '{l}'"))
                .unwrap_or_else(|| first_line(&e));
            return Err(FileError {
                file: file.to_path_buf(),
                line: None,
                message: missing,
            });
        }
    };
    crate::datapath::pool::check_addresses(&args.external, &args.internal)
        .map_err(|m| doc.error("external", m))?;
    crate::cli::forward::check_all(&args.forward, &args.internal, &args.external)
        .map_err(|m| doc.error("forward", m))?;
    if let Err(m) = args.export.check() {
        let key = m.split(':').next().unwrap_or_default().to_owned();
        return Err(FileError {
            file: file.to_path_buf(),
            line: doc.line(&key),
            message: m,
        });
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A tiny temp file helper; the tests need nothing more.
    mod tempfile_path {
        use std::path::PathBuf;

        pub struct TempFile(pub PathBuf);

        impl TempFile {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "nat-config-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// `nat load --config FILE EXTRA...` as the daemon reads it.
    fn load_with(f: &tempfile_path::TempFile, extra: &[&str]) -> LoadArgs {
        let mut args = vec!["nat", "load", "--config", f.0.to_str().unwrap()];
        args.extend_from_slice(extra);
        parse(expand_argv(argv(&args)).unwrap().argv)
    }

    fn parse(args: Vec<OsString>) -> LoadArgs {
        match Cli::try_parse_from(args)
            .unwrap_or_else(|e| panic!("{e}"))
            .command
        {
            Command::Load(a) => *a,
            _ => panic!("not load"),
        }
    }

    /// A value each flag accepts that differs from its default, given as
    /// (flag, command-line text, file text).
    fn sample(long: &str) -> (&'static str, &'static str) {
        match long {
            "iface" => ("eth9", "\"eth9\""),
            "external" => ("192.0.2.1,192.0.2.2", "[\"192.0.2.1\", \"192.0.2.2\"]"),
            "internal" => (
                "10.0.0.0/8,172.16.0.0/12",
                "[\"10.0.0.0/8\", \"172.16.0.0/12\"]",
            ),
            "ports" => ("20000-20999", "\"20000-20999\""),
            "ingress" => ("tc", "\"tc\""),
            "xdp-mode" => ("skb", "\"skb\""),
            "fast-path" => ("veth1,veth2", "[\"veth1\", \"veth2\"]"),
            "max-sessions" => ("4096", "4096"),
            "max-cooldowns" => ("8192", "8192"),
            "max-sessions-per-host" => ("500", "500"),
            "sweep-interval-ms" => ("250", "250"),
            "cooldown-enabled" => ("off", "false"),
            "policy" => ("strict", "\"strict\""),
            "on-exhaustion" => ("reject", "\"reject\""),
            "log-events" => ("on", "true"),
            "log-sessions" => ("on", "true"),
            "allocation" => ("blocks", "\"blocks\""),
            "block-size" => ("128", "128"),
            "max-blocks-per-host" => ("4", "4"),
            "pool-threshold" => ("90", "90"),
            "mapping-udp" => ("address-port-dependent", "\"address-port-dependent\""),
            "mapping-tcp" => ("endpoint-independent", "\"endpoint-independent\""),
            "filtering-udp" => ("endpoint-independent", "\"endpoint-independent\""),
            "metrics" => ("127.0.0.1:9109", "\"127.0.0.1:9109\""),
            "metrics-top" => ("7", "7"),
            "metrics-interval-ms" => ("3000", "3000"),
            "ipfix-collector" => (
                "192.0.2.10:4739,[2001:db8::10]:4740",
                "[\"192.0.2.10:4739\", \"[2001:db8::10]:4740\"]",
            ),
            "ipfix-template-refresh" => ("30s", "\"30s\""),
            "ipfix-observation-domain" => ("7", "7"),
            "syslog-server" => ("192.0.2.20:514", "[\"192.0.2.20:514\"]"),
            // Values with commas of their own: the file's list is one flag
            // per value (the test adds the second flag).
            "forward" => (
                "tcp,192.0.2.1:8443,10.0.0.5:443",
                "[\"tcp,192.0.2.1:8443,10.0.0.5:443\", \"udp,192.0.2.2:5000-5009,172.16.0.5:6000-6009\"]",
            ),
            l if l.starts_with("cooldown") || l.starts_with("timeout") => ("123s", "\"123s\""),
            other => panic!("no sample value for --{other}: add one"),
        }
    }

    #[test]
    fn every_flag_round_trips_through_the_file() {
        let cmd = load_command();
        // --no-fast-path conflicts with --fast-path, which is given here.
        let args: Vec<&clap::Arg> = cmd
            .get_arguments()
            .filter(|a| settable(a) && a.get_long() != Some("no-fast-path"))
            .collect();
        assert!(
            args.len() >= 20,
            "{:?}",
            args.iter().map(|a| a.get_long()).collect::<Vec<_>>()
        );
        let mut flags = vec!["nat".to_owned(), "load".to_owned()];
        let mut text = String::new();
        for arg in &args {
            let long = arg.get_long().expect("load flags are long");
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                flags.push(format!("--{long}"));
                text.push_str(&format!("{long} = true\n"));
                continue;
            }
            let (flag, toml) = sample(long);
            flags.push(format!("--{long}={flag}"));
            if long == "forward" {
                flags.push("--forward=udp,192.0.2.2:5000-5009,172.16.0.5:6000-6009".to_owned());
            }
            text.push_str(&format!("{long} = {toml}\n"));
        }
        let f = file(&text);
        let from_flags = parse(flags.iter().map(OsString::from).collect());
        let from_file = load_with(&f, &[]);
        // Same arguments apart from the config path itself.
        let mut expected = from_flags;
        expected.config.config = Some(f.0.clone());
        assert_eq!(format!("{expected:?}"), format!("{from_file:?}"));
        assert!(check(&f.0).is_ok());
    }

    #[test]
    fn the_example_config_checks() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nat.toml");
        check(Path::new(example)).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            "iface = \"eth0\"\nexternal = [\"192.0.2.1\"]\ninternal = [\"10.0.0.0/8\"]\nports = \"20000-20999\"\ncooldown = \"5s\"\n",
        );
        let args = load_with(&f, &["--ports", "30000-30099", "--external", "192.0.2.9"]);
        assert_eq!((args.ports.lo, args.ports.hi), (30000, 30099));
        assert_eq!(
            args.external,
            vec!["192.0.2.9".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let given = args.settings.given();
        assert!(given.contains(&("cooldown", Some(5000))), "{given:?}");
        assert_eq!(args.iface, "eth0");
    }

    #[test]
    fn a_flag_wins_over_a_file_key_it_conflicts_with() {
        let f = file(
            "iface = \"eth0\"\nexternal = [\"192.0.2.1\"]\ninternal = [\"10.0.0.0/8\"]\nno-fast-path = true\n",
        );
        let args = load_with(&f, &["--fast-path", "lan0"]);
        assert!(!args.no_fast_path);
        assert_eq!(
            format!("{:?}", args.fast_path),
            format!(
                "{:?}",
                parse(argv(&[
                    "nat",
                    "load",
                    "--iface",
                    "eth0",
                    "--external",
                    "192.0.2.1",
                    "--internal",
                    "10.0.0.0/8",
                    "--fast-path",
                    "lan0"
                ]))
                .fast_path
            )
        );
        // Without the flag the file's key holds.
        let args = load_with(&f, &[]);
        assert!(args.no_fast_path);
    }

    #[test]
    fn each_key_a_flag_sets_aside_is_named_in_one_line() {
        let f = file(
            "iface = \"eth0\"\nexternal = [\"192.0.2.1\"]\ninternal = [\"10.0.0.0/8\"]\nports = \"1000-1999\"\ncooldown = \"5s\"\nno-fast-path = true\ncooldown-enabled = false\n",
        );
        let config = f.0.to_str().unwrap().to_owned();
        let overrides = |extra: &[&str]| -> Vec<String> {
            let mut args = vec!["nat", "load", "--config", &config];
            args.extend_from_slice(extra);
            let expanded = expand_argv(argv(&args)).unwrap();
            expanded.overrides.iter().map(ToString::to_string).collect()
        };
        assert!(overrides(&[]).is_empty());
        // The same value twice sets nothing aside.
        assert_eq!(
            overrides(&[
                "--ports",
                "2000-2999",
                "--cooldown",
                "5s",
                "--iface=eth0",
                "--no-fast-path",
                "--cooldown-enabled",
                "off"
            ]),
            [format!(
                "--ports 2000-2999 overrides ports = \"1000-1999\" from {config}"
            )]
        );
        assert_eq!(
            overrides(&["--lan", "lan0,lan1", "--external", "192.0.2.7,192.0.2.8"]),
            [
                format!(
                    "--external 192.0.2.7,192.0.2.8 overrides external = [\"192.0.2.1\"] from {config}"
                ),
                format!("--fast-path lan0,lan1 overrides no-fast-path = true from {config}"),
            ]
        );
        assert_eq!(
            overrides(&["--cooldown-enabled=on"]),
            [format!(
                "--cooldown-enabled on overrides cooldown-enabled = false from {config}"
            )]
        );
    }

    #[test]
    fn a_bad_key_or_value_names_it_and_its_line() {
        let base = "iface = \"eth0\"\nexternal = [\"192.0.2.1\"]\ninternal = [\"10.0.0.0/8\"]\n";
        let cases = [
            ("colddown = \"5s\"\n", 4, "unknown key 'colddown'"),
            (
                "ports = \"9-1\"\n",
                4,
                "ports: port range '9-1' is inverted",
            ),
            (
                "cooldown = \"soon\"\n",
                4,
                "cooldown: 'soon' is not a duration",
            ),
            ("max-sessions = 12\n", 4, "max-sessions:"),
            ("ingress = \"ebpf\"\n", 4, "ingress: invalid value 'ebpf'"),
            ("policy = [\"strict\"]\n", 4, "policy: takes one value"),
            ("ports = \n", 4, ""),
            ("help = \"x\"\n", 4, "unknown key 'help'"),
            ("config = \"/etc/other.toml\"\n", 4, "unknown key 'config'"),
            (
                "ipfix-collector = [\"collector.example\"]\n",
                4,
                "ipfix-collector: 'collector.example' is not an address",
            ),
            (
                "ipfix-template-refresh = \"0s\"\n",
                4,
                "ipfix-template-refresh: '0s' is out of range (1s to 1h)",
            ),
            (
                "\nsyslog-server = [\"192.0.2.1\", \"192.0.2.1:514\"]\n",
                5,
                "syslog-server: 192.0.2.1:514 is given twice",
            ),
        ];
        for (extra, line, words) in cases {
            let f = file(&format!("{base}{extra}"));
            let e = check(&f.0).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.line, Some(line), "{text}");
            assert!(text.contains(words), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
        }
        let f = file("external = [\"192.0.2.1\"]\ninternal = [\"10.0.0.0/8\"]\n");
        assert!(
            check(&f.0)
                .unwrap_err()
                .to_string()
                .contains("missing key 'iface'")
        );
        let config = f.0.to_str().unwrap().to_owned();
        let e = expand_argv(argv(&["nat", "load", "--config", &config])).unwrap_err();
        assert!(e.to_string().contains("missing key 'iface'"), "{e}");
        assert!(expand_argv(argv(&["nat", "load", "--config", &config, "--iface", "x"])).is_ok());
        let f =
            file("iface = \"eth0\"\n\ninternal = [\"10.0.0.0/8\"]\nexternal = [\"10.0.0.1\"]\n");
        let e = check(&f.0).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().contains("inside internal prefix"), "{e}");
    }
}
