//! Mutual TLS between the control plane and an agent: the simulated agent's API served
//! through the agent's TLS listener (`pki::tls::serve_tls`) on loopback answers the control
//! plane's `HttpAgent` (with its control-plane certificate) for JSON calls, a WebSocket exec
//! stream and the port upgrade; a plain-HTTP request gets no answer, and clients without a
//! certificate, with one from another CA, with an agent's certificate, or with a CA client
//! certificate lacking the control-plane role are refused in the handshake.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wrenn_agent_api::HostAgent;
use wrenn_server::agent::http::HttpAgent;
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::agent::sim_server;
use wrenn_server::pki::{self, client, tls, Ca};
use wrenn_types::agent::CreateSandbox;
use wrenn_types::stream::{ClientMessage, ServerMessage};

const TOKEN: &str = "agent-tls-test-token";

struct TlsAgent {
    url: String,
    ca: Ca,
    sim: Arc<SimAgent>,
    agent_cert: String,
    agent_key: String,
    _dir: tempfile::TempDir,
}

/// The simulated agent served over TLS with a certificate the CA signed from its CSR.
async fn serve() -> TlsAgent {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(&dir.path().join("pki")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (agent_key, csr) = pki::new_key_and_csr().unwrap();
    let agent_cert = ca.sign_agent_csr(&csr, &url, "host-tls").unwrap();
    let config = tls::agent_server_config(ca.cert_pem(), &agent_cert, &agent_key).unwrap();
    let sim = Arc::new(SimAgent::new(&["minimal"], 0).unwrap());
    let router = tls::authenticated_by_tls(sim_server::router(sim.clone(), TOKEN), TOKEN);
    tokio::spawn(tls::serve_tls(
        listener,
        Arc::new(config),
        router,
        std::future::pending(),
    ));
    TlsAgent {
        url,
        ca,
        sim,
        agent_cert,
        agent_key,
        _dir: dir,
    }
}

fn control_plane(agent: &TlsAgent, ca: &Ca) -> HttpAgent {
    HttpAgent::with_tls(&agent.url, Arc::new(client::config_from(ca).unwrap())).unwrap()
}

async fn create(http: &HttpAgent, id: &str) {
    http.create(&CreateSandbox {
        id: id.into(),
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 256,
        network: None,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_control_plane_speaks_json_websocket_and_port_upgrade_over_mutual_tls() {
    let agent = serve().await;
    let http = control_plane(&agent, &agent.ca);

    // JSON.
    let info = http.host_info().await.unwrap();
    assert!(info.templates.iter().any(|t| t == "minimal"));
    create(&http, "sb-tls").await;
    assert_eq!(http.list_sandboxes().await.unwrap().len(), 1);

    // A WebSocket exec stream.
    let mut session = http.exec_stream("sb-tls").await.unwrap();
    session
        .to_agent
        .send(ClientMessage::Start {
            cmd: "echo".into(),
            args: vec!["over-tls".into()],
            env: Default::default(),
            cwd: None,
            user: None,
        })
        .await
        .unwrap();
    let mut out = String::new();
    let exit = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = session.from_agent.recv().await {
            match m {
                ServerMessage::Stdout { data } => out.push_str(&data),
                ServerMessage::Exit { exit_code } => return Some(exit_code),
                _ => {}
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(exit, Some(0));
    assert!(out.contains("over-tls"), "{out}");

    // The port upgrade: bytes go both ways through the upgraded TLS connection.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
    });
    agent.sim.expose_port("sb-tls", 8000, echo_addr);
    let mut port = http.open_port("sb-tls", 8000).await.unwrap();
    port.write_all(b"ping through tls").await.unwrap();
    let mut got = vec![0u8; 16];
    tokio::time::timeout(Duration::from_secs(30), port.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping through tls");

    // Many calls, one client: connections are reused (no handshake per request), so a call
    // over mutual TLS costs about what it costs over plain HTTP.
    let calls = 200;
    let t = std::time::Instant::now();
    for _ in 0..calls {
        http.get_sandbox("sb-tls").await.unwrap();
    }
    let tls_each = t.elapsed() / calls;
    let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_url = format!("http://{}", plain_listener.local_addr().unwrap());
    let plain_router = sim_server::router(agent.sim.clone(), TOKEN);
    tokio::spawn(async move { axum::serve(plain_listener, plain_router).await });
    let plain = HttpAgent::new(&plain_url, TOKEN).unwrap();
    plain.get_sandbox("sb-tls").await.unwrap();
    let t = std::time::Instant::now();
    for _ in 0..calls {
        plain.get_sandbox("sb-tls").await.unwrap();
    }
    let plain_each = t.elapsed() / calls;
    eprintln!(
        "[numbers] agent call over mutual TLS {tls_each:?}, over plain HTTP {plain_each:?} \
         ({calls} sequential calls each, one client, loopback)"
    );
    // A handshake per call would cost several times a call (generous for a loaded machine).
    assert!(
        tls_each < plain_each * 5 + Duration::from_millis(2),
        "TLS {tls_each:?} against plain {plain_each:?}"
    );
}

#[tokio::test]
async fn plain_http_gets_no_answer() {
    let agent = serve().await;
    let plain = agent.url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/v1/host"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(
        r.is_err(),
        "plain HTTP was answered: {:?}",
        r.map(|r| r.status())
    );
    // The same through the plain client type of the control plane.
    let http = HttpAgent::new(&plain, TOKEN).unwrap();
    assert!(http.host_info().await.is_err());
}

#[tokio::test]
async fn an_https_host_without_a_ca_here_is_unreachable_not_an_error_of_the_registry() {
    // This test process has no data dir's CA: the client is made (a registry keeps loading
    // its other hosts) and every call fails as a transport error saying why.
    let agent = serve().await;
    let http = HttpAgent::new(&agent.url, "").unwrap();
    match http.host_info().await {
        Err(wrenn_server::agent::AgentApiError::Transport(why)) => {
            assert!(why.contains("no TLS identity"), "{why}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(http.exec_stream("sb").await.is_err());
    assert!(http.open_port("sb", 80).await.is_err());
}

/// A TLS client trusting the CA (so only its own certificate can fail the handshake).
fn client_with(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let config = match identity {
        Some((cert, key)) => tls::client_config(ca_pem, cert, key).unwrap(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            roots
                .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
                .unwrap();
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn refused(client: reqwest::Client, agent: &TlsAgent, who: &str) {
    let r = client
        .get(format!("{}/v1/host", agent.url))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(
        r.is_err(),
        "{who} was answered: {:?}",
        r.map(|r| r.status())
    );
}

#[tokio::test]
async fn clients_without_the_control_plane_role_are_refused() {
    let agent = serve().await;
    let ca_pem = agent.ca.cert_pem().to_string();

    // The right client passes (so the refusals below are about the certificate).
    let cp = agent.ca.control_plane_identity().unwrap();
    let ok = client_with(&ca_pem, Some((&cp.cert_pem, &cp.key_pem)))
        .get(format!("{}/v1/host", agent.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    refused(
        client_with(&ca_pem, None),
        &agent,
        "a client without a certificate",
    )
    .await;

    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(other_dir.path()).unwrap();
    let foreign = other.control_plane_identity().unwrap();
    refused(
        client_with(&ca_pem, Some((&foreign.cert_pem, &foreign.key_pem))),
        &agent,
        "another CA's control plane",
    )
    .await;
    // Nor does the HttpAgent of another CA's control plane get through.
    assert!(control_plane(&agent, &other).host_info().await.is_err());

    refused(
        client_with(&ca_pem, Some((&agent.agent_cert, &agent.agent_key))),
        &agent,
        "an agent's certificate",
    )
    .await;

    // A client certificate of the CA without the role (signed with the CA's own key).
    let key_pem = std::fs::read_to_string(agent._dir.path().join("pki/ca.key")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
    refused(
        client_with(&ca_pem, Some((&cert.pem(), &key.serialize_pem()))),
        &agent,
        "a CA client certificate without the role",
    )
    .await;
}

#[tokio::test]
async fn a_pinned_client_takes_only_the_certificate_last_issued_to_the_host() {
    // The host's certificate as served, and a newer one the CA issued to the same address
    // (a rotation): the control plane pins the newer one, so the old one is refused although
    // it still chains to the CA and names the host.
    let agent = serve().await;
    let base = client::config_from(&agent.ca).unwrap();
    let sha = |pem: &str| pki::fingerprint(&pki::first_cert_der(pem).unwrap());
    let served = HttpAgent::with_tls(
        &agent.url,
        Arc::new(pki::pin::pinned(&base, agent.ca.cert_pem(), &sha(&agent.agent_cert)).unwrap()),
    )
    .unwrap();
    served.host_info().await.unwrap();

    let (_, csr) = pki::new_key_and_csr().unwrap();
    let rotated = agent
        .ca
        .sign_agent_csr(&csr, &agent.url, "host-tls")
        .unwrap();
    let stale = HttpAgent::with_tls(
        &agent.url,
        Arc::new(pki::pin::pinned(&base, agent.ca.cert_pem(), &sha(&rotated)).unwrap()),
    )
    .unwrap();
    match stale.host_info().await {
        Err(wrenn_server::agent::AgentApiError::Transport(_)) => {}
        other => panic!("a certificate other than the pinned one was accepted: {other:?}"),
    }
    assert!(stale.exec_stream("sb").await.is_err());
    assert!(stale.open_port("sb", 80).await.is_err());
}
