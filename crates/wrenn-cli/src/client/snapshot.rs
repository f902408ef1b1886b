//! `wrenn snapshot create|list|rm`: snapshot templates. Creating one consumes the running
//! sandbox (it is paused, saved as a template and destroyed); new sandboxes start from it with
//! `wrenn sandbox create --template NAME`.

use super::api::{segment, Auth, Failure};
use super::output::{size, table, when, Spinner};
use super::{out, Ctx};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use wrenn_types::api::{CreateSnapshotRequest, Template};

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Base,
    Snapshot,
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Save a running sandbox as a template; the sandbox is destroyed.
    Create {
        /// Sandbox ID.
        id: String,
        /// Template name (default: chosen by the server).
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing snapshot of that name.
        #[arg(long)]
        overwrite: bool,
    },
    /// List templates: base images and snapshots.
    List {
        /// Only one type.
        #[arg(long = "type", value_enum)]
        kind: Option<Kind>,
    },
    /// Delete a snapshot template.
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCommand) -> Result<i32, Failure> {
    match cmd {
        SnapshotCommand::Create {
            id,
            name,
            overwrite,
        } => {
            let mut rb = ctx
                .api
                .request(Method::POST, "/v1/snapshots", Auth::Key)?
                .json(&CreateSnapshotRequest {
                    sandbox_id: id.clone(),
                    name,
                });
            if overwrite {
                rb = rb.query(&[("overwrite", "true")]);
            }
            let spin = Spinner::start("taking snapshot");
            let result = ctx.api.json::<Template>(rb).await;
            drop(spin);
            let (t, raw) = result?;
            if ctx.json {
                ctx.print_json(&raw);
            } else {
                out(&format!(
                    "Snapshot {} created from {id} ({}); {id} no longer exists.\n\
                     Start a sandbox from it: wrenn sandbox create --template {}\n",
                    t.name,
                    size(t.size_bytes.max(0) as u64),
                    t.name
                ));
            }
        }
        SnapshotCommand::List { kind } => {
            let mut rb = ctx.api.request(Method::GET, "/v1/snapshots", Auth::Key)?;
            if let Some(k) = kind {
                let v = match k {
                    Kind::Base => "base",
                    Kind::Snapshot => "snapshot",
                };
                rb = rb.query(&[("type", v)]);
            }
            let (list, raw) = ctx.api.json::<Vec<Template>>(rb).await?;
            if ctx.json {
                ctx.print_json(&raw);
            } else {
                let opt = |v: Option<i64>| v.map_or("-".into(), |n| n.to_string());
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.name,
                            t.kind,
                            opt(t.vcpus),
                            opt(t.memory_mb),
                            size(t.size_bytes.max(0) as u64),
                            when(Some(&t.created_at)),
                        ]
                    })
                    .collect();
                out(&table(
                    &["NAME", "TYPE", "VCPUS", "MEMORY", "SIZE", "CREATED"],
                    &rows,
                ));
            }
        }
        SnapshotCommand::Rm { name } => {
            let path = format!("/v1/snapshots/{}", segment(&name));
            let rb = ctx.api.request(Method::DELETE, &path, Auth::Key)?;
            ctx.api.send(rb).await?;
            if !ctx.json {
                out(&format!("Deleted snapshot {name}.\n"));
            }
        }
    }
    Ok(0)
}
