//! The jail every QEMU runs in. The agent stays root; QEMU never is.
//!
//! Before QEMU is executed, the forked child (still root) enters the VM's network namespace,
//! opens the TAP device and keeps it open for QEMU, then enters a mount namespace of its own
//! whose root (`pivot_root`) is the VM's jail directory: hard links to the VM's own files
//! (kernel, initrd, RAM file, disk layers) and a read-only bind of `/usr` for QEMU's program,
//! libraries and firmware. It then takes the VM's own uid and gid (one per VM from
//! [`JailConfig`]'s range, with the shared read-only group as its only extra group), which drops
//! every capability, and sets `no_new_privs`; QEMU adds its own seccomp filter (`-sandbox`).
//! What QEMU would otherwise open with privileges is handed to it as file descriptors: the
//! TAP device, the listening QMP socket, the console log (its stdout), and migration streams
//! (QMP `getfd`).
//!
//! Files: a VM's writable files (its RAM file when mapped shared, its top disk layer) are
//! owned by its uid, mode 0600; read-only files shared by hard link between sandboxes and
//! templates (lower disk layers, a template's RAM file mapped copy-on-write) cannot belong to
//! one VM's uid, so they are owned by root and readable by the shared group (0640). A VM can
//! only reach the files linked into its jail, so the group opens nothing else to it.
//!
//! This module prepares the jail and the child's steps; it does not talk QMP.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where jail uids come from.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// False runs QEMU as the agent's user without namespace or seccomp (for measurements only).
    pub enabled: bool,
    /// The shared read-only group; VM `i` gets uid and gid `base + 1 + i`.
    pub base: u32,
    /// How many VM uids the range holds.
    pub count: u32,
}

/// Default range: gid 900000000 for the shared group, uids 900000001..=900065536 for VMs
/// (far above ordinary users, systemd's dynamic users and the usual subordinate-id ranges).
pub const DEFAULT_BASE: u32 = 900_000_000;
pub const DEFAULT_COUNT: u32 = 65_536;

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            base: DEFAULT_BASE,
            count: DEFAULT_COUNT,
        }
    }
}

impl JailConfig {
    /// The configuration from the environment: `WRENN_JAIL=off` disables the jail,
    /// `WRENN_JAIL_IDS=BASE:COUNT` sets the range.
    pub fn from_env() -> JailConfig {
        let mut c = JailConfig::default();
        if std::env::var("WRENN_JAIL").is_ok_and(|v| v == "off") {
            c.enabled = false;
        }
        if let Ok(v) = std::env::var("WRENN_JAIL_IDS") {
            if let Some((b, n)) = v.split_once(':') {
                if let (Ok(b), Ok(n)) = (b.parse(), n.parse()) {
                    c.base = b;
                    c.count = n;
                }
            }
        }
        c
    }

    /// The shared read-only group.
    pub fn shared_gid(&self) -> u32 {
        self.base
    }
}

static CONFIG: std::sync::OnceLock<JailConfig> = std::sync::OnceLock::new();

/// Sets the jail configuration (once, at start; later calls are ignored).
pub fn configure(c: JailConfig) {
    let _ = CONFIG.set(c);
}

/// The jail configuration in force.
pub fn config() -> &'static JailConfig {
    CONFIG.get_or_init(JailConfig::from_env)
}

/// Set while a benchmark measures QEMUs started without the jail.
static BYPASSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a QEMU started now is jailed: as configured, unless [`bypass_for_measurement`]
/// is on.
pub fn enabled() -> bool {
    config().enabled && !BYPASSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// For benchmarks only (`wrenn-bench` compares create and resume with and without the
/// jail in one process): while `on`, QEMUs start as the agent's user without the jail.
/// VMs already running keep what they started with.
pub fn bypass_for_measurement(on: bool) {
    BYPASSED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Uids handed out whose QEMU may not be running yet.
static RESERVED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A VM uid, reserved until dropped (by then its QEMU runs as it, which keeps it taken).
pub struct UidLease(pub u32);

impl Drop for UidLease {
    fn drop(&mut self) {
        RESERVED.lock().expect("uid lock").retain(|u| *u != self.0);
    }
}

/// The lowest uid of the range that no process runs as and no start under way holds.
pub fn allocate_uid(c: &JailConfig) -> std::io::Result<UidLease> {
    use std::os::unix::fs::MetadataExt;
    let lo = c.base + 1;
    let hi = c.base.saturating_add(c.count);
    let mut used: Vec<u32> = RESERVED.lock().expect("uid lock").clone();
    for e in std::fs::read_dir("/proc")?.flatten() {
        if e.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            if let Ok(m) = e.metadata() {
                if (lo..=hi).contains(&m.uid()) {
                    used.push(m.uid());
                }
            }
        }
    }
    let mut reserved = RESERVED.lock().expect("uid lock");
    used.extend(reserved.iter().copied());
    let uid = (lo..=hi)
        .find(|u| !used.contains(u))
        .ok_or_else(|| std::io::Error::other("no free VM uid in the jail's range"))?;
    reserved.push(uid);
    Ok(UidLease(uid))
}

/// The disk layers of a qcow2 chain, top first: each backing file named in a qcow2 header,
/// resolved relative to the layer that names it, down to a raw image.
pub fn disk_chain(top: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut chain = vec![top.to_path_buf()];
    let mut cur = top.to_path_buf();
    for _ in 0..64 {
        let mut f = std::fs::File::open(&cur)?;
        let mut h = [0u8; 20];
        if f.read_exact(&mut h).is_err() || &h[..4] != b"QFI\xfb" {
            return Ok(chain);
        }
        let off = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
        if off == 0 || len == 0 {
            return Ok(chain);
        }
        let mut name = vec![0u8; len.min(4096)];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut name)?;
        let name = std::ffi::OsStr::from_bytes(&name);
        let next = cur.parent().unwrap_or(Path::new("/")).join(name);
        if Path::new(name).components().count() != 1 {
            return Err(std::io::Error::other(format!(
                "{}: backing file {:?} is not a plain name in the same directory",
                cur.display(),
                name
            )));
        }
        chain.push(next.clone());
        cur = next;
    }
    Err(std::io::Error::other("backing chain too deep"))
}

/// Owner-only for the VM.
fn own_rw(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

/// Readable by every VM (through the shared group), writable by none; files that are already
/// readable by others are left as they are.
fn share_ro(p: &Path, shared_gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(p)?;
    if m.mode() & 0o004 != 0 && m.mode() & 0o022 == 0 && m.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(p, Some(0), Some(shared_gid))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640))
}

fn link_into(jail: &Path, src: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dst = jail.join(name);
    std::fs::hard_link(src, &dst).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("link {} into the jail: {e}", src.display()),
        )
    })?;
    Ok(PathBuf::from("/").join(name))
}

/// The files of one VM as QEMU sees them from inside its jail.
pub struct JailFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem: PathBuf,
    pub disk: PathBuf,
}

/// Builds `jail` afresh for the VM of `spec` run by `uid`: links its files in and sets their
/// owners (the RAM file is the VM's own when mapped shared).
pub fn build(
    jail: &Path,
    uid: u32,
    shared_gid: u32,
    spec: &super::VmSpec,
) -> std::io::Result<JailFiles> {
    let (kernel, initrd, mem, disk) = (&spec.kernel, &spec.initrd, &spec.mem_path, &spec.disk);
    let mem_writable = spec.mem_mapping == super::RamMapping::Shared;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(jail);
    std::fs::create_dir_all(jail)?;
    std::os::unix::fs::chown(jail, Some(0), Some(uid))?;
    std::fs::set_permissions(jail, std::fs::Permissions::from_mode(0o750))?;
    std::fs::create_dir(jail.join("usr"))?;
    std::fs::create_dir(jail.join("dev"))?;
    std::fs::File::create(jail.join("dev/null"))?;
    if spec.accel == super::Accel::Kvm {
        std::fs::File::create(jail.join("dev/kvm"))?;
    }
    for (l, t) in [
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
    ] {
        std::os::unix::fs::symlink(t, jail.join(l))?;
    }
    share_ro(kernel, shared_gid)?;
    share_ro(initrd, shared_gid)?;
    let files = JailFiles {
        kernel: link_into(jail, kernel, "vmlinux")?,
        initrd: link_into(jail, initrd, "initrd")?,
        mem: link_into(jail, mem, "mem")?,
        disk: PathBuf::new(),
    };
    if mem_writable {
        own_rw(mem, uid, uid)?;
    } else {
        share_ro(mem, shared_gid)?;
    }
    let chain = disk_chain(disk)?;
    let mut top = PathBuf::new();
    for (i, layer) in chain.iter().enumerate() {
        let name = layer
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("disk layer without a name"))?;
        if ["vmlinux", "initrd", "mem", "usr", "lib", "lib64", "bin"].contains(&name) {
            return Err(std::io::Error::other(format!("disk layer named {name}")));
        }
        let p = link_into(jail, layer, name)?;
        if i == 0 {
            own_rw(layer, uid, uid)?;
            top = p;
        } else {
            share_ro(layer, shared_gid)?;
        }
    }
    Ok(JailFiles { disk: top, ..files })
}

/// What the forked child does before QEMU is executed, prepared in the parent so the child
/// only makes system calls (it must not allocate: the agent is multi-threaded).
pub struct ChildPlan {
    /// `cgroup.procs` of the VM's cgroups (one per v1 hierarchy), which the child joins first.
    pub cgroup_procs: Vec<i32>,
    /// Open `/dev/net/tun` attached to this TAP device and put it on `fd`.
    pub tap: Option<([u8; 16], i32)>,
    /// Descriptors QEMU inherits besides the TAP device (close-on-exec cleared); every other
    /// descriptor is closed on exec.
    pub keep: Vec<i32>,
    /// Enter a mount namespace rooted here and become this uid.
    pub jail: Option<JailPlan>,
}

pub struct JailPlan {
    pub root: CString,
    pub usr_in_root: CString,
    pub null_in_root: CString,
    /// Under KVM: where `/dev/kvm` is bound in the jail, and the group that may open it
    /// (the device's own group, so the host's `/dev/kvm` keeps its owner and mode).
    pub kvm: Option<(CString, libc::gid_t)>,
    pub uid: u32,
    pub shared_gid: u32,
}

impl JailPlan {
    pub fn new(
        root: &Path,
        uid: u32,
        shared_gid: u32,
        accel: super::Accel,
    ) -> std::io::Result<JailPlan> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("NUL in path"))
        };
        let kvm = match accel {
            super::Accel::Kvm => {
                use std::os::unix::fs::MetadataExt;
                // Never the root group: where `/dev/kvm` belongs to it, its mode must let
                // others open it (0666, as udev sets it), and no group is granted.
                let gid = std::fs::metadata("/dev/kvm")?.gid();
                let gid = if gid == 0 { shared_gid } else { gid };
                Some((c(&root.join("dev/kvm"))?, gid))
            }
            super::Accel::Tcg => None,
        };
        Ok(JailPlan {
            root: c(root)?,
            usr_in_root: c(&root.join("usr"))?,
            null_in_root: c(&root.join("dev/null"))?,
            kvm,
            uid,
            shared_gid,
        })
    }
}

/// A TAP device name as `ifr_name`.
pub fn ifname(name: &str) -> std::io::Result<[u8; 16]> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 15 || b.contains(&0) {
        return Err(std::io::Error::other(format!("bad TAP name {name:?}")));
    }
    let mut n = [0u8; 16];
    n[..b.len()].copy_from_slice(b);
    Ok(n)
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

impl ChildPlan {
    /// Runs in the forked child, after it entered the VM's network namespace.
    ///
    /// Only system calls on data prepared before the fork.
    pub fn run(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on pointers to data owned by `self` (alive for the call)
        // and on stack buffers; nothing allocates or takes locks.
        unsafe {
            for fd in &self.cgroup_procs {
                if libc::write(*fd, c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::setsid())?;
            if let Some((name, target)) = &self.tap {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
                check(fd)?;
                // struct ifreq: the name, then the flags (a short) at offset 16.
                let mut ifr = [0u8; 40];
                ifr[..16].copy_from_slice(name);
                let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
                ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
                check(libc::ioctl(fd, TUNSETIFF as _, ifr.as_mut_ptr()))?;
                check(libc::dup2(fd, *target))?;
                libc::close(fd);
            }
            // QEMU inherits only its own descriptors, none of the agent's (or its parent's).
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            check(libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) as libc::c_int)?;
            let tap_fd = self.tap.as_ref().map(|(_, fd)| *fd);
            for fd in self.keep.iter().chain(tap_fd.as_ref()) {
                check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
            }
            if let Some(j) = &self.jail {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    j.root.as_ptr(),
                    j.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    j.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"/usr".as_ptr(),
                    j.usr_in_root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    j.usr_in_root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"/dev/null".as_ptr(),
                    j.null_in_root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                if let Some((kvm_in_root, _)) = &j.kvm {
                    check(libc::mount(
                        c"/dev/kvm".as_ptr(),
                        kvm_in_root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::chdir(j.root.as_ptr()))?;
                check(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
                        as libc::c_int,
                )?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(c"/".as_ptr()))?;
                let kvm_gid = j.kvm.as_ref().map_or(j.shared_gid, |(_, g)| *g);
                let groups = [j.shared_gid as libc::gid_t, kvm_gid];
                let n = if kvm_gid == j.shared_gid { 1 } else { 2 };
                check(libc::setgroups(n, groups.as_ptr()))?;
                check(libc::setresgid(j.uid, j.uid, j.uid))?;
                check(libc::setresuid(j.uid, j.uid, j.uid))?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_of_overlays_is_read_from_headers() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.ext4"), vec![0u8; 1 << 20]).unwrap();
        crate::sandbox::disk::create_overlay(d.path(), "base.ext4", "a.qcow2").unwrap();
        crate::sandbox::disk::create_overlay(d.path(), "a.qcow2", "b.qcow2").unwrap();
        let c = disk_chain(&d.path().join("b.qcow2")).unwrap();
        let names: Vec<_> = c
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["b.qcow2", "a.qcow2", "base.ext4"]);
    }

    #[test]
    fn uids_are_distinct_while_reserved() {
        let c = JailConfig {
            enabled: true,
            base: 4_000_000_000,
            count: 10,
        };
        let a = allocate_uid(&c).unwrap();
        let b = allocate_uid(&c).unwrap();
        assert_ne!(a.0, b.0);
        assert!(a.0 > c.base && b.0 <= c.base + c.count);
        let first = a.0;
        drop(a);
        assert_eq!(allocate_uid(&c).unwrap().0, first);
    }

    #[test]
    fn only_a_kvm_jail_gets_the_kvm_device() {
        let d = tempfile::tempdir().unwrap();
        let tcg = JailPlan::new(
            d.path(),
            4_000_000_001,
            4_000_000_000,
            super::super::Accel::Tcg,
        )
        .unwrap();
        assert!(tcg.kvm.is_none());
        if std::path::Path::new("/dev/kvm").exists() {
            let kvm = JailPlan::new(
                d.path(),
                4_000_000_001,
                4_000_000_000,
                super::super::Accel::Kvm,
            )
            .unwrap();
            let (path, gid) = kvm.kvm.expect("a KVM jail binds /dev/kvm");
            assert_eq!(
                path.to_str().unwrap(),
                d.path().join("dev/kvm").to_str().unwrap()
            );
            assert_ne!(gid, 0, "the root group is never granted");
        }
    }
}
