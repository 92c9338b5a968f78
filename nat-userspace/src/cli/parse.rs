//! Values as the operator writes them: addresses, prefixes, ports, port
//! ranges and durations, each refused with one line that says why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::datapath::pool::{Cidr, PortRange};

pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("'{s}' is not an IPv4 address"))
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not a prefix (expected ADDR/LEN, e.g. 10.0.0.0/8)"))?;
    let addr = parse_ipv4(addr)?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("'{s}': prefix length must be 0 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = u32::from(addr) & mask;
    if net != u32::from(addr) {
        return Err(format!(
            "'{s}' has host bits set (did you mean {}/{len}?)",
            Ipv4Addr::from(net)
        ));
    }
    Ok(Cidr { addr, len })
}

/// Longest duration any setting accepts (the ceiling TMG 2010 uses for its cooldown).
pub const MAX_DURATION_MS: u64 = 100_000_000;

/// Milliseconds from `1500`, `1500ms`, `240s`, `4m` or `2h`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 1500ms, 240s, 4m)"))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    match n.checked_mul(scale) {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
        _ => Err(format!("'{s}' is longer than {MAX_DURATION_MS} ms")),
    }
}

/// A port, 1 to 65535, written as part of `within` (which the error names).
pub fn parse_port(p: &str, within: &str) -> Result<u16, String> {
    p.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("'{p}' in '{within}' is not a port (1 to 65535)"))
}

/// An address and port, `ADDR:PORT`.
pub fn parse_socket(s: &str) -> Result<SocketAddrV4, String> {
    let (ip, port) = s
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not ADDR:PORT (e.g. 203.0.113.7:40001)"))?;
    Ok(SocketAddrV4::new(parse_ipv4(ip)?, parse_port(port, s)?))
}

pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let (lo, hi) = s
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a port range (expected LO-HI, e.g. 16384-32767)"))?;
    let (lo, hi) = (parse_port(lo, s)?, parse_port(hi, s)?);
    if lo > hi {
        return Err(format!(
            "port range '{s}' is inverted (low end above high end)"
        ));
    }
    Ok(PortRange { lo, hi })
}

/// An IPFIX collector, ADDR[:PORT]; IANA's port for IPFIX, 4739, when
/// left out.
pub fn parse_ipfix_collector(s: &str) -> Result<SocketAddr, String> {
    parse_destination(s, 4739)
}

/// A syslog server, ADDR[:PORT]; 514 (syslog over UDP, RFC 5426) when
/// left out.
pub fn parse_syslog_server(s: &str) -> Result<SocketAddr, String> {
    parse_destination(s, 514)
}

/// `192.0.2.1`, `192.0.2.1:4739`, `2001:db8::1`, `[2001:db8::1]:4739`:
/// an address, not a name, so the daemon never waits for a resolver.
fn parse_destination(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let t = s.trim();
    let addr = match t.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match t
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => SocketAddr::new(ip, default_port),
            Err(_) => {
                return Err(format!(
                    "'{s}' is not an address (expected ADDR or ADDR:PORT, e.g. 192.0.2.10:{default_port} or [2001:db8::10]:{default_port})"
                ));
            }
        },
    };
    if addr.port() == 0 {
        return Err(format!("'{s}': port 0 is not a port to send to"));
    }
    Ok(addr)
}

/// `ipfix-template-refresh`: a duration from 1 s to 1 h, in milliseconds.
pub fn parse_template_refresh(s: &str) -> Result<u64, String> {
    let ms = parse_duration_ms(s)?;
    if !(1000..=3_600_000).contains(&ms) {
        return Err(format!("'{s}' is out of range (1s to 1h)"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_range("1024-2047"),
            Ok(PortRange { lo: 1024, hi: 2047 })
        );
        assert_eq!(parse_port_range("80-80"), Ok(PortRange { lo: 80, hi: 80 }));
        assert!(
            parse_port_range("2000-1000")
                .unwrap_err()
                .contains("inverted")
        );
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("1-65536").is_err());
        assert!(parse_port_range("100").is_err());
        assert!(parse_port_range("a-b").is_err());
    }

    #[test]
    fn destinations() {
        let ok = |s: &str| parse_ipfix_collector(s).unwrap().to_string();
        assert_eq!(ok("192.0.2.1"), "192.0.2.1:4739");
        assert_eq!(ok(" 192.0.2.1:2055 "), "192.0.2.1:2055");
        assert_eq!(ok("2001:db8::1"), "[2001:db8::1]:4739");
        assert_eq!(ok("[2001:db8::1]"), "[2001:db8::1]:4739");
        assert_eq!(ok("[2001:db8::1]:9995"), "[2001:db8::1]:9995");
        assert_eq!(
            parse_syslog_server("192.0.2.1").unwrap().to_string(),
            "192.0.2.1:514"
        );
        assert!(parse_ipfix_collector("192.0.2.1:0").is_err());
        assert!(parse_ipfix_collector("192.0.2.1:65536").is_err());
        assert!(parse_ipfix_collector("collector:4739").is_err());
        assert!(parse_ipfix_collector("").is_err());
        assert_eq!(parse_template_refresh("60s"), Ok(60_000));
        assert!(parse_template_refresh("999ms").is_err());
        assert!(parse_template_refresh("2h").is_err());
    }

    #[test]
    fn sockets() {
        assert_eq!(
            parse_socket("203.0.113.7:40001"),
            Ok(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 40001))
        );
        assert!(
            parse_socket("203.0.113.7")
                .unwrap_err()
                .contains("ADDR:PORT")
        );
        assert!(parse_socket("203.0.113.7:0").is_err());
        assert!(parse_socket("203.0.113:80").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1500"), Ok(1500));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("240s"), Ok(240_000));
        assert_eq!(parse_duration_ms("4m"), Ok(240_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("100000000"), Ok(100_000_000));
        assert!(parse_duration_ms("100000001").is_err());
        assert!(parse_duration_ms("99999999999999999999h").is_err());
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert!(parse_duration_ms("-5s").is_err());
        assert!(parse_duration_ms("").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Ok(Cidr {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                len: 8
            })
        );
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().len, 0);
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 1, 255, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!(
            parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains(Ipv4Addr::new(1, 2, 3, 4))
        );
    }
}
