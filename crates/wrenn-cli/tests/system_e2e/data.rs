//! Big files with bounded memory, and the privacy of the data directory.

use crate::common::{enter, rss_bytes, rt};
use crate::pseudo_random;
use futures_util::StreamExt;
use serde_json::json;
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A generated upload: `chunks` chunks of one pseudo-random block, each stamped with its index
/// (so reordered or repeated chunks change the digest), hashed as it is produced.
fn generated_body(
    total: u64,
    hasher: Arc<std::sync::Mutex<sha2::Sha256>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    const CHUNK: usize = 1024 * 1024;
    let block = pseudo_random(CHUNK, 99);
    futures_util::stream::unfold(0u64, move |sent| {
        let hasher = hasher.clone();
        let mut chunk = block.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK as u64) as usize;
            chunk.truncate(n);
            let idx = (sent / CHUNK as u64).to_le_bytes();
            let stamp = idx.len().min(n);
            chunk[..stamp].copy_from_slice(&idx[..stamp]);
            hasher.lock().unwrap().update(&chunk);
            Some((Ok(chunk), sent + n as u64))
        }
    })
}

#[test]
fn big_file_streams_through_with_bounded_memory() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({})).await;
        let id = sb["id"].as_str().unwrap().to_string();
        let dir = "/home/user";
        let avail: u64 = api
            .sh(&id, &format!("df -B1 --output=avail {dir} | tail -n 1"))
            .await
            .trim()
            .parse()
            .unwrap();
        const GIB: u64 = 1024 * 1024 * 1024;
        const MIB: u64 = 1024 * 1024;
        // Leave a little room for the guest itself.
        let fits = avail.saturating_sub(48 * MIB) / MIB * MIB;
        let size = GIB.min(fits);
        eprintln!(
            "[numbers] guest free space at {dir}: {} MiB; big file size: {} MiB",
            avail / MIB,
            size / MIB
        );
        assert!(size >= 256 * MIB, "guest disk too small for a big file: {avail} bytes free");

        let pid = s.daemon_pid();
        let baseline = rss_bytes(pid).unwrap();
        let peak = Arc::new(AtomicU64::new(baseline));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if let Some(r) = rss_bytes(pid) {
                        peak.fetch_max(r, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };

        let path = format!("{dir}/big.bin");
        let hasher = Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
        let body = reqwest::Body::wrap_stream(generated_body(size, hasher.clone()));
        let form = reqwest::multipart::Form::new().text("path", path.clone()).part(
            "file",
            reqwest::multipart::Part::stream_with_length(body, size).file_name("big.bin"),
        );
        let t0 = Instant::now();
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/write"),
            )
            .multipart(form)
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .unwrap();
        let up = t0.elapsed();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
        let sent_digest = hex::encode(
            std::mem::replace(&mut *hasher.lock().unwrap(), sha2::Sha256::new()).finalize(),
        );
        let peak_up = peak.load(Ordering::SeqCst);
        let on_disk: u64 = api
            .sh(&id, &format!("stat -c %s {path}"))
            .await
            .trim()
            .parse()
            .unwrap();
        assert_eq!(on_disk, size);

        let t0 = Instant::now();
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/read"),
            )
            .json(&json!({ "path": path }))
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut got = 0u64;
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("download broke");
            got += chunk.len() as u64;
            h.update(&chunk);
        }
        let down = t0.elapsed();
        done.store(true, Ordering::SeqCst);
        sampler.await.unwrap();
        let peak_all = peak.load(Ordering::SeqCst);
        assert_eq!(got, size, "downloaded size");
        assert_eq!(hex::encode(h.finalize()), sent_digest, "download differs");

        let mb = size as f64 / MIB as f64;
        eprintln!(
            "[numbers] {} MiB up in {up:?} ({:.1} MiB/s), down in {down:?} ({:.1} MiB/s)",
            size / MIB,
            mb / up.as_secs_f64(),
            mb / down.as_secs_f64()
        );
        eprintln!(
            "[numbers] wrenn up VmRSS: baseline {} MiB, peak during upload {} MiB, peak overall {} MiB",
            baseline / MIB,
            peak_up / MIB,
            peak_all / MIB
        );
        assert!(
            peak_all.saturating_sub(baseline) < 64 * MIB,
            "wrenn up grew by {} MiB while streaming {} MiB",
            (peak_all - baseline) / MIB,
            size / MIB
        );
        api.sh(&id, &format!("rm {path}")).await;
        api.destroy(&id).await;
    });
}

/// Every file under `dir`, symlinks not followed.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            files_under(&entry.path(), out);
        } else if meta.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn data_dir_secrets_disks_and_memory_are_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({"memory_mb": 256})).await;
        let id = sb["id"].as_str().unwrap().to_string();
        // A pause leaves the memory and device state in files too.
        api.pause(&id).await;

        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.data_dir), 0o700, "{}", s.data_dir.display());
        // Directly in it: the agent token, the JWT secret, the SQLite database and its journals.
        let mut top = Vec::new();
        for entry in std::fs::read_dir(&s.data_dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                assert_eq!(mode(&entry.path()) & 0o077, 0, "{name} is open to others");
                top.push(name);
            }
        }
        for secret in ["agent_token", "jwt_secret", "wrenn.db"] {
            assert!(top.iter().any(|n| n == secret), "no {secret} in {top:?}");
        }

        // The sandbox's own files (disk layers, memory, device state, console) are closed to
        // others (what QEMU writes itself gets its daemon umask, 027: group root may read); the
        // base image it links to is the public one.
        let mut files = Vec::new();
        files_under(&s.data_dir.join("sandboxes").join(&id), &mut files);
        assert!(files.len() > 2, "{files:?}");
        let base = std::fs::metadata(s.data_dir.join("images/templates/minimal/rootfs.ext4"))
            .map(|m| (m.dev(), m.ino()))
            .unwrap();
        for file in &files {
            let meta = std::fs::metadata(file).unwrap();
            if (meta.dev(), meta.ino()) != base {
                assert_eq!(
                    mode(file) & 0o007,
                    0,
                    "{} is open to others",
                    file.display()
                );
            }
        }

        // Another user reads none of it: not the database, not the sandbox's disk or memory.
        files.push(s.data_dir.join("wrenn.db"));
        for file in &files {
            let out = std::process::Command::new("cat")
                .arg(file)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert!(!out.status.success(), "user nobody read {}", file.display());
        }
        api.resume(&id).await;
        api.destroy(&id).await;
    });
}
