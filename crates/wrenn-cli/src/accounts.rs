//! `wrenn accounts add`: the administrator's way to create an account, run on the control
//! plane's host against its database (the SQLite file in the data directory, or
//! `DATABASE_URL`), whatever the signup mode. It talks to no server and starts nothing, so it
//! may run beside a running control plane. A failure is one `error: … (code)` line and exit
//! code 1.

use crate::client::{out, read_password};
use crate::daemon::{is_postgres, secure_data_dir};
use clap::Subcommand;
use std::path::PathBuf;
use wrenn_server::ServerConfig;

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Create an account (a user with a password and their own team) in the control plane's
    /// database; works when signup is closed. Prints the user and team ids.
    Add(AddArgs),
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// Data directory of the control plane (its SQLite file when DATABASE_URL is not set).
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// E-mail address of the new account.
    #[arg(long)]
    pub email: String,
    /// Password (default: $WRENN_PASSWORD, else asked twice on the terminal).
    #[arg(long, env = "WRENN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// Runs one `wrenn accounts` command; returns the process exit code.
pub fn main(command: AccountsCommand, json: bool) -> i32 {
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
    let result = match command {
        AccountsCommand::Add(args) => rt.block_on(add(args, json)),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

async fn add(args: AddArgs, json: bool) -> Result<(), String> {
    let password = read_password(args.password, true).map_err(|e| e.to_string())?;
    // No JWT is signed here: the secret is not needed to write an account.
    let mut cfg = ServerConfig::new(args.data_dir.clone(), Vec::new());
    cfg.database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let database = if is_postgres(cfg.database_url.as_deref()) {
        "the PostgreSQL database of DATABASE_URL".to_string()
    } else {
        // The SQLite file lives there; kept private as `wrenn server` keeps it.
        secure_data_dir(&args.data_dir).map_err(|e| format!("{e:#}"))?;
        cfg.effective_database_url()
    };
    let added = wrenn_server::add_account(&cfg, &args.email, &password)
        .await
        .map_err(|e| {
            let code = serde_json::to_value(e.code())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "error".into());
            format!("{e} ({code})")
        })?;
    if json {
        let v = serde_json::json!({
            "user_id": added.user_id,
            "team_id": added.team_id,
            "email": added.email,
        });
        out(&format!("{v:#}\n"));
    } else {
        out(&format!(
            "Added {} to {database}.\nuser: {}\nteam: {}\nThey log in with: wrenn login --email {}\n",
            added.email, added.user_id, added.team_id, added.email
        ));
    }
    Ok(())
}
