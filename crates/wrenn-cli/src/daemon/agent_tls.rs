//! `wrenn agent --join URL`: joining a control plane once and serving the agent API over
//! mutual TLS from then on. The join makes a key here, sends its CSR with the one-time token
//! (from `--token-file`, `$WRENN_JOIN_TOKEN` or `--token`, so it need not be on a command
//! line) to the control plane's `POST /v1/hosts/join`, checks the CA it gets back against the
//! token's pin and the certificate against that CA, and keeps the identity in
//! `<data_dir>/identity/` (`key.pem`, `cert.pem`, `ca.pem`, `host_id`; 0600, put in place
//! with one rename). An agent with an identity serves TLS only and requires the control
//! plane's client certificate; it needs no bearer token. The TLS itself is
//! `wrenn_server::pki::tls`'s.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wrenn_server::app::host_join::{JoinRequest, JoinResponse};
use wrenn_server::pki::{self, token::JoinToken};

/// How long the join request may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest join answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

#[derive(clap::Args, Clone, Default)]
pub struct JoinArgs {
    /// Join the control plane whose public API is at URL (once: later starts use the kept
    /// identity). The token comes from --token-file, $WRENN_JOIN_TOKEN or --token.
    #[arg(long, value_name = "URL", env = "WRENN_JOIN_URL")]
    pub join: Option<String>,
    /// File holding the join token.
    #[arg(long, env = "WRENN_JOIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Where the control plane reaches this agent, https://IP:PORT (default: https:// and
    /// the --listen address, which must then be a specific address).
    #[arg(long, value_name = "URL", env = "WRENN_ADVERTISE_URL")]
    pub advertise: Option<String>,
    /// Join again even though an identity is kept (with a `wrenn hosts rotate` token).
    #[arg(long)]
    pub rejoin: bool,
}

/// The agent's identity: its key, its certificate and the CA, all PEM.
pub struct Identity {
    pub host_id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// `<data_dir>/identity`.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// The kept identity, if the agent joined.
pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
    let dir = identity_dir(data_dir);
    if !dir.join("cert.pem").exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    Ok(Some(Identity {
        host_id: read("host_id")?.trim().to_string(),
        key_pem: read("key.pem")?,
        cert_pem: read("cert.pem")?,
        ca_pem: read("ca.pem")?,
    }))
}

/// The join token: `--token-file`, else `$WRENN_JOIN_TOKEN`, else `--token`.
fn join_token(args: &JoinArgs, cli_token: Option<&str>) -> Result<String> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the join token from {}", path.display()))?;
        return Ok(text.trim().to_string());
    }
    if let Ok(t) = std::env::var("WRENN_JOIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    cli_token
        .map(|t| t.trim().to_string())
        .ok_or_else(|| anyhow!("--join needs a token: --token-file, $WRENN_JOIN_TOKEN or --token"))
}

/// The URL this agent advertises: `--advertise`, else `https://<listen>`.
fn advertised(args: &JoinArgs, listen: &str) -> Result<String> {
    let url = match &args.advertise {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--listen {listen}"))?;
            if addr.ip().is_unspecified() {
                bail!("--advertise https://IP:PORT is needed when --listen is {listen}");
            }
            format!("https://{addr}")
        }
    };
    pki::advertised_host(&url).map_err(|e| anyhow!("--advertise {url}: {e}"))?;
    Ok(url)
}

/// Prepares the agent's TLS: joins first when asked (and not joined yet, or `--rejoin`),
/// then, when an identity is kept, the server configuration requiring the control plane's
/// certificate. `None`: no identity, plain HTTP with the bearer token.
pub async fn prepare(
    data_dir: &Path,
    args: &JoinArgs,
    cli_token: Option<&str>,
    listen: &str,
) -> Result<Option<(Identity, Arc<rustls::ServerConfig>)>> {
    let kept = load(data_dir)?;
    let identity = match (&args.join, kept) {
        (Some(url), None) => Some(join(data_dir, url, args, cli_token, listen).await?),
        (Some(url), Some(_)) if args.rejoin => {
            Some(join(data_dir, url, args, cli_token, listen).await?)
        }
        (Some(_), Some(id)) => {
            tracing::info!(host = %id.host_id, "already joined; using the kept identity");
            Some(id)
        }
        (None, kept) => kept,
    };
    let Some(id) = identity else {
        return Ok(None);
    };
    let config = pki::tls::agent_server_config(&id.ca_pem, &id.cert_pem, &id.key_pem)
        .context("the kept identity")?;
    Ok(Some((id, Arc::new(config))))
}

async fn join(
    data_dir: &Path,
    control_plane: &str,
    args: &JoinArgs,
    cli_token: Option<&str>,
    listen: &str,
) -> Result<Identity> {
    let token_text = join_token(args, cli_token)?;
    let token = JoinToken::parse(&token_text)
        .ok_or_else(|| anyhow!("the join token is malformed (expected wrenn1:<pin>:<secret>)"))?;
    let url = advertised(args, listen)?;
    let host = pki::advertised_host(&url)?;
    let (key_pem, csr_pem) = pki::new_key_and_csr()?;
    let endpoint = format!("{}/v1/hosts/join", control_plane.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(JOIN_TIMEOUT)
        .build()
        .context("HTTP client")?;
    let resp = client
        .post(&endpoint)
        .json(&JoinRequest {
            token: token_text,
            url: url.clone(),
            csr_pem,
        })
        .send()
        .await
        .with_context(|| format!("joining {endpoint}"))?;
    let status = resp.status();
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.context("reading the join answer")? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            bail!("the join answer is over {MAX_ANSWER_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} ({})",
                    v["error"]["message"].as_str()?,
                    v["error"]["code"].as_str()?
                ))
            })
            .unwrap_or_else(|| format!("status {status}"));
        bail!("the control plane refused the join: {why}");
    }
    let answer: JoinResponse =
        serde_json::from_slice(&body).context("the join answer is not the expected JSON")?;
    let ca_der = pki::first_cert_der(&answer.ca_pem)?;
    if pki::fingerprint(&ca_der) != token.ca_pin {
        bail!(
            "the CA sent by {control_plane} is not the one the token pins: \
             not the control plane that made the token, or someone in between"
        );
    }
    pki::tls::verify_agent_cert(&answer.ca_pem, &answer.cert_pem, &host)
        .context("the certificate sent does not chain to the pinned CA for this host")?;
    let id = Identity {
        host_id: answer.host_id,
        key_pem,
        cert_pem: answer.cert_pem,
        ca_pem: answer.ca_pem,
    };
    save(data_dir, &id)?;
    tracing::info!(host = %id.host_id, %url, "joined the control plane at {control_plane}");
    Ok(id)
}

/// Writes the identity to a new directory beside the kept one and renames it into place, so
/// a crash leaves the old identity or the new one, never half of one.
fn save(data_dir: &Path, id: &Identity) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let dir = identity_dir(data_dir);
    let tmp = data_dir.join(format!("identity.new.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    for (name, text) in [
        ("key.pem", &id.key_pem),
        ("cert.pem", &id.cert_pem),
        ("ca.pem", &id.ca_pem),
        ("host_id", &id.host_id),
    ] {
        pki::write_new(&tmp.join(name), text.as_bytes())
            .with_context(|| format!("writing {}", tmp.join(name).display()))?;
    }
    if dir.exists() {
        let old = data_dir.join(format!("identity.old.{}", std::process::id()));
        std::fs::rename(&dir, &old).with_context(|| format!("moving {}", dir.display()))?;
        std::fs::rename(&tmp, &dir).with_context(|| format!("writing {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &dir).with_context(|| format!("writing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_server::agent::{http::HttpAgent, sim::SimAgent, sim_server, HostAgent};
    use wrenn_server::pki::{client, Ca};

    /// A control plane serving its public API on loopback, with a data dir of its own.
    async fn control_plane(dir: &Path) -> (String, wrenn_server::Server) {
        let mut cfg =
            wrenn_server::ServerConfig::new(dir.join("cp"), b"0123456789abcdef0123456789abcdef");
        cfg.auth_limits = wrenn_server::config::AuthLimits::unlimited();
        let server = wrenn_server::build(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router();
        tokio::spawn(async move { wrenn_server::serve(listener, router).await });
        (base, server)
    }

    #[tokio::test]
    async fn an_agent_joins_once_keeps_its_identity_and_serves_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (base, server) = control_plane(dir.path()).await;
        let store = server.store();
        let (token, _) = wrenn_server::app::host_join::new_join_token(
            &*store,
            &dir.path().join("cp"),
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let agent_dir = dir.path().join("agent");
        let args = JoinArgs {
            join: Some(base.clone()),
            token_file: None,
            advertise: Some(url.clone()),
            rejoin: false,
        };
        let (id, config) = prepare(&agent_dir, &args, Some(&token.expose()), "0.0.0.0:0")
            .await
            .unwrap()
            .expect("joined");
        assert!(id.host_id.starts_with("host-"));
        use std::os::unix::fs::PermissionsExt;
        for name in ["key.pem", "cert.pem", "ca.pem", "host_id"] {
            let mode = std::fs::metadata(identity_dir(&agent_dir).join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // A second start uses the kept identity: the spent token is not needed again.
        let (again, _) = prepare(&agent_dir, &args, None, "0.0.0.0:0")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.host_id, id.host_id);
        assert_eq!(again.cert_pem, id.cert_pem);
        // Joining again with the spent token is refused with the server's words.
        let rejoin = JoinArgs {
            rejoin: true,
            ..args.clone()
        };
        let err = prepare(&agent_dir, &rejoin, Some(&token.expose()), "0.0.0.0:0")
            .await
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("invalid_join_token"), "{err:#}");

        // Served over TLS, it answers the control plane's client of its CA.
        let sim = Arc::new(SimAgent::new(&["minimal"], 0).unwrap());
        let router = pki::tls::authenticated_by_tls(
            sim_server::router(sim, "t0123456789abcdef"),
            "t0123456789abcdef",
        );
        tokio::spawn(pki::tls::serve_tls(
            listener,
            config,
            router,
            std::future::pending(),
        ));
        let ca = Ca::load(&dir.path().join("cp/pki")).unwrap();
        let http = HttpAgent::with_tls(&url, Arc::new(client::config_from(&ca).unwrap())).unwrap();
        assert!(http
            .host_info()
            .await
            .unwrap()
            .templates
            .contains(&"minimal".to_string()));
    }

    #[tokio::test]
    async fn a_token_pinning_another_ca_or_a_missing_token_stops_the_join() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _server) = control_plane(dir.path()).await;
        let args = JoinArgs {
            join: Some(base),
            token_file: None,
            advertise: Some("https://127.0.0.1:17601".into()),
            rejoin: false,
        };
        let agent_dir = dir.path().join("agent");
        std::env::remove_var("WRENN_JOIN_TOKEN");
        assert!(prepare(&agent_dir, &args, None, "0.0.0.0:0").await.is_err());
        let other = wrenn_server::pki::token::JoinToken::generate(&"0".repeat(64));
        let err = prepare(&agent_dir, &args, Some(&other.expose()), "0.0.0.0:0")
            .await
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("invalid_join_token"), "{err:#}");
        assert!(load(&agent_dir).unwrap().is_none());
        // Without --advertise, an unspecified listen address cannot be advertised.
        let no_adv = JoinArgs {
            advertise: None,
            ..args
        };
        assert!(advertised(&no_adv, "0.0.0.0:7443").is_err());
        assert_eq!(
            advertised(&no_adv, "10.0.0.5:7443").unwrap(),
            "https://10.0.0.5:7443"
        );
    }
}
