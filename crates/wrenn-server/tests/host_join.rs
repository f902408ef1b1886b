//! `POST /v1/hosts/join`: a one-time token joins once; a used, expired, unknown, malformed or
//! foreign token, a bad CSR and a bad URL are refused in the API's error format; the answer's
//! certificate chains to the CA and names the advertised host; the store holds only token
//! hashes; a rotation keeps the host's id and replaces its certificate; the store spends a token
//! once under concurrent joins, on SQLite and PostgreSQL.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::TestServer;
use wrenn_server::app::host_join::new_join_token;
use wrenn_server::pki::{self, token::JoinToken, Ca};
use wrenn_server::store::JoinTokenRecord;

struct Joining {
    ts: TestServer,
    data_dir: std::path::PathBuf,
}

async fn start() -> Joining {
    let mut data_dir = None;
    let ts = TestServer::start_with(|cfg| data_dir = Some(cfg.data_dir.clone())).await;
    Joining {
        ts,
        data_dir: data_dir.unwrap(),
    }
}

impl Joining {
    async fn token(&self, rotate: Option<&str>) -> JoinToken {
        let store = self.ts.server.store();
        let (token, _) = new_join_token(&*store, &self.data_dir, rotate, Duration::from_secs(600))
            .await
            .unwrap();
        token
    }

    async fn join(&self, token: &str, url: &str, csr: &str) -> (u16, Value) {
        let r = self
            .ts
            .req(Method::POST, "/v1/hosts/join")
            .json(&json!({"token": token, "url": url, "csr_pem": csr}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    fn ca(&self) -> Ca {
        Ca::load(&self.data_dir.join("pki")).unwrap()
    }
}

fn refused(status: u16, body: &Value, why: &str) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_join_token", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message} should say {why}");
}

#[tokio::test]
async fn a_token_joins_once_and_the_certificate_names_the_host() {
    let j = start().await;
    let token = j.token(None).await;
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    let url = "https://127.0.0.1:17443";
    let (status, body) = j.join(&token.expose(), url, &csr).await;
    assert_eq!(status, 200, "{body}");
    let host_id = body["host_id"].as_str().unwrap().to_string();
    let cert = body["cert_pem"].as_str().unwrap();
    let ca_pem = body["ca_pem"].as_str().unwrap();
    // The CA sent is the one the token pins, and the certificate chains to it for the host.
    assert_eq!(
        pki::fingerprint(&pki::first_cert_der(ca_pem).unwrap()),
        token.ca_pin
    );
    assert_eq!(ca_pem, j.ca().cert_pem());
    pki::tls::verify_agent_cert(ca_pem, cert, "127.0.0.1").unwrap();
    assert!(pki::tls::verify_agent_cert(ca_pem, cert, "127.0.0.2").is_err());
    let der = pki::first_cert_der(cert).unwrap();
    assert_eq!(
        pki::uri_sans(&der),
        vec![format!("urn:wrenn:host:{host_id}")]
    );
    // The host is recorded with its URL and its certificate's hash.
    let store = j.ts.server.store();
    let hosts = store.list_hosts().await.unwrap();
    let host = hosts.iter().find(|h| h.id == host_id).expect("host row");
    assert_eq!(host.url, url);
    assert_eq!(host.cert_sha256, Some(pki::fingerprint(&der)));

    // Once only: the same token again (even with another key) is refused.
    let (_key, csr2) = pki::new_key_and_csr().unwrap();
    let (status, body) = j
        .join(&token.expose(), "https://127.0.0.1:17444", &csr2)
        .await;
    refused(status, &body, "already used");
    assert_eq!(store.list_hosts().await.unwrap().len(), hosts.len());
}

#[tokio::test]
async fn unknown_expired_malformed_and_foreign_tokens_are_refused() {
    let j = start().await;
    let pin = j.token(None).await.ca_pin;
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    let url = "https://127.0.0.1:17445";

    let unknown = JoinToken::generate(&pin);
    let (status, body) = j.join(&unknown.expose(), url, &csr).await;
    refused(status, &body, "unknown");

    let expired = JoinToken::generate(&pin);
    let now = chrono::Utc::now();
    j.ts.server
        .store()
        .insert_join_token(&JoinTokenRecord {
            id: "jt-expired".into(),
            token_hash: expired.hash(),
            host_id: None,
            expires_at: now - chrono::Duration::seconds(1),
            used_at: None,
            created_at: now - chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    let (status, body) = j.join(&expired.expose(), url, &csr).await;
    refused(status, &body, "expired");

    for bad in ["", "hello", "wrenn1:abc:def", &"x".repeat(5000)] {
        let (status, body) = j.join(bad, url, &csr).await;
        refused(status, &body, "malformed");
    }

    // A token pinning another CA (another control plane's) never reaches the store.
    let foreign = JoinToken::generate(&"0".repeat(64));
    let (status, body) = j.join(&foreign.expose(), url, &csr).await;
    refused(status, &body, "another control plane");
    assert!(j
        .ts
        .server
        .store()
        .list_hosts()
        .await
        .unwrap()
        .iter()
        .all(|h| h.url != url));
}

#[tokio::test]
async fn a_bad_csr_or_url_is_refused_and_leaves_the_token_usable() {
    let j = start().await;
    let token = j.token(None).await;
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    for (csr_text, url) in [
        ("not a csr".to_string(), "https://127.0.0.1:17446"),
        (csr.replace("MI", "XX"), "https://127.0.0.1:17446"),
        (
            "A".repeat(pki::MAX_CSR_BYTES + 1),
            "https://127.0.0.1:17446",
        ),
        (csr.clone(), "http://127.0.0.1:17446"),
        (csr.clone(), "https://127.0.0.1"),
        (csr.clone(), "https://127.0.0.1:17446/path"),
    ] {
        let (status, body) = j.join(&token.expose(), url, &csr_text).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    // Unknown fields and a missing field are the API's JSON errors, not a 500.
    let r =
        j.ts.req(Method::POST, "/v1/hosts/join")
            .json(&json!({"token": token.expose()}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    // The token was not spent.
    let (status, body) = j
        .join(&token.expose(), "https://127.0.0.1:17446", &csr)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_store_keeps_only_token_hashes() {
    let j = start().await;
    let store = j.ts.server.store();
    let a = j.token(None).await;
    let b = j.token(None).await;
    let kept = store.list_join_tokens().await.unwrap();
    assert_eq!(kept.len(), 2);
    for (rec, token) in kept.iter().zip([&a, &b]) {
        assert_eq!(rec.token_hash, token.hash());
        let text = token.expose();
        let secret = text.rsplit(':').next().unwrap();
        assert!(!format!("{rec:?}").contains(secret));
        assert!(rec.expires_at > rec.created_at);
        assert!(rec.used_at.is_none());
    }
    // Nowhere in the database file either.
    let mut db = Vec::new();
    for entry in std::fs::read_dir(&j.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            db.extend(std::fs::read(path).unwrap());
        }
    }
    let db = String::from_utf8_lossy(&db);
    for token in [&a, &b] {
        let text = token.expose();
        assert!(!db.contains(text.rsplit(':').next().unwrap()));
    }
}

#[tokio::test]
async fn a_rotation_keeps_the_host_and_replaces_its_certificate() {
    let j = start().await;
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    let (status, body) = j
        .join(
            &j.token(None).await.expose(),
            "https://127.0.0.1:17447",
            &csr,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let host_id = body["host_id"].as_str().unwrap().to_string();
    let first = pki::first_cert_der(body["cert_pem"].as_str().unwrap()).unwrap();

    // A rotation token names the host; the new key, at a new address, gets the same id.
    let store = j.ts.server.store();
    assert!(new_join_token(
        &*store,
        &j.data_dir,
        Some("host-none"),
        Duration::from_secs(60)
    )
    .await
    .is_err());
    let rotate = j.token(Some(&host_id)).await;
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    let (status, body) = j
        .join(&rotate.expose(), "https://127.0.0.1:17448", &csr)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host_id"], host_id.as_str());
    let second = pki::first_cert_der(body["cert_pem"].as_str().unwrap()).unwrap();
    assert_ne!(first, second);
    let host = store
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.id == host_id)
        .unwrap();
    assert_eq!(host.url, "https://127.0.0.1:17448");
    assert_eq!(host.cert_sha256, Some(pki::fingerprint(&second)));
}

#[tokio::test]
async fn the_join_route_is_in_the_served_spec() {
    let j = start().await;
    let r = j.ts.req(Method::GET, "/openapi.yaml").send().await.unwrap();
    let spec = r.text().await.unwrap();
    assert!(spec.contains("/v1/hosts/join:"));
    assert!(spec.contains("invalid_join_token"));
}

/// The store's side of joining, the same on both backends: a token is spent by exactly one of
/// several concurrent joins; expired and unknown tokens say so; a joined host is recorded
/// once per URL and a rotation updates its row.
async fn store_joins(store: std::sync::Arc<dyn wrenn_server::store::Store>) {
    use wrenn_server::store::JoinTokenSpend;
    let now = chrono::Utc::now();
    let token = JoinToken::generate(&"1".repeat(64));
    let rec = |id: &str, hash: String, expires: chrono::DateTime<chrono::Utc>| JoinTokenRecord {
        id: id.into(),
        token_hash: hash,
        host_id: None,
        expires_at: expires,
        used_at: None,
        created_at: now,
    };
    store
        .insert_join_token(&rec("jt-a", token.hash(), now + chrono::Duration::hours(1)))
        .await
        .unwrap();
    let spends = (0..8).map(|_| {
        let store = store.clone();
        let hash = token.hash();
        tokio::spawn(async move { store.spend_join_token(&hash, chrono::Utc::now()).await })
    });
    let mut outcomes = Vec::new();
    for s in spends {
        outcomes.push(s.await.unwrap().unwrap());
    }
    let spent = outcomes
        .iter()
        .filter(|o| matches!(o, JoinTokenSpend::Spent { host_id: None }))
        .count();
    assert_eq!(spent, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, JoinTokenSpend::Spent { .. } | JoinTokenSpend::Used)));

    let old = JoinToken::generate(&"1".repeat(64));
    store
        .insert_join_token(&rec("jt-b", old.hash(), now - chrono::Duration::seconds(1)))
        .await
        .unwrap();
    assert_eq!(
        store.spend_join_token(&old.hash(), now).await.unwrap(),
        JoinTokenSpend::Expired
    );
    assert_eq!(
        store.spend_join_token(&"0".repeat(64), now).await.unwrap(),
        JoinTokenSpend::Unknown
    );

    let url = "https://127.0.0.1:17600";
    let id = store
        .record_joined_host(None, "host-a", url, "aa", now)
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("host-a"));
    // The same URL again is the same host, with the new certificate.
    let again = store
        .record_joined_host(None, "host-b", url, "bb", now)
        .await
        .unwrap();
    assert_eq!(again.as_deref(), Some("host-a"));
    let hosts = store.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].cert_sha256.as_deref(), Some("bb"));
    let rotated = store
        .record_joined_host(Some("host-a"), "x", "https://127.0.0.1:17601", "cc", now)
        .await
        .unwrap();
    assert_eq!(rotated.as_deref(), Some("host-a"));
    let hosts = store.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].url, "https://127.0.0.1:17601");
    assert_eq!(hosts[0].cert_sha256.as_deref(), Some("cc"));
    assert_eq!(
        store
            .record_joined_host(Some("host-gone"), "x", url, "dd", now)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn the_store_spends_a_token_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrenn.db").display().to_string();
    store_joins(wrenn_server::store::open(&path).await.unwrap()).await;
}

#[tokio::test]
async fn the_store_spends_a_token_once_on_postgres() {
    let pg = support::pg::PgServer::start();
    let url = pg.create_database("host_join").await;
    store_joins(wrenn_server::store::open(&url).await.unwrap()).await;
}
