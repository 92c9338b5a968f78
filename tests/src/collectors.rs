//! Real decoders of the compliance export, run in a test's namespace:
//! a capture ([`Capture`], tcpdump's in immediate mode, decoded with
//! Wireshark's IPFIX dissector by [`ipfix_messages`]), `nfcapd` storing what it receives
//! ([`Nfcapd`], read back with `nfdump`), and a plain UDP socket that
//! keeps every datagram ([`UdpInbox`], for syslog lines). Each stops its
//! process and removes its files on drop.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lock::lock;
use crate::netns::spawn_in_ns;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("nat-{what}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` to `child` and waits for it; SIGKILL past the limit.
fn stop_child(child: &mut Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    let _ = kill(pid, signal);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `ip netns exec NS PROGRAM ...`: these programs need no bpffs, so the
/// remount of /sys it does is no concern.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).env("TZ", "UTC");
    cmd
}

/// A capture on one interface of a namespace, written to a pcap file.
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    _dir: Scratch,
}

impl Capture {
    /// Starts `tcpdump -i IFACE FILTER` in `ns` and returns once it captures.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Capture {
        let dir = Scratch::new("capture", ns);
        let pcap = dir.0.join("capture.pcap");
        let mut child = in_ns(ns, "tcpdump")
            // Immediate mode: otherwise the last packets wait in the
            // kernel's ring block for its timeout, and a capture stopped
            // right after them ends without them.
            .args(["-n", "-U", "--immediate-mode", "-i", iface, "-w"])
            .arg(&pcap)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump: {e}"));
        let stderr = child.stderr.take().expect("stderr was piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tcpdump] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("tcpdump did not start capturing on {iface} in {ns}");
                }
            }
        }
        Capture {
            child: Some(child),
            pcap,
            _dir: dir,
        }
    }

    /// Ends the capture (SIGINT, which has tcpdump finish the file) and
    /// returns the pcap's path, valid while `self` lives.
    pub fn stop(&mut self) -> &Path {
        if let Some(mut child) = self.child.take() {
            // Time for tcpdump to write what the kernel handed it last.
            thread::sleep(Duration::from_millis(300));
            stop_child(&mut child, Signal::SIGINT);
        }
        &self.pcap
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGINT);
        }
    }
}

/// One IPFIX data record as Wireshark decodes a port block event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// The collector's port the message went to.
    pub port: u16,
    pub nat_event: u8,
    pub internal: String,
    pub external: String,
    pub first: u16,
    pub last: u16,
    pub step: u16,
    pub ports: u16,
    /// observationTimeMilliseconds, as Unix milliseconds.
    pub time_ms: u64,
}

/// One IPFIX message as Wireshark decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub port: u16,
    pub domain: u32,
    pub sequence: u32,
    /// Template ids of the message's template records.
    pub templates: Vec<u16>,
    /// Its port block records.
    pub blocks: Vec<BlockRecord>,
}

/// The IPFIX messages in `pcap` sent to UDP `ports`, in capture order,
/// decoded by tshark's dissector (`-d udp.port==P,cflow`).
pub fn ipfix_messages(pcap: &Path, ports: &[u16]) -> Vec<Message> {
    const FIELDS: [&str; 12] = [
        "udp.dstport",
        "cflow.od_id",
        "cflow.sequence",
        "cflow.template_id",
        "cflow.nat_event",
        "cflow.srcaddr",
        "cflow.post_natsource_ipv4_address",
        "cflow.port_range_start",
        "cflow.port_range_end",
        "cflow.port_range_step_size",
        "cflow.port_range_num_ports",
        "cflow.observation_time_milliseconds",
    ];
    let mut cmd = Command::new("tshark");
    cmd.env("TZ", "UTC").args(["-n", "-r"]).arg(pcap);
    for p in ports {
        cmd.args(["-d", &format!("udp.port=={p},cflow")]);
    }
    let filter = ports
        .iter()
        .map(|p| format!("udp.dstport=={p}"))
        .collect::<Vec<_>>()
        .join(" || ");
    cmd.args(["-Y", &filter, "-T", "fields", "-E", "aggregator=|"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run tshark: {e}"));
    assert!(
        out.status.success(),
        "tshark -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<Vec<&str>> = line
                .split('\t')
                .map(|c| c.split('|').filter(|v| !v.is_empty()).collect())
                .collect();
            let col = |i: usize| cols.get(i).cloned().unwrap_or_default();
            let one = |i: usize| *col(i).first().unwrap_or(&"");
            let num = |v: &str| -> u64 {
                v.parse()
                    .unwrap_or_else(|_| panic!("tshark gave {v:?} for a number in {line:?}"))
            };
            let port = num(one(0)) as u16;
            let events = col(4);
            let blocks = (0..events.len())
                .map(|r| BlockRecord {
                    port,
                    nat_event: num(events[r]) as u8,
                    internal: col(5)[r].to_owned(),
                    external: col(6)[r].to_owned(),
                    first: num(col(7)[r]) as u16,
                    last: num(col(8)[r]) as u16,
                    step: num(col(9)[r]) as u16,
                    ports: num(col(10)[r]) as u16,
                    time_ms: wireshark_time_ms(col(11)[r]),
                })
                .collect();
            Message {
                port,
                domain: num(one(1)) as u32,
                sequence: num(one(2)) as u32,
                templates: col(3).iter().map(|t| num(t) as u16).collect(),
                blocks,
            }
        })
        .collect()
}

/// Unix milliseconds of Wireshark's absolute time in UTC,
/// `Dec  7, 2026 01:33:28.459000000 UTC`.
pub fn wireshark_time_ms(s: &str) -> u64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split_whitespace().collect();
    let bad = || -> ! { panic!("not a Wireshark UTC time: {s:?}") };
    if parts.len() != 5 || parts[4] != "UTC" {
        bad();
    }
    let month = MONTHS
        .iter()
        .position(|m| *m == parts[0])
        .unwrap_or_else(|| bad()) as u32
        + 1;
    let day: u32 = parts[1]
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| bad());
    let year: i64 = parts[2].parse().unwrap_or_else(|_| bad());
    let (hms, frac) = parts[3].split_once('.').unwrap_or_else(|| bad());
    let hms: Vec<u64> = hms
        .split(':')
        .map(|v| v.parse().unwrap_or_else(|_| bad()))
        .collect();
    let ms: u64 = frac
        .get(..3)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| bad());
    let days = days_from_civil(year, month, day);
    (days as u64 * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) * 1000 + ms
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `nfcapd` receiving IPFIX on one address and port of a namespace.
pub struct Nfcapd {
    child: Option<Child>,
    dir: Scratch,
}

impl Nfcapd {
    /// Starts `nfcapd -b ADDR -p PORT` in `ns` and returns once it listens.
    pub fn start(ns: &str, at: SocketAddr) -> Nfcapd {
        let dir = Scratch::new("nfcapd", ns);
        let child = in_ns(ns, "nfcapd")
            .args(["-b", &at.ip().to_string(), "-p", &at.port().to_string()])
            .args(["-t", "3600", "-w"])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nfcapd (Debian package nfdump): {e}"));
        let nfcapd = Nfcapd {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let sport = format!("sport = :{}", at.port());
        loop {
            let out = in_ns(ns, "ss")
                .args(["-Hlun", &sport])
                .output()
                .expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return nfcapd;
            }
            assert!(Instant::now() < deadline, "nfcapd did not listen on {at}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops nfcapd (SIGTERM: it writes out what it holds) and returns
    /// what `nfdump -o json` reads from its files.
    pub fn stop(&mut self) -> Vec<serde_json::Value> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGTERM);
        }
        let out = Command::new("nfdump")
            .env("TZ", "UTC")
            .arg("-R")
            .arg(&self.dir.0)
            .args(["-o", "json"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run nfdump: {e}"));
        assert!(
            out.status.success(),
            "nfdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(records)) => records,
            _ => panic!("nfdump printed no JSON array: {text}"),
        }
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGTERM);
        }
    }
}

/// A UDP socket in a namespace that keeps every datagram it receives.
pub struct UdpInbox {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpInbox {
    /// Binds `at` in `ns` and starts receiving.
    pub fn start(ns: &str, at: SocketAddr) -> UdpInbox {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound) = mpsc::channel();
        let thread = {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            spawn_in_ns(ns, move || {
                let sock = UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"));
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("read timeout");
                bound_tx.send(()).expect("the starter waits");
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        lock(&received).push(buf[..n].to_vec());
                    }
                }
            })
        };
        bound
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("no UDP socket on {at} in {ns}"));
        UdpInbox {
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        lock(&self.received).clone()
    }

    /// Waits until `n` datagrams arrived or `within` passed; what arrived.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        while lock(&self.received).len() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.received()
    }
}

impl Drop for UdpInbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
