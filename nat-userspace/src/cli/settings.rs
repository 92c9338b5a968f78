//! Live settings: one table shared by the `nat load` flags and `nat set`/`nat get`,
//! so a name parses and validates the same way everywhere.

use nat_common::{
    blocks::MAX_BLOCKS_PER_HOST,
    config::{Config, exhaustion, policy},
    mapping::{filtering, mode},
};

use crate::cli::parse::{MAX_DURATION_MS, parse_duration_ms};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Milliseconds within [min, MAX_DURATION_MS].
    Duration {
        min: u64,
    },
    OnOff,
    Policy,
    Exhaustion,
    /// One of these words, each standing for its value.
    Choice(&'static [(&'static str, u32)]),
    /// A count within [0, max]; 0 means no limit.
    Limit {
        max: u64,
    },
    /// A count within [min, max].
    Count {
        min: u64,
        max: u64,
    },
    /// A percent, 0 (off) to 100.
    Percent,
}

const MAPPING: &[(&str, u32)] = &[
    ("endpoint-independent", mode::ENDPOINT_INDEPENDENT),
    ("address-port-dependent", mode::ADDRESS_PORT_DEPENDENT),
];

const FILTERING: &[(&str, u32)] = &[
    ("endpoint-independent", filtering::ENDPOINT_INDEPENDENT),
    ("address-dependent", filtering::ADDRESS_DEPENDENT),
    ("address-port-dependent", filtering::ADDRESS_PORT_DEPENDENT),
];

/// `a|b|c`, for a value name.
fn words(choices: &[(&str, u32)]) -> String {
    choices.iter().map(|c| c.0).collect::<Vec<_>>().join("|")
}

pub struct Setting {
    pub name: &'static str,
    pub help: &'static str,
    kind: Kind,
    get: fn(&Config) -> u64,
    set: fn(&mut Config, u64),
}

macro_rules! field {
    ($f:ident) => {
        (
            |c: &Config| c.$f as u64,
            |c: &mut Config, v: u64| c.$f = v as _,
        )
    };
}

/// Reads and writes one field of [`Config`].
type Accessors = (fn(&Config) -> u64, fn(&mut Config, u64));

const fn setting(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    (get, set): Accessors,
) -> Setting {
    Setting {
        name,
        help,
        kind,
        get,
        set,
    }
}

pub const SETTINGS: &[Setting] = &[
    setting(
        "cooldown",
        "cooldown after the external side closed first, both at once, or an idle expiry",
        Kind::Duration { min: 0 },
        field!(cooldown_ms),
    ),
    setting(
        "cooldown-local-close",
        "cooldown after the internal side closed first",
        Kind::Duration { min: 0 },
        field!(cooldown_local_close_ms),
    ),
    setting(
        "cooldown-rst",
        "cooldown after a reset",
        Kind::Duration { min: 0 },
        field!(cooldown_rst_ms),
    ),
    setting(
        "cooldown-udp",
        "cooldown after a UDP flow expired",
        Kind::Duration { min: 0 },
        field!(cooldown_udp_ms),
    ),
    setting(
        "cooldown-icmp",
        "cooldown after an ICMP echo session expired",
        Kind::Duration { min: 0 },
        field!(cooldown_icmp_ms),
    ),
    setting(
        "cooldown-enabled",
        "on: never hand out a cooling key; off: a port is reusable as soon as its session ends",
        Kind::OnOff,
        field!(cooldown_enabled),
    ),
    setting(
        "policy",
        "when every candidate is live or cooling: fallback takes the soonest-cooling port, strict drops",
        Kind::Policy,
        field!(policy),
    ),
    setting(
        "on-exhaustion",
        "a TCP SYN that gets no port: drop it (the client retries), or reject it with ICMP administratively prohibited (it fails fast)",
        Kind::Exhaustion,
        field!(on_exhaustion),
    ),
    setting(
        "log-events",
        "on: log rare drops (no free port, strict cooling, malformed packets, refused rewrites) with their addresses through the daemon's log",
        Kind::OnOff,
        field!(log_events),
    ),
    setting(
        "mapping-udp",
        "external endpoint of new UDP flows: endpoint-independent gives every flow of an internal address and port the same external address and port, for any destination (peer-to-peer works); address-port-dependent picks a port per destination",
        Kind::Choice(MAPPING),
        field!(mapping_udp),
    ),
    setting(
        "mapping-tcp",
        "external endpoint of new TCP connections, as for mapping-udp; address-port-dependent gives a whole port range per destination, which the TIME_WAIT cooldown needs under load",
        Kind::Choice(MAPPING),
        field!(mapping_tcp),
    ),
    setting(
        "filtering-udp",
        "which UDP packets from outside reach an endpoint-independent mapping's internal endpoint: from anyone (endpoint-independent), from addresses it sent to (address-dependent), or only from addresses and ports it sent to (address-port-dependent)",
        Kind::Choice(FILTERING),
        field!(filtering_udp),
    ),
    setting(
        "max-sessions-per-host",
        "live sessions one internal address may hold; its new flows past it are refused (drop_host_limit; ICMP administratively prohibited under on-exhaustion reject), its existing flows and other hosts untouched; 0: no limit",
        Kind::Limit { max: 16_777_216 },
        field!(max_sessions_per_host),
    ),
    setting(
        "max-blocks-per-host",
        "port blocks one internal address may hold at once (allocation blocks); its new flows past them, when its blocks have no usable port toward the destination, are refused (drop_block_limit)",
        Kind::Count {
            min: 1,
            max: MAX_BLOCKS_PER_HOST as u64,
        },
        field!(max_blocks_per_host),
    ),
    setting(
        "pool-threshold",
        "percent of an external address's blocks in use at which a threshold event is logged, as the count passes it upward (allocation blocks); 0: none",
        Kind::Percent,
        field!(pool_threshold),
    ),
    setting(
        "log-sessions",
        "log each session's creation and deletion as a compliance event (IPFIX, syslog); off, blocks and exhaustion are logged",
        Kind::OnOff,
        field!(log_sessions),
    ),
    setting(
        "timeout-tcp-established",
        "idle timeout of established TCP sessions",
        Kind::Duration { min: 1000 },
        field!(timeout_tcp_established_ms),
    ),
    setting(
        "timeout-tcp-transitory",
        "idle timeout of opening or half-closed TCP sessions",
        Kind::Duration { min: 1000 },
        field!(timeout_tcp_transitory_ms),
    ),
    setting(
        "timeout-tcp-closed",
        "how long a closed or reset TCP session keeps its mapping",
        Kind::Duration { min: 100 },
        field!(timeout_tcp_closed_ms),
    ),
    setting(
        "timeout-udp",
        "idle timeout of UDP flows",
        Kind::Duration { min: 1000 },
        field!(timeout_udp_ms),
    ),
    setting(
        "timeout-icmp",
        "idle timeout of ICMP echo sessions",
        Kind::Duration { min: 1000 },
        field!(timeout_icmp_ms),
    ),
];

pub fn find(name: &str) -> Result<&'static Setting, String> {
    SETTINGS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        format!("unknown setting '{name}' (one of: {})", names.join(", "))
    })
}

impl Setting {
    /// Parses and range-checks a value given on the command line.
    pub fn parse(&self, value: &str) -> Result<u64, String> {
        let v = value.trim();
        match self.kind {
            Kind::Duration { min } => {
                let ms = parse_duration_ms(v).map_err(|e| format!("{}: {e}", self.name))?;
                if ms < min {
                    return Err(format!(
                        "{}: {value} is below the minimum of {min} ms",
                        self.name
                    ));
                }
                Ok(ms)
            }
            Kind::OnOff => match v {
                "on" | "true" | "1" => Ok(1),
                "off" | "false" | "0" => Ok(0),
                _ => Err(format!("{}: '{value}' is not on or off", self.name)),
            },
            Kind::Exhaustion => match v {
                "drop" => Ok(exhaustion::DROP as u64),
                "reject" => Ok(exhaustion::REJECT as u64),
                _ => Err(format!("{}: '{value}' is not drop or reject", self.name)),
            },
            Kind::Count { min, max } => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                Ok(_) => Err(format!("{}: {value} is outside {min} to {max}", self.name)),
                Err(_) => Err(format!("{}: '{value}' is not a whole number", self.name)),
            },
            Kind::Percent => match v.trim_end_matches('%').parse::<u64>() {
                Ok(n) if n <= 100 => Ok(n),
                Ok(_) => Err(format!("{}: {value} is above 100", self.name)),
                Err(_) => Err(format!("{}: '{value}' is not a percent", self.name)),
            },
            Kind::Limit { max } => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                Ok(_) => Err(format!(
                    "{}: {value} is above the maximum of {max}",
                    self.name
                )),
                Err(_) => Err(format!("{}: '{value}' is not a whole number", self.name)),
            },
            Kind::Policy => match v {
                "fallback" => Ok(policy::FALLBACK as u64),
                "strict" => Ok(policy::STRICT as u64),
                _ => Err(format!(
                    "{}: '{value}' is not strict or fallback",
                    self.name
                )),
            },
            Kind::Choice(choices) => choices
                .iter()
                .find(|c| c.0 == v)
                .map(|c| c.1 as u64)
                .ok_or_else(|| {
                    format!(
                        "{}: '{value}' is not one of {}",
                        self.name,
                        words(choices).replace('|', ", ")
                    )
                }),
        }
    }

    pub fn get(&self, cfg: &Config) -> u64 {
        (self.get)(cfg)
    }

    pub fn apply(&self, cfg: &mut Config, value: u64) {
        (self.set)(cfg, value)
    }

    /// The value as `nat get` prints it and `nat set` accepts it back.
    pub fn format(&self, cfg: &Config) -> String {
        let v = self.get(cfg);
        match self.kind {
            Kind::Duration { .. } => format!("{v}ms"),
            Kind::Limit { .. } | Kind::Count { .. } => v.to_string(),
            Kind::Percent => format!("{v}%"),
            Kind::OnOff => if v != 0 { "on" } else { "off" }.to_owned(),
            Kind::Policy => if v == policy::STRICT as u64 {
                "strict"
            } else {
                "fallback"
            }
            .to_owned(),
            Kind::Exhaustion => if v == exhaustion::REJECT as u64 {
                "reject"
            } else {
                "drop"
            }
            .to_owned(),
            Kind::Choice(choices) => choices
                .iter()
                .find(|c| c.1 as u64 == v)
                .map_or_else(|| v.to_string(), |c| c.0.to_owned()),
        }
    }

    /// The value for JSON output: milliseconds as numbers, the rest as words.
    pub fn json(&self, cfg: &Config) -> serde_json::Value {
        match self.kind {
            Kind::Duration { .. } | Kind::Limit { .. } | Kind::Count { .. } | Kind::Percent => {
                serde_json::json!(self.get(cfg))
            }
            _ => serde_json::json!(self.format(cfg)),
        }
    }
}

impl Setting {
    /// The `nat load` flag of this setting, documented from the table.
    pub fn flag(&'static self) -> clap::Arg {
        clap::Arg::new(self.name)
            .long(self.name)
            .value_name(match self.kind {
                Kind::Duration { .. } => "DURATION",
                Kind::Limit { .. } | Kind::Count { .. } => "N",
                Kind::Percent => "PERCENT",
                Kind::OnOff => "on|off",
                Kind::Policy => "strict|fallback",
                Kind::Exhaustion => "drop|reject",
                // The words are in the help's range.
                Kind::Choice(_) => "MODE",
            })
            .help(format!(
                "{}{} [default: {}; {}]",
                self.help[..1].to_uppercase(),
                &self.help[1..],
                self.default_text(),
                self.range_text()
            ))
            .value_parser(move |v: &str| self.parse(v))
    }

    /// The default, durations in the largest unit that divides them.
    fn default_text(&self) -> String {
        let v = self.get(&Config::default());
        match self.kind {
            Kind::Duration { .. } => human_ms(v),
            _ => self.format(&Config::default()),
        }
    }

    fn range_text(&self) -> String {
        match self.kind {
            Kind::Duration { min } => {
                format!("{} to {}", human_ms(min), human_ms(MAX_DURATION_MS))
            }
            Kind::Limit { max } => format!("0 (no limit) to {max}"),
            Kind::Count { min, max } => format!("{min} to {max}"),
            Kind::Percent => "0 (off) to 100".to_owned(),
            Kind::OnOff => "on or off".to_owned(),
            Kind::Policy => "strict or fallback".to_owned(),
            Kind::Exhaustion => "drop or reject".to_owned(),
            Kind::Choice(choices) => words(choices).replace('|', ", "),
        }
    }
}

/// `240000` -> `4m`, `1500` -> `1500ms`, `0` -> `0`.
fn human_ms(ms: u64) -> String {
    match ms {
        0 => "0".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_round_trips_through_get_and_set() {
        let mut cfg = Config::default();
        for s in SETTINGS {
            let printed = s.format(&cfg);
            let parsed = s.parse(&printed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed, s.get(&cfg), "{}", s.name);
            s.apply(&mut cfg, parsed);
        }
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn values_are_validated() {
        assert_eq!(find("cooldown").unwrap().parse("240s"), Ok(240_000));
        assert_eq!(find("cooldown").unwrap().parse("0"), Ok(0));
        assert!(find("cooldown").unwrap().parse("100000001").is_err());
        assert!(find("cooldown").unwrap().parse("soon").is_err());
        assert_eq!(find("cooldown-enabled").unwrap().parse("off"), Ok(0));
        assert!(find("cooldown-enabled").unwrap().parse("maybe").is_err());
        assert_eq!(
            find("policy").unwrap().parse("strict"),
            Ok(policy::STRICT as u64)
        );
        assert!(find("policy").unwrap().parse("random").is_err());
        assert!(find("timeout-udp").unwrap().parse("10ms").is_err());
        assert!(find("no-such").is_err());
        let limit = find("max-sessions-per-host").unwrap();
        assert_eq!(limit.parse("0"), Ok(0));
        assert_eq!(limit.parse("4096"), Ok(4096));
        assert!(limit.parse("-1").is_err());
        assert!(limit.parse("lots").is_err());
        assert!(limit.parse("16777217").is_err());
    }

    #[test]
    fn flag_help_gives_meaning_default_and_range() {
        let help = find("cooldown")
            .unwrap()
            .flag()
            .get_help()
            .unwrap()
            .to_string();
        assert!(
            help.starts_with("Cooldown after the external side"),
            "{help}"
        );
        assert!(help.contains("[default: 4m; 0 to "), "{help}");
        let help = find("policy")
            .unwrap()
            .flag()
            .get_help()
            .unwrap()
            .to_string();
        assert!(
            help.ends_with("[default: fallback; strict or fallback]"),
            "{help}"
        );
        assert_eq!(human_ms(7_440_000), "124m");
        assert_eq!(human_ms(1500), "1500ms");
        assert_eq!(human_ms(MAX_DURATION_MS), "100000s");
    }

    #[test]
    fn defaults_match_the_issue() {
        let cfg = Config::default();
        let get = |n: &str| find(n).unwrap().format(&cfg);
        assert_eq!(get("cooldown"), "240000ms");
        assert_eq!(get("cooldown-local-close"), "15000ms");
        assert_eq!(get("cooldown-rst"), "15000ms");
        assert_eq!(get("cooldown-udp"), "0ms");
        assert_eq!(get("cooldown-enabled"), "on");
        assert_eq!(get("policy"), "fallback");
        assert_eq!(get("timeout-tcp-established"), "7440000ms");
        assert_eq!(get("timeout-tcp-transitory"), "240000ms");
        assert_eq!(get("timeout-udp"), "300000ms");
        assert_eq!(get("mapping-udp"), "endpoint-independent");
        assert_eq!(get("mapping-tcp"), "address-port-dependent");
        assert_eq!(get("filtering-udp"), "address-dependent");
        assert_eq!(get("max-sessions-per-host"), "32768");
    }

    #[test]
    fn choices_parse_their_words_only() {
        let m = find("mapping-tcp").unwrap();
        assert_eq!(
            m.parse("endpoint-independent"),
            Ok(mode::ENDPOINT_INDEPENDENT as u64)
        );
        let err = m.parse("full-cone").unwrap_err();
        assert_eq!(
            err,
            "mapping-tcp: 'full-cone' is not one of endpoint-independent, address-port-dependent"
        );
        let f = find("filtering-udp").unwrap();
        assert_eq!(
            f.parse("address-port-dependent"),
            Ok(filtering::ADDRESS_PORT_DEPENDENT as u64)
        );
        assert!(f.parse("").is_err());
    }
}
