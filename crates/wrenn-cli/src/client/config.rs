//! The client's saved state: `$XDG_CONFIG_HOME/wrenn/config.json` (or
//! `$HOME/.config/wrenn/config.json`), written atomically with mode 0600 in a 0700 directory.
//! It holds the session token, the account and the default API key; it never logs them.

use super::api::Failure;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What `wrenn signup`/`login`/`keys create --save` remember.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Session token (JWT, valid for 6 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Default API key for sandbox, file and snapshot commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// Where the config file lives, from `XDG_CONFIG_HOME` or `HOME`.
pub fn path() -> Result<PathBuf, Failure> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => {
                return Err(Failure::local(
                    "neither XDG_CONFIG_HOME nor HOME is set: cannot find the config file",
                ))
            }
        },
    };
    Ok(dir.join("wrenn").join("config.json"))
}

/// Reads the config; a missing file is an empty config.
pub fn load(path: &Path) -> Result<Config, Failure> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Failure::local(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(Failure::local(format!("read {}: {e}", path.display()))),
    }
}

/// Writes the config atomically (temporary file, fsync, rename), mode 0600.
pub fn save(path: &Path, cfg: &Config) -> Result<(), Failure> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Failure::local(format!("{what} {}: {e}", p.display()))
    };
    let dir = path
        .parent()
        .ok_or_else(|| Failure::local("config path has no directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    let tmp = dir.join(format!(".config.json.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(cfg).map_err(|e| Failure::local(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wrenn").join("config.json");
        assert_eq!(load(&p).unwrap(), Config::default());
        let cfg = Config {
            token: Some("t".into()),
            api_key: Some("wrn_x".into()),
            ..Config::default()
        };
        save(&p, &cfg).unwrap();
        assert_eq!(load(&p).unwrap(), cfg);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, "{not json").unwrap();
        assert!(load(&p).is_err());
    }
}
