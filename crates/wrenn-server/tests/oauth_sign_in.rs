//! The account upsert behind the OAuth callback ([`sign_in`]) against the real SQLite and
//! PostgreSQL stores, with the registration race forced: a store wrapper holds every racer's
//! insert until all of them have looked up the identity and the email and found nothing, so
//! all but one insert hit a unique key and must retry as a login.

mod support;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wrenn_server::auth::oauth::{sign_in, CallbackError, Profile};
use wrenn_server::config::Quotas;
use wrenn_server::store::{
    self, ApiKeyRecord, HostCapacity, HostRecord, HostStatus, NewAccount, SandboxRecord,
    SnapshotReservation, Store, StoreError, TeamRecord, TemplateRecord, UserRecord,
};

const RACERS: usize = 8;

/// Delegates to a real store; the first `gate` calls of `create_oauth_account` wait until
/// all of them have arrived, then go to the database together.
struct GatedStore {
    inner: Arc<dyn Store>,
    gate: tokio::sync::Barrier,
    gated: usize,
    creates: AtomicUsize,
    duplicates: AtomicUsize,
}

#[async_trait]
impl Store for GatedStore {
    async fn create_account(&self, a: &NewAccount) -> Result<(), StoreError> {
        self.inner.create_account(a).await
    }
    async fn create_oauth_account(
        &self,
        a: &NewAccount,
        provider: &str,
        provider_user_id: &str,
    ) -> Result<(), StoreError> {
        if self.creates.fetch_add(1, Ordering::SeqCst) < self.gated {
            self.gate.wait().await;
        }
        let r = self
            .inner
            .create_oauth_account(a, provider, provider_user_id)
            .await;
        if matches!(r, Err(StoreError::Duplicate)) {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user_by_email(email).await
    }
    async fn put_sandbox_metadata(&self, id: &str, json: &str) -> Result<(), StoreError> {
        self.inner.put_sandbox_metadata(id, json).await
    }
    async fn sandbox_metadata(
        &self,
        team_id: &str,
        id: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.sandbox_metadata(team_id, id).await
    }
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user_by_id(id).await
    }
    async fn user_by_oauth(
        &self,
        provider: &str,
        provider_user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user_by_oauth(provider, provider_user_id).await
    }
    async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreError> {
        self.inner.team(id).await
    }
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.insert_api_key(key).await
    }
    async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_api_keys(team_id).await
    }
    async fn delete_api_key(&self, team_id: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_api_key(team_id, id).await
    }
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.api_key_by_hash(key_hash).await
    }
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.touch_api_key(id, at).await
    }
    async fn upsert_host(&self, host: &HostRecord) -> Result<HostRecord, StoreError> {
        self.inner.upsert_host(host).await
    }
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.inner.list_hosts().await
    }
    async fn insert_join_token(
        &self,
        token: &wrenn_server::store::JoinTokenRecord,
    ) -> Result<(), StoreError> {
        self.inner.insert_join_token(token).await
    }
    async fn list_join_tokens(
        &self,
    ) -> Result<Vec<wrenn_server::store::JoinTokenRecord>, StoreError> {
        self.inner.list_join_tokens().await
    }
    async fn spend_join_token(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<wrenn_server::store::JoinTokenSpend, StoreError> {
        self.inner.spend_join_token(token_hash, at).await
    }
    async fn record_joined_host(
        &self,
        rotated: Option<&str>,
        new_id: &str,
        url: &str,
        cert_sha256: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        self.inner
            .record_joined_host(rotated, new_id, url, cert_sha256, at)
            .await
    }
    async fn update_host_health(
        &self,
        id: &str,
        status: HostStatus,
        capacity: Option<HostCapacity>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner
            .update_host_health(id, status, capacity, at)
            .await
    }
    async fn set_host_draining(&self, id: &str, draining: bool) -> Result<bool, StoreError> {
        self.inner.set_host_draining(id, draining).await
    }
    async fn remove_host(
        &self,
        id: &str,
        force: bool,
    ) -> Result<wrenn_server::store::RemovedHost, StoreError> {
        self.inner.remove_host(id, force).await
    }
    async fn insert_sandbox(&self, sb: &SandboxRecord) -> Result<(), StoreError> {
        self.inner.insert_sandbox(sb).await
    }
    async fn insert_sandbox_within(
        &self,
        sb: &SandboxRecord,
        q: &Quotas,
    ) -> Result<(), StoreError> {
        self.inner.insert_sandbox_within(sb, q).await
    }
    async fn update_sandbox_within(
        &self,
        sb: &SandboxRecord,
        q: &Quotas,
    ) -> Result<bool, StoreError> {
        self.inner.update_sandbox_within(sb, q).await
    }
    async fn get_sandbox(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        self.inner.get_sandbox(team_id, id).await
    }
    async fn list_sandboxes(&self, team_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        self.inner.list_sandboxes(team_id).await
    }
    async fn update_sandbox(&self, sb: &SandboxRecord) -> Result<bool, StoreError> {
        self.inner.update_sandbox(sb).await
    }
    async fn touch_sandbox(
        &self,
        team_id: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.touch_sandbox(team_id, id, at).await
    }
    async fn delete_sandbox(
        &self,
        team_id: &str,
        id: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        self.inner.delete_sandbox(team_id, id, version).await
    }
    async fn list_running_with_timeout(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        self.inner.list_running_with_timeout().await
    }
    async fn count_sandboxes_by_status(
        &self,
    ) -> Result<Vec<(wrenn_types::agent::SandboxStatus, i64)>, StoreError> {
        self.inner.count_sandboxes_by_status().await
    }
    async fn get_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        self.inner.get_template(team_id, name).await
    }
    async fn list_templates(&self, team_id: &str) -> Result<Vec<TemplateRecord>, StoreError> {
        self.inner.list_templates(team_id).await
    }
    async fn find_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        self.inner.find_sandbox(id).await
    }
    async fn list_host_sandboxes(&self, host_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        self.inner.list_host_sandboxes(host_id).await
    }
    async fn reserve_snapshot(&self, r: &SnapshotReservation) -> Result<(), StoreError> {
        self.inner.reserve_snapshot(r).await
    }
    async fn reserve_snapshot_within(
        &self,
        r: &SnapshotReservation,
        max_templates: i64,
    ) -> Result<(), StoreError> {
        self.inner.reserve_snapshot_within(r, max_templates).await
    }
    async fn snapshot_reservation(
        &self,
        sandbox_id: &str,
    ) -> Result<Option<SnapshotReservation>, StoreError> {
        self.inner.snapshot_reservation(sandbox_id).await
    }
    async fn release_snapshot(&self, team_id: &str, name: &str) -> Result<bool, StoreError> {
        self.inner.release_snapshot(team_id, name).await
    }
    async fn commit_snapshot(
        &self,
        template: &TemplateRecord,
        sandbox_id: &str,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        self.inner.commit_snapshot(template, sandbox_id).await
    }
    async fn delete_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        self.inner.delete_template(team_id, name).await
    }
    async fn host_template_names(&self, host_id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.host_template_names(host_id).await
    }
    async fn add_template_copy(
        &self,
        agent_name: &str,
        host_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.add_template_copy(agent_name, host_id, at).await
    }
    async fn template_copy_hosts(&self, agent_name: &str) -> Result<Vec<String>, StoreError> {
        self.inner.template_copy_hosts(agent_name).await
    }
    async fn forget_template_copies(&self, agent_name: &str) -> Result<(), StoreError> {
        self.inner.forget_template_copies(agent_name).await
    }
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.try_lease(name, holder, ttl).await
    }
    fn single_writer(&self) -> bool {
        self.inner.single_writer()
    }
    async fn metered_sandboxes(
        &self,
    ) -> Result<Vec<wrenn_server::store::MeteredSandbox>, StoreError> {
        self.inner.metered_sandboxes().await
    }
    async fn record_usage(&self, pass: &wrenn_server::store::UsagePass) -> Result<(), StoreError> {
        self.inner.record_usage(pass).await
    }
    async fn daily_usage(
        &self,
        team_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<wrenn_server::store::DailyUsage>, StoreError> {
        self.inner.daily_usage(team_id, from, to).await
    }
    async fn team_held(
        &self,
        team_id: &str,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, wrenn_server::store::Held)>, StoreError> {
        self.inner.team_held(team_id, since_ms, step_ms).await
    }
}

fn profile(id: &str, email: &str) -> Profile {
    Profile::new(id.into(), email, None).unwrap()
}

/// RACERS concurrent sign-ins of one new identity: one registers, the rest lose the
/// unique-key race and log in as the winner.
async fn forced_race(inner: Arc<dyn Store>) {
    let gated = Arc::new(GatedStore {
        inner: inner.clone(),
        gate: tokio::sync::Barrier::new(RACERS),
        gated: RACERS,
        creates: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
    });
    let p = profile("555", "Racer@Example.com");
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let s = gated.clone();
            let p = p.clone();
            tokio::spawn(async move { sign_in(s.as_ref(), "github", &p).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let u = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("sign-in finished")
            .unwrap()
            .expect("every racer signs in");
        ids.push((u.id, u.team_id, u.email));
    }
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one user for all: {ids:?}"
    );
    assert_eq!(ids[0].2, "racer@example.com");
    assert_eq!(gated.creates.load(Ordering::SeqCst), RACERS);
    assert_eq!(
        gated.duplicates.load(Ordering::SeqCst),
        RACERS - 1,
        "all but one insert lost the race"
    );
    let u = inner.user_by_oauth("github", "555").await.unwrap().unwrap();
    assert_eq!(u.id, ids[0].0);
    assert_eq!(u.password_hash, None);
    assert!(inner.team(&u.team_id).await.unwrap().is_some());
}

/// Known identity, new identity, taken email; against one store.
async fn outcomes(s: Arc<dyn Store>) {
    let a = sign_in(s.as_ref(), "github", &profile("1", "one@example.com"))
        .await
        .unwrap();
    let again = sign_in(s.as_ref(), "github", &profile("1", "changed@example.com"))
        .await
        .unwrap();
    assert_eq!(again, a);

    s.create_account(&NewAccount {
        user_id: "usr-pw".into(),
        team_id: "team-pw".into(),
        team_name: "pw".into(),
        email: "pw@example.com".into(),
        password_hash: Some("hash".into()),
        created_at: store::now(),
    })
    .await
    .unwrap();
    for taken in ["pw@example.com", "one@example.com"] {
        assert_eq!(
            sign_in(s.as_ref(), "github", &profile("2", taken)).await,
            Err(CallbackError::EmailTaken)
        );
    }
    // The same email at another provider is another identity: refused as well.
    assert_eq!(
        sign_in(s.as_ref(), "gitlab", &profile("1", "one@example.com")).await,
        Err(CallbackError::EmailTaken)
    );
    assert!(s.user_by_oauth("github", "2").await.unwrap().is_none());
    assert!(s.user_by_oauth("gitlab", "1").await.unwrap().is_none());
}

#[tokio::test]
async fn sign_in_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = store::open(&dir.path().join("a.db").display().to_string())
        .await
        .unwrap();
    outcomes(s).await;
    let s = store::open(&dir.path().join("b.db").display().to_string())
        .await
        .unwrap();
    forced_race(s).await;
}

#[tokio::test]
async fn sign_in_on_postgres() {
    let pg = support::pg::PgServer::start();
    let s = store::open(&pg.create_database("signin_outcomes").await)
        .await
        .unwrap();
    outcomes(s).await;
    let s = store::open(&pg.create_database("signin_race").await)
        .await
        .unwrap();
    forced_race(s).await;
}

#[test]
fn profiles_need_a_usable_email_and_id() {
    assert_eq!(profile("1", " A@B.Example ").email, "a@b.example");
    for bad in [
        "",
        "no-at",
        "@x.y",
        "a@",
        "a@b@c",
        "a b@c.d",
        &"x".repeat(300),
    ] {
        assert!(Profile::new("1".into(), bad, None).is_err(), "{bad:?}");
    }
    assert!(Profile::new(String::new(), "a@b.c", None).is_err());
}
