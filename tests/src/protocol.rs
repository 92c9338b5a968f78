//! The TCP check protocol between the traffic helpers and the sink server.
//!
//! Request: 8-byte big-endian length N, then N payload bytes.
//! Reply: the same 8-byte N, then the 4-byte big-endian FNV-1a hash of what
//! the server received. The client compares both with what it sent, which
//! catches truncation, reordering and corruption (e.g. a bad checksum rewrite
//! that a lax receiver let through) without buffering the payload.

pub(crate) const REQUEST_HEADER_LEN: usize = 8;
pub(crate) const REPLY_LEN: usize = 12;
pub(crate) const CHUNK: usize = 64 * 1024;

/// The closing server's exchange: one short request, one short reply, then
/// the server closes.
pub(crate) const SHORT_REQUEST: &[u8] = b"hello";
pub(crate) const SHORT_REPLY: &[u8] = b"bye";

/// 32-bit FNV-1a, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u32);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Fnv1a(0x811c_9dc5)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u32::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }

    pub(crate) fn finish(self) -> u32 {
        self.0
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failed run can be
/// reproduced and payloads differ between connections with different seeds.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    state: u64,
}

impl Payload {
    pub(crate) fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Payload {
            state: (seed ^ 0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

pub(crate) fn encode_reply(len: u64, hash: u32) -> [u8; REPLY_LEN] {
    let mut reply = [0; REPLY_LEN];
    reply[..8].copy_from_slice(&len.to_be_bytes());
    reply[8..].copy_from_slice(&hash.to_be_bytes());
    reply
}

pub(crate) fn decode_reply(reply: &[u8; REPLY_LEN]) -> (u64, u32) {
    let len = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let hash = u32::from_be_bytes(reply[8..].try_into().expect("4 bytes"));
    (len, hash)
}
