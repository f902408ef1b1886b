//! The builder's view of Debian's package tools: which mirror is configured, which versions
//! apt resolves for the packages the builder needs, and downloading and unpacking one `.deb`
//! into a directory. It never installs anything on the host.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ImageError;
use crate::cmd;

/// The metapackage that names the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The package whose static busybox runs the initramfs.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Used when no Debian mirror is configured.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Package versions as apt resolves them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Its version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// The version of `busybox-static`.
    pub busybox_version: String,
}

/// The Debian mirror configured for `suite`, from `/etc/apt/sources.list.d/debian.sources`
/// or `/etc/apt/sources.list`, else [`DEFAULT_MIRROR`].
pub fn configured_mirror(suite: &str) -> String {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(m) = mirror_from_deb822(&deb822, suite) {
        return m;
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    mirror_from_list(&list, suite).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The first URI of a deb822 stanza with type `deb` that carries exactly `suite`.
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = v.trim(),
                "uris" => uris = v.trim(),
                "suites" => suites = v.trim(),
                "enabled" => enabled = !v.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite)
        {
            if let Some(uri) = uris.split_whitespace().next() {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// The URI of the first one-line `deb` entry for exactly `suite`.
pub fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']').map(|(_, r)| r.trim_start())?;
        }
        let mut parts = rest.split_whitespace();
        let (Some(uri), Some(s)) = (parts.next(), parts.next()) else {
            continue;
        };
        if s == suite {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// One stanza of `apt-cache show` output, reduced to what the builder reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub depends: String,
}

/// Parses `apt-cache show` output.
pub fn parse_show(text: &str) -> Vec<PackageInfo> {
    let mut out = Vec::new();
    let mut cur = PackageInfo::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.package.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("Package:") {
            cur.package = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Version:") {
            cur.version = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Depends:") {
            cur.depends = v.trim().to_string();
        }
    }
    if !cur.package.is_empty() {
        out.push(cur);
    }
    out
}

/// From a metapackage's `Depends`, the real kernel package and its pinned version if any.
pub fn kernel_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .map(|d| match d.split_once('(') {
            Some((name, constraint)) => {
                let c = constraint.trim_end_matches(')').trim();
                let version = c.strip_prefix('=').map(|v| v.trim().to_string());
                (name.trim().to_string(), version)
            }
            None => (d.to_string(), None),
        })
}

fn apt_cache_show(packages: &[&str]) -> Result<Vec<PackageInfo>, cmd::CmdError> {
    let mut args = vec!["show", "--no-all-versions"];
    args.extend_from_slice(packages);
    cmd::run("apt-cache", &args).map(|out| parse_show(&String::from_utf8_lossy(&out)))
}

/// Resolves the kernel and busybox versions, running `apt-get update` once if apt's lists
/// do not know them yet.
pub fn resolve() -> Result<Resolved, ImageError> {
    match resolve_once() {
        Ok(r) => Ok(r),
        Err(_) => {
            cmd::run("apt-get", ["update", "-q"]).map_err(ImageError::command)?;
            resolve_once()
        }
    }
}

fn resolve_once() -> Result<Resolved, ImageError> {
    let infos =
        apt_cache_show(&[KERNEL_METAPACKAGE, BUSYBOX_PACKAGE]).map_err(ImageError::command)?;
    let find = |name: &str| infos.iter().find(|i| i.package == name).cloned();
    let meta = find(KERNEL_METAPACKAGE)
        .ok_or_else(|| ImageError::Resolve(format!("apt knows no {KERNEL_METAPACKAGE}")))?;
    let busybox = find(BUSYBOX_PACKAGE)
        .ok_or_else(|| ImageError::Resolve(format!("apt knows no {BUSYBOX_PACKAGE}")))?;
    let (kernel_package, pinned) = kernel_dependency(&meta.depends).ok_or_else(|| {
        ImageError::Resolve(format!(
            "{KERNEL_METAPACKAGE} depends on no linux-image package: {:?}",
            meta.depends
        ))
    })?;
    let kernel_version = match pinned {
        Some(v) => v,
        None => apt_cache_show(&[&kernel_package])
            .map_err(ImageError::command)?
            .into_iter()
            .find(|i| i.package == kernel_package)
            .map(|i| i.version)
            .ok_or_else(|| ImageError::Resolve(format!("apt knows no {kernel_package}")))?,
    };
    let kernel_release = kernel_package
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_package)
        .to_string();
    Ok(Resolved {
        kernel_package,
        kernel_version,
        kernel_release,
        busybox_version: busybox.version,
    })
}

/// Files whose contents decide what `apt-cache` answers: the package lists, the sources,
/// pins and configuration, and dpkg's status.
const APT_STATE: &[&str] = &[
    "/var/lib/apt/lists",
    "/var/lib/dpkg/status",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
];

/// A fingerprint of apt's state (name, size and mtime of every file in [`APT_STATE`]): while
/// it is unchanged, apt resolves the same versions, so the answer can be reused.
pub fn apt_state_fingerprint() -> String {
    let mut key = super::cache::KeyBuilder::new("apt-state");
    for root in APT_STATE {
        let mut files = Vec::new();
        match fs::read_dir(root) {
            Ok(entries) => files.extend(entries.flatten().map(|e| e.path())),
            Err(_) => files.push(PathBuf::from(root)),
        }
        files.sort();
        for f in files {
            let meta = fs::metadata(&f).ok();
            let stamp = meta.map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!("{} {}.{}", m.len(), m.mtime(), m.mtime_nsec())
            });
            key = key
                .field("path", f.as_os_str().as_encoded_bytes())
                .field("stamp", stamp.unwrap_or_default());
        }
    }
    key.finish()
}

impl Resolved {
    fn to_text(&self, fingerprint: &str) -> String {
        format!(
            "{fingerprint}\n{}\n{}\n{}\n{}\n",
            self.kernel_package, self.kernel_version, self.kernel_release, self.busybox_version
        )
    }

    fn from_text(text: &str, fingerprint: &str) -> Option<Self> {
        let mut l = text.lines();
        if l.next()? != fingerprint {
            return None;
        }
        let r = Resolved {
            kernel_package: l.next()?.to_string(),
            kernel_version: l.next()?.to_string(),
            kernel_release: l.next()?.to_string(),
            busybox_version: l.next()?.to_string(),
        };
        let all = [
            &r.kernel_package,
            &r.kernel_version,
            &r.kernel_release,
            &r.busybox_version,
        ];
        all.iter().all(|s| !s.is_empty()).then_some(r)
    }
}

/// [`resolve`], reusing the answer saved in `memo` while apt's state is unchanged. Returns the
/// versions and whether they came from `memo`.
pub fn resolve_memoized(memo: &Path) -> Result<(Resolved, bool), ImageError> {
    let before = apt_state_fingerprint();
    if let Some(r) = fs::read_to_string(memo)
        .ok()
        .and_then(|t| Resolved::from_text(&t, &before))
    {
        return Ok((r, true));
    }
    let r = resolve()?;
    // `apt-get update` may have run inside `resolve`: save under the state as it is now.
    let after = apt_state_fingerprint();
    let tmp = memo.with_extension("tmp");
    super::cache::write_synced(&tmp, r.to_text(&after).as_bytes())?;
    fs::rename(&tmp, memo).map_err(|e| ImageError::io("rename into", memo, e))?;
    Ok((r, false))
}

/// Downloads `package=version` with `apt-get download` into `dir` and unpacks it into
/// `dir/root`, returning that directory.
pub fn download_and_unpack(
    package: &str,
    version: &str,
    dir: &Path,
) -> Result<PathBuf, ImageError> {
    fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
    let spec = format!("{package}={version}");
    let mut c = Command::new("apt-get");
    c.args(["download", "-q", &spec]).current_dir(dir);
    cmd::output(c, cmd::describe("apt-get", ["download", "-q", &spec]))
        .map_err(ImageError::command)?;
    let prefix = format!("{package}_");
    let deb = fs::read_dir(dir)
        .map_err(|e| ImageError::io("list", dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
        })
        .ok_or_else(|| ImageError::Resolve(format!("apt-get download left no {prefix}*.deb")))?;
    let root = dir.join("root");
    cmd::run(
        "dpkg-deb",
        [OsStr::new("-x"), deb.as_os_str(), root.as_os_str()],
    )
    .map_err(ImageError::command)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n\
# http://snapshot.example/archive/debian/20250520T000000Z\n\
URIs: http://deb.debian.org/debian/\n\
Suites: bookworm bookworm-updates\n\
Components: main\n\
\n\
Types: deb\n\
URIs: http://deb.debian.org/debian-security\n\
Suites: bookworm-security\n\
Components: main\n";

    #[test]
    fn deb822_mirror_matches_the_exact_suite() {
        assert_eq!(
            mirror_from_deb822(DEB822, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_from_deb822(DEB822, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(mirror_from_deb822(DEB822, "trixie"), None);
    }

    #[test]
    fn one_line_sources_with_options() {
        let text = "# comment\n\
deb-src http://src.example/debian bookworm main\n\
deb http://security.example/debian-security bookworm-security main\n\
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n";
        assert_eq!(
            mirror_from_list(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_list("", "bookworm"), None);
    }

    #[test]
    fn memo_is_used_only_for_the_same_apt_state() {
        let r = Resolved {
            kernel_package: "linux-image-6.1.0-56-cloud-amd64".into(),
            kernel_version: "6.1.192-2".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            busybox_version: "1:1.35.0-4".into(),
        };
        let text = r.to_text("fp1");
        assert_eq!(Resolved::from_text(&text, "fp1"), Some(r));
        assert_eq!(Resolved::from_text(&text, "fp2"), None);
        assert_eq!(Resolved::from_text("fp1\nonly-one-line\n", "fp1"), None);
    }

    #[test]
    fn apt_state_fingerprint_is_stable_without_changes() {
        assert_eq!(apt_state_fingerprint(), apt_state_fingerprint());
    }

    #[test]
    fn apt_cache_show_and_kernel_dependency() {
        let text = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n\
Description: x\n\n\
Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nDescription: y\n continued\n";
        let infos = parse_show(text);
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].package, "busybox-static");
        assert_eq!(infos[1].version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(
            kernel_dependency(&infos[0].depends),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".to_string(),
                Some("6.1.192-2".to_string())
            ))
        );
        assert_eq!(
            kernel_dependency("foo, linux-image-6.1.0-9-cloud-amd64"),
            Some(("linux-image-6.1.0-9-cloud-amd64".to_string(), None))
        );
        assert_eq!(kernel_dependency("foo (>= 1)"), None);
    }
}
