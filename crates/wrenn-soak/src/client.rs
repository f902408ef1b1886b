//! One soak client: an account of its own, a few sandboxes, and a loop of random operations
//! (create, clone, exec, file write, pause, resume, snapshot, destroy) with random client
//! timeouts. It keeps a model of what each of its sandboxes must hold: the contents its file may
//! have (two when a write was cut short), and whether an operation that may have ended it
//! (destroy, snapshot) was cut short. The verdict at the end is the invariants' and
//! [`Client::expected`]'s; during the run it records operations done, errors by kind, and
//! sandboxes found lost (gone, or holding another content).

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wrenn_soak::invariants::Expect;

/// The file every soak sandbox carries.
pub const FILE: &str = "/root/soak.txt";
/// Snapshot templates one client keeps at most (older ones are deleted).
const MAX_TEMPLATES: usize = 1;
/// Memory of every soak sandbox, in MiB (`wrenn up` prepares its warm snapshot).
pub const MEMORY_MB: u32 = 256;

/// Counters shared by every client.
#[derive(Default)]
pub struct Tally {
    pub done: Mutex<BTreeMap<String, u64>>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub lost: Mutex<Vec<String>>,
    /// Sandboxes alive over all clients (the cap holds creates back).
    pub alive: AtomicUsize,
}

impl Tally {
    fn done(&self, op: &str) {
        *self.done.lock().unwrap().entry(op.into()).or_default() += 1;
    }
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
    fn lost(&self, what: String) {
        eprintln!("LOST: {what}");
        self.lost.lock().unwrap().push(what);
    }
}

/// What the client knows of one of its sandboxes.
#[derive(Clone, Debug)]
struct Sandbox {
    /// Contents the file may hold; empty: not known (a sandbox adopted after a cut-short
    /// create), nothing is checked until a write succeeds.
    contents: Vec<String>,
    /// A destroy or snapshot of it was cut short: it may be gone.
    may_be_gone: bool,
    /// Found in `error`: kept for the end's check (its files must be there), not used.
    errored: bool,
}

/// How a request ended.
enum Outcome {
    Answered(u16, Value),
    /// The client gave up, or the connection broke: the operation may or may not have run.
    Unknown(&'static str),
}

pub struct Client {
    pub name: String,
    pub key: String,
    base: String,
    http: reqwest::Client,
    tally: Arc<Tally>,
    max_alive: usize,
    sandboxes: BTreeMap<String, Sandbox>,
    /// Snapshot name → content; `true` when its creation was cut short (it may not exist).
    templates: BTreeMap<String, (String, bool)>,
    seq: u32,
}

fn content(rng: &mut impl Rng) -> String {
    format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

impl Client {
    pub fn new(
        name: &str,
        key: String,
        base: String,
        tally: Arc<Tally>,
        max_alive: usize,
    ) -> Client {
        Client {
            name: name.into(),
            key,
            base,
            http: reqwest::Client::new(),
            tally,
            max_alive,
            sandboxes: BTreeMap::new(),
            templates: BTreeMap::new(),
            seq: 0,
        }
    }

    /// A random client timeout: mostly patient, sometimes one that gives up mid-operation.
    fn timeout(rng: &mut impl Rng) -> Duration {
        if rng.gen_bool(0.25) {
            Duration::from_millis(rng.gen_range(10..3000))
        } else {
            Duration::from_secs(240)
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, timeout: Duration) -> Outcome {
        let r = match rb
            .header("X-API-Key", &self.key)
            .timeout(timeout)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Outcome::Unknown("client timeout"),
            Err(e) if e.is_connect() => {
                // Restarting: wait a little rather than count a burst of refusals.
                tokio::time::sleep(Duration::from_millis(250)).await;
                return Outcome::Unknown("unreachable");
            }
            Err(_) => return Outcome::Unknown("connection broken"),
        };
        let status = r.status().as_u16();
        match r.text().await {
            Ok(t) => {
                Outcome::Answered(status, serde_json::from_str(&t).unwrap_or(Value::String(t)))
            }
            Err(e) if e.is_timeout() => Outcome::Unknown("client timeout"),
            Err(_) => Outcome::Unknown("connection broken"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Records an outcome that is not `want` as an error of its kind; true when it is `want`.
    fn judge(&self, op: &str, out: &Outcome, want: u16) -> bool {
        match out {
            Outcome::Answered(s, _) if *s == want => {
                self.tally.done(op);
                true
            }
            Outcome::Answered(s, v) => {
                let code = v["error"]["code"].as_str().unwrap_or("?");
                self.tally.error(format!("{op}: {s} {code}"));
                false
            }
            Outcome::Unknown(why) => {
                self.tally.error(format!("{op}: {why}"));
                false
            }
        }
    }

    async fn status(&self, id: &str) -> Option<Option<String>> {
        match self
            .send(
                self.http.get(self.url(&format!("/v1/sandboxes/{id}"))),
                Duration::from_secs(30),
            )
            .await
        {
            Outcome::Answered(200, v) => {
                Some(Some(v["status"].as_str().unwrap_or_default().into()))
            }
            Outcome::Answered(404, _) => Some(None),
            _ => None,
        }
    }

    /// Lists the account's sandboxes; adopts those it does not know (a cut-short create or
    /// clone made them).
    async fn adopt(&mut self) {
        let Outcome::Answered(200, list) = self
            .send(
                self.http.get(self.url("/v1/sandboxes")),
                Duration::from_secs(30),
            )
            .await
        else {
            return;
        };
        for sb in list.as_array().into_iter().flatten() {
            let id = sb["id"].as_str().unwrap_or_default().to_string();
            if let std::collections::btree_map::Entry::Vacant(e) = self.sandboxes.entry(id) {
                e.insert(Sandbox {
                    contents: Vec::new(),
                    may_be_gone: false,
                    errored: false,
                });
                self.tally.alive.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn gone(&mut self, id: &str) {
        if self.sandboxes.remove(id).is_some_and(|sb| !sb.errored) {
            self.tally.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs random operations until `stop` is set.
    pub async fn run(&mut self, stop: Arc<AtomicBool>) {
        let mut rng = rand::rngs::StdRng::from_entropy();
        while !stop.load(Ordering::SeqCst) {
            let step = self.step(&mut rng).await;
            if !step {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One random operation; false when nothing could be done (wait a little).
    async fn step(&mut self, rng: &mut rand::rngs::StdRng) -> bool {
        let can_create = self.tally.alive.load(Ordering::SeqCst) < self.max_alive;
        let usable = self.sandboxes.values().filter(|sb| !sb.errored).count();
        if usable == 0 || (can_create && rng.gen_bool(0.15)) {
            if !can_create {
                return false;
            }
            let confirmed: Vec<String> = self
                .templates
                .iter()
                .filter(|(_, (_, cut))| !cut)
                .map(|(n, _)| n.clone())
                .collect();
            let template = if !confirmed.is_empty() && rng.gen_bool(0.4) {
                confirmed[rng.gen_range(0..confirmed.len())].clone()
            } else {
                "minimal".to_string()
            };
            self.create(rng, &template).await;
            return true;
        }
        let ids: Vec<String> = self
            .sandboxes
            .iter()
            .filter(|(_, sb)| !sb.errored)
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return false;
        }
        let id = ids[rng.gen_range(0..ids.len())].clone();
        let status = match self.status(&id).await {
            None => return false, // the daemon is restarting
            Some(None) => {
                if !self.sandboxes[&id].may_be_gone {
                    self.tally.lost(format!("{}: {id} is gone", self.name));
                }
                self.gone(&id);
                return true;
            }
            Some(Some(s)) => s,
        };
        match status.as_str() {
            "running" => match rng.gen_range(0..10) {
                0..=2 => self.check_file(rng, &id).await,
                3..=4 => self.write(rng, &id).await,
                5..=6 => self.lifecycle(rng, &id, "pause").await,
                7 => self.snapshot(rng, &id).await,
                _ => self.destroy(rng, &id).await,
            },
            "paused" => match rng.gen_range(0..4) {
                0..=2 => self.lifecycle(rng, &id, "resume").await,
                _ => self.destroy(rng, &id).await,
            },
            "error" => {
                self.tally.error("sandbox found in error".into());
                if let Some(sb) = self.sandboxes.get_mut(&id) {
                    sb.errored = true;
                }
                self.tally.alive.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            _ => return false, // an operation under way
        }
        true
    }

    async fn create(&mut self, rng: &mut rand::rngs::StdRng, template: &str) {
        let op = if template == "minimal" {
            "create"
        } else {
            "clone"
        };
        let out = self
            .send(
                self.http
                    .post(self.url("/v1/sandboxes"))
                    .json(&json!({"template": template, "memory_mb": MEMORY_MB})),
                Self::timeout(rng),
            )
            .await;
        if self.judge(op, &out, 201) {
            let Outcome::Answered(_, v) = out else { return };
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let contents = match self.templates.get(template) {
                Some((c, _)) => vec![c.clone()],
                None => Vec::new(),
            };
            self.sandboxes.insert(
                id.clone(),
                Sandbox {
                    contents,
                    may_be_gone: false,
                    errored: false,
                },
            );
            self.tally.alive.fetch_add(1, Ordering::SeqCst);
            if template == "minimal" {
                self.write(rng, &id).await;
            }
        } else if matches!(out, Outcome::Unknown(_)) {
            self.adopt().await;
        }
    }

    async fn check_file(&mut self, rng: &mut rand::rngs::StdRng, id: &str) {
        let body = json!({"cmd": "sh", "args": ["-c", format!("cat {FILE} 2>/dev/null; true")], "timeout_sec": 60});
        let out = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/sandboxes/{id}/exec")))
                    .json(&body),
                Self::timeout(rng),
            )
            .await;
        if !self.judge("exec", &out, 200) {
            return;
        }
        let Outcome::Answered(_, v) = out else { return };
        let got = v["stdout"].as_str().unwrap_or_default().to_string();
        let want = &self.sandboxes[id].contents;
        if !want.is_empty() && !want.contains(&got) {
            self.tally.lost(format!(
                "{}: {id} holds {got:?}, expected one of {want:?}",
                self.name
            ));
        }
    }

    async fn write(&mut self, rng: &mut rand::rngs::StdRng, id: &str) {
        let new = content(rng);
        let form = reqwest::multipart::Form::new().text("path", FILE).part(
            "file",
            reqwest::multipart::Part::bytes(new.clone().into_bytes()).file_name("soak.txt"),
        );
        let out = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/sandboxes/{id}/files/write")))
                    .multipart(form),
                Self::timeout(rng),
            )
            .await;
        let ok = self.judge("write", &out, 204);
        let Some(sb) = self.sandboxes.get_mut(id) else {
            return;
        };
        if ok {
            sb.contents = vec![new];
        } else if matches!(out, Outcome::Unknown(_)) && !sb.contents.is_empty() {
            // Either may be there, now or later.
            sb.contents.push(new);
        }
    }

    async fn lifecycle(&mut self, rng: &mut rand::rngs::StdRng, id: &str, op: &str) {
        let out = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/sandboxes/{id}/{op}"))),
                Self::timeout(rng),
            )
            .await;
        self.judge(op, &out, 200);
    }

    async fn destroy(&mut self, rng: &mut rand::rngs::StdRng, id: &str) {
        let out = self
            .send(
                self.http.delete(self.url(&format!("/v1/sandboxes/{id}"))),
                Self::timeout(rng),
            )
            .await;
        if self.judge("destroy", &out, 204) {
            self.gone(id);
        } else if matches!(out, Outcome::Unknown(_)) {
            if let Some(sb) = self.sandboxes.get_mut(id) {
                sb.may_be_gone = true;
            }
        }
    }

    async fn snapshot(&mut self, rng: &mut rand::rngs::StdRng, id: &str) {
        if self.templates.len() >= MAX_TEMPLATES {
            let name = self.templates.keys().next().cloned().unwrap_or_default();
            let out = self
                .send(
                    self.http.delete(self.url(&format!("/v1/snapshots/{name}"))),
                    Duration::from_secs(120),
                )
                .await;
            if self.judge("delete snapshot", &out, 204) || matches!(out, Outcome::Answered(404, _))
            {
                self.templates.remove(&name);
            }
            return;
        }
        let Some(content) = self.sandboxes[id]
            .contents
            .first()
            .cloned()
            .filter(|_| self.sandboxes[id].contents.len() == 1)
        else {
            return; // its content is not certain: not a template to check clones of
        };
        self.seq += 1;
        let name = format!("{}-s{}", self.name, self.seq);
        let body = json!({"sandbox_id": id, "name": name});
        let out = self
            .send(
                self.http.post(self.url("/v1/snapshots")).json(&body),
                Self::timeout(rng),
            )
            .await;
        if self.judge("snapshot", &out, 201) {
            self.templates.insert(name, (content, false));
            self.gone(id);
        } else if matches!(out, Outcome::Unknown(_)) {
            self.templates.insert(name, (content, true));
            if let Some(sb) = self.sandboxes.get_mut(id) {
                sb.may_be_gone = true;
            }
        }
    }

    /// After the run: settles the model against the API (cut-short destroys and snapshots that
    /// did or did not happen) and returns what each sandbox must hold. Sandboxes gone without
    /// a cut-short operation are recorded as lost.
    pub async fn expected(&mut self) -> HashMap<String, Expect> {
        self.adopt().await;
        let snapshots = match self
            .send(
                self.http.get(self.url("/v1/snapshots")),
                Duration::from_secs(60),
            )
            .await
        {
            Outcome::Answered(200, v) => v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        for (name, (_, cut)) in &self.templates {
            if !cut && !snapshots.contains(name) {
                self.tally
                    .lost(format!("{}: snapshot {name} is gone", self.name));
            }
        }
        let mut out = HashMap::new();
        for (id, sb) in self.sandboxes.clone() {
            match self.status(&id).await {
                Some(Some(_)) if !sb.contents.is_empty() => {
                    out.insert(
                        id,
                        Expect {
                            path: FILE.into(),
                            contents: sb.contents,
                        },
                    );
                }
                Some(None) if !sb.may_be_gone => {
                    self.tally.lost(format!("{}: {id} is gone", self.name));
                }
                _ => {}
            }
        }
        out
    }
}
