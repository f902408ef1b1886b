//! Wire types of a snapshot template's copy from one host agent to another, relayed by the
//! control plane: the source's [`TemplateManifest`] (every file with its size and SHA-256),
//! and the receiver's [`CopyStatus`] (how many bytes of each file it already holds, so an
//! interrupted copy continues where it stopped). The limits of a copy are here, so both
//! agents and the control plane check the same ones.

use serde::{Deserialize, Serialize};

/// Most files a template may have to be copied (a template has a handful: its record, RAM,
/// device state and a short chain of disk layers).
pub const MAX_COPY_FILES: usize = 32;
/// Largest template that may be copied, all files together.
pub const MAX_COPY_BYTES: u64 = 256 * 1024 * 1024 * 1024;

/// One file of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFile {
    /// A plain name inside the template's directory (the rule of [`crate::names`]): never a
    /// path, so it cannot reach outside it.
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// What a template is made of, as its source host lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateManifest {
    /// The template's name on the agents (the same on every host that holds a copy).
    pub name: String,
    pub files: Vec<CopyFile>,
}

impl TemplateManifest {
    /// Every byte of the template.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The file named `name`, if the manifest lists it.
    pub fn file(&self, name: &str) -> Option<&CopyFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Checks the limits and names: a valid template name, 1 to [`MAX_COPY_FILES`] files
    /// with valid, distinct names and 64-hex-digit digests, at most [`MAX_COPY_BYTES`] in all.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::names::valid_name(&self.name) {
            return Err(format!("invalid template name {:?}", self.name));
        }
        if self.files.is_empty() || self.files.len() > MAX_COPY_FILES {
            return Err(format!(
                "a template copy has 1 to {MAX_COPY_FILES} files, not {}",
                self.files.len()
            ));
        }
        let mut total: u64 = 0;
        for (i, f) in self.files.iter().enumerate() {
            if !crate::names::valid_name(&f.name) {
                return Err(format!("invalid file name {:?}", f.name));
            }
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("file {} listed twice", f.name));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("file {} has no SHA-256 digest", f.name));
            }
            total = total.saturating_add(f.size);
        }
        if total > MAX_COPY_BYTES {
            return Err(format!(
                "template {} is {total} bytes, over the {MAX_COPY_BYTES} a copy may move",
                self.name
            ));
        }
        Ok(())
    }
}

/// How many bytes of one file a receiving host holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyHeld {
    pub name: String,
    pub held: u64,
}

/// What a receiving host holds of a copy under way (nothing of it is a template yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatus {
    pub name: String,
    pub files: Vec<CopyHeld>,
}

impl CopyStatus {
    /// The bytes held of `file` (0 if not listed).
    pub fn held(&self, file: &str) -> u64 {
        self.files
            .iter()
            .find(|f| f.name == file)
            .map_or(0, |f| f.held)
    }
}

/// The query of a ranged read or a write at an offset of one file of a copy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OffsetQuery {
    #[serde(default)]
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> CopyFile {
        CopyFile {
            name: name.into(),
            size,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn manifests_are_checked() {
        let ok = TemplateManifest {
            name: "t-1".into(),
            files: vec![file("meta.json", 10), file("mem", 1 << 20)],
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.total_bytes(), 10 + (1 << 20));
        let with = |files: Vec<CopyFile>| TemplateManifest {
            name: "t-1".into(),
            files,
        };
        for bad in [
            with(vec![]),
            with(vec![file("../x", 1)]),
            with(vec![file("a/b", 1)]),
            with(vec![file(".hidden", 1)]),
            with(vec![file("a", 1), file("a", 2)]),
            with(vec![file("a", MAX_COPY_BYTES), file("b", 1)]),
            with(
                (0..=MAX_COPY_FILES)
                    .map(|i| file(&format!("f{i}"), 1))
                    .collect(),
            ),
            with(vec![CopyFile {
                sha256: "zz".repeat(32),
                ..file("a", 1)
            }]),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
        let bad_name = TemplateManifest {
            name: "../t".into(),
            ..ok
        };
        assert!(bad_name.validate().is_err());
    }
}
