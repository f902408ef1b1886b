//! `wrenn hosts add` and `wrenn hosts rotate` beside a running `wrenn server` (SQLite in its
//! data directory): the token printed is usable once at the server's `POST /v1/hosts/join`
//! (the server loads the CA `hosts add` created in its data dir, with no other flag), the
//! certificate answered chains to that CA, and a rotation token keeps the host's id.

mod support;

use support::{ServerProcess, User};
use wrenn_server::pki;

fn join(base: &str, token: &str, url: &str) -> (u16, serde_json::Value) {
    let (_key, csr) = pki::new_key_and_csr().unwrap();
    support::rt().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/hosts/join"))
            .json(&serde_json::json!({"token": token, "url": url, "csr_pem": csr}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    })
}

#[test]
fn hosts_add_prints_a_token_the_running_server_accepts_once() {
    let srv = ServerProcess::start(&[], &[]);
    let u = User::new(&srv.base);
    let dir = srv.data_dir.to_str().unwrap();

    // The plain output shows the token and how to join with it.
    let plain = u.run(&["hosts", "add", "--data-dir", dir]).ok();
    assert!(plain.stdout.contains("wrenn1:"), "{}", plain.stdout);
    assert!(
        plain.stdout.contains("wrenn agent --join"),
        "{}",
        plain.stdout
    );

    let added = u
        .run(&["--json", "hosts", "add", "--data-dir", dir, "--ttl", "10m"])
        .ok()
        .json();
    let token = added["token"].as_str().unwrap();
    assert!(added["host_id"].is_null());
    // The CA was made in the data dir, private, and the token pins it.
    let ca_pem = std::fs::read_to_string(srv.data_dir.join("pki/ca.pem")).unwrap();
    let pin = pki::fingerprint(&pki::first_cert_der(&ca_pem).unwrap());
    assert_eq!(added["ca_sha256"], pin.as_str());
    assert!(token.contains(&pin));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(srv.data_dir.join("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let url = "https://127.0.0.1:17501";
    let (status, body) = join(&srv.base, token, url);
    assert_eq!(status, 200, "{body}");
    pki::tls::verify_agent_cert(&ca_pem, body["cert_pem"].as_str().unwrap(), "127.0.0.1").unwrap();
    let host_id = body["host_id"].as_str().unwrap().to_string();
    let (status, body) = join(&srv.base, token, url);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_join_token");

    // A rotation token for that host keeps its id; one for an unknown host is refused.
    let rotated = u
        .run(&["--json", "hosts", "rotate", &host_id, "--data-dir", dir])
        .ok()
        .json();
    assert_eq!(rotated["host_id"], host_id.as_str());
    let (status, body) = join(
        &srv.base,
        rotated["token"].as_str().unwrap(),
        "https://127.0.0.1:17502",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host_id"], host_id.as_str());
    let out = u.run(&["hosts", "rotate", "host-nope", "--data-dir", dir]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no host host-nope"), "{}", out.stderr);
    // A bad ttl is refused before anything is made.
    let out = u.run(&["hosts", "add", "--data-dir", dir, "--ttl", "30d"]);
    assert_ne!(out.code, 0);
}
