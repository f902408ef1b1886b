//! The team's lifecycle events (`GET /v1/events/stream`): [`Events`], a hub of subscribers
//! keyed by team, and [`App::announce`], which the lifecycle operations call once each when
//! they end (create, pause, resume, destroy; snapshots taken and deleted), and
//! [`App::announce_state_change`], which the reconciler calls when it takes a host's word.
//!
//! Each subscriber has its own queue of [`QUEUE`] frames; an event goes only to the
//! subscribers of its team. A subscriber whose queue is full is dropped (its stream ends),
//! so a slow reader never holds up an operation or the other readers; a team has at most
//! [`MAX_PER_TEAM`] subscribers and the control plane [`MAX_SUBSCRIBERS`]. Events are not
//! stored: a subscriber sees what happens while it is connected, starting with `connected`.

use super::{ts, App};
use crate::error::ApiError;
use crate::store::{self, SandboxRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use wrenn_types::agent::SandboxStatus;
use wrenn_types::capsule::{status as capsule_status, Capsule};
use wrenn_types::ids::TeamId;
use wrenn_types::observe::{event, Event, EventActor, EventResource};

/// Frames a subscriber may have waiting before it is dropped.
pub const QUEUE: usize = 256;
/// Subscribers one team may have at once.
pub const MAX_PER_TEAM: usize = 16;
/// Subscribers of all teams at once: at most this, and at most a quarter of the server's
/// connection limit (a stream holds its connection), so streams never take every connection.
pub const MAX_SUBSCRIBERS: usize = 4096;

/// One message of the stream: its `event:` name and its JSON `data:`.
#[derive(Debug)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

impl Frame {
    fn of(e: &Event) -> Arc<Frame> {
        Arc::new(Frame {
            event: e.event.clone(),
            // Serialising plain strings and maps cannot fail.
            data: serde_json::to_string(e).unwrap_or_else(|_| "{}".into()),
        })
    }
}

/// The subscribers of every team.
#[derive(Default)]
pub struct Events {
    teams: Mutex<HashMap<String, Vec<mpsc::Sender<Arc<Frame>>>>>,
}

impl Events {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<mpsc::Sender<Arc<Frame>>>>> {
        self.teams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscriber of `team_id`, its queue starting with `connected`; `429` when the
    /// team has [`MAX_PER_TEAM`] or all teams `max_total`.
    pub fn subscribe(
        &self,
        team_id: &str,
        max_total: usize,
    ) -> Result<mpsc::Receiver<Arc<Frame>>, ApiError> {
        let mut teams = self.map();
        // Readers that went away are only noticed here and when an event is sent.
        teams.retain(|_, subs| {
            subs.retain(|s| !s.is_closed());
            !subs.is_empty()
        });
        let total: usize = teams.values().map(Vec::len).sum();
        let team = teams.get(team_id).map_or(0, Vec::len);
        if team >= MAX_PER_TEAM || total >= max_total {
            return Err(ApiError::RateLimited(std::time::Duration::from_secs(5)));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let hello = Event {
            event: event::CONNECTED.into(),
            outcome: None,
            resource: None,
            actor: None,
            metadata: BTreeMap::new(),
            error: None,
            sandbox: None,
            timestamp: ts(store::now()),
        };
        // A new queue has room.
        let _ = tx.try_send(Frame::of(&hello));
        teams.entry(team_id.to_string()).or_default().push(tx);
        Ok(rx)
    }

    /// Sends `e` to every subscriber of `team_id`; one whose queue is full is dropped.
    pub fn publish(&self, team_id: &str, e: &Event) {
        let mut teams = self.map();
        let Some(subs) = teams.get_mut(team_id) else {
            return;
        };
        let frame = Frame::of(e);
        subs.retain(|s| match s.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(team = %team_id, "dropped an events subscriber that fell behind");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if subs.is_empty() {
            teams.remove(team_id);
        }
    }

    /// How many subscribers `team_id` has.
    #[cfg(test)]
    fn subscribers(&self, team_id: &str) -> usize {
        self.map()
            .get(team_id)
            .map_or(0, |s| s.iter().filter(|s| !s.is_closed()).count())
    }
}

/// Who started an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A request authenticated by the team's API key.
    ApiKey,
    /// The control plane itself (the idle reaper).
    System,
}

/// What an operation's result says about its sandbox, if it still has one.
pub trait Announced {
    fn record(&self) -> Option<&SandboxRecord>;
}

impl Announced for SandboxRecord {
    fn record(&self) -> Option<&SandboxRecord> {
        Some(self)
    }
}

impl Announced for () {
    fn record(&self) -> Option<&SandboxRecord> {
        None
    }
}

impl Announced for crate::store::TemplateRecord {
    fn record(&self) -> Option<&SandboxRecord> {
        None
    }
}

/// An event without metadata.
pub(crate) fn no_meta() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The capsule of an event: the record as `/v1/capsules` shows it (without its labels),
/// while it is in a state the SDK knows (none once it is stopped or in error).
fn capsule_of(s: &SandboxRecord) -> Option<Capsule> {
    let status = super::capsules::capsule_status(s);
    if status == capsule_status::STOPPED || status == capsule_status::ERROR {
        return None;
    }
    Some(super::capsules::capsule_view(s, None))
}

/// What a tenant may read of a failure: the message of a refusal of the request, only the
/// code of a server-side or host agent failure (whose detail is only logged).
fn tenant_error(e: &ApiError) -> String {
    let code = e.code();
    // An agent's own words may name its addresses and paths, whatever the status.
    if code.status().is_server_error() || matches!(e, ApiError::Agent(_)) {
        // The code's wire name, e.g. `agent_error`.
        serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "internal_error".into())
    } else {
        e.to_string()
    }
}

impl App {
    /// A new subscriber of the team's events (see [`MAX_SUBSCRIBERS`]).
    pub fn subscribe_events(
        &self,
        team_id: &TeamId,
    ) -> Result<mpsc::Receiver<Arc<Frame>>, ApiError> {
        let max_total = MAX_SUBSCRIBERS.min(self.cfg.max_connections / 4).max(1);
        self.events.subscribe(team_id.as_str(), max_total)
    }

    /// Tells the subscribers of `team_id` that the operation `name` (one of
    /// [`event`]'s) on `resource` (`capsule` or `template` `id`) ended with `result`.
    /// A lookup that found nothing (`404`) is not an event.
    pub(crate) fn announce<T: Announced>(
        &self,
        name: &'static str,
        team_id: &str,
        resource: (&'static str, &str),
        actor: Actor,
        metadata: BTreeMap<String, String>,
        result: &Result<T, ApiError>,
    ) {
        if let Err(e) = result {
            if e.code().status() == axum::http::StatusCode::NOT_FOUND {
                return;
            }
        }
        let (outcome, error, sandbox) = match result {
            Ok(v) => ("success", None, v.record().and_then(capsule_of)),
            Err(e) => ("error", Some(tenant_error(e)), None),
        };
        let actor = match actor {
            Actor::ApiKey => "api_key",
            Actor::System => "system",
        };
        let e = Event {
            event: name.into(),
            outcome: Some(outcome.into()),
            resource: Some(EventResource {
                id: resource.1.into(),
                kind: resource.0.into(),
            }),
            actor: Some(EventActor {
                kind: actor.into(),
                id: None,
                name: None,
            }),
            metadata,
            error,
            sandbox,
            timestamp: ts(store::now()),
        };
        self.events.publish(team_id, &e);
    }
}

impl App {
    /// Tells the team's subscribers that the reconciler took the host's word for a sandbox
    /// (`capsule.state.changed`, actor `system`): `from` its recorded status to `rec`'s, with
    /// `reason` `host_failure` when it is now in error and `reconciled` otherwise.
    pub(crate) fn announce_state_change(&self, from: SandboxStatus, rec: &SandboxRecord) {
        let reason = if rec.status == SandboxStatus::Error {
            "host_failure"
        } else {
            "reconciled"
        };
        let metadata = BTreeMap::from([
            ("from".to_string(), from.as_str().to_string()),
            ("to".to_string(), rec.status.as_str().to_string()),
            ("reason".to_string(), reason.to_string()),
        ]);
        let e = Event {
            event: event::CAPSULE_STATE_CHANGED.into(),
            outcome: None,
            resource: Some(EventResource {
                id: rec.id.clone(),
                kind: "capsule".into(),
            }),
            actor: Some(EventActor {
                kind: "system".into(),
                id: None,
                name: None,
            }),
            metadata,
            error: None,
            sandbox: capsule_of(rec),
            timestamp: ts(store::now()),
        };
        self.events.publish(&rec.team_id, &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> Event {
        Event {
            event: name.into(),
            outcome: Some("success".into()),
            resource: None,
            actor: None,
            metadata: BTreeMap::new(),
            error: None,
            sandbox: None,
            timestamp: "t".into(),
        }
    }

    #[test]
    fn events_reach_their_team_only() {
        let hub = Events::default();
        let mut a = hub.subscribe("team-a", MAX_SUBSCRIBERS).unwrap();
        let mut b = hub.subscribe("team-b", MAX_SUBSCRIBERS).unwrap();
        assert_eq!(a.try_recv().unwrap().event, "connected");
        assert_eq!(b.try_recv().unwrap().event, "connected");
        hub.publish("team-a", &ev("capsule.create"));
        assert_eq!(a.try_recv().unwrap().event, "capsule.create");
        assert!(b.try_recv().is_err());
    }

    #[test]
    fn a_slow_reader_is_dropped_and_the_others_keep_theirs() {
        let hub = Events::default();
        let mut slow = hub.subscribe("t", MAX_SUBSCRIBERS).unwrap();
        let mut quick = hub.subscribe("t", MAX_SUBSCRIBERS).unwrap();
        for i in 0..QUEUE + 5 {
            hub.publish("t", &ev("capsule.pause"));
            while quick.try_recv().is_ok() {}
            assert!(i < QUEUE || hub.subscribers("t") == 1);
        }
        assert_eq!(hub.subscribers("t"), 1);
        // The dropped reader gets what was queued, then its stream ends.
        let mut n = 0;
        while slow.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, QUEUE);
        assert!(matches!(
            slow.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_failure_tells_the_tenant_its_kind_never_the_detail() {
        let internal = ApiError::Internal("db at /var/lib/wrenn/wrenn.db is locked".into());
        assert_eq!(tenant_error(&internal), "internal_error");
        let agent = ApiError::Agent(crate::agent::AgentApiError::Transport(
            "connect 10.0.0.7:7070 refused".into(),
        ));
        assert_eq!(tenant_error(&agent), "agent_error");
        let refused = ApiError::Agent(crate::agent::AgentApiError::new(
            wrenn_types::agent::AgentErrorCode::Conflict,
            "sandbox dir /var/lib/wrenn/sandboxes/sb-1 busy",
        ));
        assert!(
            !tenant_error(&refused).contains("/var"),
            "{}",
            tenant_error(&refused)
        );
        let conflict = ApiError::Conflict("the sandbox changed meanwhile".into());
        assert_eq!(tenant_error(&conflict), "the sandbox changed meanwhile");
    }

    #[test]
    fn subscribers_per_team_are_capped_and_freed_when_gone() {
        let hub = Events::default();
        let mut held: Vec<_> = (0..MAX_PER_TEAM)
            .map(|_| hub.subscribe("t", MAX_SUBSCRIBERS).unwrap())
            .collect();
        assert!(matches!(
            hub.subscribe("t", MAX_SUBSCRIBERS),
            Err(ApiError::RateLimited(_))
        ));
        // Another team is not affected.
        assert!(hub.subscribe("u", MAX_SUBSCRIBERS).is_ok());
        held.pop();
        assert!(hub.subscribe("t", MAX_SUBSCRIBERS).is_ok());
        // The limit of all teams holds too.
        let hub = Events::default();
        let _a = hub.subscribe("a", 2).unwrap();
        let _b = hub.subscribe("b", 2).unwrap();
        assert!(matches!(
            hub.subscribe("c", 2),
            Err(ApiError::RateLimited(_))
        ));
    }
}
