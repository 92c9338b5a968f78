use nat_tests::*;
use std::time::Instant;

#[test]
fn fake_nat_lifecycle() {
    let topo = Topology::new("fake1", TopologyOpts::default());
    let nat = NatProcess::start(&topo, &["--extra"]);
    eprintln!("output {:?}", nat.output());
    let v = nat_json(&topo, &["sessions", "--json"]);
    assert_eq!(v["ns"], topo.ns_name(Side::Nat));
    let st = nat.stop();
    assert!(st.success());
    let nat = NatProcess::start(&topo, &[]);
    drop(nat);
}

#[test]
#[should_panic(expected = "before printing")]
fn fake_nat_dies() {
    let topo = Topology::new("fake2", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--die"]);
}

#[test]
fn parallel_topologies() {
    let t = Instant::now();
    let hs: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let topo = Topology::new(
                    &format!("par{i}"),
                    TopologyOpts {
                        client_addrs: 2,
                        offloads: i % 2 == 0,
                    },
                );
                let srv = tcp_sink_server(topo.ns_name(Side::Server), 80);
                tcp_transfer(
                    topo.ns_name(Side::Client),
                    Some(OUTSIDE_CLIENT_IP),
                    std::net::SocketAddrV4::new(SERVER_IP, 80),
                    100_000,
                )
                .unwrap();
                assert_eq!(srv.peers().len(), 1);
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    eprintln!("6 parallel in {:?}", t.elapsed());
}

#[test]
#[should_panic(expected = "did not print")]
fn fake_nat_never_attaches() {
    let topo = Topology::new("fake3", TopologyOpts::default());
    let _nat = NatProcess::start(&topo, &["--never-attach"]);
}
