//! Raw frames and captures for the tests that craft traffic: a link's MAC
//! address, whole frames sent past the stack, and tcpdump on a link.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

/// The MAC address of `dev` in namespace `ns`.
pub fn link_address(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .expect("ip runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    let text = v[0]["address"].as_str().expect("a link address");
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex octet");
    }
    m
}

/// Sends whole Ethernet frames out of `dev` in the calling thread's
/// namespace, past the stack: the NAT sees exactly these bytes.
pub fn send_frames(dev: &str, frames: &[Vec<u8>]) {
    let name = std::ffi::CString::new(dev).expect("interface name");
    // SAFETY: plain libc calls on values we own; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex != 0, "no interface {dev}");
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        for f in frames {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&f[..6]);
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            // A full device queue drops a frame, as a wire would.
            if n < 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        libc::close(fd);
    }
}

/// tcpdump on one link of a namespace, writing to a file; stopped and
/// the file removed on drop.
pub struct Capture {
    child: Child,
    file: String,
}

impl Capture {
    /// Captures on `dev` of namespace `ns` into `file`.
    pub fn start(ns: &str, dev: &str, file: &str) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-n", "-U", "-i", dev])
            .args(["-w", file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump runs");
        // tcpdump needs a moment before it captures.
        thread::sleep(Duration::from_millis(1500));
        Self {
            child,
            file: file.to_owned(),
        }
    }

    /// Stops the capture and returns the lines tcpdump reads back with `filter`.
    pub fn stop_and_read(&mut self, filter: &str) -> (usize, Vec<String>) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let read = |f: &str| {
            let out = Command::new("tcpdump")
                .args(["-n", "-r", &self.file, f])
                .output()
                .expect("tcpdump -r runs");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        (read("ip").len(), read(filter))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
