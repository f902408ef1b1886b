//! `wrenn hosts …`: the administrator's commands for the control plane's hosts, run on the
//! control plane's host against its database (the SQLite file in the data directory, or
//! `DATABASE_URL`), like `wrenn accounts add`. This file holds the command enum and its
//! dispatch; `admin` lists, drains, undrains and removes hosts; `join` makes join tokens
//! (`add`, `rotate`). A failure is one `error: …` line and exit code 1.

mod admin;
mod join;

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum HostsCommand {
    /// Make a one-time join token for a new host (`wrenn agent --join URL` uses it); creates
    /// the control plane's CA in the data directory on first use. Printed once.
    Add(join::AddArgs),
    /// Make a one-time token that replaces a host's credentials (`wrenn agent --join URL
    /// --rejoin` on that host uses it).
    Rotate(join::RotateArgs),
    /// List the hosts: id, URL, health as the control planes last saw it, drain flag,
    /// capacity and sandboxes running.
    List(DbArgs),
    /// Stop placing new sandboxes on a host; the sandboxes on it stay as they are.
    Drain(HostArgs),
    /// Place new sandboxes on a drained host again.
    Undrain(HostArgs),
    /// Remove a host. Refused while sandboxes are placed on it, unless --force, which
    /// forgets their records with it (their VMs are not touched).
    Remove(RemoveArgs),
}

/// Where the control plane's database is.
#[derive(clap::Args)]
pub struct DbArgs {
    /// Data directory of the control plane (its SQLite file when DATABASE_URL is not set).
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct HostArgs {
    /// The host's id (as `wrenn hosts list` shows it).
    pub host_id: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The host's id (as `wrenn hosts list` shows it).
    pub host_id: String,
    /// Remove it even with sandboxes placed on it, forgetting their records.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Runs one `wrenn hosts` command; returns the process exit code.
pub fn main(command: HostsCommand, json: bool) -> i32 {
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
        match command {
            HostsCommand::Add(a) => join::add(a, json).await,
            HostsCommand::Rotate(a) => join::rotate(a, json).await,
            HostsCommand::List(db) => admin::list(db, json).await,
            HostsCommand::Drain(a) => admin::drain(a, true, json).await,
            HostsCommand::Undrain(a) => admin::drain(a, false, json).await,
            HostsCommand::Remove(a) => admin::remove(a, json).await,
        }
    });
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}
