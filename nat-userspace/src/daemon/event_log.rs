//! The datapath's rare-event log: aya-log records from the programs'
//! `AYA_LOGS` ring buffer, forwarded to the daemon's own log. The programs
//! write records only while the `log-events` setting is on.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use log::warn;
use tokio::io::{Interest, unix::AsyncFd};

/// Starts forwarding on the current tokio runtime; the task ends with the runtime.
pub fn spawn(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = EbpfLogger::init(ebpf).context("cannot open the datapath's event log")?;
    // SAFETY: the logger owns the ring buffer's descriptor and keeps it open
    // for as long as the AsyncFd that owns the logger exists.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .context("cannot watch the datapath's event log")?;
    Ok(tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("datapath event log: {e}");
                    return;
                }
            }
        }
    }))
}
