//! Whole-map reads with BPF_MAP_LOOKUP_BATCH: one syscall per few thousand
//! entries instead of two per entry, so the sweep can read a million
//! sessions well within a second of CPU. aya 0.14 has no batch API.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const CHUNK: usize = 8192;

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Fails unless the map's key and value sizes are those of `K` and `V`:
/// the kernel copies that many bytes per entry into our buffers.
fn check_layout<K, V>(map: &MapData) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "map layout does not match the batch types",
        ));
    }
    Ok(())
}

/// Every (key, value) of a hash map whose key and value types match its layout.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    check_layout::<K, V>(map)?;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(CHUNK);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(CHUNK);
    // The batch token of hash maps is a bucket index; u64 storage fits any map type.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values into
        // buffers sized for CHUNK of each, and one token into `token_out`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        // Entries are valid only after success or the end-of-map ENOENT;
        // other errors may leave `count` as it was passed in.
        let filled = match &err {
            None => attr.count as usize,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => attr.count as usize,
            Some(_) => 0,
        };
        for i in 0..filled.min(CHUNK) {
            // SAFETY: the kernel initialised the first `filled` entries.
            out.push(unsafe {
                (
                    keys.as_ptr().add(i).read().assume_init(),
                    values.as_ptr().add(i).read().assume_init(),
                )
            });
        }
        match err {
            None => {}
            // ENOENT: the walk reached the end (possibly with a last partial batch).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Inserts or replaces `entries` in chunks of one syscall each.
pub fn update_all<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> io::Result<()> {
    check_layout::<K, V>(map)?;
    let fd = map.fd().as_fd().as_raw_fd();
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the kernel reads `count` keys and values from live buffers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
