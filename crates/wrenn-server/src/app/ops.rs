//! Lifecycle operations that run to completion. An operation's body runs in a task of its
//! own that the request awaits, so a client that goes away (dropping the handler's future)
//! does not cut it short. This process runs one operation per sandbox at a time: a second
//! request for a sandbox waits for the running one, and a pause, resume or destroy that finds
//! the same operation under way joins it (it answers with that operation's result). Across
//! control planes the sandbox row's intent does the same job: [`App::claim`] records it
//! compare-and-set before the agent is called, and a row with another control plane's intent
//! is busy. It must not call agents itself; the bodies do.

use super::settle::Settled;
use super::App;
use crate::error::ApiError;
use crate::store::{self, Intent, Operation, SandboxRecord};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use wrenn_types::ids::{SandboxId, TeamId};

/// How often a claim re-reads a row that changed under it before giving up.
const CLAIM_ATTEMPTS: usize = 5;

/// One operation this process is running on a sandbox, as others wait for it.
#[derive(Clone)]
struct Flight {
    /// `None` for the reconciler's work.
    op: Option<Operation>,
    /// `Some(succeeded)` once it has ended.
    done: watch::Receiver<Option<bool>>,
}

impl Flight {
    /// Waits for the end; whether it succeeded (a panic is a failure).
    async fn finished(mut self) -> bool {
        match self.done.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }
}

type Flights = Arc<Mutex<HashMap<String, Flight>>>;

/// The operations this process is running, by sandbox id.
#[derive(Default)]
pub(super) struct Ops {
    running: Flights,
}

/// This process's turn on one sandbox: while it lives no other operation of this process
/// runs on the sandbox. Dropping it (at the end of the task, or in a panic) ends the turn and
/// wakes those waiting.
pub(super) struct Turn {
    running: Flights,
    id: String,
    done: watch::Sender<Option<bool>>,
    ok: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.done.send_replace(Some(self.ok));
    }
}

impl Ops {
    /// Takes the sandbox's turn, or returns the operation holding it.
    fn try_begin(&self, id: &str, op: Option<Operation>) -> Result<Turn, Flight> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = running.get(id) {
            return Err(f.clone());
        }
        let (done, rx) = watch::channel(None);
        running.insert(id.to_string(), Flight { op, done: rx });
        Ok(Turn {
            running: self.running.clone(),
            id: id.to_string(),
            done,
            ok: false,
        })
    }
}

/// What a request got from [`App::run_op`].
pub(super) enum Ran<T> {
    /// Its own operation ran; its result.
    Done(T),
    /// It joined the same operation, started by another request, which succeeded.
    Joined,
}

/// Whether a second request of the same operation joins the first (a create and a snapshot
/// are each their own: a second snapshot of a sandbox is not the first).
fn joinable(op: Operation) -> bool {
    matches!(
        op,
        Operation::Pausing | Operation::Resuming | Operation::Destroying
    )
}

/// Runs `fut` holding `turn`, in a task of its own; a panic is an internal error.
async fn spawn_with<T, Fut>(turn: Turn, id: &str, fut: Fut) -> Result<T, ApiError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let mut turn = turn;
        let out = fut.await;
        turn.ok = out.is_ok();
        out
    });
    match task.await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(sandbox = %id, error = %e, "sandbox operation task failed");
            Err(ApiError::Internal(format!("operation on {id} failed")))
        }
    }
}

impl App {
    /// Runs `body` as operation `op` on sandbox `id` to completion, whatever happens to the
    /// caller: waits for any operation this process is running on the sandbox, then either
    /// joins it (same joinable operation, succeeded) or runs `body` in a task of its own.
    pub(super) async fn run_op<T, F, Fut>(
        self: &Arc<Self>,
        id: &str,
        op: Operation,
        body: F,
    ) -> Result<Ran<T>, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<App>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        loop {
            match self.ops.try_begin(id, Some(op)) {
                Ok(turn) => {
                    return spawn_with(turn, id, body(self.clone()))
                        .await
                        .map(Ran::Done)
                }
                Err(flight) => {
                    let same = flight.op == Some(op);
                    if flight.finished().await && same && joinable(op) {
                        return Ok(Ran::Joined);
                    }
                }
            }
        }
    }

    /// Runs `body` on sandbox `id` to completion in a task of its own if this process is
    /// running nothing on it; `None` (nothing run) if it is. For the reaper and reconciler,
    /// which pass a busy sandbox by.
    pub(super) async fn try_run<T, F, Fut>(
        self: &Arc<Self>,
        id: &str,
        op: Option<Operation>,
        body: F,
    ) -> Option<Result<T, ApiError>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<App>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let turn = self.ops.try_begin(id, op).ok()?;
        Some(spawn_with(turn, id, body(self.clone())).await)
    }

    /// Writes the row compare-and-set; bumps `sb.version` when it was written.
    pub(super) async fn save(&self, sb: &mut SandboxRecord) -> Result<bool, ApiError> {
        let written = self.store.update_sandbox(sb).await?;
        if written {
            sb.version += 1;
        }
        Ok(written)
    }

    /// [`App::save`], where a row changed by someone else is a conflict.
    pub(super) async fn record(&self, mut sb: SandboxRecord) -> Result<SandboxRecord, ApiError> {
        if self.save(&mut sb).await? {
            Ok(sb)
        } else {
            Err(changed(&sb.id))
        }
    }

    /// An intent of this control plane for `op`, starting now.
    pub(super) fn intent(&self, op: Operation) -> Intent {
        Intent {
            op,
            owner: self.instance.clone(),
            since: store::now(),
        }
    }

    /// Whether an intent found while holding the sandbox's turn was abandoned: its operation
    /// ended without recording a result (this process's, or any when the database has one
    /// control plane), or it is older than `op_stale_after`.
    pub(super) fn abandoned(&self, intent: &Intent) -> bool {
        let stale = chrono::Duration::from_std(self.cfg.op_stale_after)
            .is_ok_and(|d| store::now() - intent.since > d);
        intent.owner == self.instance || self.store.single_writer() || stale
    }

    /// Records `op` as the sandbox's intent (holding its turn), if `allowed` accepts the row.
    /// An abandoned intent is settled first, except by a destroy, which takes it over. Another
    /// control plane's operation under way is 409 (as `allowed` words it, else `conflict`).
    pub(super) async fn claim(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        op: Operation,
        allowed: impl Fn(&SandboxRecord) -> Result<(), ApiError>,
    ) -> Result<SandboxRecord, ApiError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let mut sb = self
                .store
                .get_sandbox(team_id.as_str(), id.as_str())
                .await?
                .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))?;
            if let Some(intent) = &sb.intent {
                if !self.abandoned(intent) {
                    allowed(&sb)?;
                    return Err(busy(&sb));
                }
                if op != Operation::Destroying {
                    let seen = busy(&sb);
                    match self.settle(sb).await? {
                        // The agent is still at it: busy until it is done.
                        Settled::Pending => return Err(seen),
                        Settled::Recorded | Settled::Removed => continue,
                    }
                }
            } else {
                allowed(&sb)?;
            }
            sb.intent = Some(self.intent(op));
            sb.last_updated = store::now();
            // A resume brings a sandbox back into the team's running quotas: admitted.
            let written = if op == Operation::Resuming {
                self.store
                    .update_sandbox_within(&sb, &self.cfg.quotas)
                    .await?
            } else {
                self.store.update_sandbox(&sb).await?
            };
            if written {
                sb.version += 1;
                return Ok(sb);
            }
        }
        Err(changed(id.as_str()))
    }

    /// Clears the intent of an operation that gave up before calling the agent.
    pub(super) async fn release(&self, mut sb: SandboxRecord) {
        sb.intent = None;
        sb.last_updated = store::now();
        match self.save(&mut sb).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(sandbox = %sb.id, "sandbox changed while releasing it"),
            Err(e) => tracing::warn!(sandbox = %sb.id, error = %e,
                "releasing a sandbox failed; the reconciler will settle it"),
        }
    }

    /// A request that needs `sb` at rest (an exec, a transfer) found an intent on it: if no
    /// operation of this process holds the sandbox and the intent was abandoned (a crashed
    /// process's, see [`App::abandoned`]), it is settled now; returns the row as it is after.
    pub(super) async fn settle_if_abandoned(
        &self,
        sb: SandboxRecord,
    ) -> Result<SandboxRecord, ApiError> {
        if sb.intent.is_none() {
            return Ok(sb);
        }
        let Ok(_turn) = self.ops.try_begin(&sb.id, None) else {
            return Ok(sb); // under way here: not abandoned
        };
        let Some(now) = self.store.get_sandbox(&sb.team_id, &sb.id).await? else {
            return Err(ApiError::SandboxNotFound(sb.id));
        };
        match &now.intent {
            Some(intent) if self.abandoned(intent) => {
                self.settle(now).await?;
                self.store
                    .get_sandbox(&sb.team_id, &sb.id)
                    .await?
                    .ok_or(ApiError::SandboxNotFound(sb.id))
            }
            _ => Ok(now),
        }
    }

    /// After an agent call failed: brings the record to what the agent says, or leaves the
    /// intent for the reconciler when that cannot be learnt now.
    pub(super) async fn settle_after_failure(&self, sb: SandboxRecord) {
        let id = sb.id.clone();
        if let Err(e) = self.settle(sb).await {
            tracing::warn!(sandbox = %id, error = %e,
                "settling a failed operation failed; the reconciler will");
        }
    }
}

/// The sandbox's row changed while an operation was writing it.
fn changed(id: &str) -> ApiError {
    ApiError::Conflict(format!("sandbox {id} changed meanwhile; try again"))
}

/// Another control plane's operation is under way on the sandbox.
fn busy(sb: &SandboxRecord) -> ApiError {
    ApiError::Conflict(format!(
        "sandbox {} is {}; try again when that is done",
        sb.id,
        sb.state_word()
    ))
}
