//! Looks users and their groups up by reading `/etc/passwd` and `/etc/group` directly.
//!
//! envd is a static binary, so glibc's NSS (`getpwnam`) is not available; the guest's users
//! all live in these two files anyway. This module only reads; it never changes identities
//! (that happens in [`crate::process`]).

use std::path::{Path, PathBuf};

/// Files larger than this are not user databases; refuse instead of reading them whole.
const MAX_DB_BYTES: u64 = 4 * 1024 * 1024;

/// A user as found in the passwd file, with the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Supplementary groups: the primary group and every group that lists the user.
    pub groups: Vec<u32>,
}

/// Why a user could not be found.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No line of the passwd file names this user.
    #[error("no user `{0}` in /etc/passwd")]
    Unknown(String),
    /// The passwd or group file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The locations of the user databases (the real ones, or test copies).
#[derive(Debug, Clone)]
pub struct UserDb {
    passwd: PathBuf,
    group: PathBuf,
}

impl Default for UserDb {
    fn default() -> Self {
        Self {
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
        }
    }
}

impl UserDb {
    #[cfg(test)]
    fn at(passwd: &Path, group: &Path) -> Self {
        Self {
            passwd: passwd.to_path_buf(),
            group: group.to_path_buf(),
        }
    }

    /// Finds a user by name, or by numeric uid when `name` is all digits and no user has
    /// that name.
    pub fn by_name(&self, name: &str) -> Result<User, UserError> {
        let passwd = read_db(&self.passwd)?;
        let entry = parse_passwd(&passwd)
            .find(|e| e.name == name)
            .or_else(|| {
                let uid: u32 = name.parse().ok()?;
                parse_passwd(&passwd).find(|e| e.uid == uid)
            })
            .ok_or_else(|| UserError::Unknown(name.to_string()))?;
        self.complete(entry)
    }

    /// Finds the user with this uid (for the daemon's own identity).
    pub fn by_uid(&self, uid: u32) -> Result<User, UserError> {
        let passwd = read_db(&self.passwd)?;
        let entry = parse_passwd(&passwd)
            .find(|e| e.uid == uid)
            .ok_or_else(|| UserError::Unknown(uid.to_string()))?;
        self.complete(entry)
    }

    fn complete(&self, entry: PasswdEntry<'_>) -> Result<User, UserError> {
        // A missing group file only loses supplementary groups; the primary group stays.
        let group = match read_db(&self.group) {
            Ok(text) => text,
            Err(UserError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                String::new()
            }
            Err(e) => return Err(e),
        };
        let mut groups = vec![entry.gid];
        for (gid, members) in parse_group(&group) {
            if members.split(',').any(|m| m == entry.name) && !groups.contains(&gid) {
                groups.push(gid);
            }
        }
        Ok(User {
            name: entry.name.to_string(),
            uid: entry.uid,
            gid: entry.gid,
            home: PathBuf::from(entry.home),
            groups,
        })
    }
}

fn read_db(path: &Path) -> Result<String, UserError> {
    use std::io::Read;
    let err = |source| UserError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut text = String::new();
    file.take(MAX_DB_BYTES)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(text)
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped.
fn parse_passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next()?;
        let home = f.next()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

/// `name:password:gid:member,member`; yields `(gid, members)`, skipping malformed lines.
fn parse_group(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let _name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f.next().unwrap_or("");
        Some((gid, members))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(passwd: &str, group: &str) -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("passwd");
        let g = dir.path().join("group");
        std::fs::write(&p, passwd).expect("write passwd");
        std::fs::write(&g, group).expect("write group");
        let db = UserDb::at(&p, &g);
        (dir, db)
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        broken line\n\
        user:x:1000:1000:,,,:/home/user:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:user\nuser:x:1000:\nusers:x:100:other,user\n";

    #[test]
    fn finds_user_with_supplementary_groups() {
        let (_d, db) = db(PASSWD, GROUP);
        let u = db.by_name("user").expect("user");
        assert_eq!(u.uid, 1000);
        assert_eq!(u.gid, 1000);
        assert_eq!(u.home, PathBuf::from("/home/user"));
        assert_eq!(u.groups, vec![1000, 27, 100]);
    }

    #[test]
    fn numeric_name_falls_back_to_uid() {
        let (_d, db) = db(PASSWD, GROUP);
        assert_eq!(db.by_name("65534").expect("uid").name, "nobody");
        assert_eq!(db.by_uid(0).expect("root").home, PathBuf::from("/root"));
    }

    #[test]
    fn unknown_user_is_an_error() {
        let (_d, db) = db(PASSWD, GROUP);
        assert!(matches!(db.by_name("mallory"), Err(UserError::Unknown(_))));
        assert!(matches!(
            db.by_name("broken line"),
            Err(UserError::Unknown(_))
        ));
    }

    #[test]
    fn missing_group_file_keeps_primary_group() {
        let (d, _) = db(PASSWD, GROUP);
        let db = UserDb::at(&d.path().join("passwd"), &d.path().join("nope"));
        assert_eq!(db.by_name("user").expect("user").groups, vec![1000]);
    }
}
