//! The simulated agent's directory operations (list, mkdir, remove) over its flat map of
//! guest paths to scratch files. A directory exists when it is `/`, was made by `mkdir`, or
//! is above a file or a made directory; so a write creates its parents, as envd's does.

use super::sim::{SimAgent, SimState};
use super::{AgentApiError, AgentResult};
use std::collections::BTreeSet;
use wrenn_types::agent::{AgentErrorCode, SandboxStatus};
use wrenn_types::fs::{EntryType, FileEntry, ListDirRequest, ListDirResponse, MAX_LIST_DEPTH};

fn bad_request(m: impl Into<String>) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::BadRequest, m)
}

fn file_not_found(path: &str) -> AgentApiError {
    AgentApiError::new(
        AgentErrorCode::FileNotFound,
        format!("no such file: {path}"),
    )
}

/// `path` without a trailing `/` (except the root); refused unless absolute.
fn normal(path: &str) -> AgentResult<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad_request(format!("invalid path: {path} is not absolute")));
    }
    let t = path.trim_end_matches('/');
    Ok(if t.is_empty() { "/".into() } else { t.into() })
}

fn child_of(dir: &str, path: &str) -> bool {
    if dir == "/" {
        path.len() > 1 && path.starts_with('/')
    } else {
        path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// What the sandbox holds: its files (guest path → scratch file) and made directories.
struct Tree<'a> {
    files: &'a std::collections::HashMap<String, std::path::PathBuf>,
    dirs: BTreeSet<String>,
}

impl Tree<'_> {
    fn is_dir(&self, p: &str) -> bool {
        p == "/"
            || self.dirs.contains(p)
            || self.dirs.iter().any(|d| child_of(p, d))
            || self.files.keys().any(|f| child_of(p, f))
    }

    /// The names directly in `dir`, each with whether it is a directory.
    fn children(&self, dir: &str) -> BTreeSet<(String, bool)> {
        let mut out = BTreeSet::new();
        for p in self.files.keys().chain(self.dirs.iter()) {
            if child_of(dir, p) {
                let rest = &p[if dir == "/" { 1 } else { dir.len() + 1 }..];
                match rest.split_once('/') {
                    Some((name, _)) => out.insert((name.to_string(), true)),
                    None => out.insert((rest.to_string(), !self.files.contains_key(p))),
                };
            }
        }
        out
    }

    fn entry(&self, path: &str, dir: bool) -> FileEntry {
        let size = match (dir, self.files.get(path)) {
            (false, Some(real)) => std::fs::metadata(real).map(|m| m.len()).unwrap_or(0),
            _ => 4096,
        };
        let (kind, mode, permissions) = if dir {
            (EntryType::Directory, 0o40755, "drwxr-xr-x")
        } else {
            (EntryType::File, 0o100644, "-rw-r--r--")
        };
        FileEntry {
            name: path.rsplit('/').next().unwrap_or_default().to_string(),
            path: path.to_string(),
            kind,
            size,
            mode,
            permissions: permissions.into(),
            owner: "root".into(),
            group: "root".into(),
            modified_at: chrono::Utc::now().timestamp(),
            symlink_target: None,
        }
    }

    fn walk(&self, dir: &str, levels: u32, out: &mut Vec<FileEntry>) {
        for (name, is_dir) in self.children(dir) {
            let p = join(dir, &name);
            out.push(self.entry(&p, is_dir));
            if is_dir && levels > 1 {
                self.walk(&p, levels - 1, out);
            }
        }
    }
}

fn running<'a>(st: &'a mut SimState, id: &str) -> AgentResult<&'a mut super::sim::SimSandbox> {
    let sb = st.sandboxes.get_mut(id).ok_or_else(|| {
        AgentApiError::new(AgentErrorCode::NotFound, format!("sandbox {id} not found"))
    })?;
    if sb.info.status != SandboxStatus::Running {
        return Err(AgentApiError::new(
            AgentErrorCode::Conflict,
            format!("sandbox {id} is {}", sb.info.status.as_str()),
        ));
    }
    Ok(sb)
}

impl SimAgent {
    pub(super) fn sim_list_dir(
        &self,
        id: &str,
        req: &ListDirRequest,
    ) -> AgentResult<ListDirResponse> {
        let dir = normal(&req.path)?;
        let depth = req.depth.unwrap_or(1);
        if depth > MAX_LIST_DEPTH {
            return Err(bad_request(format!(
                "depth must be at most {MAX_LIST_DEPTH}"
            )));
        }
        let mut st = self.lock();
        let made = st.dirs.get(id).cloned().unwrap_or_default();
        let sb = running(&mut st, id)?;
        let tree = Tree {
            files: &sb.files,
            dirs: made,
        };
        // A file (or a path under one) is no directory to list: not found, as envd says.
        if !tree.is_dir(&dir) {
            return Err(file_not_found(&dir));
        }
        let mut entries = Vec::new();
        tree.walk(&dir, depth.max(1), &mut entries);
        Ok(ListDirResponse {
            entries,
            truncated: false,
        })
    }

    pub(super) fn sim_make_dir(&self, id: &str, path: &str) -> AgentResult<FileEntry> {
        let dir = normal(path)?;
        let mut st = self.lock();
        let made = st.dirs.get(id).cloned().unwrap_or_default();
        let sb = running(&mut st, id)?;
        let tree = Tree {
            files: &sb.files,
            dirs: made,
        };
        if tree.files.contains_key(&dir) || tree.is_dir(&dir) {
            return Err(AgentApiError::new(
                AgentErrorCode::AlreadyExists,
                format!("{dir} already exists"),
            ));
        }
        if tree.files.keys().any(|f| child_of(f, &dir)) {
            return Err(bad_request(format!("a parent of {dir} is not a directory")));
        }
        let entry = tree.entry(&dir, true);
        st.dirs.entry(id.to_string()).or_default().insert(dir);
        Ok(entry)
    }

    pub(super) fn sim_remove_path(&self, id: &str, path: &str) -> AgentResult<()> {
        let p = normal(path)?;
        if p == "/" {
            return Err(bad_request("the root directory cannot be removed"));
        }
        let mut st = self.lock();
        let made = st.dirs.get(id).cloned().unwrap_or_default();
        let sb = running(&mut st, id)?;
        if let Some(real) = sb.files.remove(&p) {
            let _ = std::fs::remove_file(real);
            return Ok(());
        }
        let tree = Tree {
            files: &sb.files,
            dirs: made,
        };
        if !tree.is_dir(&p) {
            return Err(file_not_found(&p));
        }
        let gone: Vec<String> = sb
            .files
            .keys()
            .filter(|f| child_of(&p, f))
            .cloned()
            .collect();
        for f in gone {
            if let Some(real) = sb.files.remove(&f) {
                let _ = std::fs::remove_file(real);
            }
        }
        if let Some(d) = st.dirs.get_mut(id) {
            d.retain(|d| d != &p && !child_of(&p, d));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_directory() {
        assert!(child_of("/", "/a"));
        assert!(!child_of("/", "/"));
        assert!(child_of("/a", "/a/b"));
        assert!(!child_of("/a", "/ab"));
        assert!(!child_of("/a", "/a"));
        assert_eq!(normal("/a/").unwrap(), "/a");
        assert_eq!(normal("/").unwrap(), "/");
        assert!(normal("a").is_err());
    }
}
