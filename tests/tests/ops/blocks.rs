//! `nat blocks`, `nat lookup` and the block metrics of a running NAT. The
//! block maps and the deterministic maps are written here as the datapath
//! (a block per host on demand) and the loader (the numbering of the
//! prefixes, the layout in the config map) write them, so what is checked
//! is what the commands and the metrics read back from a live instance's
//! pins. Deterministic lookups are checked for every port of a /24 on a
//! pool of four addresses, against nat_common::deterministic and the
//! formula written out.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ops::*;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use nat_common::{
    blocks::{BLOCK_DYING, Block, BlockKey, HostBlocks},
    config::{Config, allocation},
    deterministic::{DetPrefix, Layout, Numbering, Prefix},
    names::{
        LAYOUT_VERSION, MAP_BLOCK_USE, MAP_BLOCKS, MAP_CONFIG, MAP_DET_PREFIXES, MAP_HOST_BLOCKS,
        PIN_ROOT,
    },
};
use nat_tests::serde_json::Value;
use nat_tests::{
    CLIENT_IP, EXT_IFACE, INTERNAL_PREFIX, NatProcess, SERVER_IP, Side, Topology, TopologyOpts,
    nat_json, udp_echo_server, udp_roundtrip,
};
use nat_userspace::datapath::{clock, ownership::Deterministic, pins::PinDir, tables::Tables};

const METRICS: &str = "127.0.0.1:9109";

fn pinned(topo: &Topology, name: &str) -> Map {
    let path = format!(
        "{PIN_ROOT}/{}/{EXT_IFACE}/{name}_v{LAYOUT_VERSION}",
        topo.ns_name(Side::Nat)
    );
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hash<K: aya::Pod, V: aya::Pod>(topo: &Topology, name: &str) -> HashMap<MapData, K, V> {
    HashMap::try_from(pinned(topo, name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn array<V: aya::Pod>(topo: &Topology, name: &str) -> Array<MapData, V> {
    Array::try_from(pinned(topo, name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Rewrites the config map with `change` applied.
fn change_config(topo: &Topology, change: impl FnOnce(&mut Config)) {
    let mut config: Array<MapData, Config> = array(topo, MAP_CONFIG);
    let mut cfg = config.get(&0, 0).expect("config read");
    change(&mut cfg);
    config.set(0, cfg, 0).expect("config write");
}

fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

fn boot_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The wall-clock times (UTC, to the second) boot-clock time `since` may
/// print as, allowing for the time the command took.
fn utc_near(since: u64) -> BTreeSet<String> {
    let wall = clock::wall_ns(since);
    (-2..=2)
        .map(|s| clock::rfc3339(wall + i128::from(s) * 1_000_000_000))
        .collect()
}

fn text(topo: &Topology, args: &[&str]) -> String {
    let (ok, out, err) = nat(topo, args);
    assert!(ok, "nat {args:?}: {err}");
    out
}

fn scrape(topo: &Topology) -> String {
    let addr: SocketAddr = METRICS.parse().unwrap();
    let (status, body, _) = http_get(topo.ns_name(Side::Nat), addr, "/metrics")
        .unwrap_or_else(|e| panic!("scrape: {e}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The `nat_*` metric names the rules file's expressions use.
fn rule_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/nat-alerts.yml");
    let rules = std::fs::read_to_string(path).expect("dist/nat-alerts.yml");
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("nat_") {
            let boundary = rest[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if boundary {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 50);
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 51);
const EXT_1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const EXT_2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

#[test]
fn lookup_and_metrics_read_the_block_maps() {
    let topo = Topology::new("ops-blocks", TopologyOpts::default());
    topo.add_address(Side::Nat, EXT_2);
    let external = format!("{EXT_1},{EXT_2}");
    let _nat = NatProcess::start_in(
        topo.ns_name(Side::Nat),
        EXT_IFACE,
        &[
            "--external",
            &external,
            "--internal",
            INTERNAL_PREFIX,
            "--ports",
            PORTS,
            "--metrics",
            METRICS,
            "--metrics-interval-ms",
            "200",
        ],
    );
    // A session and a forward, which every mode's lookup lists.
    let _udp = udp_echo_server(topo.ns_name(Side::Server), 5353);
    udp_roundtrip(
        topo.ns_name(Side::Client),
        None,
        SocketAddrV4::new(SERVER_IP, 5353),
        64,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let session = sessions(&topo)
        .into_iter()
        .find(|s| {
            s["internal"]
                .as_str()
                .is_some_and(|i| i.starts_with("10.200.1.2:"))
        })
        .expect("the client's session");
    let session_ext = session["external"].as_str().unwrap().to_owned();
    text(
        &topo,
        &[
            "forward",
            "add",
            "tcp",
            "198.18.0.1:20999",
            "10.200.1.5:443",
        ],
    );

    // Ports 20000-20999 in blocks of 100: ten per address. Host A holds
    // blocks 0 and 3 of the first address (its limit, 2), host B block 9
    // of the second; block 5 of the second is being released.
    let now = boot_ns();
    let block = |sessions, ago_s: u64, host, slot| Block {
        sessions,
        since: now - ago_s * 1_000_000_000,
        host: be(host),
        slot,
        ..Block::default()
    };
    let a0 = block(3, 90, HOST_A, 0);
    let a3 = block(1, 30, HOST_A, 1);
    let b9 = block(7, 600, HOST_B, 0);
    let mut blocks: HashMap<MapData, BlockKey, Block> = hash(&topo, MAP_BLOCKS);
    for (addr, index, b) in [
        (EXT_1, 0, a0),
        (EXT_1, 3, a3),
        (EXT_2, 9, b9),
        (EXT_2, 5, block(BLOCK_DYING, 10, HOST_B, 1)),
    ] {
        let key = BlockKey {
            addr: be(addr),
            index,
        };
        blocks.insert(key, b, 0).expect("NAT_BLOCKS insert");
    }
    let mut hosts: HashMap<MapData, u32, HostBlocks> = hash(&topo, MAP_HOST_BLOCKS);
    let mut list_a = HostBlocks {
        addr: be(EXT_1),
        pool_index: 0,
        ..HostBlocks::default()
    };
    list_a.slots[0] = 1;
    list_a.slots[1] = 4;
    let mut list_b = HostBlocks {
        addr: be(EXT_2),
        pool_index: 1,
        ..HostBlocks::default()
    };
    list_b.slots[0] = 10;
    hosts
        .insert(be(HOST_A), list_a, 0)
        .expect("NAT_HOST_BLOCKS insert");
    hosts
        .insert(be(HOST_B), list_b, 0)
        .expect("NAT_HOST_BLOCKS insert");
    let mut in_use: Array<MapData, u64> = array(&topo, MAP_BLOCK_USE);
    in_use.set(0, 2, 0).expect("NAT_BLOCK_USE write");
    in_use.set(1, 1, 0).expect("NAT_BLOCK_USE write");
    change_config(&topo, |c| {
        c.allocation = allocation::BLOCKS;
        c.block_size = 100;
        c.max_blocks_per_host = 2;
    });

    // nat blocks: one row per block, by host, address and index.
    let rows = nat_json(&topo, &["blocks", "--json"]);
    let rows: Vec<&Value> = rows
        .as_array()
        .expect("an array")
        .iter()
        .filter(|r| {
            [HOST_A, HOST_B]
                .map(|h| h.to_string())
                .contains(&r["host"].as_str().unwrap().to_owned())
        })
        .collect();
    let want = [
        (HOST_A, EXT_1, 0, 20000, 20099, &a0),
        (HOST_A, EXT_1, 3, 20300, 20399, &a3),
        (HOST_B, EXT_2, 9, 20900, 20999, &b9),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:#?}");
    for (row, (host, ext, index, lo, hi, b)) in rows.iter().zip(want) {
        assert_eq!(row["host"], host.to_string(), "{row}");
        assert_eq!(row["external"], ext.to_string(), "{row}");
        assert_eq!(row["block"], index, "{row}");
        assert_eq!(row["port_min"], lo, "{row}");
        assert_eq!(row["port_max"], hi, "{row}");
        assert_eq!(row["sessions"], b.sessions, "{row}");
        assert_eq!(row["since_boot_ns"], b.since, "{row}");
        let ago = (now - b.since) / 1_000_000_000;
        let since_s = row["since_s"].as_u64().unwrap();
        assert!((ago..ago + 5).contains(&since_s), "{row}");
        assert!(
            utc_near(b.since).contains(row["since_utc"].as_str().unwrap()),
            "{row}"
        );
    }
    let table = text(&topo, &["blocks"]);
    assert!(
        table.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 7
                && w[..4] == ["10.200.1.51", "198.18.0.3", "20900-20999", "7"]
                && w[4].parse::<u64>().is_ok_and(|s| (600..605).contains(&s))
                && utc_near(b9.since).contains(w[6])
        }),
        "{table}"
    );

    // Lookups from the outside: the block's owner and since when, nobody
    // for a block being released, a forward, a session.
    let found = nat_json(&topo, &["lookup", "external", "198.18.0.1:20350", "--json"]);
    assert_eq!(found["allocation"], "blocks", "{found}");
    assert_eq!(found["in_pool"], true, "{found}");
    assert_eq!(found["block"]["host"], HOST_A.to_string(), "{found}");
    assert_eq!(found["block"]["port_min"], 20300, "{found}");
    assert_eq!(found["block"]["since_boot_ns"], a3.since, "{found}");
    assert!(found["deterministic"].is_null(), "{found}");
    let released = nat_json(&topo, &["lookup", "external", "198.18.0.3:20550", "--json"]);
    assert!(released["block"].is_null(), "{released}");
    let said = text(&topo, &["lookup", "external", "198.18.0.3:20550"]);
    assert!(said.contains("none holds it now"), "{said}");
    let said = text(&topo, &["lookup", "external", "198.18.0.1:20000"]);
    assert!(
        said.contains("held by 10.200.1.50: 198.18.0.1:20000-20099 since"),
        "{said}"
    );
    let forwarded = nat_json(&topo, &["lookup", "external", "198.18.0.1:20999", "--json"]);
    assert_eq!(
        forwarded["forwards"][0]["internal"], "10.200.1.5:443",
        "{forwarded}"
    );
    let on_session = nat_json(&topo, &["lookup", "external", &session_ext, "--json"]);
    let listed = on_session["sessions"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s["remote"] == format!("{SERVER_IP}:5353")
                && s["internal"].as_str().unwrap().starts_with("10.200.1.2:")),
        "{on_session}"
    );
    let outside = nat_json(&topo, &["lookup", "external", "192.0.2.9:20350", "--json"]);
    assert_eq!(outside["in_pool"], false, "{outside}");
    assert!(outside["block"].is_null(), "{outside}");

    // Lookups from the inside: a host's blocks in the order of its slots,
    // its sessions, the forwards to it.
    let a = nat_json(
        &topo,
        &["lookup", "internal", &HOST_A.to_string(), "--json"],
    );
    let held: Vec<(u64, u64)> = a["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["block"].as_u64().unwrap(),
                b["sessions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(held, [(0, 3), (3, 1)], "{a}");
    let said = text(&topo, &["lookup", "internal", &HOST_B.to_string()]);
    assert!(
        said.contains("block:         198.18.0.3:20900-20999 since"),
        "{said}"
    );
    let client = nat_json(
        &topo,
        &["lookup", "internal", &CLIENT_IP.to_string(), "--json"],
    );
    assert!(
        client["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["external"] == session_ext.as_str()),
        "{client}"
    );
    assert_eq!(client["blocks"], Value::Array(Vec::new()), "{client}");
    let target = nat_json(&topo, &["lookup", "internal", "10.200.1.5", "--json"]);
    assert_eq!(target["forwards"][0]["external_port"], 20999, "{target}");

    // Metrics: blocks per external address at scrape time, hosts at their
    // limit from the snapshot, the new counters among the others.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(&topo);
        if sample(&body, "nat_hosts_at_block_limit").is_some() {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no nat_hosts_at_block_limit:\n{body}"
        );
        sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&body, "nat_hosts_at_block_limit"),
        Some(1.0),
        "{body}"
    );
    for (ext, used, free) in [(EXT_1, 2.0, 8.0), (EXT_2, 1.0, 9.0)] {
        let series = |name: &str| format!("{name}{{external=\"{ext}\"}}");
        assert_eq!(
            sample(&body, &series("nat_blocks_in_use")),
            Some(used),
            "{body}"
        );
        assert_eq!(
            sample(&body, &series("nat_blocks_free")),
            Some(free),
            "{body}"
        );
    }
    for (outcome, reason) in [
        ("event", "events_dropped"),
        ("event", "blocks_allocated"),
        ("event", "blocks_released"),
        ("drop", "block_limit"),
        ("drop", "no_block"),
    ] {
        let series =
            format!("nat_datapath_events_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}");
        assert!(
            sample(&body, &series).is_some(),
            "{series} missing:\n{body}"
        );
    }
    assert_promtool_accepts(&body);
    // Every metric the alerting rules use is one this daemon serves.
    let served: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in rule_metrics() {
        assert!(
            served.contains(name.as_str()),
            "dist/nat-alerts.yml uses {name}, which the daemon does not serve"
        );
    }
}

/// The pool of four addresses and the /24 the deterministic test numbers.
const DET_POOL: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 0, 1),
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
    Ipv4Addr::new(198, 18, 0, 5),
];
const DET_NET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);

/// The formula written out for a /24 on four addresses with ports
/// 1024-65000: 64 hosts per address, 999 ports each, 41 left over.
fn owner_by_hand(address: usize, port: u16) -> Option<Ipv4Addr> {
    let port = u32::from(port);
    if !(1024..1024 + 64 * 999).contains(&port) {
        return None;
    }
    Some(Ipv4Addr::from(
        u32::from(DET_NET) + address as u32 * 64 + (port - 1024) / 999,
    ))
}

#[test]
fn deterministic_lookup_is_exact_for_every_port_of_a_slash_24_on_four_addresses() {
    let topo = Topology::new("ops-det", TopologyOpts::default());
    for addr in &DET_POOL[1..] {
        topo.add_address(Side::Nat, *addr);
    }
    let pool = DET_POOL.map(|a| a.to_string()).join(",");
    let _nat = NatProcess::start_in(
        topo.ns_name(Side::Nat),
        EXT_IFACE,
        &[
            "--external",
            &pool,
            "--internal",
            "10.77.0.0/24",
            "--ports",
            "1024-65000",
            "--no-fast-path",
        ],
    );
    let layout = Layout {
        hosts: 256,
        addresses: 4,
        port_min: 1024,
        port_max: 65000,
    };
    let prefixes = [Prefix {
        network: u32::from(DET_NET),
        len: 24,
    }];
    let numbering = Numbering {
        prefixes: &prefixes,
    };
    let mut det: LpmTrie<MapData, u32, DetPrefix> =
        LpmTrie::try_from(pinned(&topo, MAP_DET_PREFIXES)).expect("an LPM trie");
    det.insert(
        &Key::new(24, be(DET_NET)),
        DetPrefix {
            network: u32::from(DET_NET),
            base: 0,
        },
        0,
    )
    .expect("NAT_DET_PREFIXES insert");
    change_config(&topo, |c| {
        c.allocation = allocation::DETERMINISTIC;
        c.det_per_address = layout.per_address() as u32;
        c.det_range = layout.range();
    });

    // Every port of every address and every host, from the instance's
    // maps, against the formula by hand and nat_common's.
    let pins = PinDir::new(Some(topo.ns_name(Side::Nat)), EXT_IFACE);
    let held = Deterministic::read(&Tables::open(&pins).expect("the pinned maps"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(held.layout(), layout);
    for (a, ext) in DET_POOL.iter().enumerate() {
        for port in 0..=u16::MAX {
            let want = owner_by_hand(a, port);
            let formula = layout
                .host(a as u32, port)
                .and_then(|i| numbering.address(i))
                .map(Ipv4Addr::from);
            assert_eq!(formula, want, "{ext}:{port}");
            assert_eq!(held.owner(*ext, port), want, "{ext}:{port}");
        }
    }
    for i in 0..256u32 {
        let host = Ipv4Addr::from(u32::from(DET_NET) + i);
        let share = held.share(host).expect("a share");
        let lo = 1024 + (i % 64) * 999;
        assert_eq!(share.external, DET_POOL[(i / 64) as usize], "{host}");
        assert_eq!(
            (u32::from(share.port_min), u32::from(share.port_max)),
            (lo, lo + 998),
            "{host}"
        );
    }

    // The command gives the same answers: at both ends of shares, on
    // either side of their borders, below the range and in the leftover
    // ports.
    for (a, ext) in DET_POOL.iter().enumerate() {
        let mut ports = vec![1023u16, 1024, 64_959, 64_960, 65_000];
        for slot in [0u32, 1, 31, 63] {
            let lo = 1024 + slot * 999;
            ports.extend([lo, lo + 998].map(|p| p as u16));
        }
        for port in ports {
            let endpoint = format!("{ext}:{port}");
            let found = nat_json(&topo, &["lookup", "external", &endpoint, "--json"]);
            assert_eq!(found["allocation"], "deterministic", "{found}");
            match owner_by_hand(a, port) {
                Some(host) => {
                    assert_eq!(found["deterministic"]["host"], host.to_string(), "{found}");
                    let lo = found["deterministic"]["port_min"].as_u64().unwrap();
                    let hi = found["deterministic"]["port_max"].as_u64().unwrap();
                    assert!((lo..=hi).contains(&u64::from(port)), "{found}");
                }
                None => assert!(found["deterministic"].is_null(), "{found}"),
            }
        }
    }
    for (i, ext, lo) in [
        (0u32, DET_POOL[0], 1024u32),
        (63, DET_POOL[0], 1024 + 63 * 999),
        (64, DET_POOL[1], 1024),
        (200, DET_POOL[3], 1024 + 8 * 999),
        (255, DET_POOL[3], 1024 + 63 * 999),
    ] {
        let host = Ipv4Addr::from(u32::from(DET_NET) + i).to_string();
        let found = nat_json(&topo, &["lookup", "internal", &host, "--json"]);
        let share = &found["deterministic"];
        assert_eq!(share["index"], i, "{found}");
        assert_eq!(share["external"], ext.to_string(), "{found}");
        assert_eq!(share["port_min"], lo, "{found}");
        assert_eq!(share["port_max"], lo + 998, "{found}");
    }
    let said = text(&topo, &["lookup", "internal", "10.77.0.64"]);
    assert!(
        said.contains("deterministic: 198.18.0.3:1024-2022"),
        "{said}"
    );
    let outside = nat_json(&topo, &["lookup", "internal", "10.77.1.0", "--json"]);
    assert!(outside["deterministic"].is_null(), "{outside}");
    let said = text(&topo, &["lookup", "external", "198.18.0.5:64960"]);
    assert!(said.contains("nobody"), "{said}");

    // Maps that disagree with the formula give no answer rather than a
    // wrong one.
    change_config(&topo, |c| c.det_range = 998);
    let (ok, _, err) = nat(&topo, &["lookup", "external", "198.18.0.1:2000"]);
    assert!(!ok && err.contains("the formula"), "{err}");
}
