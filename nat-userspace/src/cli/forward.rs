//! Port forwards as the command line and the config file give them
//! (`PROTO,EXTERNAL,INTERNAL`, `nat forward add PROTO EXTERNAL INTERNAL`)
//! and the rules they follow against the NAT's addresses. Every check runs
//! before the map changes, so a bad forward is one line and no change.

use std::net::Ipv4Addr;

use nat_common::{
    flow::{PROTO_TCP, PROTO_UDP},
    port_forward::MAX_FORWARD_RANGE,
};

use crate::{
    cli::parse::{parse_ipv4, parse_port},
    datapath::{forward::Forward, pool::Cidr},
};

pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        _ => Err(format!("'{s}' is not a protocol (tcp or udp)")),
    }
}

/// `IP:PORT` or `IP:LO-HI`, ports 1 to 65535: (address, first port, count).
pub fn parse_endpoint(s: &str) -> Result<(Ipv4Addr, u16, u16), String> {
    let s = s.trim();
    let (ip, range) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not IP:PORT or IP:PORT-PORT"))?;
    let ip = parse_ipv4(ip)?;
    let port = |p: &str| parse_port(p, s);
    let (lo, hi) = match range.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(range)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!(
            "port range in '{s}' is inverted (low end above high end)"
        ));
    }
    let count = u32::from(hi) - u32::from(lo) + 1;
    if count > MAX_FORWARD_RANGE {
        return Err(format!(
            "'{s}' spans {count} ports; a forward spans at most {MAX_FORWARD_RANGE}"
        ));
    }
    Ok((ip, lo, count as u16))
}

/// A forward from its three parts, as `nat forward add` takes them.
pub fn parse(proto: &str, external: &str, internal: &str) -> Result<Forward, String> {
    let proto = parse_proto(proto)?;
    let (ext, ext_port, count) = parse_endpoint(external)?;
    let (int, int_port, int_count) = parse_endpoint(internal)?;
    if int_count != count {
        return Err(format!(
            "{external} spans {count} port(s) and {internal} {int_count}: a range maps port by port"
        ));
    }
    Ok(Forward {
        proto,
        ext,
        ext_port,
        int,
        int_port,
        count,
    })
}

/// `PROTO,EXTERNAL,INTERNAL`, the value of `nat load --forward`.
pub fn parse_flag(s: &str) -> Result<Forward, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [proto, external, internal] = parts[..] else {
        return Err(format!(
            "'{s}' is not PROTO,EXTERNAL_IP:PORT[-PORT],INTERNAL_IP:PORT[-PORT] (e.g. tcp,203.0.113.7:8443,10.0.0.5:443)"
        ));
    };
    parse(proto, external, internal)
}

/// The rules a forward follows against the NAT's addresses: its internal
/// address inside an internal prefix (`internal`), its external one in the pool.
pub fn check_one(
    fwd: &Forward,
    internal: impl Fn(Ipv4Addr) -> bool,
    external: &[Ipv4Addr],
) -> Result<(), String> {
    if !internal(fwd.int) {
        return Err(format!(
            "forward {fwd}: {} is outside the internal prefixes",
            fwd.int
        ));
    }
    if !external.contains(&fwd.ext) {
        return Err(format!(
            "forward {fwd}: {} is not an external address of the pool",
            fwd.ext
        ));
    }
    Ok(())
}

/// Checks a whole set of forwards (the command line's and the file's).
pub fn check_all(
    forwards: &[Forward],
    internal: &[Cidr],
    external: &[Ipv4Addr],
) -> Result<(), String> {
    for (i, fwd) in forwards.iter().enumerate() {
        check_one(fwd, |a| internal.iter().any(|c| c.contains(a)), external)?;
        if let Some(other) = forwards[..i].iter().find(|o| o.overlaps(fwd)) {
            return Err(format!("forward {fwd} overlaps forward {other}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        crate::cli::parse::parse_cidr(s).unwrap()
    }

    #[test]
    fn parses_single_ports_and_ranges() {
        let f = parse("tcp", "203.0.113.7:8443", "10.0.0.5:443").unwrap();
        assert_eq!((f.ext_port, f.int_port, f.count), (8443, 443, 1));
        assert_eq!(f.to_string(), "tcp 203.0.113.7:8443 10.0.0.5:443");
        let f = parse_flag("udp,203.0.113.7:5000-5009,10.0.0.5:6000-6009").unwrap();
        assert_eq!((f.proto, f.count), (PROTO_UDP, 10));
        assert_eq!(
            f.to_string(),
            "udp 203.0.113.7:5000-5009 10.0.0.5:6000-6009"
        );
    }

    #[test]
    fn refuses_bad_forwards_in_one_line() {
        for (spec, want) in [
            ("tcp,1.2.3.4:0,10.0.0.5:80", "not a port"),
            ("tcp,1.2.3.4:65536,10.0.0.5:80", "not a port"),
            ("tcp,1.2.3.4:80-81,10.0.0.5:80", "port by port"),
            ("tcp,1.2.3.4:90-80,10.0.0.5:80", "inverted"),
            ("tcp,1.2.3.4:1000-3000,10.0.0.5:1000-3000", "at most 1024"),
            ("icmp,1.2.3.4:80,10.0.0.5:80", "not a protocol"),
            ("tcp,1.2.3.4,10.0.0.5:80", "IP:PORT"),
            ("tcp,1.2.3.4:80", "PROTO,EXTERNAL"),
        ] {
            let err = parse_flag(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn checks_addresses_and_overlaps() {
        let internal = [cidr("10.0.0.0/8")];
        let external = [Ipv4Addr::new(1, 2, 3, 4)];
        let ok = parse_flag("tcp,1.2.3.4:80-89,10.0.0.5:80-89").unwrap();
        let udp_same = parse_flag("udp,1.2.3.4:85,10.0.0.6:85").unwrap();
        assert!(check_all(&[ok, udp_same], &internal, &external).is_ok());
        let overlap = parse_flag("tcp,1.2.3.4:89-90,10.0.0.6:89-90").unwrap();
        let err = check_all(&[ok, overlap], &internal, &external).unwrap_err();
        assert!(err.contains("overlaps"), "{err}");
        let outside = parse_flag("tcp,1.2.3.4:90,192.168.0.5:90").unwrap();
        let err = check_all(&[outside], &internal, &external).unwrap_err();
        assert!(err.contains("outside the internal prefixes"), "{err}");
        let foreign = parse_flag("tcp,1.2.3.5:90,10.0.0.5:90").unwrap();
        let err = check_all(&[foreign], &internal, &external).unwrap_err();
        assert!(err.contains("not an external address"), "{err}");
    }
}
