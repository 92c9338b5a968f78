//! Command line: one clear error line for every bad value, never a panic.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::{
    cli::{
        parse::{
            parse_cidr, parse_ipfix_collector, parse_ipv4, parse_port_range, parse_socket,
            parse_syslog_server, parse_template_refresh,
        },
        settings::SETTINGS,
    },
    datapath::pool::{Cidr, PortRange},
};

#[derive(Parser, Debug)]
#[command(
    name = "nat",
    version,
    about = "In-kernel NAT (TC egress SNAT + XDP ingress) with TIME_WAIT-aware port allocation"
)]
pub struct Cli {
    /// Act inside this network namespace (a name under /var/run/netns); pins stay in the root bpffs.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to an interface, or adopt the instance pinned there with its sessions, and run
    /// the control plane until SIGINT or SIGTERM (the datapath stays; see --unload-on-exit).
    Load(Box<LoadArgs>),
    /// Remove an instance: stop its daemon, detach its programs and delete its pins and
    /// sessions (also after its network namespace was deleted).
    Unload {
        /// External interface the instance was loaded on.
        #[arg(long, value_name = "IFACE")]
        iface: String,
    },
    /// List the session table.
    Sessions(ShowArgs),
    /// Show the datapath counters.
    Stats(ShowArgs),
    /// Change a live setting; it takes effect on the next allocation.
    Set {
        /// One of the settings `nat get` lists (the flags under "Settings" in `nat load --help`).
        key: String,
        /// New value, in the form `nat get` prints (e.g. 240s, on, strict).
        value: String,
        /// Instance to change; may be left out when only one is loaded.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
    },
    /// Show one or all live settings.
    Get {
        /// The setting to show; all of them when left out.
        key: Option<String>,
        /// Instance to read; may be left out when only one is loaded.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the keys that are cooling, with the time left.
    Cooldowns(ShowArgs),
    /// Destinations nearest to running out of ports (in use plus cooling), per external address.
    Top {
        #[command(flatten)]
        show: ShowArgs,
        /// How many destinations (or hosts) to list.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// List the internal hosts with the most live sessions instead, against
        /// max-sessions-per-host.
        #[arg(long)]
        hosts: bool,
    },
    /// The port blocks handed to internal hosts (allocation blocks): host, external address,
    /// port range, sessions, and since when each has been held.
    Blocks(ShowArgs),
    /// Who holds an external address and port, or what an internal address holds: its port
    /// blocks (allocation blocks), the formula's share (deterministic), port forwards, and the
    /// sessions now.
    Lookup {
        #[command(subcommand)]
        what: LookupCommand,
    },
    /// Checks a config file for `nat load --config` with the rules of the flags; one line per error.
    CheckConfig {
        /// The TOML file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Static port forwards (DNAT) of a running NAT: new flows from outside to a forwarded
    /// external port reach the internal endpoint; changes apply at once.
    Forward {
        #[command(subcommand)]
        action: ForwardCommand,
    },
    /// Makes the running daemon re-read its config file and apply settings, external
    /// addresses and the port range live (sends it SIGHUP after checking the file).
    Reload {
        /// External interface of the instance (its --iface at load).
        #[arg(long, value_name = "IFACE")]
        iface: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ForwardCommand {
    /// Adds a forward: PROTO tcp or udp; a range maps port by port (at most 1024 ports).
    /// The internal address must be inside the internal prefixes, the external one in the pool.
    Add {
        /// tcp or udp.
        #[arg(value_name = "PROTO")]
        proto: String,
        /// External address of the pool and port or range, e.g. 203.0.113.7:8443 or 203.0.113.7:5000-5009.
        #[arg(value_name = "EXTERNAL_IP:PORT[-PORT]")]
        external: String,
        /// Internal address and port or range (as many ports as the external side), e.g. 10.0.0.5:443.
        #[arg(value_name = "INTERNAL_IP:PORT[-PORT]")]
        internal: String,
        /// Instance to change; may be left out when only one is loaded.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
    },
    /// Deletes the forward holding an external port (its whole range); open sessions run until they end.
    Del {
        /// tcp or udp.
        #[arg(value_name = "PROTO")]
        proto: String,
        /// External address and a port of the forward, e.g. 203.0.113.7:8443.
        #[arg(value_name = "EXTERNAL_IP:PORT")]
        external: String,
        /// Instance to change; may be left out when only one is loaded.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
    },
    /// Lists the forwards.
    List(ShowArgs),
}

#[derive(Subcommand, Debug)]
pub enum LookupCommand {
    /// What an internal address holds now: its port blocks and since when (allocation
    /// blocks), its external address and port range (deterministic), the forwards to it and
    /// its sessions' external endpoints.
    Internal {
        /// The internal address, e.g. 10.0.0.5.
        #[arg(value_name = "ADDR", value_parser = parse_ipv4)]
        addr: Ipv4Addr,
        #[command(flatten)]
        show: ShowArgs,
    },
    /// Who holds an external address and port now: the block's owner and since when
    /// (allocation blocks), the one internal address the formula gives (deterministic), a
    /// forward's internal endpoint, and the sessions on it.
    External {
        /// The external address and port, e.g. 203.0.113.7:40001.
        #[arg(value_name = "ADDR:PORT", value_parser = parse_socket)]
        endpoint: SocketAddrV4,
        #[command(flatten)]
        show: ShowArgs,
    },
}

/// Flags of `nat load` that set live settings: one per entry of
/// [`crate::cli::settings::SETTINGS`], whose name, help text (meaning, default,
/// range) and parser it takes, so a setting added to the table is a flag
/// with its documentation without any code here.
#[derive(Clone, Debug, Default)]
pub struct SettingFlags {
    values: Vec<(&'static str, u64)>,
}

impl SettingFlags {
    /// (setting name, value given) for every setting, in the table's order.
    pub fn given(&self) -> Vec<(&'static str, Option<u64>)> {
        SETTINGS
            .iter()
            .map(|s| {
                let value = self.values.iter().find(|(n, _)| *n == s.name);
                (s.name, value.map(|(_, v)| *v))
            })
            .collect()
    }
}

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SETTINGS {
            if let Some(&value) = matches.get_one::<u64>(setting.name) {
                self.values.retain(|(n, _)| *n != setting.name);
                self.values.push((setting.name, value));
            }
        }
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let heading = "Settings (live: nat get, nat set; DURATION as 1500ms, 240s, 4m or 2h)";
        SETTINGS
            .iter()
            .fold(cmd.next_help_heading(heading), |cmd, s| cmd.arg(s.flag()))
            // Or the heading would also cover the flags declared after these.
            .next_help_heading(None::<&'static str>)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Parser, Debug)]
pub struct LoadArgs {
    /// External interface: egress is translated on it, replies are translated back on its ingress.
    #[arg(long, value_name = "IFACE")]
    pub iface: String,
    /// External address(es) the internal hosts are mapped to.
    #[arg(long, value_name = "IP[,IP...]", value_delimiter = ',', required = true, value_parser = parse_ipv4)]
    pub external: Vec<Ipv4Addr>,
    /// Internal prefixes; only sources inside them are translated.
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', required = true, value_parser = parse_cidr)]
    pub internal: Vec<Cidr>,
    /// External port range handed out to new flows (keep it clear of the host's own
    /// ephemeral range, net.ipv4.ip_local_port_range).
    #[arg(long, value_name = "LO-HI", default_value = "16384-32767", value_parser = parse_port_range)]
    pub ports: PortRange,
    /// Where replies are translated back (and the fast path runs): auto picks xdp when the
    /// external and fast-path interfaces all have a wire behind them and the driver runs XDP
    /// natively, else tc; xdp (fastest on NICs, needs complete checksums); tc (for virtual
    /// interfaces such as veth, whose peers send CHECKSUM_PARTIAL packets).
    #[arg(long, value_enum, default_value_t = IngressArg::Auto)]
    pub ingress: IngressArg,
    /// XDP attach mode: native (driver), skb (generic), or auto (native, else generic).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Internal interface(s) to run the fast path on: packets of existing sessions are
    /// redirected between them and --iface without entering the stack (nor netfilter's
    /// forward hooks); new flows, fragments and ICMP still take the stack. It runs in the
    /// hook --ingress picks: XDP needs complete checksums from the internal side (a wire, or
    /// a veth peer with its transmit checksum offload off); TC works with any.
    /// Without this flag (and without --no-fast-path) the fast path runs on the interfaces
    /// the internal prefixes are routed through (the main routing table at load). These
    /// internal (LAN) interfaces also run hairpinning for port forwards (TC ingress); --lan is
    /// the same flag.
    #[arg(
        long,
        value_name = "IFACE[,IFACE...]",
        value_delimiter = ',',
        conflicts_with = "no_fast_path",
        visible_alias = "lan"
    )]
    pub fast_path: Vec<String>,
    /// Run no fast path: every packet crosses the stack.
    #[arg(long)]
    pub no_fast_path: bool,
    /// A static port forward, PROTO,EXTERNAL_IP:PORT[-PORT],INTERNAL_IP:PORT[-PORT] (e.g.
    /// tcp,203.0.113.7:8443,10.0.0.5:443); repeatable. New flows from outside to the external
    /// port reach the internal one; the allocator never hands the port out. Live: `nat forward`.
    #[arg(long = "forward", value_name = "PROTO,EXT,INT", value_parser = crate::cli::forward::parse_flag)]
    pub forward: Vec<crate::datapath::forward::Forward>,
    /// Set by `--ingress auto` when it chose XDP: a driver that refuses a native attach gets
    /// TC rather than generic XDP.
    #[arg(skip)]
    pub tc_unless_native_xdp: bool,
    /// Capacity of each session map (forward and reverse).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sessions: u32,
    #[command(flatten)]
    pub settings: SettingFlags,
    /// How a new flow's external port is found: a walk over the host's address's whole
    /// range, then the others' (walk: the most ports per destination); inside port blocks
    /// handed to each internal host on demand (blocks: one log record per block, not per
    /// session); or inside the share a formula gives each internal host (deterministic,
    /// RFC 7422: `nat lookup` answers both ways, no log needed). Set at load.
    #[arg(long, value_enum, default_value_t = AllocationArg::Walk)]
    pub allocation: AllocationArg,
    /// Ports in a block (allocation blocks): a host's first flow gets it a block, more as
    /// its flows need them, up to max-blocks-per-host. Set at load.
    #[arg(long, default_value_t = nat_common::blocks::DEFAULT_BLOCK_SIZE, value_parser = clap::value_parser!(u32).range(nat_common::blocks::MIN_BLOCK_SIZE as i64..=32_768))]
    pub block_size: u32,
    /// Capacity of the cooldown map (cooling keys outlive their sessions).
    #[arg(long, default_value_t = 524_288, value_parser = clap::value_parser!(u32).range(1024..=33_554_432))]
    pub max_cooldowns: u32,
    /// How often the sweep frees idle sessions and ended cooldowns, in milliseconds.
    // The alias keeps units and config files that name it `reap-interval-ms` working.
    #[arg(long, alias = "reap-interval-ms", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub sweep_interval_ms: u64,
    /// Take over from a daemon still serving this interface: the new programs replace its
    /// ones, then it is told to exit. Without it, a live daemon makes the load fail.
    #[arg(long)]
    pub replace: bool,
    /// Remove the datapath (programs, links, pins, sessions) when this daemon stops, as
    /// `nat unload` does. Without it, SIGTERM or SIGINT stop the daemon only: the datapath
    /// keeps translating and the next `nat load` adopts it.
    #[arg(long)]
    pub unload_on_exit: bool,
    #[command(flatten)]
    pub config: ConfigFlag,
    #[command(flatten)]
    pub metrics: MetricsFlags,
    #[command(flatten)]
    pub export: ExportFlags,
}

#[derive(Parser, Debug)]
pub struct ShowArgs {
    /// Instance to read; may be left out when only one is loaded.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AllocationArg {
    /// The host's address's whole range, then the others'
    Walk,
    /// Port blocks per internal host
    Blocks,
    /// A share per internal host by formula (RFC 7422)
    Deterministic,
}

impl AllocationArg {
    /// Its value in the config map ([`nat_common::config::allocation`]).
    pub const fn code(self) -> u32 {
        match self {
            AllocationArg::Walk => nat_common::config::allocation::WALK,
            AllocationArg::Blocks => nat_common::config::allocation::BLOCKS,
            AllocationArg::Deterministic => nat_common::config::allocation::DETERMINISTIC,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IngressArg {
    /// XDP where every interface has a wire behind it and the driver runs XDP natively, else TC
    Auto,
    /// Translate replies in XDP (fastest; frames from a wire)
    Xdp,
    /// Translate replies in TC ingress (any frame, e.g. from a veth peer)
    Tc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native if the driver supports it, else generic
    Auto,
    /// In the driver
    Native,
    /// Generic XDP, after the stack allocated the skb
    Skb,
}

/// The config file's flag (`nat load`).
#[derive(Parser, Debug, Default, Clone)]
pub struct ConfigFlag {
    /// TOML file with `nat load` settings, keyed by flag name without the dashes (e.g.
    /// `ports = "20000-29999"`); flags given on the command line override it, at load and on
    /// reloads, and each key they set aside is named in one line. SIGHUP and `nat reload`
    /// re-read it and apply the settings, external addresses and port range live.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The metrics endpoint's flags (`nat load`).
#[derive(Parser, Debug, Default, Clone)]
pub struct MetricsFlags {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off unless given; a loopback
    /// address such as 127.0.0.1:9109 keeps them on the host).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Destinations exported per external address: the ones with the most ports in use
    /// plus cooling (keeps the number of series bounded).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub metrics_top: u32,
    /// How often the metrics derived from the session and cooldown tables (sessions,
    /// cooling keys, map entries, top destinations) are recomputed, in milliseconds;
    /// scrapes serve the last result.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub metrics_interval_ms: u64,
}

/// Compliance logging's flags (`nat load`): where the datapath's events
/// (port blocks, exhaustion, quotas, thresholds, sessions under
/// log-sessions) are sent. A reload applies them.
#[derive(Parser, Debug, Default, Clone)]
#[command(next_help_heading = "Compliance logging (a reload re-targets)")]
pub struct ExportFlags {
    /// Send the compliance events as IPFIX (RFC 7011, with RFC 8158's NAT event elements)
    /// over UDP to this collector, ADDR[:PORT] (port 4739 when left out); repeatable or
    /// comma-separated, every collector gets every event.
    #[arg(long, value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse_ipfix_collector)]
    pub ipfix_collector: Vec<SocketAddr>,
    /// How often the IPFIX templates are sent again, so a collector that restarted can decode
    /// what follows (also every 100 messages), as 1500ms, 60s or 5m (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_template_refresh)]
    pub ipfix_template_refresh: u64,
    /// Observation domain id in the IPFIX message headers, which tells a collector this
    /// NAT's stream (and its sequence numbers) from other exporters'.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub ipfix_observation_domain: u32,
    /// Send each compliance event as an RFC 5424 line over UDP to this syslog server,
    /// ADDR[:PORT] (port 514 when left out); repeatable or comma-separated.
    #[arg(long, value_name = "ADDR:PORT", value_delimiter = ',', value_parser = parse_syslog_server)]
    pub syslog_server: Vec<SocketAddr>,
}

impl ExportFlags {
    /// The rules the parsers cannot see one value at a time: a destination
    /// named twice.
    pub fn check(&self) -> Result<(), String> {
        for (key, list) in [
            ("ipfix-collector", &self.ipfix_collector),
            ("syslog-server", &self.syslog_server),
        ] {
            for (i, a) in list.iter().enumerate() {
                if list[..i].contains(a) {
                    return Err(format!("{key}: {a} is given twice"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_load_flag() {
        let names: Vec<&str> = SettingFlags::default()
            .given()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let table: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        assert_eq!(names, table);
        for name in names {
            let flag = format!("--{name}");
            let args = [
                "nat",
                "load",
                "--iface",
                "x",
                "--external",
                "1.2.3.4",
                "--internal",
                "10.0.0.0/8",
                &flag,
                "bogus",
            ];
            let err = Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    /// Every subcommand and every argument, at every level, says what it is:
    /// the operator's --help, the man pages and the completions come from it.
    #[test]
    fn every_command_and_arg_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
            if cmd
                .get_about()
                .is_none_or(|about| about.to_string().trim().is_empty())
            {
                missing.push(format!("`{path}` (command)"));
            }
            for arg in cmd.get_arguments() {
                if arg
                    .get_help()
                    .is_none_or(|help| help.to_string().trim().is_empty())
                {
                    missing.push(format!("`{path}` argument {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {}", missing.join(", "));
        // The walk reaches the settings flags, which are built at run time.
        let load = cmd.find_subcommand("load").expect("nat load");
        assert!(load.get_arguments().any(|a| a.get_id() == "cooldown"));
    }

    #[test]
    fn cli_rejects_bad_load_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(["nat", "load"].iter().chain(args));
        // The required flags with `external`, then `extra`.
        let load = |external: &str, extra: &[&str]| {
            let base = ["--iface", "eth0", "--external", external];
            parse(&[&base[..], &["--internal", "10.0.0.0/8"], extra].concat())
        };
        assert!(load("1.2.3.4", &[]).is_ok());
        assert!(load("1.2.3", &[]).is_err());
        assert!(load("1.2.3.4", &["--ports", "9-1"]).is_err());
        assert!(load("1.2.3.4", &["--xdp-mode", "hw"]).is_err());
        assert!(parse(&["--iface", "eth0", "--internal", "10.0.0.0/8"]).is_err());
    }

    #[test]
    fn export_flags_take_lists_and_default_ports() {
        let parse = |extra: &[&str]| {
            let base = ["nat", "load", "--iface", "eth0", "--external", "1.2.3.4"];
            let args = [&base[..], &["--internal", "10.0.0.0/8"], extra].concat();
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Load(a)) => Ok(a.export),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        let flags = parse(&[
            "--ipfix-collector",
            "192.0.2.1,192.0.2.2:2055",
            "--ipfix-collector",
            "[2001:db8::1]:4740",
            "--syslog-server",
            "192.0.2.3",
            "--ipfix-template-refresh",
            "30s",
            "--ipfix-observation-domain",
            "7",
        ])
        .unwrap();
        let addrs: Vec<String> = flags
            .ipfix_collector
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["192.0.2.1:4739", "192.0.2.2:2055", "[2001:db8::1]:4740"]
        );
        assert_eq!(flags.syslog_server[0].to_string(), "192.0.2.3:514");
        assert_eq!(flags.ipfix_template_refresh, 30_000);
        assert_eq!(flags.ipfix_observation_domain, 7);
        let defaults = parse(&[]).unwrap();
        assert!(defaults.ipfix_collector.is_empty() && defaults.syslog_server.is_empty());
        assert_eq!(defaults.ipfix_template_refresh, 60_000);
        assert_eq!(defaults.check(), Ok(()));

        let err = parse(&["--ipfix-collector", "collector.example:4739"]).unwrap_err();
        assert!(err.contains("is not an address"), "{err}");
        let err = parse(&["--syslog-server", "192.0.2.1:0"]).unwrap_err();
        assert!(err.contains("port"), "{err}");
        let err = parse(&["--ipfix-template-refresh", "0s"]).unwrap_err();
        assert!(err.contains("1s to 1h"), "{err}");
        let twice = parse(&["--syslog-server", "192.0.2.1,192.0.2.1:514"]).unwrap();
        assert_eq!(
            twice.check(),
            Err("syslog-server: 192.0.2.1:514 is given twice".to_owned())
        );
    }
}
