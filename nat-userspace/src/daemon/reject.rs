//! Answers the SYNs the datapath refused (`on-exhaustion reject`) with ICMP
//! destination unreachable, communication administratively prohibited
//! (RFC 5508 REQ-8), so clients fail fast instead of retrying blind.
//! Sent from a raw socket in the NAT's namespace: the kernel routes it to the
//! client and picks the source address facing it.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use bytes::{BufMut as _, Bytes, BytesMut};
use log::warn;
use nat_common::{
    config::{REJECT_QUOTE, RejectEvent},
    csum::{fold, sum_bytes},
};
use tokio::io::{Interest, unix::AsyncFd};

/// At most this many rejections are sent per second; the rest are dropped
/// silently (their SYN was dropped already), so a flood cannot be amplified.
const PER_SECOND: u32 = 1000;

const ICMP_DEST_UNREACH: u8 = 3;
/// Communication administratively prohibited.
const ICMP_PROHIBITED: u8 = 13;

/// The ICMP message answering a refused packet whose first bytes are `quote`.
pub fn prohibited(quote: &[u8]) -> Bytes {
    let mut msg = BytesMut::with_capacity(8 + quote.len());
    msg.put_u8(ICMP_DEST_UNREACH);
    msg.put_u8(ICMP_PROHIBITED);
    msg.put_u16(0); // checksum, filled in below
    msg.put_u32(0); // unused for this type
    msg.put_slice(quote);
    // The sum is taken in memory order, so it goes back in memory order.
    let check = !fold(sum_bytes(&msg, 0));
    msg[2..4].copy_from_slice(&check.to_ne_bytes());
    msg.freeze()
}

fn raw_icmp_socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot open a raw ICMP socket for on-exhaustion reject");
    }
    // SAFETY: a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(sock: &OwnedFd, to: Ipv4Addr, msg: &[u8]) -> std::io::Result<()> {
    // SAFETY: a zeroed sockaddr_in is valid; sendto reads `msg` and `addr` only.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from(to).to_be();
        let n = libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Reads refused SYNs from the ring buffer map and answers them until the
/// runtime shuts down.
pub fn spawn(map: Map) -> Result<tokio::task::JoinHandle<()>> {
    let ring: RingBuf<MapData> = map.try_into().context("reject ring buffer")?;
    let sock = raw_icmp_socket()?;
    // SAFETY: the RingBuf owns its map's descriptor for as long as it lives
    // and always reports that same descriptor.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the reject ring buffer: {e}"))?;
    Ok(tokio::spawn(async move {
        let (mut window, mut sent) = (Instant::now(), 0u32);
        loop {
            let Ok(mut ready) = ring.readable_mut().await else {
                return;
            };
            while let Some(item) = ready.get_inner_mut().next() {
                if item.len() < size_of::<RejectEvent>() {
                    continue;
                }
                let len = u32::from_ne_bytes([item[0], item[1], item[2], item[3]]) as usize;
                let quote = &item[8..8 + len.min(REJECT_QUOTE)];
                if quote.len() < 20 {
                    continue;
                }
                if window.elapsed() >= Duration::from_secs(1) {
                    (window, sent) = (Instant::now(), 0);
                }
                if sent >= PER_SECOND {
                    continue;
                }
                sent += 1;
                let client = Ipv4Addr::new(quote[12], quote[13], quote[14], quote[15]);
                if let Err(e) = send(&sock, client, &prohibited(quote)) {
                    warn!("reject: cannot answer {client}: {e}");
                }
            }
            ready.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prohibited_message_checksums_to_zero() {
        let quote: Vec<u8> = (0..28).collect();
        let msg = prohibited(&quote);
        assert_eq!((msg[0], msg[1]), (3, 13));
        assert_eq!(&msg[8..], &quote[..]);
        assert_eq!(
            fold(sum_bytes(&msg, 0)),
            0xffff,
            "a valid checksum sums to all ones"
        );
    }
}
