//! What the client shows: aligned tables and key/value blocks on stdout, a spinner and byte
//! meters on stderr (only when stderr is a terminal), and human sizes. No I/O beyond that.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Formats rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Formats `key  value` lines with the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

/// `1536` → `1.5 KiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Shortens an RFC 3339 timestamp to `YYYY-MM-DD HH:MM:SS`.
pub fn when(ts: Option<&str>) -> String {
    match ts {
        Some(t) if t.len() >= 19 => t[..19].replace('T', " "),
        Some(t) => t.to_string(),
        None => "-".into(),
    }
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner with elapsed seconds on stderr while a long operation runs; silent when stderr
/// is not a terminal. The line is cleared when it is dropped.
pub struct Spinner {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(label: &str) -> Spinner {
        let done = Arc::new(AtomicBool::new(false));
        let thread = stderr_is_terminal().then(|| {
            let done = done.clone();
            let label = label.to_string();
            std::thread::spawn(move || {
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                let start = Instant::now();
                let mut i = 0;
                while !done.load(Ordering::SeqCst) {
                    let secs = start.elapsed().as_secs();
                    eprint!("\r{} {label} ({secs}s)", FRAMES[i % FRAMES.len()]);
                    let _ = std::io::stderr().flush();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(120));
                }
                eprint!("\r\x1b[2K");
                let _ = std::io::stderr().flush();
            })
        });
        Spinner { done, thread }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes moved so far, redrawn on stderr at most ten times a second when it is a terminal.
pub struct Meter {
    label: String,
    total: Option<u64>,
    moved: u64,
    enabled: bool,
    start: Instant,
    last: Option<Instant>,
}

impl Meter {
    pub fn new(label: &str, total: Option<u64>) -> Meter {
        Meter {
            label: label.into(),
            total,
            moved: 0,
            enabled: stderr_is_terminal(),
            start: Instant::now(),
            last: None,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.moved += n;
        if !self.enabled
            || self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.draw();
    }

    fn draw(&self) {
        let rate = self.moved as f64 / self.start.elapsed().as_secs_f64().max(0.001);
        let progress = match self.total {
            Some(t) if t > 0 => format!(
                "{} / {} ({}%)",
                size(self.moved),
                size(t),
                self.moved * 100 / t
            ),
            _ => size(self.moved),
        };
        eprint!(
            "\r\x1b[2K{} {progress}, {}/s",
            self.label,
            size(rate as u64)
        );
        let _ = std::io::stderr().flush();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["ID", "STATUS"],
            &[
                vec!["sb-1".into(), "running".into()],
                vec!["sb-long-id".into(), "paused".into()],
            ],
        );
        assert_eq!(
            t,
            "ID          STATUS\nsb-1        running\nsb-long-id  paused\n"
        );
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(
            when(Some("2024-05-01T10:11:12.123Z")),
            "2024-05-01 10:11:12"
        );
        assert_eq!(when(None), "-");
    }
}
