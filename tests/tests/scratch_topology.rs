use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Instant;

use nat_tests::*;

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W2", dst])
        .status()
        .unwrap()
        .success()
}

#[test]
fn topology_and_traffic_without_nat() {
    let t0 = Instant::now();
    let topo = Topology::new("scratch", TopologyOpts::default());
    eprintln!("created in {:?}", t0.elapsed());
    let nat = topo.ns_name(Side::Nat).to_owned();
    let cl = topo.ns_name(Side::Client).to_owned();
    let sv = topo.ns_name(Side::Server).to_owned();
    assert!(ping(&nat, "198.18.0.2"));
    assert!(ping(&nat, "10.200.1.2"));
    assert!(ping(&cl, "10.200.1.1"));
    let out = Command::new("ip")
        .args(["-n", &cl, "addr", "show", "veth-cl"])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new("ip")
        .args(["-n", &sv, "route"])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &nat,
            "sysctl",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.veth-ext.rp_filter",
            "net.ipv4.conf.all.rp_filter",
        ])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    let tcp = tcp_sink_server(&sv, 8080);
    let udp = udp_echo_server(&sv, 5353);
    let dst = SocketAddrV4::new(SERVER_IP, 8080);
    let udst = SocketAddrV4::new(SERVER_IP, 5353);
    // untranslated outside address is routable both ways without the NAT
    let local = tcp_exchange(&cl, Some(OUTSIDE_CLIENT_IP), dst, 1 << 20).unwrap();
    eprintln!("local {local} peer {:?}", tcp.last_peer());
    assert_eq!(tcp.last_peer().unwrap(), std::net::SocketAddr::V4(local));
    tcp_transfer(&cl, Some(OUTSIDE_CLIENT_IP), dst, 0).unwrap();
    let ulocal = udp_exchange(&cl, Some(OUTSIDE_CLIENT_IP), udst, 1400).unwrap();
    assert_eq!(udp.last_peer().unwrap(), std::net::SocketAddr::V4(ulocal));
    udp_roundtrip(&cl, Some(OUTSIDE_CLIENT_IP), udst, 0).unwrap();
    // internal addresses are not routable back without the NAT
    let t = Instant::now();
    let err = tcp_transfer(&cl, Some(CLIENT_IP), dst, 100).unwrap_err();
    eprintln!("expected failure after {:?}: {err}", t.elapsed());
    let err = udp_roundtrip(&cl, None, udst, 100).unwrap_err();
    eprintln!("expected failure: {err}");
    let err = tcp_transfer(
        &cl,
        Some(OUTSIDE_CLIENT_IP),
        SocketAddrV4::new(SERVER_IP, 9),
        100,
    )
    .unwrap_err();
    eprintln!("expected failure: {err}");
    let t = Instant::now();
    let results = concurrent_tcp(&cl, &[OUTSIDE_CLIENT_IP], dst, 300, 10_000);
    eprintln!("300 concurrent in {:?}", t.elapsed());
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results
            .iter()
            .filter(|r| r.is_err())
            .take(3)
            .collect::<Vec<_>>()
    );
    assert_eq!(tcp.peers().len(), 302);
    let before = Instant::now();
    drop(tcp);
    drop(udp);
    eprintln!("servers stopped in {:?}", before.elapsed());
}

#[test]
fn no_offloads_and_second_topology_in_parallel() {
    let topo = Topology::new(
        "scratch2",
        TopologyOpts {
            client_addrs: 3,
            offloads: false,
        },
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.ns_name(Side::Nat),
            "ethtool",
            "-k",
            "veth-ext",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for l in s.lines().filter(|l| {
        l.contains("checksumming:")
            || l.contains("segmentation-offload:")
            || l.contains("receive-offload")
    }) {
        eprintln!("{l}");
    }
    assert!(s.contains("tx-checksumming: off"));
    assert_eq!(topo.client_ips().len(), 3);
    let sv = topo.ns_name(Side::Server).to_owned();
    let _tcp = tcp_sink_server(&sv, 0);
    assert!(ping(topo.ns_name(Side::Nat), "198.18.0.2"));
}

#[test]
#[should_panic(expected = "deliberate")]
fn panicking_test_cleans_up() {
    let _topo = Topology::new("scratch3", TopologyOpts::default());
    run_in_ns(_topo.ns_name(Side::Client), || panic!("deliberate"));
}
