//! `wrenn-envd`: the daemon inside every Wrenn guest. It serves the API of
//! [`wrenn_types::envd`] on TCP (port [`ENVD_PORT`] by default): buffered and streamed exec,
//! background processes (started, listed, signalled, attached to), interactive terminals
//! (`/pty`), streaming file reads and
//! writes, health, and setting the wall clock.
//!
//! It is a small static binary started at every boot, so it runs on a single-threaded
//! runtime and reads users from `/etc/passwd` itself (no NSS). This file only parses flags,
//! sets up logging and serves the router of [`api`].

mod api;
mod attach;
mod clock;
mod exec;
mod files;
mod fsops;
mod process;
mod procs;
mod procs_api;
mod pty;
mod pty_session;
mod stream;
mod users;
mod utf8;

use anyhow::Context as _;
use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr};
use tracing_subscriber::filter::LevelFilter;
use wrenn_types::envd::{DEFAULT_MAX_OUTPUT_BYTES, ENVD_PORT};

/// The in-guest daemon of Wrenn sandboxes.
#[derive(Debug, Parser)]
#[command(name = "wrenn-envd", version)]
struct Args {
    /// Address to listen on (an IP address and port; no host names).
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, ENVD_PORT)))]
    listen: SocketAddr,
    /// Upper bound on the captured stdout and stderr (each) of a buffered exec.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    max_output_bytes: usize,
    /// Upper bound on the size of one uploaded file (default: only the disk limits it).
    #[arg(long)]
    max_upload_bytes: Option<u64>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "WRENN_ENVD_LOG", default_value = "info")]
    log_level: LevelFilter,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(args.log_level)
        .init();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let state = api::AppState {
        users: users::UserDb::default(),
        max_output_bytes: args.max_output_bytes,
        max_upload_bytes: args.max_upload_bytes,
        procs: Default::default(),
        terminals: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!("listening on {local}");
    axum::serve(listener, api::router(state))
        .await
        .context("serving")
}
