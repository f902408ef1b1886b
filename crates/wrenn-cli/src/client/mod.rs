//! The client half of `wrenn`: commands over the public API (accounts, API keys, sandboxes,
//! exec and shell, files, snapshots). This module parses the global options, resolves the
//! base URL and credentials (flag, then environment, then the saved config), runs one command
//! and turns any failure into one `error: …` line and a non-zero exit code. It never touches
//! the daemon roles (`up`, `server`, `agent`, `images`).

mod api;
mod auth;
mod config;
mod files;
mod output;
mod sandbox;
mod shell;
mod snapshot;

use api::{Api, Failure};
/// The password prompt of `signup` and `login`, also used by `wrenn accounts add`.
pub(crate) use auth::password as read_password;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

/// The URL used when neither a flag, the environment nor the config names one.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080";

/// Options of every client command.
#[derive(clap::Args)]
pub struct GlobalArgs {
    /// Print the API's JSON answers instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// API key for sandbox, file and snapshot commands (default: the key saved by
    /// `wrenn keys create --save`).
    #[arg(long, global = true, env = "WRENN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// URL of the Wrenn API (default: the saved one, else http://127.0.0.1:8080).
    #[arg(long, global = true, env = "WRENN_BASE_URL")]
    pub base_url: Option<String>,
}

/// The client commands, flattened into the binary's top-level commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create an account; saves the session in ~/.config/wrenn/config.json.
    Signup(auth::Credentials),
    /// Log in; saves the session in ~/.config/wrenn/config.json.
    Login(auth::Credentials),
    /// Create, list and delete API keys (uses the saved session).
    Keys {
        #[command(subcommand)]
        command: auth::KeysCommand,
    },
    /// Create sandboxes, run commands in them, pause, resume and remove them.
    Sandbox {
        #[command(subcommand)]
        command: sandbox::SandboxCommand,
    },
    /// Copy files into and out of a running sandbox (streamed, any size).
    Files {
        #[command(subcommand)]
        command: files::FilesCommand,
    },
    /// Snapshot templates: create one from a running sandbox, list, remove.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
}

/// Everything a command needs: the API, the output mode and the saved config.
pub struct Ctx {
    pub api: Api,
    pub json: bool,
    pub config_path: PathBuf,
    pub config: config::Config,
}

impl Ctx {
    fn new(global: GlobalArgs) -> Result<Ctx, Failure> {
        let config_path = config::path()?;
        let config = config::load(&config_path)?;
        let base = global
            .base_url
            .filter(|b| !b.is_empty())
            .or_else(|| config.base_url.clone())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let base = base.trim_end_matches('/').to_string();
        // Saved credentials are only ever sent to the server they came from.
        let same_server = config
            .base_url
            .as_deref()
            .is_none_or(|b| b.trim_end_matches('/') == base);
        let saved = |v: &Option<String>| if same_server { v.clone() } else { None };
        let api_key = global
            .api_key
            .filter(|k| !k.is_empty())
            .or_else(|| saved(&config.api_key));
        let api = Api::new(&base, api_key, saved(&config.token))?;
        Ok(Ctx {
            api,
            json: global.json,
            config_path,
            config,
        })
    }

    /// Prints a JSON value (the `--json` output).
    pub fn print_json(&self, v: &serde_json::Value) {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        out(&format!("{text}\n"));
    }

    pub fn save_config(&self, cfg: &config::Config) -> Result<(), Failure> {
        config::save(&self.config_path, cfg)
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth reporting.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Runs one client command; returns the process exit code.
pub fn main(global: GlobalArgs, command: ClientCommand) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async move {
        let ctx = Ctx::new(global)?;
        match command {
            ClientCommand::Signup(c) => auth::signup(&ctx, c).await,
            ClientCommand::Login(c) => auth::login(&ctx, c).await,
            ClientCommand::Keys { command } => auth::keys(&ctx, command).await,
            ClientCommand::Sandbox { command } => sandbox::run(&ctx, command).await,
            ClientCommand::Files { command } => files::run(&ctx, command).await,
            ClientCommand::Snapshot { command } => snapshot::run(&ctx, command).await,
        }
    });
    // Background tasks (spinners, stdin readers) must not keep the process alive.
    rt.shutdown_background();
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {f}");
            1
        }
    }
}
