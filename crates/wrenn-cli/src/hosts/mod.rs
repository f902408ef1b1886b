//! `wrenn hosts …`: the administrator's commands for the control plane's hosts, run on the
//! control plane's host against its database (the SQLite file in the data directory, or
//! `DATABASE_URL`), like `wrenn accounts add`. This file holds the command enum and its
//! dispatch; `join` makes join tokens (`add`, `rotate`). A failure is one `error: …` line
//! and exit code 1.

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
}

/// Where the control plane's database is.
#[derive(clap::Args)]
pub struct DbArgs {
    /// Data directory of the control plane (its SQLite file when DATABASE_URL is not set).
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
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
