//! Accounts and API keys: `signup`, `login` (save the session in the config) and
//! `keys create|list|delete` (authenticated by the saved session). Passwords come from a
//! flag, `WRENN_PASSWORD` or a no-echo terminal prompt, and are never printed or saved.

use super::api::{segment, Auth, Failure};
use super::output::{fields, table, when};
use super::{out, Ctx};
use clap::{Args, Subcommand};
use reqwest::Method;
use std::io::{BufRead, IsTerminal, Write};
use wrenn_types::api::{
    ApiKeyResponse, AuthResponse, CreateApiKeyRequest, LoginRequest, SignupRequest,
};

#[derive(Args)]
pub struct Credentials {
    /// Account e-mail address.
    #[arg(long)]
    email: String,
    /// Password (default: $WRENN_PASSWORD, else asked on the terminal).
    #[arg(long, env = "WRENN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is shown once.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// Also save the key in the config as the default for sandbox commands.
        #[arg(long)]
        save: bool,
    },
    /// List the team's API keys (secrets are never shown again).
    List,
    /// Delete an API key.
    Delete {
        /// Key ID (from `wrenn keys list`).
        id: String,
    },
}

pub async fn signup(ctx: &Ctx, c: Credentials) -> Result<i32, Failure> {
    let body = SignupRequest {
        email: c.email,
        password: password(c.password, true)?,
    };
    let next = "Next: wrenn keys create --save\n";
    start_session(ctx, "/v1/auth/signup", &body, "Signed up", next).await
}

pub async fn login(ctx: &Ctx, c: Credentials) -> Result<i32, Failure> {
    let body = LoginRequest {
        email: c.email,
        password: password(c.password, false)?,
    };
    start_session(ctx, "/v1/auth/login", &body, "Logged in", "").await
}

/// Posts `body` to `path` (sign-up or log-in), saves the session it answers with and says so:
/// "`done` as …", then `next`.
async fn start_session(
    ctx: &Ctx,
    path: &str,
    body: &impl serde::Serialize,
    done: &str,
    next: &str,
) -> Result<i32, Failure> {
    let rb = ctx
        .api
        .request(Method::POST, path, Auth::Anonymous)?
        .json(body);
    let (auth, raw) = ctx.api.json::<AuthResponse>(rb).await?;
    remember(ctx, &auth)?;
    if ctx.json {
        ctx.print_json(&raw);
    } else {
        out(&format!(
            "{done} as {} (team {}).\nSession saved in {}.\n{next}",
            auth.email,
            auth.team_id,
            ctx.config_path.display()
        ));
    }
    Ok(0)
}

/// Saves a session; a saved API key of another team or server is forgotten.
fn remember(ctx: &Ctx, auth: &AuthResponse) -> Result<(), Failure> {
    let mut cfg = ctx.config.clone();
    let same_team = cfg.team_id.as_deref() == Some(auth.team_id.as_str())
        && cfg.base_url.as_deref() == Some(ctx.api.base());
    if !same_team {
        cfg.api_key = None;
    }
    cfg.base_url = Some(ctx.api.base().to_string());
    cfg.token = Some(auth.token.clone());
    cfg.user_id = Some(auth.user_id.clone());
    cfg.team_id = Some(auth.team_id.clone());
    cfg.email = Some(auth.email.clone());
    ctx.save_config(&cfg)
}

pub async fn keys(ctx: &Ctx, cmd: KeysCommand) -> Result<i32, Failure> {
    match cmd {
        KeysCommand::Create { name, save } => {
            let rb = ctx
                .api
                .request(Method::POST, "/v1/api-keys", Auth::Session)?
                .json(&CreateApiKeyRequest { name });
            let (key, raw) = ctx.api.json::<ApiKeyResponse>(rb).await?;
            let secret = key
                .key
                .clone()
                .ok_or_else(|| Failure::local("the server did not return the new key"))?;
            if save {
                let mut cfg = ctx.config.clone();
                cfg.base_url = Some(ctx.api.base().to_string());
                cfg.api_key = Some(secret.clone());
                ctx.save_config(&cfg)?;
            }
            if ctx.json {
                ctx.print_json(&raw);
            } else {
                out(&fields(&[
                    ("id", key.id),
                    ("name", key.name),
                    ("key", secret),
                ]));
                if save {
                    out(&format!(
                        "Saved as the default API key in {}.\n",
                        ctx.config_path.display()
                    ));
                } else {
                    out("Keep the key now: it is not shown again.\n");
                }
            }
        }
        KeysCommand::List => {
            let rb = ctx
                .api
                .request(Method::GET, "/v1/api-keys", Auth::Session)?;
            let (keys, raw) = ctx.api.json::<Vec<ApiKeyResponse>>(rb).await?;
            if ctx.json {
                ctx.print_json(&raw);
            } else {
                let rows: Vec<Vec<String>> = keys
                    .into_iter()
                    .map(|k| {
                        vec![
                            k.id,
                            k.name,
                            k.key_prefix,
                            when(Some(&k.created_at)),
                            when(k.last_used.as_deref()),
                        ]
                    })
                    .collect();
                out(&table(
                    &["ID", "NAME", "PREFIX", "CREATED", "LAST USED"],
                    &rows,
                ));
            }
        }
        KeysCommand::Delete { id } => {
            let path = format!("/v1/api-keys/{}", segment(&id));
            let rb = ctx.api.request(Method::DELETE, &path, Auth::Session)?;
            ctx.api.send(rb).await?;
            if !ctx.json {
                out(&format!("Deleted API key {id}.\n"));
            }
        }
    }
    Ok(0)
}

/// The password from the flag or environment, else read without echo from the terminal
/// (twice when choosing one).
pub(crate) fn password(given: Option<String>, confirm: bool) -> Result<String, Failure> {
    if let Some(p) = given {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::local(
            "no password: pass --password, set WRENN_PASSWORD or run on a terminal",
        ));
    }
    let first = prompt_hidden("Password: ")?;
    if confirm && prompt_hidden("Repeat password: ")? != first {
        return Err(Failure::local("the passwords do not match"));
    }
    Ok(first)
}

/// Reads one line from the terminal with echo switched off, restoring it afterwards.
fn prompt_hidden(prompt: &str) -> Result<String, Failure> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    read.map_err(|e| Failure::local(format!("read password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
