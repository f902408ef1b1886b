//! The programs the system runs, read from `programs.txt` (the list `scripts/deps.sh` installs
//! and verifies too), and the check that each is on `PATH`, runs, and is new enough.

use super::Check;
use crate::cmd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The list itself: program, Debian package, need, version probe, minimum version, use.
pub const LIST: &str = include_str!("programs.txt");

/// How much the agent depends on a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The agent cannot work without it: its absence fails the check.
    Required,
    /// The agent works without it, with less: its absence is a warning.
    Optional,
    /// Only the test suite uses it; not checked here.
    Test,
}

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// A name looked up on `PATH`, or an absolute path.
    pub name: String,
    /// The Debian package that provides it.
    pub package: String,
    pub need: Need,
    /// Arguments that make it print its version and exit 0; `None`: only check the file exists.
    pub probe: Option<Vec<String>>,
    /// The lowest version accepted, as dotted numbers.
    pub min_version: Option<String>,
    /// What the system uses it for.
    pub used_for: String,
}

/// Every entry of [`LIST`]. Panics on a malformed line (a unit test reads the whole list).
pub fn programs() -> Vec<Program> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("programs.txt: {e}: {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Result<Program, String> {
    let mut words = line.split_whitespace();
    let mut next = |what: &str| words.next().ok_or(format!("no {what} column"));
    let name = next("program")?.to_string();
    let package = next("package")?.to_string();
    let need = match next("need")? {
        "required" => Need::Required,
        "optional" => Need::Optional,
        "test" => Need::Test,
        other => return Err(format!("unknown need {other:?}")),
    };
    let probe = match next("probe")? {
        "-" => None,
        p => Some(p.split(',').map(str::to_string).collect()),
    };
    let min_version = match next("min")? {
        "-" => None,
        v => Some(v.to_string()),
    };
    let used_for = words.collect::<Vec<_>>().join(" ");
    Ok(Program {
        name,
        package,
        need,
        probe,
        min_version,
        used_for,
    })
}

/// One line per required or optional program; `qemu_bin` stands in for `qemu-system-x86_64`
/// (the agent may be told to use another QEMU).
pub fn check_all(qemu_bin: &Path) -> Vec<Check> {
    programs()
        .into_iter()
        .filter(|p| p.need != Need::Test)
        .map(|mut p| {
            if p.name == "qemu-system-x86_64" {
                p.name = qemu_bin.to_string_lossy().into_owned();
            }
            check(&p)
        })
        .collect()
}

/// Where `name` is found the way the agent runs it (`PATH`; a name with a `/` as it is).
pub fn find(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether a program is missing, broken or old: `Fail` when the agent needs it, else `Warning`.
fn short(p: &Program, detail: String, fix: String) -> Check {
    match p.need {
        Need::Required => Check::fail(&p.name, detail, fix),
        _ => Check::warning(
            &p.name,
            format!("{detail} (without it, no {})", p.used_for),
            fix,
        ),
    }
}

fn install_fix(p: &Program) -> String {
    format!(
        "apt-get install {} (scripts/deps.sh installs every package Wrenn needs)",
        p.package
    )
}

fn check(p: &Program) -> Check {
    let Some(path) = find(&p.name) else {
        let detail = format!("not found on PATH (Debian package {})", p.package);
        let elsewhere = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(&p.name))
            .find(|c| !p.name.contains('/') && is_executable(c));
        return match elsewhere {
            Some(found) => short(
                p,
                format!("{detail}; {} exists", found.display()),
                format!(
                    "add {} to PATH (the agent runs programs from PATH)",
                    found.parent().unwrap_or(Path::new("/")).display()
                ),
            ),
            None => short(p, detail, install_fix(p)),
        };
    };
    let Some(probe) = &p.probe else {
        return Check::ok(&p.name, path.display().to_string());
    };
    let mut command = Command::new(&p.name);
    command.args(probe);
    let out = match cmd::output(command, cmd::describe(&p.name, probe)) {
        // Some print their version on stderr (`mkfs.ext4 -V`).
        Ok(out) if out.stdout.iter().all(u8::is_ascii_whitespace) => out.stderr,
        Ok(out) => out.stdout,
        Err(e) => {
            return short(
                p,
                format!("does not run: {e}"),
                format!("reinstall the Debian package {}", p.package),
            )
        }
    };
    let line = first_line(&out);
    let shown = if line.is_empty() {
        path.display().to_string()
    } else {
        line.clone()
    };
    if let Some(min) = &p.min_version {
        match version_in(&line) {
            Some(v) if !older(&v, min) => {}
            found => {
                // The code works with older versions today; what is tested and installed is `min`.
                return Check::warning(
                    &p.name,
                    format!(
                        "{shown}: older than {min}, the version Wrenn is built and tested for (found {})",
                        found.as_deref().unwrap_or("no version")
                    ),
                    format!(
                        "run scripts/deps.sh, which installs {} {min} (from bookworm-backports on Debian 12)",
                        p.package
                    ),
                );
            }
        }
    }
    Check::ok(&p.name, shown)
}

/// The first non-empty line of a program's version output, shortened for one line.
fn first_line(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .map(|l| l.trim().trim_matches('*').trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The first dotted number in a line: `QEMU emulator version 10.0.2 (Debian …)` → `10.0.2`.
pub fn version_in(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let candidate = line[start..i].trim_end_matches('.');
            if candidate.contains('.') {
                return Some(candidate.to_string());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Whether dotted version `v` is lower than `min`, number by number.
fn older(v: &str, min: &str) -> bool {
    let nums = |s: &str| -> Vec<u64> { s.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    let (a, b) = (nums(v), nums(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x < y;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_list_parses() {
        let all = programs();
        assert!(all.len() > 15, "{all:?}");
        let qemu = all.iter().find(|p| p.name == "qemu-system-x86_64").unwrap();
        assert_eq!(qemu.package, "qemu-system-x86");
        assert_eq!(qemu.need, Need::Required);
        assert_eq!(qemu.probe, Some(vec!["--version".to_string()]));
        assert_eq!(qemu.min_version.as_deref(), Some("10.0"));
        assert!(qemu.used_for.contains("guest"), "{qemu:?}");
        let sh = all.iter().find(|p| p.name == "sh").unwrap();
        assert_eq!(sh.probe, Some(vec!["-c".to_string(), "true".to_string()]));
        let font = all
            .iter()
            .find(|p| p.package == "fonts-dejavu-core")
            .unwrap();
        assert_eq!((font.need, font.probe.clone()), (Need::Test, None));
    }

    #[test]
    fn versions_are_read_and_compared_as_numbers() {
        let qemu = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)";
        assert_eq!(version_in(qemu).as_deref(), Some("10.0.2"));
        assert_eq!(
            version_in("ip utility, iproute2-6.15.0, libbpf 1.1.2").as_deref(),
            Some("6.15.0")
        );
        assert_eq!(
            version_in("LZ4 command line interface 64-bits v1.9.4, by Yann Collet").as_deref(),
            Some("1.9.4")
        );
        assert_eq!(version_in("kmod version 30"), None);
        assert!(older("7.2.22", "10.0"));
        assert!(!older("10.0.2", "10.0"));
        assert!(!older("10.0", "10.0"));
        assert!(older("9.99", "10"));
    }

    /// The names the agent's code passes to `cmd::run`, `cmd::output`'s `Command::new` and
    /// `run_script`, found by reading its source.
    fn programs_in_source(dir: &Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                programs_in_source(&path, found);
                continue;
            }
            if path.extension() != Some(std::ffi::OsStr::new("rs")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for call in ["cmd::run", "Command::new", "run_script"] {
                for (at, _) in text.match_indices(call) {
                    let Some(args) = text[at + call.len()..].strip_prefix('(') else {
                        continue;
                    };
                    if let Some(lit) = args.trim_start().strip_prefix('"') {
                        let name = lit.split('"').next().unwrap().to_string();
                        found.push((name, path.display().to_string()));
                    }
                }
            }
        }
    }

    #[test]
    fn every_program_the_agent_runs_is_listed() {
        let listed: Vec<String> = programs().into_iter().map(|p| p.name).collect();
        let mut found = Vec::new();
        programs_in_source(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.iter().any(|(n, _)| n == "qemu-img") && found.iter().any(|(n, _)| n == "ip"),
            "the source scan found too little: {found:?}"
        );
        let missing: Vec<_> = found
            .iter()
            .filter(|(name, _)| !listed.contains(name))
            .collect();
        assert!(
            missing.is_empty(),
            "run by the agent but not in doctor/programs.txt: {missing:?}"
        );
    }
}
