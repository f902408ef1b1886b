//! `wrenn`: one binary for every role — `up` (control plane and agent in one process),
//! `server`, `agent`, `images build`, `doctor`, `accounts add`, `hosts` — and the client of the public
//! API.

mod accounts;
mod client;
mod daemon;
mod doctor;
mod hosts;
mod service;
mod settings;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "wrenn",
    version,
    about = "Wrenn: microVM sandboxes for untrusted code"
)]
struct Cli {
    #[command(flatten)]
    client: client::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the guest kernel, initramfs and base templates (cached; a no-op when up to date).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Run the whole system in one process: control plane, host agent, SQLite.
    Up(Box<daemon::UpArgs>),
    /// Run the control plane alone.
    Server(daemon::ServerArgs),
    /// Run a host agent: owns the microVMs of this host and serves the internal API.
    Agent(daemon::AgentArgs),
    /// Check this host the way the agent will use it: programs, network, accelerator, disk,
    /// memory, data directory, images. One line per check; exits 1 when one fails.
    Doctor(doctor::DoctorArgs),
    /// Administer accounts on the control plane's host, through its database (no server
    /// needed): `wrenn accounts add` works when signup is closed.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    /// Administer the hosts on the control plane's host, through its database (no server
    /// needed): join tokens (add, rotate), list, drain, undrain, remove.
    Hosts {
        #[command(subcommand)]
        command: hosts::HostsCommand,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build missing or outdated images.
    Build {
        /// Data directory.
        #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
        data_dir: PathBuf,
        /// Static wrenn-envd to install in templates (default: found next to this binary).
        #[arg(long, env = "WRENN_ENVD_BIN")]
        envd_bin: Option<PathBuf>,
        /// Rebuild everything, cached or not.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        // Client commands print one `error:` line and exit with their own code.
        std::process::exit(client::main(cli.client, command));
    }
    if let Command::Accounts { command } = cli.command {
        std::process::exit(accounts::main(command, cli.client.json));
    }
    if let Command::Hosts { command } = cli.command {
        std::process::exit(hosts::main(command, cli.client.json));
    }
    daemon::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Images {
                command:
                    ImagesCommand::Build {
                        data_dir,
                        envd_bin,
                        force,
                    },
            } => daemon::build_images(data_dir, envd_bin, force).await,
            Command::Up(args) => daemon::run_up(*args).await,
            Command::Server(args) => daemon::run_server(args).await,
            Command::Agent(args) => daemon::run_agent(args).await,
            Command::Doctor(args) => {
                if !doctor::run_doctor(args).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Client(_) | Command::Accounts { .. } | Command::Hosts { .. } => {
                unreachable!("handled above")
            }
        }
    })
}
