//! Helpers of the operations tests: config files, HTTP scrapes from inside
//! the nat namespace, and a paced TCP transfer that records its gaps.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nat_tests::{Side, Topology, nat_cmd, run_in_ns, spawn_in_ns};

/// A directory of its own under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nat-ops-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `nat ARGS` in the topology's nat namespace: (success, stdout, stderr).
pub fn nat(topo: &Topology, args: &[&str]) -> (bool, String, String) {
    let out = nat_cmd(topo, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET from inside `ns`: (status, body, time to the whole answer).
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String, Duration), String> {
    let path = path.to_owned();
    run_in_ns(ns, move || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
        let took = started.elapsed();
        let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header end in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)?
        } else {
            body.to_owned()
        };
        Ok((status, body, took))
    })
}

fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("chunk size: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        body = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// The value of the sample `name{labels}` (labels exactly as printed) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// Sum of every sample of metric `name` in a scrape.
pub fn metric_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the paced transfer's server saw.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub peer: Option<SocketAddrV4>,
    pub bytes: usize,
    pub hash: u64,
    /// Longest time between two reads that returned data.
    pub longest_gap: Duration,
    pub done: bool,
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// One connection's sink in the server namespace: reads to EOF, records gaps.
pub struct PacedServer {
    pub received: Arc<Mutex<Received>>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

impl PacedServer {
    pub fn start(topo: &Topology, port: u16) -> PacedServer {
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = spawn_in_ns(topo.ns_name(Side::Server), move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind the paced server");
            tx.send(()).unwrap();
            let (mut s, peer) = listener.accept().expect("accept");
            if let SocketAddr::V4(p) = peer {
                shared.lock().unwrap().peer = Some(p);
            }
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = Instant::now();
            let mut hash = FNV_START;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                hash = fnv(hash, &buf[..n]);
                let mut r = shared.lock().unwrap();
                r.longest_gap = r.longest_gap.max(last.elapsed());
                r.bytes += n;
                r.hash = hash;
                last = Instant::now();
            }
            let r = shared.lock().unwrap().clone();
            let _ = s.write_all(&(r.bytes as u64).to_be_bytes());
            let _ = s.write_all(&r.hash.to_be_bytes());
            shared.lock().unwrap().done = true;
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("paced server listening");
        PacedServer {
            received,
            thread: Some(thread),
            port,
        }
    }

    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for PacedServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// Sends `total` bytes to `dst` from the client namespace in `chunks` pieces
/// spread over `over`, then checks the server's length and hash. Runs in the
/// background; join the handle for the outcome.
pub fn paced_transfer(
    topo: &Topology,
    dst: SocketAddrV4,
    total: usize,
    chunks: usize,
    over: Duration,
) -> JoinHandle<Result<(), String>> {
    spawn_in_ns(topo.ns_name(Side::Client), move || {
        let mut s = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(5))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let piece = total / chunks;
        let pause = over / chunks as u32;
        let mut hash = FNV_START;
        let mut sent = 0usize;
        let mut x: u32 = 0x1234_5678;
        for _ in 0..chunks {
            let data: Vec<u8> = (0..piece)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            s.write_all(&data)
                .map_err(|e| format!("send after {sent} bytes: {e}"))?;
            hash = fnv(hash, &data);
            sent += piece;
            thread::sleep(pause);
        }
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut reply = [0u8; 16];
        s.read_exact(&mut reply)
            .map_err(|e| format!("no reply: {e}"))?;
        let got = u64::from_be_bytes(reply[..8].try_into().unwrap()) as usize;
        let got_hash = u64::from_be_bytes(reply[8..].try_into().unwrap());
        if got != sent || got_hash != hash {
            return Err(format!(
                "server got {got} bytes (hash {got_hash:x}), {sent} sent (hash {hash:x})"
            ));
        }
        Ok(())
    })
}

/// `promtool check metrics` accepts a scrape: the exposition format and
/// Prometheus's naming rules.
pub fn assert_promtool_accepts(body: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(body.as_bytes())
        .expect("the scrape written to promtool");
    let out = promtool.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
