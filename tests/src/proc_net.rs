//! The kernel's own counters of a namespace (/proc/net/snmp, /proc/net/netstat):
//! what the endpoints' stacks saw, independent of the NAT's counters.

use crate::netns::run_in_ns;

/// A counter of a namespace's /proc/net/`file`: the value under `name` in the
/// pair of `row:` lines (names, then values), e.g. ("netstat", "TcpExt",
/// "PAWSTimewait") or ("snmp", "Ip", "ForwDatagrams"). `name` may list
/// alternatives, `A|B`: the first one the kernel has is read.
pub fn proc_net_counter(
    ns: &str,
    file: &'static str,
    row: &'static str,
    name: &'static str,
) -> u64 {
    run_in_ns(ns, move || {
        // thread-self: /proc/self/net would show the process's namespace, not this thread's.
        let path = format!("/proc/thread-self/net/{file}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let prefix = format!("{row}: ");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (
            rows.next()
                .unwrap_or_else(|| panic!("no {row} rows in {path}")),
            rows.next()
                .unwrap_or_else(|| panic!("no {row} value row in {path}")),
        );
        // The first of `name`'s alternatives (`A|B`) this kernel has.
        let at = name
            .split('|')
            .find_map(|alt| names.split_whitespace().position(|n| n == alt))
            .unwrap_or_else(|| panic!("no {row} counter {name} in {path}"));
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{row} counter {name} in {path} is not a number"))
    })
}

/// One TcpExt counter of a namespace, e.g. `PAWSTimewait`: SYNs its stack
/// rejected because they hit a connection in TIME_WAIT with an older timestamp.
pub fn tcp_ext(ns: &str, name: &'static str) -> u64 {
    proc_net_counter(ns, "netstat", "TcpExt", name)
}

/// SYNs a namespace's stack rejected because they hit a connection in
/// TIME_WAIT with an older timestamp (PAWS): `PAWSTimewait`, or on kernels
/// without that counter (Linux 6.1) `PAWSEstab`, under which they counted
/// these rejections then, with the PAWS rejects of established sockets.
pub const PAWS_TIMEWAIT: &str = "PAWSTimewait|PAWSEstab";
