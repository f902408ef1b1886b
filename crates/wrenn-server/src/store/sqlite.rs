//! The SQLite backend (the default): one database file, WAL journal synced at every commit
//! (a write reported done survives a power loss: the reconciler trusts the database to
//! know every sandbox it was told of, and destroys VMs it does not know), foreign keys on,
//! migrations from `migrations/sqlite`. The queries themselves live in [`super::sql`].
//! The file holds password hashes, API key hashes and agent tokens: it and its `-wal` and
//! `-shm` files are readable by their owner only.

use super::StoreError;
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// A [`super::Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        owner_only(path).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite gives the `-wal`
/// and `-shm` files it creates the database file's mode; on its own it would make all three
/// 0644), and takes group and other access away from files an older version left readable.
fn owner_only(path: &Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    // An empty file is a valid, empty database.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        match std::fs::metadata(file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                let mode = m.permissions().mode() & 0o7700;
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A directory of its own under the system's temporary directory.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wrenn-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn the_database_and_its_journal_files_are_owner_only() {
        let dir = scratch("new");
        let db = dir.join("wrenn.db");
        let store = SqliteStore::open(&db).await.unwrap();
        // A write, so the WAL and shared-memory files exist.
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&store.pool)
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("wrenn.db{suffix}"));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        store.pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_readable_database_of_an_older_version_is_closed_to_others() {
        let dir = scratch("old");
        let db = dir.join("wrenn.db");
        {
            let store = SqliteStore::open(&db).await.unwrap();
            store.pool.close().await;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("wrenn.db{suffix}"));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let store = SqliteStore::open(&db).await.unwrap();
        assert_eq!(mode(&db), 0o600);
        sqlx::query("SELECT 1").execute(&store.pool).await.unwrap();
        assert_eq!(mode(&dir.join("wrenn.db-wal")), 0o600);
        store.pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

super::sql::impl_store!(SqliteStore, sqlx::Sqlite, single_writer = true);
