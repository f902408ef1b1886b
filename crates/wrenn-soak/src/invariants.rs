//! The invariants of a Wrenn system after faults (killed processes, dropped clients, failed
//! steps), checked from outside as a user and an operator would see them:
//!
//! - every sandbox the API lists is usable (running: exec works and the file written before is
//!   there; paused: resume works and the file is there) or in `error`, with its files kept when
//!   it had ever been handed to its user;
//! - nothing exists that no record owns: no QEMU process of the data dir outside a running
//!   sandbox or the agent's warm pool (found through the agent's pid files,
//!   [`crate::qemus`]), no sandbox directory the agent has no record of, no VM or snapshot
//!   template the database does not know, no more network namespaces of the prefix than
//!   running sandboxes plus the agent's ready slots and pooled clones, no host link of the
//!   prefix without its namespace (the per-sandbox firewall rules live in the namespaces; the
//!   prefix's host chains stay while the agent runs);
//! - the database (the public API's lists) and the agent (its internal API's lists) agree.
//!
//! It owns the observation and the verdict ([`Findings`]); it knows nothing of how the faults
//! were made. The agent is reached with the token `wrenn up` keeps in its data directory.

use crate::qemus::Owner;
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Ready network slots the agent keeps besides those of running sandboxes (`NetConfig`'s
/// default `pool_size`).
pub const POOL_READY: usize = 4;
/// Longest one request of a check may take (a resume under TCG on a busy host).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The system under check.
#[derive(Clone, Debug)]
pub struct Target {
    pub http: reqwest::Client,
    /// The public API, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// The agent's internal API.
    pub agent: String,
    pub agent_token: String,
    /// `wrenn up`'s data directory.
    pub data_dir: PathBuf,
    pub net_prefix: String,
    /// An API key of every account whose sandboxes are checked.
    pub keys: Vec<String>,
}

impl Target {
    /// A target whose agent token is read from the data directory (`wrenn up` keeps it there).
    pub fn new(
        base: &str,
        agent: &str,
        data_dir: &Path,
        net_prefix: &str,
        keys: Vec<String>,
    ) -> Result<Target> {
        let token = std::fs::read_to_string(data_dir.join("agent_token"))
            .context("read the agent token of the data dir")?;
        Ok(Target {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            agent: agent.trim_end_matches('/').to_string(),
            agent_token: token.trim().to_string(),
            data_dir: data_dir.to_path_buf(),
            net_prefix: net_prefix.to_string(),
            keys,
        })
    }
}

/// What a sandbox must hold: a file, and the contents it may have (more than one when a
/// write was cut short and either may have landed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub path: String,
    pub contents: Vec<String>,
}

/// The verdict of one check.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Sandboxes the API listed.
    pub listed: usize,
    /// Sandboxes found usable (exec works, the expected file is there).
    pub usable: Vec<String>,
    /// Sandboxes in `error` (with their files, when they had been handed out).
    pub errored: Vec<String>,
    /// Sandboxes expected and gone, unusable, in `error` without their files, or whose file
    /// differs.
    pub lost: Vec<String>,
    /// Things no record owns.
    pub orphans: Vec<String>,
    /// The database and the agent disagree, or an operation never settled.
    pub disagreements: Vec<String>,
}

impl Findings {
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.orphans.is_empty() && self.disagreements.is_empty()
    }
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "listed {}, usable {}, error {:?}, lost {:?}, orphans {:?}, disagreements {:?}",
            self.listed,
            self.usable.len(),
            self.errored,
            self.lost,
            self.orphans,
            self.disagreements
        )
    }
}

/// One look at every side of the system.
#[derive(Debug, Default)]
struct Observed {
    /// Database: sandbox id → (status, index of the key that sees it).
    db: BTreeMap<String, (String, usize)>,
    db_snapshots: usize,
    /// Agent: sandbox id → status.
    agent: BTreeMap<String, String>,
    agent_snapshots: usize,
    /// Entries of the agent's `sandboxes/` directory.
    dirs: BTreeSet<String>,
    /// Live QEMUs of the data dir: pid → the sandbox id it runs, or its command line.
    qemus: Vec<(i32, Result<String, String>)>,
    /// Live QEMUs of the agent's warm pool (each holds a network slot of its own).
    pooled: usize,
    /// Slot indexes of the prefix's network namespaces.
    netns: BTreeSet<u32>,
    /// Slot indexes of the prefix's host-side links (`<prefix>v<index>`).
    links: BTreeSet<u32>,
    /// Network slot of each sandbox record that has one.
    slots: BTreeMap<String, u32>,
}

async fn get_json(rb: reqwest::RequestBuilder, what: &str) -> Result<Value> {
    let r = rb.send().await.with_context(|| what.to_string())?;
    let status = r.status();
    let body = r.text().await.with_context(|| what.to_string())?;
    if !status.is_success() {
        return Err(anyhow!("{what}: {status} {body}"));
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: {body}"))
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Slot indexes of the network namespaces of `prefix` (`<prefix>-ns<index>`).
pub fn namespaces_of(prefix: &str) -> BTreeSet<u32> {
    indexes_in("/run/netns", &format!("{prefix}-ns"))
}

/// Slot indexes of the host-side links of `prefix` (`<prefix>v<index>`).
pub fn links_of(prefix: &str) -> BTreeSet<u32> {
    indexes_in("/sys/class/net", &format!("{prefix}v"))
}

fn indexes_in(dir: &str, start: &str) -> BTreeSet<u32> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let digits = name.strip_prefix(start)?;
                    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| digits.parse().ok())
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn observe(t: &Target) -> Result<Observed> {
    let mut o = Observed::default();
    // The agent first: what it lists, the database read after knows (rows are written before
    // the agent is called).
    let agent = |path: &str| {
        t.http
            .get(format!("{}{path}", t.agent))
            .bearer_auth(&t.agent_token)
    };
    for sb in array(&get_json(agent("/v1/sandboxes"), "agent sandboxes").await?) {
        let id = sb["id"].as_str().unwrap_or_default().to_string();
        o.agent
            .insert(id, sb["status"].as_str().unwrap_or_default().into());
    }
    o.agent_snapshots = array(&get_json(agent("/v1/templates"), "agent templates").await?)
        .iter()
        .filter(|t| t["kind"] == "snapshot")
        .count();
    for (i, key) in t.keys.iter().enumerate() {
        let api = |path: &str| {
            t.http
                .get(format!("{}{path}", t.base))
                .header("X-API-Key", key)
        };
        for sb in array(&get_json(api("/v1/sandboxes"), "sandboxes").await?) {
            let id = sb["id"].as_str().unwrap_or_default().to_string();
            o.db.insert(id, (sb["status"].as_str().unwrap_or_default().into(), i));
        }
        o.db_snapshots += array(&get_json(api("/v1/snapshots"), "snapshots").await?)
            .iter()
            .filter(|t| t["type"] == "snapshot")
            .count();
    }
    let dir = t.data_dir.join("sandboxes");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let record = std::fs::read(e.path().join("sandbox.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if let Some(slot) = record.as_ref().and_then(|r| r["slot"].as_u64()) {
                o.slots.insert(name.clone(), slot as u32);
            }
            o.dirs.insert(name);
        }
    }
    for (pid, owner) in crate::qemus::qemus_of(&t.data_dir) {
        match owner {
            Owner::Sandbox(id) => o.qemus.push((pid, Ok(id))),
            Owner::Pooled => o.pooled += 1,
            Owner::Unknown(cmd) => o.qemus.push((pid, Err(cmd))),
        }
    }
    o.netns = namespaces_of(&t.net_prefix);
    o.links = links_of(&t.net_prefix);
    Ok(o)
}

/// Orphans and disagreements of one observation.
fn judge(o: &Observed) -> (Vec<String>, Vec<String>) {
    let mut orphans = Vec::new();
    let mut disagree = Vec::new();
    for (id, status) in &o.agent {
        if !o.db.contains_key(id) {
            orphans.push(format!(
                "agent sandbox {id} ({status}) unknown to the database"
            ));
        }
    }
    for (id, (db, _)) in &o.db {
        let agent = o.agent.get(id).map(String::as_str);
        let fine = match db.as_str() {
            "running" | "paused" => agent == Some(db.as_str()),
            "error" => matches!(agent, None | Some("error")),
            _ => false, // pending, stopped: an operation that has not settled
        };
        if !fine {
            disagree.push(format!(
                "sandbox {id}: database {db}, agent {}",
                agent.unwrap_or("unknown")
            ));
        }
    }
    for name in &o.dirs {
        if !o.agent.contains_key(name) {
            orphans.push(format!("sandbox directory {name} without an agent record"));
        }
    }
    for (pid, what) in &o.qemus {
        match what {
            Ok(id) if o.agent.get(id).map(String::as_str) == Some("running") => {}
            Ok(id) => orphans.push(format!(
                "QEMU {pid} of sandbox {id} ({})",
                o.agent.get(id).map(String::as_str).unwrap_or("no record")
            )),
            Err(cmd) => orphans.push(format!("QEMU {pid} of the data dir: {cmd}")),
        }
    }
    for (id, status) in &o.agent {
        if status == "running" && !o.qemus.iter().any(|(_, w)| w.as_ref() == Ok(id)) {
            disagree.push(format!("sandbox {id} running without a QEMU"));
        }
    }
    let held: BTreeSet<u32> = o
        .agent
        .iter()
        .filter(|(_, s)| *s == "running")
        .filter_map(|(id, _)| o.slots.get(id).copied())
        .collect();
    let spare: Vec<u32> = o.netns.difference(&held).copied().collect();
    if spare.len() > POOL_READY + o.pooled {
        orphans.push(format!(
            "{} network namespaces of no running sandbox (at most {POOL_READY} ready and {} of \
             pooled clones): {spare:?}",
            spare.len(),
            o.pooled
        ));
    }
    for slot in o.links.difference(&o.netns) {
        orphans.push(format!("host link {slot} without its namespace"));
    }
    for slot in held.difference(&o.netns) {
        disagree.push(format!("running sandbox's slot {slot} has no namespace"));
    }
    if o.agent_snapshots > o.db_snapshots {
        orphans.push(format!(
            "{} snapshot templates on the agent, {} in the database",
            o.agent_snapshots, o.db_snapshots
        ));
    } else if o.agent_snapshots < o.db_snapshots {
        disagree.push(format!(
            "{} snapshot templates in the database, {} on the agent",
            o.db_snapshots, o.agent_snapshots
        ));
    }
    (orphans, disagree)
}

/// Waits (up to `within`) until the system has no orphan and no disagreement; returns the
/// last observation's verdict. Orphans may need the reconciler's grace to go.
pub async fn converge(t: &Target, within: Duration) -> Findings {
    let deadline = Instant::now() + within;
    loop {
        let (findings, observed) = match observe(t).await {
            Ok(o) => {
                let (orphans, disagreements) = judge(&o);
                let f = Findings {
                    listed: o.db.len(),
                    orphans,
                    disagreements,
                    ..Findings::default()
                };
                (f, true)
            }
            Err(e) => (
                Findings {
                    disagreements: vec![format!("could not observe: {e:#}")],
                    ..Findings::default()
                },
                false,
            ),
        };
        if (observed && findings.ok()) || Instant::now() >= deadline {
            return findings;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Runs a shell command in a sandbox; its stdout when it exits 0.
pub async fn exec(t: &Target, key: &str, id: &str, script: &str) -> Result<String> {
    let v = get_json(
        t.http
            .post(format!("{}/v1/sandboxes/{id}/exec", t.base))
            .header("X-API-Key", key)
            .json(&json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 60})),
        "exec",
    )
    .await?;
    if v["exit_code"] != 0 {
        return Err(anyhow!("exec {script:?} in {id}: {v}"));
    }
    Ok(v["stdout"].as_str().unwrap_or_default().to_string())
}

/// Whether a sandbox is usable: a paused one is resumed first; the expected file is read.
async fn usable(
    t: &Target,
    key: &str,
    id: &str,
    status: &str,
    want: Option<&Expect>,
) -> Result<()> {
    if status == "paused" {
        let v = get_json(
            t.http
                .post(format!("{}/v1/sandboxes/{id}/resume", t.base))
                .header("X-API-Key", key),
            "resume",
        )
        .await?;
        if v["status"] != "running" {
            return Err(anyhow!("resume of {id}: {v}"));
        }
    }
    match want {
        Some(w) => {
            let got = exec(t, key, id, &format!("cat {}", w.path)).await?;
            if !w.contents.contains(&got) {
                return Err(anyhow!(
                    "{id}: {} holds {got:?}, expected one of {:?}",
                    w.path,
                    w.contents
                ));
            }
        }
        None => {
            exec(t, key, id, "true").await?;
        }
    }
    Ok(())
}

/// Every invariant: waits up to `settle` for orphans and disagreements to go, then uses every
/// listed sandbox (resuming the paused ones). `expected` holds the sandboxes handed out and
/// not destroyed, with their file: each must be listed and usable, or in `error` with its
/// directory kept.
pub async fn check(t: &Target, expected: &HashMap<String, Expect>, settle: Duration) -> Findings {
    let mut f = converge(t, settle).await;
    let o = match observe(t).await {
        Ok(o) => o,
        Err(e) => {
            f.disagreements.push(format!("could not observe: {e:#}"));
            return f;
        }
    };
    for (id, (status, key)) in &o.db {
        let key = &t.keys[*key];
        let want = expected.get(id);
        match status.as_str() {
            "running" | "paused" => match usable(t, key, id, status, want).await {
                Ok(()) => f.usable.push(id.clone()),
                Err(e) => f.lost.push(format!("{id} ({status}) not usable: {e:#}")),
            },
            "error" => {
                if want.is_some() && !o.dirs.contains(id) {
                    f.lost.push(format!("{id} in error without its files"));
                } else {
                    f.errored.push(id.clone());
                }
            }
            _ => {} // not settled: a disagreement already
        }
    }
    for id in expected.keys() {
        if !o.db.contains_key(id) {
            f.lost.push(format!("{id} is gone"));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named change that spoils a healthy observation.
    type Spoil = (&'static str, fn(&mut Observed));

    fn healthy() -> Observed {
        let mut o = Observed::default();
        o.db.insert("sb-run".into(), ("running".into(), 0));
        o.db.insert("sb-paused".into(), ("paused".into(), 0));
        o.db.insert("sb-lost-create".into(), ("error".into(), 0));
        o.agent.insert("sb-run".into(), "running".into());
        o.agent.insert("sb-paused".into(), "paused".into());
        o.dirs
            .extend(["sb-run".to_string(), "sb-paused".to_string()]);
        o.qemus.push((10, Ok("sb-run".into())));
        o.slots.insert("sb-run".into(), 7);
        o.netns.extend([7, 8, 9]);
        o.links.extend([7, 8]);
        o.db_snapshots = 1;
        o.agent_snapshots = 1;
        o
    }

    #[test]
    fn a_healthy_system_has_nothing_to_report() {
        assert_eq!(judge(&healthy()), (vec![], vec![]));
    }

    #[test]
    fn a_pooled_clone_holds_a_namespace_of_its_own() {
        // 8 and 9 are ready slots; three more namespaces are one too many without clones.
        let mut o = healthy();
        o.netns.extend([1, 2, 3]);
        assert!(!judge(&o).0.is_empty());
        o.pooled = 3;
        assert_eq!(judge(&o), (vec![], vec![]));
    }

    #[test]
    fn whatever_no_record_owns_is_an_orphan() {
        let cases: Vec<Spoil> = vec![
            ("agent sandbox", |o| {
                o.agent.insert("sb-x".into(), "running".into());
                o.dirs.insert("sb-x".into());
                o.qemus.push((11, Ok("sb-x".into())));
            }),
            ("directory", |o| {
                o.dirs.insert("sb-gone".into());
            }),
            ("QEMU of a paused sandbox", |o| {
                o.qemus.push((12, Ok("sb-paused".into())))
            }),
            ("QEMU of no sandbox", |o| {
                o.qemus.push((13, Err("qemu warm/x".into())));
            }),
            ("template", |o| o.agent_snapshots = 2),
            ("namespaces", |o| o.netns.extend([1, 2, 3, 4])),
            ("link", |o| {
                o.links.insert(5);
            }),
        ];
        for (what, spoil) in cases {
            let mut o = healthy();
            spoil(&mut o);
            let (orphans, _) = judge(&o);
            assert!(!orphans.is_empty(), "{what} not found");
        }
    }

    #[test]
    fn the_database_and_the_agent_must_agree() {
        let cases: Vec<Spoil> = vec![
            ("running here, paused there", |o| {
                o.agent.insert("sb-run".into(), "paused".into());
            }),
            ("paused here, unknown there", |o| {
                o.agent.remove("sb-paused");
                o.dirs.remove("sb-paused");
            }),
            ("an operation never settled", |o| {
                o.db.insert("sb-run".into(), ("pending".into(), 0));
            }),
            ("a running sandbox without QEMU", |o| o.qemus.clear()),
            ("a template missing", |o| o.agent_snapshots = 0),
        ];
        for (what, spoil) in cases {
            let mut o = healthy();
            spoil(&mut o);
            let (_, disagreements) = judge(&o);
            assert!(!disagreements.is_empty(), "{what} not found");
        }
    }
}
