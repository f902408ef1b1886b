//! Fault suite of the whole system: a real `wrenn up` (control plane and agent in one process,
//! SQLite, real microVMs) is started with `WRENN_FAILPOINTS=<point>=kill` for chosen steps of
//! create, pause, resume, snapshot and destroy (the control plane's points and the agent's
//! `agent.*` ones), the operation is requested, the process dies at that step with SIGKILL, it
//! is started again without failure points, and then the invariants of
//! `wrenn_soak::invariants` must hold: every listed sandbox usable (its file there) or in
//! `error` with its files kept, nothing that no record owns (QEMU, sandbox directory, VM,
//! template, network namespace), and the database and the agent agree. Separately, a client
//! that drops each operation mid-request must find it finished.
//!
//! One or two sandboxes are carried through the steps (guests run under TCG). Needs root and
//! the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`). Slots 9900-9949, prefix `sf`.
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test faults_e2e`.

mod machine;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use wrenn_soak::invariants::{self, Expect, Findings, Target};
use wrenn_soak::up::Up;

const PREFIX: &str = "sf";
const FIRST_SLOT: u32 = 9900;
/// The file every sandbox carries.
const FILE: &str = "/root/kept";
/// How long the system may take to settle after a restart (orphans wait for the
/// reconciler's grace, 60 s, so this is only reached when something is wrong).
const SETTLE: Duration = Duration::from_secs(90);

/// The daemon under test, its account, and what each live sandbox must hold.
struct Run {
    up: Up,
    key: String,
    http: reqwest::Client,
    expected: HashMap<String, Expect>,
    /// Snapshot name → the file content it was taken with.
    templates: HashMap<String, String>,
    writes: u32,
    started: Instant,
}

impl Run {
    fn target(&self) -> Target {
        Target::new(
            &self.up.base(),
            &self.up.agent_url(),
            &self.up.data_dir,
            PREFIX,
            vec![self.key.clone()],
        )
        .expect("target")
    }

    fn say(&self, what: &str) {
        eprintln!("[{:>6.1?}] {what}", self.started.elapsed());
    }

    /// A request that may never be answered (the daemon dies, or the client gives up).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Option<(u16, Value)> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.up.base()))
            .header("X-API-Key", &self.key)
            .timeout(timeout);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.ok()?;
        let status = r.status().as_u16();
        let text = r.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A request that must be answered with `want`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (s, v) = self
            .send(method.clone(), path, body, Duration::from_secs(300))
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    async fn list(&self) -> Vec<Value> {
        let v = self
            .call(reqwest::Method::GET, "/v1/sandboxes", None, 200)
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn status(&self, id: &str) -> Option<String> {
        let (s, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}"),
                None,
                Duration::from_secs(30),
            )
            .await?;
        (s == 200).then(|| v["status"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let got = self.status(id).await;
            if got.as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{id} is {got:?}, not {want}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Writes a new content to the sandbox's file and expects it.
    async fn write(&mut self, id: &str) {
        self.writes += 1;
        let content = format!("write-{}-{:08x}", self.writes, rand::random::<u32>());
        let target = self.target();
        invariants::exec(
            &target,
            &self.key,
            id,
            &format!("printf %s {content} > {FILE} && sync"),
        )
        .await
        .expect("write the file");
        self.expected.insert(
            id.to_string(),
            Expect {
                path: FILE.into(),
                contents: vec![content],
            },
        );
    }

    /// A new running sandbox from `template`: a clone of a snapshot holds the snapshot's
    /// file, a new one from a base template gets a fresh file.
    async fn create(&mut self, template: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/sandboxes",
                Some(json!({"template": template})),
                201,
            )
            .await;
        let id = v["id"].as_str().expect("id").to_string();
        if template == "minimal" {
            self.write(&id).await;
        }
        id
    }

    /// Checks every invariant; panics with the findings when one fails.
    async fn check(&self, after: &str) -> Findings {
        let f = invariants::check(&self.target(), &self.expected, SETTLE).await;
        self.say(&format!("after {after}: {f}"));
        assert!(f.ok(), "after {after}: {f}");
        f
    }

    /// Restarts the daemon with `point=kill`, requests the operation, expects the daemon to die
    /// at that point, starts it again without failure points and checks the invariants.
    async fn kill_at(
        &mut self,
        point: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Findings {
        self.up
            .signal(nix::sys::signal::Signal::SIGTERM)
            .await
            .expect("stop");
        self.up
            .start(&format!("{point}={}", "kill"))
            .await
            .expect("start armed");
        let answer = self
            .send(method.clone(), path, body, Duration::from_secs(300))
            .await;
        let died = self.up.wait_exit(Duration::from_secs(60)).await;
        assert!(
            died.is_ok(),
            "{point}: wrenn up did not die ({method} {path} answered {answer:?})"
        );
        let took = self.up.start("").await.expect("restart");
        self.say(&format!("killed at {point}; restarted in {took:?}"));
        self.check(point).await
    }

    /// A sandbox that is running with its file: one already expected, or a new one.
    async fn live(&mut self) -> String {
        for (id, _) in self.expected.clone() {
            if self.status(&id).await.as_deref() == Some("running") {
                return id;
            }
        }
        self.create("minimal").await
    }

    /// After an operation that may have consumed `id` (snapshot, destroy): forget it when the
    /// API no longer lists it.
    async fn forget_if_gone(&mut self, id: &str) {
        if self.status(id).await.is_none() {
            self.expected.remove(id);
        }
    }

    /// The snapshot names of the account.
    async fn snapshots(&self) -> Vec<String> {
        let v = self
            .call(reqwest::Method::GET, "/v1/snapshots", None, 200)
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["type"] == "snapshot")
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Kills a snapshot of a live sandbox at `point`; the sandbox either stays (usable) or
    /// became the snapshot, whose clone must hold the sandbox's file.
    async fn snapshot_killed_at(&mut self, point: &str) {
        let id = self.live().await;
        let name = format!("snap-{}", point.replace('.', "-"));
        let content = self.expected[&id].contents[0].clone();
        // The sandbox may turn into the template: expected by name from here on.
        let kept = self.expected.remove(&id).expect("expected");
        self.kill_at(
            point,
            reqwest::Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": id, "name": name})),
        )
        .await;
        if self.snapshots().await.contains(&name) {
            assert!(
                self.status(&id).await.is_none(),
                "{point}: snapshot {name} made and {id} still there"
            );
            self.templates.insert(name, content);
        } else {
            let status = self.status(&id).await;
            assert!(
                status.is_some(),
                "{point}: {id} gone without its snapshot {name}"
            );
            self.expected.insert(id, kept);
        }
    }
}

fn post() -> reqwest::Method {
    reqwest::Method::POST
}

#[test]
fn a_killed_or_abandoned_operation_loses_no_sandbox_and_leaves_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut up = Up::prepare(
            std::path::Path::new(env!("CARGO_BIN_EXE_wrenn")),
            "e2e/faults-sf",
            PREFIX,
            FIRST_SLOT,
        )
        .expect("prepare");
        let started = Instant::now();
        let took = up.start("").await.expect("first start");
        eprintln!("[numbers] wrenn up ready after {took:?}");
        let key = up.account("faults").await.expect("account");
        let mut run = Run {
            up,
            key,
            http: reqwest::Client::new(),
            expected: HashMap::new(),
            templates: HashMap::new(),
            writes: 0,
            started,
        };

        // Clients that drop each operation mid-request: it finishes anyway.
        let before = run.list().await.len();
        run.send(
            post(),
            "/v1/sandboxes",
            Some(json!({"template": "minimal"})),
            Duration::from_millis(20),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(240);
        let a = loop {
            let list = run.list().await;
            if list.len() > before {
                break list[0]["id"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned create never appeared"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        run.wait_status(&a, "running").await;
        run.write(&a).await;
        for (op, then) in [("pause", "paused"), ("resume", "running")] {
            run.send(
                post(),
                &format!("/v1/sandboxes/{a}/{op}"),
                None,
                Duration::from_millis(20),
            )
            .await;
            run.wait_status(&a, then).await;
        }
        run.check("dropped create, pause and resume").await;

        // Create: before the agent is called, while the agent makes the sandbox (listed, files
        // made), after the guest runs, and after the agent answered.
        for point in [
            "create.before_agent",
            "agent.create.after_register",
            "agent.create.after_files",
            "agent.create.after_start",
            "create.after_agent",
        ] {
            run.kill_at(
                point,
                post(),
                "/v1/sandboxes",
                Some(json!({"template": "minimal"})),
            )
            .await;
        }

        // Pause: each step between the intent and the result (every point of the step).
        for point in [
            "pause.before_agent",
            "agent.pause.after_intent",
            "agent.pause.after_save",
            "agent.pause.after_stop",
            "agent.pause.after_record",
            "pause.after_agent",
        ] {
            let id = run.live().await;
            run.kill_at(point, post(), &format!("/v1/sandboxes/{id}/pause"), None)
                .await;
        }

        // Resume: before the agent, before the guest runs, after it runs, after the agent
        // answered.
        for point in [
            "resume.before_agent",
            "agent.resume.after_intent",
            "agent.resume.after_load",
            "agent.resume.after_cont",
            "resume.after_agent",
        ] {
            let id = run.live().await;
            run.call(post(), &format!("/v1/sandboxes/{id}/pause"), None, 200)
                .await;
            run.kill_at(point, post(), &format!("/v1/sandboxes/{id}/resume"), None)
                .await;
        }

        // Snapshot: the sandbox stays, or it becomes the template; a clone of each template
        // holds the sandbox's file.
        for point in [
            "snapshot.before_agent",
            "agent.snapshot.after_intent",
            "agent.snapshot.after_publish",
            "snapshot.after_agent",
        ] {
            run.snapshot_killed_at(point).await;
        }
        for (name, content) in run.templates.clone() {
            let clone = run.create(&name).await;
            let got = invariants::exec(&run.target(), &run.key, &clone, &format!("cat {FILE}"))
                .await
                .expect("read the clone's file");
            assert_eq!(got, content, "clone of {name}");
            run.call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{clone}"),
                None,
                204,
            )
            .await;
        }

        // Destroy: before the agent, before and after the VM is killed, after the agent
        // answered.
        for point in [
            "destroy.before_agent",
            "agent.destroy.after_intent",
            "agent.destroy.after_kill",
            "destroy.after_agent",
        ] {
            let id = run.live().await;
            run.expected.remove(&id);
            run.kill_at(
                point,
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
            )
            .await;
            run.forget_if_gone(&id).await;
        }

        // A dropped snapshot and a dropped destroy finish too.
        let id = run.live().await;
        let content = run.expected.remove(&id).unwrap().contents[0].clone();
        run.send(
            post(),
            "/v1/snapshots",
            Some(json!({"sandbox_id": id, "name": "dropped"})),
            Duration::from_millis(20),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(240);
        while !run.snapshots().await.contains(&"dropped".to_string()) {
            assert!(
                Instant::now() < deadline,
                "the abandoned snapshot never appeared"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        run.templates.insert("dropped".into(), content);
        let id = run.live().await;
        run.expected.remove(&id);
        run.send(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
            Duration::from_millis(20),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while run.status(&id).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "the abandoned destroy never finished"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        run.check("dropped snapshot and destroy").await;

        // Teardown: everything destroyed through the API, a clean stop leaves nothing.
        for sb in run.list().await {
            let id = sb["id"].as_str().unwrap().to_string();
            run.call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
                204,
            )
            .await;
        }
        for name in run.snapshots().await {
            run.call(
                reqwest::Method::DELETE,
                &format!("/v1/snapshots/{name}"),
                None,
                204,
            )
            .await;
        }
        run.expected.clear();
        run.check("destroying everything").await;
        run.up
            .signal(nix::sys::signal::Signal::SIGTERM)
            .await
            .expect("stop");
        let left = wrenn_soak::up::processes_of(&run.up.data_dir);
        assert!(left.is_empty(), "processes left: {left:?}");
        let ns = invariants::namespaces_of(PREFIX);
        assert!(ns.is_empty(), "network namespaces left: {ns:?}");
        let links = invariants::links_of(PREFIX);
        assert!(links.is_empty(), "host links left: {links:?}");
        machine::assert_no_vm_files(&run.up.data_dir);
        eprintln!("[numbers] fault suite took {:?}", run.started.elapsed());
        let _ = std::fs::remove_dir_all(&run.up.data_dir);
    });
}
