//! The ways the nat namespace forwards during the bench (routing, nftables,
//! this NAT in several configurations), set up on the same topology and torn
//! down again after each use.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nat_tests::{
    EXT_IFACE, EXTERNAL_IP, INT_IFACE, NatProcess, Side, Topology, interrupt, run_in_ns,
};

use super::capture;
use super::events;
use super::hosts::Sources;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Plain forwarding: the server gets a route back to the internal prefix.
    Routing,
    /// `nft` masquerade (conntrack) in the nat namespace.
    Nftables,
    /// This NAT without its fast path: every packet crosses the stack.
    NatStack,
    /// This NAT, tuned for the veth testbed (TC ingress, fast path on the internal side).
    Nat,
    /// This NAT with no tuning flags: what an operator gets from `nat load`.
    /// The targets are judged on it.
    NatDefault,
    /// `nat-default` handing out port blocks ([`HOSTS_BLOCK_SIZE`] ports).
    NatBlocks,
    /// `nat-default` giving each host its deterministic share.
    NatDeterministic,
    /// `nat-default` logging every session's creation and deletion as
    /// IPFIX to a collector in the server namespace ([`events`]).
    NatLogged,
}

/// The modes of the main table: every measurement, from the topology's client addresses.
pub const MODES: [Mode; 5] = [
    Mode::Routing,
    Mode::Nftables,
    Mode::NatStack,
    Mode::Nat,
    Mode::NatDefault,
];

/// The modes of the hosts runs: the server-first load from [`super::hosts::HOSTS`]
/// internal hosts, in each allocation mode beside walk (`nat-default`) and nftables.
pub const HOSTS_MODES: [Mode; 5] = [
    Mode::Nftables,
    Mode::NatDefault,
    Mode::NatBlocks,
    Mode::NatDeterministic,
    Mode::NatLogged,
];

/// The block size of `nat-blocks`: the 64,512 ports of [`NAT_PORTS`] make
/// 1,008 blocks of 64 on the one external address, a block for each of the
/// [`super::hosts::HOSTS`] hosts (the default, 256, makes 252: the hosts past them
/// would get no block). Deterministic NAT divides the same ports by the
/// 1,024 addresses of [`super::hosts::PREFIX`]: 63 each.
pub const HOSTS_BLOCK_SIZE: u32 = 64;

/// The port range every NAT mode gets: the default (16384-32767) holds 16,384
/// keys per destination, which the server-first load (one destination, each key
/// cooling 240 s after a server-first close) would use up in about two
/// seconds at the rates this testbed reaches; 1024-65535 holds 64,512.
pub const NAT_PORTS: &str = "1024-65535";

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Routing => "routing",
            Mode::Nftables => "nftables",
            Mode::NatStack => "nat-stack",
            Mode::Nat => "nat",
            Mode::NatDefault => "nat-default",
            Mode::NatBlocks => "nat-blocks",
            Mode::NatDeterministic => "nat-deterministic",
            Mode::NatLogged => "nat-logged",
        }
    }

    pub fn is_nat(self) -> bool {
        !matches!(self, Mode::Routing | Mode::Nftables)
    }

    /// Whether its daemon exports compliance events (and serves metrics).
    pub fn exports(self) -> bool {
        self == Mode::NatLogged
    }

    /// What `nat load` gets on top of --iface, --external and --internal;
    /// None for the modes that do not run this NAT.
    pub fn nat_args(self) -> Option<Vec<String>> {
        let block_size = HOSTS_BLOCK_SIZE.to_string();
        let collector = events::collector_arg();
        let tuning: &[&str] = match self {
            Mode::Routing | Mode::Nftables => return None,
            // The fast path is on by default, so the stack-only mode must say so.
            Mode::NatStack => &["--ingress", "tc", "--no-fast-path"],
            Mode::Nat => &["--ingress", "tc", "--fast-path", INT_IFACE],
            Mode::NatDefault => &[],
            Mode::NatBlocks => &["--allocation", "blocks", "--block-size", &block_size],
            Mode::NatDeterministic => &["--allocation", "deterministic"],
            Mode::NatLogged => &[
                "--log-sessions",
                "on",
                "--ipfix-collector",
                &collector,
                "--metrics",
                events::METRICS_ADDR,
            ],
        };
        let mut args = vec!["--ports".to_owned(), NAT_PORTS.to_owned()];
        args.extend(tuning.iter().map(|s| (*s).to_owned()));
        Some(args)
    }
}

/// The nftables ruleset of the `nftables` mode, masquerading `prefix`.
fn nft_ruleset(prefix: &str) -> String {
    format!(
        "table ip nat {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{EXT_IFACE}\" ip saddr {prefix} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// A mode in effect; [`Active::leave`] undoes it (drop does too, quietly).
pub struct Active {
    mode: Mode,
    /// Where the connections come from: the prefix this mode translates (or routes back).
    sources: Sources,
    nat_ns: String,
    server_ns: String,
    nat: Option<NatProcess>,
    /// How long the NAT daemon took to stop on SIGTERM.
    nat_stop: Option<Duration>,
    armed: bool,
}

/// How long a NAT daemon may take to exit on SIGTERM: one with a million
/// sessions may be in the middle of a sweep, which the loaded
/// testbed has seen take longer than the integration tests' 10 s.
const NAT_STOP_LIMIT: Duration = Duration::from_secs(60);

impl Active {
    /// Sets `mode` up for the connections of `sources`; a NAT mode gets
    /// [`Mode::nat_args`] and then `extra` (the scale runs' capacities).
    pub fn enter(
        mode: Mode,
        topology: &Topology,
        sources: Sources,
        extra: &[String],
    ) -> Result<Active> {
        let prefix = sources.prefix();
        let mut active = Active {
            mode,
            sources,
            nat_ns: topology.ns_name(Side::Nat).to_owned(),
            server_ns: topology.ns_name(Side::Server).to_owned(),
            nat: None,
            nat_stop: None,
            armed: true,
        };
        match mode {
            Mode::Routing => {
                capture(Command::new("ip").args(route_args(&active.server_ns, prefix, "add")))?;
            }
            Mode::Nftables => {
                let mut child = interrupt::spawn(
                    Command::new("ip")
                        .args(["netns", "exec", &active.nat_ns, "nft", "-f", "-"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped()),
                )?;
                {
                    use std::io::Write as _;
                    let mut stdin = child.stdin.take().context("nft stdin")?;
                    stdin.write_all(nft_ruleset(prefix).as_bytes())?;
                }
                let output = child.wait_with_output()?;
                if !output.status.success() {
                    active.armed = false;
                    bail!(
                        "nft -f failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
            }
            _ => {
                let _setup = interrupt::namespace_setup();
                if interrupt::interrupted() {
                    bail!("interrupted");
                }
                let external = EXTERNAL_IP.to_string();
                let mut args: Vec<String> = ["--external", &external, "--internal", prefix]
                    .map(str::to_owned)
                    .to_vec();
                args.extend(mode.nat_args().unwrap_or_default());
                args.extend_from_slice(extra);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                active.nat = Some(NatProcess::start_in(&active.nat_ns, EXT_IFACE, &args));
            }
        }
        Ok(active)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn sources(&self) -> Sources {
        self.sources
    }

    /// The process id of the NAT daemon, in the NAT modes.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.nat.as_ref().map(NatProcess::pid)
    }

    /// Undoes the mode, reporting what failed; returns how long the NAT
    /// daemon took to stop, in the NAT modes.
    pub fn leave(mut self) -> Result<Option<Duration>> {
        self.armed = false;
        self.teardown()?;
        Ok(self.nat_stop)
    }

    fn teardown(&mut self) -> Result<()> {
        match self.mode {
            Mode::Routing => {
                capture(Command::new("ip").args(route_args(
                    &self.server_ns,
                    self.sources.prefix(),
                    "del",
                )))?;
            }
            Mode::Nftables => {
                let deleted = capture(Command::new("ip").args([
                    "netns",
                    "exec",
                    &self.nat_ns,
                    "nft",
                    "delete",
                    "table",
                    "ip",
                    "nat",
                ]));
                // The conntrack entries outlive the table (closed connections
                // for 120 s): flushed so that each nftables run starts empty,
                // as each nat run starts with fresh maps.
                let flushed = flush_conntrack(&self.nat_ns);
                deleted?;
                flushed?;
            }
            _ => {
                if let Some(nat) = self.nat.take() {
                    let began = Instant::now();
                    let status = nat.stop_within(NAT_STOP_LIMIT);
                    self.nat_stop = Some(began.elapsed());
                    if !status.success() {
                        bail!("nat exited with {status} when stopped");
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let _ = self.teardown();
        }
    }
}

fn route_args(server_ns: &str, prefix: &str, verb: &str) -> Vec<String> {
    vec![
        "-n".to_owned(),
        server_ns.to_owned(),
        "route".to_owned(),
        verb.to_owned(),
        prefix.to_owned(),
        "via".to_owned(),
        EXTERNAL_IP.to_string(),
    ]
}

/// Deletes every IPv4 conntrack entry of `nat_ns` (what `conntrack -F` does)
/// with one ctnetlink message.
fn flush_conntrack(nat_ns: &str) -> Result<()> {
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    run_in_ns(nat_ns, || -> Result<()> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
        // SAFETY: sockaddr_nl is a plain C struct; all-zero is valid.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `kernel` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is valid for its length.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 20 {
            bail!(
                "netlink: no acknowledgement ({})",
                std::io::Error::last_os_error()
            );
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                bail!(
                    "conntrack flush: {}",
                    std::io::Error::from_raw_os_error(-code)
                );
            }
        }
        Ok(())
    })
    .with_context(|| format!("cannot flush the conntrack table of {nat_ns}"))
}
