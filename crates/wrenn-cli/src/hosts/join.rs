//! `wrenn hosts add [--ttl]` and `wrenn hosts rotate HOST_ID`: one-time join tokens, made on
//! the control plane's host against its database and data directory (the CA is created in
//! `<data_dir>/pki` on first need). The token is printed once, with the command that joins
//! a host with it; the database keeps only its hash.

use super::DbArgs;
use crate::client::out;
use crate::daemon::secure_data_dir;
use std::time::Duration;
use wrenn_server::app::host_join::new_join_token;
use wrenn_server::ServerConfig;

#[derive(clap::Args)]
pub struct AddArgs {
    /// How long the token can be used: seconds, or a number with s, m, h or d (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Args)]
pub struct RotateArgs {
    /// The host whose credentials the token replaces (as `wrenn hosts list` shows it).
    pub host_id: String,
    /// How long the token can be used: seconds, or a number with s, m, h or d (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `90`, `90s`, `15m`, `1h`, `2d`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h or 2d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    if secs == 0 {
        return Err("the ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

pub async fn add(args: AddArgs, json: bool) -> Result<(), String> {
    make(None, args.ttl, &args.db, json).await
}

pub async fn rotate(args: RotateArgs, json: bool) -> Result<(), String> {
    make(Some(&args.host_id), args.ttl, &args.db, json).await
}

async fn make(rotate: Option<&str>, ttl: Duration, db: &DbArgs, json: bool) -> Result<(), String> {
    let mut cfg = ServerConfig::new(db.data_dir.clone(), Vec::new());
    cfg.database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    // The CA lives in the data dir whatever the database; kept private like the server's.
    secure_data_dir(&db.data_dir).map_err(|e| format!("{e:#}"))?;
    let store = wrenn_server::store::open(&cfg.effective_database_url())
        .await
        .map_err(|e| format!("opening the database: {e}"))?;
    let (token, rec) = new_join_token(&*store, &db.data_dir, rotate, ttl)
        .await
        .map_err(|e| e.to_string())?;
    let expires = wrenn_types::time::Timestamp::from(rec.expires_at).to_string();
    if json {
        let v = serde_json::json!({
            "id": rec.id,
            "token": token.expose(),
            "host_id": rec.host_id,
            "ca_sha256": token.ca_pin,
            "expires_at": expires,
        });
        out(&format!("{v:#}\n"));
        return Ok(());
    }
    let what = match rotate {
        Some(id) => format!("rotates the credentials of host {id}"),
        None => "joins one new host".to_string(),
    };
    out(&format!(
        "Join token ({what}; usable once, until {expires}):\n\n  {}\n\n\
         On the host, with the token in a file only root can read (or in $WRENN_JOIN_TOKEN):\n\n  \
         wrenn agent --join http://CONTROL_PLANE:8080 --token-file /etc/wrenn/join-token \\\n      \
         --listen 0.0.0.0:7443 --advertise https://HOST_IP:7443{}\n\n\
         The token pins this control plane's CA (SHA-256 {}).\n",
        token.expose(),
        if rotate.is_some() { " --rejoin" } else { "" },
        token.ca_pin,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172800));
        for bad in ["", "0", "h", "1w", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
