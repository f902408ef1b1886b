//! Sets the guest's wall clock (`POST /clock`). After a snapshot restore the guest's
//! CLOCK_REALTIME is as old as the snapshot; the host agent sends the current time here.
//!
//! Only CLOCK_REALTIME is touched; monotonic clocks cannot and must not be set.

/// Latest time accepted: the last millisecond of the year 9999.
const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// Why the clock could not be set.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The requested time is beyond the year 9999.
    #[error("unix_ms {0} is out of range")]
    OutOfRange(u64),
    /// The kernel refused (e.g. the daemon lacks CAP_SYS_TIME).
    #[error("clock_settime failed: {0}")]
    Set(#[source] std::io::Error),
}

/// Sets CLOCK_REALTIME to `unix_ms` milliseconds after the Unix epoch.
pub fn set_realtime(unix_ms: u64) -> Result<(), ClockError> {
    if unix_ms > MAX_UNIX_MS {
        return Err(ClockError::OutOfRange(unix_ms));
    }
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid, initialised timespec that outlives the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc != 0 {
        return Err(ClockError::Set(std::io::Error::last_os_error()));
    }
    tracing::info!(unix_ms, "clock set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_future_is_rejected_before_any_syscall() {
        assert!(matches!(
            set_realtime(MAX_UNIX_MS + 1),
            Err(ClockError::OutOfRange(_))
        ));
    }
}
