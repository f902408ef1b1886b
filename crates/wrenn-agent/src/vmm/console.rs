//! A VM's console log with a bounded size. QEMU writes the guest's serial console to its
//! stdout, a file opened for appending ([`open_for_qemu`]); a guest that floods its console
//! (any root process in it can write to `/dev/ttyS0`) must not fill the host's disk. A task
//! per VM ([`keep_bounded`]) checks the file every [`CHECK_EVERY`]: past [`CAP`] bytes, its
//! last [`KEEP`] bytes go to `console.log.1` (replacing the previous one) and the log starts
//! again from empty. QEMU's appends land at the new end, so nothing it writes afterwards is
//! lost; what it writes between the copy and the truncation is (a flood's, by then).
//!
//! The disk a console takes is at most `CAP + KEEP` plus what the guest writes in one
//! interval (under TCG its serial port moves a few MB/s at most).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The size past which the console log is cut.
pub const CAP: u64 = 1 << 20;
/// The tail kept in `console.log.1` when it is cut.
pub const KEEP: u64 = 256 << 10;
/// How often the size is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A new, empty console log for QEMU's stdout, opened for appending (so a cut by
/// [`trim`] leaves QEMU writing at the new end rather than past a hole).
pub fn open_for_qemu(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|f| f.set_len(0).map(|_| f))
}

/// Where the kept tail of a cut log goes.
pub fn previous(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Cuts the log at `path` when it is longer than `cap`: its last `keep` bytes replace
/// [`previous`], and the log is emptied. Returns whether it was cut.
pub fn trim(path: &Path, cap: u64, keep: u64) -> std::io::Result<bool> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    if len <= cap {
        return Ok(false);
    }
    let start = len.saturating_sub(keep);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(keep as usize);
    Read::by_ref(&mut f).take(keep).read_to_end(&mut tail)?;
    let prev = previous(path);
    let tmp = prev.with_extension("1.tmp");
    File::create(&tmp)?.write_all(&tail)?;
    std::fs::rename(&tmp, &prev)?;
    f.set_len(0)?;
    Ok(true)
}

/// Keeps the console log at `path` bounded until `closed` completes (the VM is gone).
pub fn keep_bounded(path: PathBuf, closed: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let p = path.clone();
            match tokio::task::spawn_blocking(move || trim(&p, CAP, KEEP)).await {
                Ok(Ok(true)) => tracing::debug!(path = %path.display(), "console log cut"),
                Ok(Ok(false)) => {}
                // The run directory went away (destroy): nothing left to bound.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
                Ok(Err(e)) => tracing::warn!(path = %path.display(), "bounding console log: {e}"),
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_cap_keeps_its_tail_and_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut qemu = open_for_qemu(&path).unwrap();
        qemu.write_all(&[b'a'; 900]).unwrap();
        assert!(!trim(&path, 1000, 100).unwrap());
        qemu.write_all(b"0123456789").unwrap();
        qemu.write_all(&[b'b'; 100]).unwrap();
        assert!(trim(&path, 1000, 100).unwrap());
        assert_eq!(std::fs::read(previous(&path)).unwrap(), vec![b'b'; 100]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The writer's next append lands at the new start, not past a hole.
        qemu.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
    }

    #[test]
    fn opening_for_qemu_empties_an_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"old boot").unwrap();
        let mut f = open_for_qemu(&path).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
