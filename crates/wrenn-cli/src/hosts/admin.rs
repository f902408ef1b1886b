//! `wrenn hosts list | drain | undrain | remove [--force]` against the control plane's
//! database. Running control planes see a change at their next heartbeat (every 2 s by
//! default): a drained host gets no new sandboxes, a removed one is forgotten. A host's agent
//! token is never printed.

use super::{DbArgs, HostArgs, RemoveArgs};
use crate::client::out;
use crate::daemon::{is_postgres, secure_data_dir};
use std::sync::Arc;
use wrenn_server::store::{HostRecord, RemovedHost, Store};
use wrenn_server::ServerConfig;

/// The store of the control plane whose data dir (or `DATABASE_URL`) is `db`.
async fn open(db: &DbArgs) -> Result<Arc<dyn Store>, String> {
    // No JWT is signed here: the secret is not needed.
    let mut cfg = ServerConfig::new(db.data_dir.clone(), Vec::new());
    cfg.database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    if !is_postgres(cfg.database_url.as_deref()) {
        secure_data_dir(&db.data_dir).map_err(|e| format!("{e:#}"))?;
    }
    wrenn_server::open_store(&cfg)
        .await
        .map_err(|e| format!("opening the database: {e}"))
}

fn host_json(h: &HostRecord) -> serde_json::Value {
    serde_json::json!({
        "id": h.id,
        "url": h.url,
        "status": h.status.as_str(),
        "draining": h.draining,
        "cpus": h.cpus,
        "total_memory_mb": h.total_memory_mb,
        "free_memory_mb": h.free_memory_mb,
        "running": h.running,
        "last_seen": h.last_seen.map(|t| wrenn_types::time::Timestamp::from(t).to_string()),
        "created_at": wrenn_types::time::Timestamp::from(h.created_at).to_string(),
    })
}

/// One table line per host (or a JSON array).
pub async fn list(db: DbArgs, json: bool) -> Result<(), String> {
    let hosts = open(&db)
        .await?
        .list_hosts()
        .await
        .map_err(|e| e.to_string())?;
    if json {
        let v: Vec<_> = hosts.iter().map(host_json).collect();
        out(&format!("{:#}\n", serde_json::Value::Array(v)));
        return Ok(());
    }
    let mut text = format!(
        "{:<38} {:<12} {:<8} {:>4} {:>17} {:>7}  {:<24} {}\n",
        "ID", "STATUS", "DRAINING", "CPUS", "FREE/TOTAL MiB", "RUNNING", "LAST SEEN", "URL"
    );
    for h in &hosts {
        let seen = h
            .last_seen
            .map(|t| wrenn_types::time::Timestamp::from(t).to_string())
            .unwrap_or_else(|| "never".into());
        text.push_str(&format!(
            "{:<38} {:<12} {:<8} {:>4} {:>17} {:>7}  {:<24} {}\n",
            h.id,
            h.status.as_str(),
            if h.draining { "yes" } else { "no" },
            h.cpus,
            format!("{}/{}", h.free_memory_mb, h.total_memory_mb),
            h.running,
            seen,
            h.url,
        ));
    }
    out(&text);
    Ok(())
}

/// Sets or clears a host's drain flag.
pub async fn drain(a: HostArgs, draining: bool, json: bool) -> Result<(), String> {
    let store = open(&a.db).await?;
    let found = store
        .set_host_draining(&a.host_id, draining)
        .await
        .map_err(|e| e.to_string())?;
    if !found {
        return Err(format!("no host {} (see wrenn hosts list)", a.host_id));
    }
    if json {
        out(&format!(
            "{:#}\n",
            serde_json::json!({"id": a.host_id, "draining": draining})
        ));
    } else if draining {
        out(&format!(
            "Host {} is draining: it gets no new sandboxes; those on it stay.\n",
            a.host_id
        ));
    } else {
        out(&format!("Host {} takes new sandboxes again.\n", a.host_id));
    }
    Ok(())
}

/// Removes a host (refused with sandboxes unless forced).
pub async fn remove(a: RemoveArgs, json: bool) -> Result<(), String> {
    let store = open(&a.db).await?;
    let done = store
        .remove_host(&a.host_id, a.force)
        .await
        .map_err(|e| e.to_string())?;
    match done {
        RemovedHost::NotFound => Err(format!("no host {} (see wrenn hosts list)", a.host_id)),
        RemovedHost::HasSandboxes(n) => Err(format!(
            "host {} has {n} sandbox(es); destroy them first, or use --force to remove the \
             host and forget their records",
            a.host_id
        )),
        RemovedHost::Removed { sandboxes } => {
            if json {
                out(&format!(
                    "{:#}\n",
                    serde_json::json!({"id": a.host_id, "removed": true, "forgotten_sandboxes": sandboxes})
                ));
            } else if sandboxes > 0 {
                out(&format!(
                    "Removed host {} and the records of its {sandboxes} sandbox(es).\n",
                    a.host_id
                ));
            } else {
                out(&format!("Removed host {}.\n", a.host_id));
            }
            Ok(())
        }
    }
}
