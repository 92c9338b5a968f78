//! Session pairs as the datapath writes them, for the sweep tests' tables.

use nat_common::flow::{FlowKey, Session, seen};

/// The forward and reverse entries of an opened session of `key` on
/// external (`ext`, `port`), both network byte order, last seen at `last`.
pub fn opened_pair(key: FlowKey, ext: u32, port: u16, last: u64) -> [(FlowKey, Session); 2] {
    let out = Session {
        addr: ext,
        port,
        seen: seen::SYN.into(),
        last_seen: last,
        ..Session::default()
    };
    let back = Session {
        addr: key.saddr,
        port: key.sport,
        seen: seen::SYN_ACK.into(),
        last_seen: last,
        ..Session::default()
    };
    [(key, out), (key.translated(ext, port), back)]
}
