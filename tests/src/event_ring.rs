//! Compliance events written into a running daemon's NAT_EVENTS ring
//! buffer, as the datapath writes them, for the export tests.
//!
//! User space has no call that writes a BPF ring buffer. So the test
//! opens the map, through the daemon's descriptors (`/proc/PID/fdinfo`
//! names each map's id; BPF_MAP_GET_FD_BY_ID opens it) or at its pin, and
//! loads a program of its own, a dozen instructions written out below,
//! that copies its packet's payload into the ring buffer with
//! `bpf_ringbuf_output`; BPF_PROG_TEST_RUN runs it once per event. The
//! daemon then reads exactly what the kernel programs would have written,
//! through its own reader, with nothing in the daemon made for tests.

use std::fs;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use nat_common::nat_event::NatEvent;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_FUNC_SKB_LOAD_BYTES: i32 = 26;
const BPF_FUNC_RINGBUF_OUTPUT: i32 = 130;
/// The frame's Ethernet header, which a TC program's packet starts with.
const ETH_LEN: usize = 14;

/// A running daemon's event ring buffer and a program that writes to it.
pub struct EventRing {
    _map: OwnedFd,
    prog: OwnedFd,
}

impl EventRing {
    /// The NAT_EVENTS ring buffer of the `nat load` daemon `pid`. Panics
    /// when it has none.
    pub fn of_daemon(pid: u32) -> EventRing {
        let map = daemon_map(pid, "NAT_EVENTS")
            .unwrap_or_else(|| panic!("daemon {pid} holds no NAT_EVENTS map"));
        let prog = load_writer(map.as_raw_fd());
        EventRing { _map: map, prog }
    }

    /// The ring buffer pinned at `path`, with or without a daemon.
    pub fn pinned(path: &std::path::Path) -> EventRing {
        #[repr(C)]
        #[derive(Default)]
        struct ObjGet {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
            path_fd: i32,
            _pad: u32,
        }
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .expect("a pin path without NUL");
        let mut attr = ObjGet {
            pathname: c_path.as_ptr() as u64,
            ..ObjGet::default()
        };
        let fd = bpf(BPF_OBJ_GET, &mut attr)
            .unwrap_or_else(|e| panic!("cannot open the pinned map {}: {e}", path.display()));
        // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let prog = load_writer(map.as_raw_fd());
        EventRing { _map: map, prog }
    }

    /// Writes `ev` into the ring buffer, as a datapath program does.
    pub fn write(&self, ev: &NatEvent) {
        let mut frame = vec![0u8; ETH_LEN + size_of::<NatEvent>()];
        // An EtherType for local experiments: nothing parses the frame.
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        // SAFETY: NatEvent is plain old data; its bytes are copied, not kept.
        let bytes = unsafe {
            std::slice::from_raw_parts((ev as *const NatEvent).cast::<u8>(), size_of::<NatEvent>())
        };
        frame[ETH_LEN..].copy_from_slice(bytes);
        let mut out = vec![0u8; frame.len() + 64];
        #[repr(C)]
        #[derive(Default)]
        struct TestRun {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        let mut attr = TestRun {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN of the event writer");
        assert_eq!(
            attr.retval as i32, 0,
            "bpf_ringbuf_output refused the event (ring buffer full?)"
        );
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads (and for some commands writes) `attr`, which is
    // a live, properly laid out attribute of `size_of::<T>()` bytes; the
    // pointers inside it point at buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The map named `name` among the descriptors of process `pid`, opened by id.
fn daemon_map(pid: u32, name: &str) -> Option<OwnedFd> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {dir}: {e}"));
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Some(fd) = map_by_id(id) else { continue };
        if map_name(fd.as_raw_fd()).as_deref() == Some(name) {
            return Some(fd);
        }
    }
    None
}

fn map_by_id(id: u32) -> Option<OwnedFd> {
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = ById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).ok()?;
    // SAFETY: a descriptor the kernel just opened for us alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn map_name(fd: RawFd) -> Option<String> {
    // struct bpf_map_info: type, id, key_size, value_size, max_entries,
    // map_flags (u32 each), then the name (16 bytes); the rest left zero.
    let mut info = [0u8; 128];
    #[repr(C)]
    struct Info {
        fd: u32,
        len: u32,
        info: u64,
    }
    let mut attr = Info {
        fd: fd as u32,
        len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let name = &info[24..40];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// One instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = dst | (src << 4);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// A TC program that copies the packet's bytes after the Ethernet header,
/// one NatEvent's worth, to its stack (helpers may not read the packet
/// itself) and writes them into the ring buffer `map`; it returns what
/// `bpf_skb_load_bytes` or `bpf_ringbuf_output` did (0, or a negative errno).
fn load_writer(map: RawFd) -> OwnedFd {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const JNE_IMM: u8 = 0x55;
    const LD_IMM64: u8 = 0x18;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    let size = size_of::<NatEvent>() as i32;
    let insns: Vec<[u8; 8]> = vec![
        insn(MOV64_IMM, 2, 0, 0, ETH_LEN as i32), // r2 = offset (r1: the skb)
        insn(MOV64_REG, 3, 10, 0, 0),             // r3 = fp
        insn(ADD64_IMM, 3, 0, 0, -size),          // r3 = fp - size
        insn(MOV64_IMM, 4, 0, 0, size),           // r4 = size
        insn(CALL, 0, 0, 0, BPF_FUNC_SKB_LOAD_BYTES),
        insn(JNE_IMM, 0, 0, 7, 0),                // if r0 != 0: return it
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map), // r1 = the ring buffer
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 2, 10, 0, 0),    // r2 = fp
        insn(ADD64_IMM, 2, 0, 0, -size), // r2 = the event on the stack
        insn(MOV64_IMM, 3, 0, 0, size),  // r3 = size
        insn(MOV64_IMM, 4, 0, 0, 0),     // r4 = flags
        insn(CALL, 0, 0, 0, BPF_FUNC_RINGBUF_OUTPUT),
        insn(EXIT, 0, 0, 0, 0), // r0: the helper's result
    ];
    let code: Vec<u8> = insns.concat();
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    #[repr(C)]
    struct Load {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"test_nat_evt");
    let mut attr = Load {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a descriptor the kernel just opened for us alone.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            panic!(
                "cannot load the event writer: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}
