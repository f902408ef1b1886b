//! Root filesystems of base templates: the debootstrap base tree (Debian plus the template's
//! packages, the `user` account, host files, trimmed of caches and docs), the guest init script
//! generated from [`crate::guest`], and the final `mkfs.ext4 -d` assembly that adds envd and
//! the init. It never mounts anything on the host and never touches a published artifact.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::ImageError;
use crate::cmd;
use crate::guest;

/// The Debian release the templates are built from.
pub const SUITE: &str = "bookworm";
/// debootstrap variant: only essential packages and apt, plus [`PACKAGES`].
pub const VARIANT: &str = "minbase";
/// Packages added to the `minimal` template in the same debootstrap run.
pub const PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "git",
    "curl",
    "ca-certificates",
    "sudo",
    "procps",
    "iproute2",
];
/// Host name of every guest.
pub const HOSTNAME: &str = "wrenn";
/// Free space left in a template image on top of its contents (the file is sparse).
pub const FREE_SPACE_BYTES: u64 = 1 << 30;

/// Files the base step writes into the tree, with their permission bits. Part of the cache key.
pub fn base_files() -> Vec<(String, String, u32)> {
    let user = guest::GUEST_USER;
    vec![
        ("etc/hostname".into(), format!("{HOSTNAME}\n"), 0o644),
        (
            "etc/hosts".into(),
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            ),
            0o644,
        ),
        (
            format!("etc/sudoers.d/{user}"),
            format!("{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
            0o440,
        ),
        // Debian marks its Python as externally managed; sandboxes are disposable, so let
        // `pip install` work without a virtualenv.
        (
            "etc/pip.conf".into(),
            "[global]\nbreak-system-packages = true\n".into(),
            0o644,
        ),
        // Packages installed later inside a sandbox skip docs too.
        (
            "etc/dpkg/dpkg.cfg.d/01-wrenn-nodoc".into(),
            "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n\
path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n"
                .into(),
            0o644,
        ),
    ]
}

/// The `useradd` arguments that create the template's user (uid 1000).
pub fn useradd_args() -> Vec<String> {
    [
        "--create-home",
        "--home-dir",
        &format!("/home/{}", guest::GUEST_USER),
        "--uid",
        "1000",
        "--user-group",
        "--groups",
        "sudo",
        "--shell",
        "/bin/bash",
        guest::GUEST_USER,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs debootstrap into `target` with `packages` and prepares the base tree. On failure the
/// error carries the tail of debootstrap's own log, which says more than its stderr.
pub fn debootstrap(target: &Path, mirror: &str, packages: &[&str]) -> Result<(), ImageError> {
    let include = format!("--include={}", packages.join(","));
    let variant = format!("--variant={VARIANT}");
    let args = [
        OsStr::new(&variant),
        OsStr::new("--components=main"),
        OsStr::new(&include),
        OsStr::new(SUITE),
        target.as_os_str(),
        OsStr::new(mirror),
    ];
    if let Err(e) = cmd::run("debootstrap", args) {
        let log =
            fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Step {
            what: format!(
                "debootstrap failed; end of debootstrap.log:\n{}",
                tail.join("\n")
            ),
            source: e,
        });
    }
    customise(target)
}

/// Makes `target` a full copy of the base tree `parent` with `packages` installed by apt
/// inside it (dependencies, no recommends; the mirror is the tree's own apt source), then
/// trims it again. The copy is a real one, not hard links: dpkg rewrites files
/// that the parent tree must keep as they are.
pub fn extend(parent: &Path, target: &Path, packages: &[&str]) -> Result<(), ImageError> {
    cmd::run(
        "cp",
        [OsStr::new("-a"), parent.as_os_str(), target.as_os_str()],
    )
    .map_err(ImageError::command)?;
    // Name resolution for apt inside the tree; the image gets its own resolv.conf later.
    replace_file(
        &target.join("etc/resolv.conf"),
        resolv_conf().as_bytes(),
        0o644,
    )?;
    let apt = |args: &[&str]| -> Result<(), ImageError> {
        let mut full: Vec<&OsStr> = vec![
            target.as_os_str(),
            OsStr::new("env"),
            OsStr::new("DEBIAN_FRONTEND=noninteractive"),
            OsStr::new("LANG=C.UTF-8"),
            OsStr::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
            OsStr::new("apt-get"),
            OsStr::new("-q"),
        ];
        full.extend(args.iter().map(OsStr::new));
        cmd::run("chroot", &full)
            .map(|_| ())
            .map_err(|e| ImageError::Step {
                what: format!("apt-get {} in the template tree", args.join(" ")),
                source: e,
            })
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)?;
    apt(&["clean"])?;
    trim(target)
}

fn customise(root: &Path) -> Result<(), ImageError> {
    let args = useradd_args();
    let mut full = vec![root.as_os_str().to_owned(), "useradd".into()];
    full.extend(args.iter().map(Into::into));
    cmd::run("chroot", &full).map_err(ImageError::command)?;
    for (path, text, mode) in base_files() {
        replace_file(&root.join(path), text.as_bytes(), mode)?;
    }
    trim(root)
}

/// Removes apt's caches and lists, documentation, man pages and logs from the tree.
fn trim(root: &Path) -> Result<(), ImageError> {
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/man",
        "usr/share/info",
        "var/cache/debconf",
    ] {
        empty_dir(&root.join(dir), |_| false)?;
    }
    fs::create_dir_all(root.join("var/lib/apt/lists/partial"))
        .map_err(|e| ImageError::io("create", root, e))?;
    fs::create_dir_all(root.join("var/cache/apt/archives/partial"))
        .map_err(|e| ImageError::io("create", root, e))?;
    // Keep each package's copyright file, drop the rest of /usr/share/doc.
    let doc = root.join("usr/share/doc");
    if let Ok(entries) = fs::read_dir(&doc) {
        for pkg in entries.flatten() {
            if pkg.path().is_dir() && !pkg.path().is_symlink() {
                empty_dir(&pkg.path(), |name| name == "copyright")?;
            }
        }
    }
    for log in [
        "var/log/dpkg.log",
        "var/log/bootstrap.log",
        "var/log/alternatives.log",
    ] {
        match fs::remove_file(root.join(log)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &root.join(log), e)),
        }
    }
    Ok(())
}

/// Removes everything inside `dir` except entries whose name `keep` accepts.
fn empty_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("list", dir, e)),
    };
    for entry in entries.flatten() {
        if keep(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let res = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        res.map_err(|e| ImageError::io("remove", &path, e))?;
    }
    Ok(())
}

/// Writes a new file at `path` (removing what was there first, so a hard link into the base
/// tree is never written through) with permission bits `mode`.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| ImageError::io("create", parent, e))?;
    }
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_file(path).map_err(|e| ImageError::io("remove", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("inspect", path, e)),
    }
    fs::write(path, bytes).map_err(|e| ImageError::io("write", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io("chmod", path, e))
}

/// The guest's PID 1 (`/sbin/wrenn-init`), generated from [`crate::guest`].
///
/// It checks the mounts the initramfs should have made (reading `/proc/mounts` with shell
/// builtins only) and makes any that are missing, sets the host name, configures `lo` and
/// `eth0` with one `ip -batch` call, runs the template's `services` lines (shell text, each
/// starting something in the background; empty for `minimal`), then runs envd in a restart loop. `wait` on the envd job
/// reaps every orphan the kernel hands to PID 1, and the loop never ends, so PID 1 never exits.
pub fn init_script(services: &str) -> String {
    let envd = guest::GUEST_ENVD_PATH;
    let ip = guest::GUEST_IP;
    let prefix = guest::GUEST_PREFIX;
    let gw = guest::GUEST_GATEWAY;
    format!(
        r#"#!/bin/sh
# wrenn-init: PID 1 of a Wrenn guest. Generated by the Wrenn image builder; do not edit.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
echo "wrenn-init: starting"
[ -e /proc/self ] || mount -t proc -o nosuid,nodev,noexec proc /proc
have_sys= have_pts= have_shm= have_run= have_tmp=
while read -r _dev mnt _rest; do
  case "$mnt" in
    /sys) have_sys=1 ;;
    /dev/pts) have_pts=1 ;;
    /dev/shm) have_shm=1 ;;
    /run) have_run=1 ;;
    /tmp) have_tmp=1 ;;
  esac
done < /proc/mounts
[ -n "$have_sys" ] || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
[ -n "$have_pts" ] || {{ mkdir -p /dev/pts; mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts; }}
[ -n "$have_shm" ] || {{ mkdir -p /dev/shm; mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm; }}
[ -n "$have_run" ] || mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
[ -n "$have_tmp" ] || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
read -r name < /etc/hostname && echo "$name" > /proc/sys/kernel/hostname
if [ -e /sys/class/net/eth0 ]; then
  ip -force -batch - <<EOF
link set lo up
link set eth0 up
addr add {ip}/{prefix} dev eth0
route add default via {gw} dev eth0
EOF
else
  echo "wrenn-init: no eth0; only lo is up"
  ip link set lo up
fi
{services}while :; do
  echo "wrenn-init: starting envd"
  {envd} &
  wait $!
  echo "wrenn-init: envd exited with status $?; restarting in 1 s"
  sleep 1
done
"#
    )
}

/// `/etc/resolv.conf` for guests: the host's own non-loopback name servers (from
/// `/etc/resolv.conf`, or systemd-resolved's upstream list), else public resolvers.
pub fn resolv_conf() -> String {
    let from = |p: &str| nameservers(&fs::read_to_string(p).unwrap_or_default());
    let mut servers = from("/etc/resolv.conf");
    if servers.is_empty() {
        servers = from("/run/systemd/resolve/resolv.conf");
    }
    if servers.is_empty() {
        servers = vec!["1.1.1.1".into(), "8.8.8.8".into()];
    }
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// The non-loopback `nameserver` entries of a resolv.conf text.
pub fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
        .collect()
}

/// Builds the template image `out` from the base tree: a hard-linked copy of `base` in
/// `staging` receives envd, the init, resolv.conf and the template's `files` (paths relative
/// to the root, text, permission bits; all as new files, the base is never modified), then `mkfs.ext4 -d` writes a sparse image of the used size plus
/// [`FREE_SPACE_BYTES`]. Returns the image size in bytes.
pub fn assemble(
    base: &Path,
    staging: &Path,
    envd: &Path,
    init: &str,
    resolv: &str,
    files: &[(String, String, u32)],
    out: &Path,
) -> Result<u64, ImageError> {
    cmd::run(
        "cp",
        [OsStr::new("-al"), base.as_os_str(), staging.as_os_str()],
    )
    .map_err(ImageError::command)?;
    let envd_bytes = fs::read(envd).map_err(|e| ImageError::io("read", envd, e))?;
    let rel = |p: &str| staging.join(p.trim_start_matches('/'));
    replace_file(&rel(guest::GUEST_ENVD_PATH), &envd_bytes, 0o755)?;
    drop(envd_bytes);
    replace_file(&rel(guest::GUEST_INIT_PATH), init.as_bytes(), 0o755)?;
    replace_file(&rel("/etc/resolv.conf"), resolv.as_bytes(), 0o644)?;
    for (path, text, mode) in files {
        replace_file(&staging.join(path), text.as_bytes(), *mode)?;
    }

    let du = cmd::run(
        "du",
        [OsStr::new("-sx"), OsStr::new("-B1"), staging.as_os_str()],
    )
    .map_err(ImageError::command)?;
    let used: u64 = String::from_utf8_lossy(&du)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ImageError::Rootfs(format!("unreadable du output: {du:?}")))?;
    let size = image_size(used);
    let file = fs::File::create(out).map_err(|e| ImageError::io("create", out, e))?;
    file.set_len(size)
        .map_err(|e| ImageError::io("size", out, e))?;
    drop(file);
    let args = [
        OsStr::new("-q"),
        OsStr::new("-F"),
        OsStr::new("-L"),
        OsStr::new("wrenn-root"),
        OsStr::new("-m"),
        OsStr::new("0"),
        OsStr::new("-J"),
        OsStr::new("size=32"),
        OsStr::new("-E"),
        OsStr::new("lazy_itable_init=0,lazy_journal_init=0"),
        OsStr::new("-d"),
        staging.as_os_str(),
        out.as_os_str(),
    ];
    cmd::run("mkfs.ext4", args).map_err(ImageError::command)?;
    Ok(size)
}

/// Image size for `used` bytes of content: plus [`FREE_SPACE_BYTES`] and a tenth for ext4's
/// own metadata, rounded up to a MiB.
pub fn image_size(used: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let raw = used + used / 10 + FREE_SPACE_BYTES;
    raw.div_ceil(MIB) * MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_uses_the_guest_constants() {
        let s = init_script("");
        assert!(s.contains(&format!(
            "addr add {}/{} dev eth0",
            guest::GUEST_IP,
            guest::GUEST_PREFIX
        )));
        assert!(s.contains(&format!("route add default via {}", guest::GUEST_GATEWAY)));
        assert!(s.contains(&format!("  {} &\n  wait $!", guest::GUEST_ENVD_PATH)));
        assert!(s.contains("wrenn-init: starting envd"));
    }

    #[test]
    fn init_script_is_valid_sh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init");
        fs::write(&p, init_script("")).unwrap();
        cmd::run("sh", [OsStr::new("-n"), p.as_os_str()]).unwrap();
        fs::write(&p, init_script("/usr/local/bin/x &\n")).unwrap();
        // `sh -n` parses without running.
        cmd::run("sh", [OsStr::new("-n"), p.as_os_str()]).unwrap();
    }

    #[test]
    fn nameservers_skip_loopback_and_garbage() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
nameserver bogus\nsearch example\nnameserver 2001:db8::1\n";
        assert_eq!(nameservers(text), ["10.255.255.53", "2001:db8::1"]);
    }

    #[test]
    fn image_size_leaves_free_space_and_is_mib_aligned() {
        let used = 400 * 1000 * 1000;
        let size = image_size(used);
        assert!(size >= used + FREE_SPACE_BYTES);
        assert_eq!(size % (1 << 20), 0);
    }

    #[test]
    fn replace_file_never_writes_through_a_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let staged = dir.path().join("staged");
        fs::write(&base, b"base").unwrap();
        fs::hard_link(&base, &staged).unwrap();
        replace_file(&staged, b"new", 0o755).unwrap();
        assert_eq!(fs::read(&base).unwrap(), b"base");
        assert_eq!(fs::read(&staged).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
}
