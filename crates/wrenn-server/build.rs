//! Embeds the web console's build output (`console/dist`, made by `npm run build` in
//! `console/`, which `scripts/build.sh` runs) into the control plane: writes
//! `$OUT_DIR/console_assets.rs`, a table of `(path, bytes)` with one `include_bytes!` per file.
//! Without a built console the table is empty and the server answers `/` with a page saying
//! so, so a plain `cargo build` never needs Node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The most files embedded; a dist larger than this is a mistake in the console's build.
const MAX_FILES: usize = 500;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let console = manifest.join("../../console");
    let dist = console.join("dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("console_assets.rs");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
        files.sort();
    } else if console.is_dir() {
        // The dist appearing changes the console directory itself.
        println!("cargo:rerun-if-changed={}", console.display());
    }
    assert!(
        files.len() <= MAX_FILES,
        "console/dist has more than {MAX_FILES} files"
    );
    let mut code = String::from("&[\n");
    for (rel, abs) in &files {
        writeln!(code, "    ({rel:?}, include_bytes!({abs:?}) as &[u8]),").unwrap();
    }
    code.push(']');
    std::fs::write(&out, code).expect("write console_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            files.push((
                format!("/{rel}"),
                path.canonicalize().unwrap().display().to_string(),
            ));
        }
    }
}
