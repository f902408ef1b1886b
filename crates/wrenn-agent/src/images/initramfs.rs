//! The guest initramfs: a gzip'd newc cpio archive with static busybox, the virtio modules of
//! the guest kernel (in dependency order) and a small `/init` that mounts the root disk and
//! switches to the guest's init. Owns the archive format and the `/init` script; it does not
//! fetch the kernel or busybox (the caller hands in unpacked package trees).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use super::ImageError;
use crate::cmd;
use crate::guest;

/// The modules the guest needs, as named in VMM-NOTES; their dependencies are added first.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio-rng",
];

/// Busybox applets `/init` calls by name (symlinks in `/bin`).
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "mkdir",
    "ln",
    "usleep",
    "sleep",
    "switch_root",
    "poweroff",
    "cat",
];

/// Seconds `/init` waits for the root disk before giving up.
pub const ROOT_WAIT_SECS: u32 = 5;

/// A newc (`070701`) cpio archive written in memory. Entries carry mtime 0 and root
/// ownership, so the same inputs give the same bytes.
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    /// A directory (`name` without a leading slash).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | (perm & 0o7777), (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | (perm & 0o7777), (major, minor), &[]);
    }

    /// Ends the archive with the trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

fn module_stem(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The load order for `wanted` from a `modules.dep` text: each module after all of its
/// dependencies, each once. Returns the module paths relative to the modules directory, or
/// the name of a module `modules.dep` does not list.
pub fn module_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim().to_string();
        let d = rest.split_whitespace().map(str::to_string).collect();
        deps.push((module_stem(&module), module, d));
    }
    let find = |stem: &str| deps.iter().find(|(s, _, _)| s == stem);

    fn visit(
        path: &str,
        deps: &[(String, String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) {
        if order.iter().any(|p| p == path) || depth > 64 {
            return;
        }
        if let Some((_, _, ds)) = deps.iter().find(|(_, p, _)| p == path) {
            // modules.dep lists the deepest dependency last; load it first.
            for d in ds.iter().rev() {
                visit(d, deps, order, depth + 1);
            }
        }
        order.push(path.to_string());
    }

    let mut order = Vec::new();
    for w in wanted {
        let (_, path, _) = find(&w.replace('-', "_")).ok_or_else(|| w.to_string())?;
        visit(path, &deps, &mut order, 0);
    }
    Ok(order)
}

/// The `/init` of the initramfs, loading `modules` (file names under `/lib/modules`).
///
/// Boot parameters it reads: `wrenn.root=` (default `/dev/vda`) and `wrenn.init=` (default
/// [`guest::GUEST_INIT_PATH`]). Everything is mounted here with static busybox, which is cheap
/// even under TCG: devtmpfs (with `/dev/pts`, `/dev/shm`), proc and sys move into the new root,
/// and `/run` and `/tmp` are mounted inside it, so the guest init finds them ready.
pub fn init_script(modules: &[String]) -> String {
    let list = modules.join(" ");
    let init = guest::GUEST_INIT_PATH;
    format!(
        r#"#!/bin/sh
# Wrenn initramfs: load the virtio drivers, mount the root disk, hand over to its init.
export PATH=/bin
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
for m in {list}; do
  insmod "/lib/modules/$m" || echo "wrenn-initramfs: could not load $m"
done
root=/dev/vda
init={init}
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
  case "$arg" in
    wrenn.root=*) root="${{arg#wrenn.root=}}" ;;
    wrenn.init=*) init="${{arg#wrenn.init=}}" ;;
  esac
done
fail() {{
  echo "wrenn-initramfs: $*"
  poweroff -f
  sleep 1000000
}}
read -r up _ < /proc/uptime
deadline=$((${{up%.*}} + {ROOT_WAIT_SECS}))
while [ ! -b "$root" ]; do
  read -r up _ < /proc/uptime
  if [ "${{up%.*}}" -ge $deadline ]; then
    fail "root disk $root did not appear within {ROOT_WAIT_SECS} s"
  fi
  usleep 10000
done
mount -t ext4 -o rw "$root" /newroot || fail "could not mount $root as ext4"
[ -x "/newroot$init" ] || fail "$init is missing on $root"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /newroot/run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /newroot/tmp
mount -o move /dev /newroot/dev
mount -o move /proc /newroot/proc
mount -o move /sys /newroot/sys
exec switch_root /newroot "$init"
"#
    )
}

/// Builds the gzip'd initramfs at `out` from an unpacked kernel package (`kernel_root`, with
/// `lib/modules/<release>`) and an unpacked `busybox-static` package (`busybox_root`).
pub fn build(
    kernel_root: &Path,
    release: &str,
    busybox_root: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    cmd::run(
        "depmod",
        [
            OsStr::new("-b"),
            kernel_root.as_os_str(),
            OsStr::new(release),
        ],
    )
    .map_err(ImageError::command)?;
    let moddir = kernel_root.join("lib/modules").join(release);
    let dep_path = moddir.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|e| ImageError::io("read", &dep_path, e))?;
    let order = module_order(&dep, MODULES).map_err(|m| {
        ImageError::Initramfs(format!(
            "module {m} is not in {} (built in or renamed?)",
            dep_path.display()
        ))
    })?;

    let busybox_path = busybox_root.join("bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(|e| ImageError::io("read", &busybox_path, e))?;

    let mut cpio = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        cpio.symlink(&format!("bin/{a}"), "busybox");
    }
    let mut names = Vec::new();
    for rel in &order {
        let src = moddir.join(rel);
        let data = fs::read(&src).map_err(|e| ImageError::io("read", &src, e))?;
        let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        cpio.file(&format!("lib/modules/{name}"), 0o644, &data);
        names.push(name);
    }
    cpio.file("init", 0o755, init_script(&names).as_bytes());

    let raw = out.with_extension("cpio");
    fs::write(&raw, cpio.finish()).map_err(|e| ImageError::io("write", &raw, e))?;
    cmd::run(
        "gzip",
        [
            OsStr::new("-9"),
            OsStr::new("-n"),
            OsStr::new("-f"),
            raw.as_os_str(),
        ],
    )
    .map_err(ImageError::command)?;
    let gz = out.with_extension("cpio.gz");
    fs::rename(&gz, out).map_err(|e| ImageError::io("rename into", out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let order = module_order(DEP, &["virtio_net", "virtio-rng", "virtio_blk"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_stem(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_rng",
                "virtio_blk"
            ]
        );
        assert_eq!(order[5], "kernel/drivers/char/hw_random/virtio-rng.ko");
    }

    #[test]
    fn unknown_module_is_named() {
        assert_eq!(
            module_order(DEP, &["virtio", "virtio_scsi"]).unwrap_err(),
            "virtio_scsi"
        );
    }

    /// Reads back a newc archive: (name, mode, rdev major, data) per entry.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, namesize) = (field(1), field(6), field(9), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = (name_end + 3) & !3;
            let data = b[data_start..data_start + size as usize].to_vec();
            let next = (data_start + size as usize + 3) & !3;
            // Every header starts 4-byte aligned from the start of the archive.
            assert_eq!((total - b.len()) % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                break;
            }
            out.push((name, mode, rmaj, data));
        }
        out
    }

    #[test]
    fn cpio_round_trips_files_links_and_devices() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("bin/busybox", 0o755, b"\x7fELF12345");
        c.symlink("bin/sh", "busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        let bytes = c.finish();
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "bin");
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].3, b"\x7fELF12345");
        assert_eq!(entries[1].1, 0o100755);
        assert_eq!(
            (entries[2].1, entries[2].3.as_slice()),
            (0o120777, &b"busybox"[..])
        );
        assert_eq!((entries[3].1, entries[3].2), (0o020600, 5));
    }

    #[test]
    fn cpio_matches_what_the_cpio_tool_reads() {
        let mut c = Cpio::new();
        c.dir("etc");
        c.file("etc/hello", 0o644, b"hello world\n");
        c.symlink("etc/link", "hello");
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        fs::write(&archive, c.finish()).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(fs::File::open(&archive).unwrap())
            .output()
            .expect("GNU cpio is needed for this test (apt-get install cpio)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "etc\netc/hello\netc/link\n"
        );
    }

    #[test]
    fn init_script_loads_given_modules_and_switches_to_the_guest_init() {
        let s = init_script(&["virtio_ring.ko".into(), "virtio.ko".into()]);
        assert!(s.contains("for m in virtio_ring.ko virtio.ko; do"));
        assert!(s.contains(&format!("init={}", guest::GUEST_INIT_PATH)));
        assert!(s.contains("exec switch_root /newroot \"$init\""));
        assert!(s.contains("within 5 s"));
    }
}
