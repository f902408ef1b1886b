//! Guest filesystem operations beyond reading and writing one file: listing a directory,
//! creating one, removing a path. The same bodies travel on all three hops (public API
//! `/v1/capsules/{id}/files/{list,mkdir,remove}`, the agent's internal API and envd), so
//! they are declared once here.

use serde::{Deserialize, Serialize};

/// Deepest listing accepted (levels below the directory listed).
pub const MAX_LIST_DEPTH: u32 = 16;
/// Most entries one listing answers with; a longer listing is cut and says so (`truncated`).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// What kind of thing an entry is. Anything that is neither a directory nor a symbolic link
/// (a regular file, a device, a socket, a FIFO) is `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
}

/// One entry of a listing, or the directory a `mkdir` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The last component of `path`.
    pub name: String,
    /// The absolute path inside the guest.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Bytes (of the link itself for a symbolic link).
    pub size: u64,
    /// `st_mode`'s permission bits and file type, as a number.
    pub mode: u32,
    /// `ls -l` style, e.g. `-rwxr-xr-x`.
    pub permissions: String,
    /// The owner's name, or the uid as a number when the guest has no name for it.
    pub owner: String,
    /// The group's name, or the gid as a number.
    pub group: String,
    /// Seconds since the Unix epoch.
    pub modified_at: i64,
    /// Where a symbolic link points (as written in the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// List the directory `path`, `depth` levels deep (0 and 1: its entries only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    pub path: String,
    #[serde(default)]
    pub depth: Option<u32>,
}

/// The entries found, parents before their children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    pub entries: Vec<FileEntry>,
    /// True when the listing stopped at [`MAX_LIST_ENTRIES`].
    #[serde(default)]
    pub truncated: bool,
}

/// Create the directory `path` and any missing parents. An existing directory is answered
/// with the code `already_exists` (409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeDirRequest {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeDirResponse {
    pub entry: FileEntry,
}

/// Remove the file, link or directory (with everything in it) at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub path: String,
}
