//! Embedded backend: SQLite in WAL mode, the local default.
//!
//! Several server processes on one machine share one database file: every claim and every apply
//! runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock at the start, so the
//! term check, the effect and the command record commit atomically and in one global order
//! across processes. The busy timeout makes a process wait for the lock instead of failing.
//!
//! # Schema
//! - `fence(id = 1, term, holder, seq)`: the one fencing record.
//! - `kv(key PRIMARY KEY, value)`: each value as its JSON text (exact round trip).
//! - `commands(id PRIMARY KEY, seq, term, fingerprint, outcome, at_ms)`: the exactly-once log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bully_client::{Command, Entry};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::logic::{self, Effect, ListQuery};
use super::{Applied, FenceState, Record, Result, Store, StoreError};

/// How long a process waits for another one's write lock before reporting the store unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct EmbeddedStore {
    // One connection per process. The mutex is held only inside `spawn_blocking`, never across
    // an await, and the executor applies commands one at a time anyway, so it is uncontended on
    // the hot path; a std Mutex suffices.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unavailable(&path, e))?;
        // Switching a fresh file to WAL answers SQLITE_BUSY at once, without the busy timeout,
        // when another process does the same: several servers start together on one file.
        retry_busy(&path, || conn.pragma_update(None, "journal_mode", "WAL"))?;
        // FULL: a command acknowledged to a client survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| unavailable(&path, e))?;
        retry_busy(&path, || {
            conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS fence (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 term INTEGER NOT NULL, holder TEXT NOT NULL, seq INTEGER NOT NULL);
             INSERT OR IGNORE INTO fence (id, term, holder, seq) VALUES (1, 0, '', 0);
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS commands (
                 id TEXT PRIMARY KEY, seq INTEGER NOT NULL, term INTEGER NOT NULL,
                 fingerprint TEXT NOT NULL, outcome TEXT NOT NULL, at_ms INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS commands_at ON commands (at_ms);",
        )
        })?;
        Ok(EmbeddedStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Unavailable("store connection poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// Runs `f` again while SQLite answers busy or locked, up to the busy timeout.
fn retry_busy<T>(path: &Path, mut f: impl FnMut() -> rusqlite::Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map_err(|e| unavailable(path, e)),
        }
    }
}

fn unavailable(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn fence(tx: &rusqlite::Transaction<'_>) -> Result<FenceState> {
    tx.query_row(
        "SELECT term, holder, seq FROM fence WHERE id = 1",
        [],
        |row| {
            Ok(FenceState {
                term: to_u64(row.get(0)?),
                holder: row.get(1)?,
                seq: to_u64(row.get(2)?),
            })
        },
    )
    .map_err(sql)
}

fn load_record(conn: &Connection, id: &str) -> Result<Option<(Record, String)>> {
    let row = conn
        .query_row(
            "SELECT seq, term, outcome, fingerprint FROM commands WHERE id = ?1",
            [id],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            },
        )
        .optional()
        .map_err(sql)?;
    match row {
        None => Ok(None),
        Some((seq, term, outcome, fingerprint)) => Ok(Some((
            Record {
                id: id.to_string(),
                seq: to_u64(seq),
                term: to_u64(term),
                outcome: parse(&outcome, "stored outcome")?,
            },
            fingerprint,
        ))),
    }
}

fn apply_in(conn: &mut Connection, term: u64, id: &str, command: &Command) -> Result<Applied> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let state = fence(&tx)?;
    // Term 0 is the state before any claim: nobody holds it.
    if state.term != term || term == 0 {
        return Err(StoreError::Fenced {
            mine: term,
            current: state.term,
        });
    }
    let fingerprint = logic::fingerprint(command);
    if !command.is_read()
        && let Some((record, stored)) = load_record(&tx, id)?
    {
        if stored != fingerprint {
            return Err(StoreError::IdConflict { id: id.to_string() });
        }
        return Ok(Applied {
            seq: record.seq,
            term: record.term,
            outcome: record.outcome,
            duplicate: true,
        });
    }
    let seq = state.seq + 1;
    let outcome = match ListQuery::from_command(command, bully_client::DEFAULT_MAX_PAGE) {
        Some(query) => logic::page(&query, list(&tx, &query)?),
        None => {
            let key = logic::key_of(command).unwrap_or_default();
            let current: Option<Value> = tx
                .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
                    row.get::<_, String>(0)
                })
                .optional()
                .map_err(sql)?
                .map(|text| parse(&text, "stored value"))
                .transpose()?;
            let (outcome, effect) = logic::evaluate(command, current.as_ref());
            match effect {
                Effect::None => {}
                Effect::Set(value) => {
                    tx.execute(
                        "INSERT INTO kv (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![key, value.to_string()],
                    )
                    .map_err(sql)?;
                }
                Effect::Remove => {
                    tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                        .map_err(sql)?;
                }
            }
            outcome
        }
    };
    tx.execute("UPDATE fence SET seq = ?1 WHERE id = 1", [seq as i64])
        .map_err(sql)?;
    if !command.is_read() {
        let outcome_text = serde_json::to_string(&outcome)
            .map_err(|e| StoreError::Corrupt(format!("outcome: {e}")))?;
        tx.execute(
            "INSERT INTO commands (id, seq, term, fingerprint, outcome, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                seq as i64,
                term as i64,
                fingerprint,
                outcome_text,
                super::now_ms()
            ],
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(Applied {
        seq,
        term,
        outcome,
        duplicate: false,
    })
}

fn list(tx: &rusqlite::Transaction<'_>, query: &ListQuery) -> Result<Vec<Entry>> {
    // SQLite compares TEXT with memcmp (BINARY collation), the same order as Rust's `str`.
    // Range scan from max(prefix, after) and stop at the first key outside the prefix.
    let start = match &query.after {
        Some(after) if after.as_str() >= query.prefix.as_str() => after.clone(),
        _ => query.prefix.clone(),
    };
    let mut stmt = tx
        .prepare_cached("SELECT key, value FROM kv WHERE key >= ?1 ORDER BY key")
        .map_err(sql)?;
    let mut rows = stmt.query([start]).map_err(sql)?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let key: String = row.get(0).map_err(sql)?;
        if !key.starts_with(&query.prefix) {
            break;
        }
        if !query.matches(&key) {
            continue;
        }
        let value: String = row.get(1).map_err(sql)?;
        entries.push(Entry {
            key,
            value: parse(&value, "stored value")?,
        });
        if entries.len() > query.limit {
            break;
        }
    }
    Ok(entries)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn claim_term(&self, holder: &str) -> Result<u64> {
        let holder = holder.to_string();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let term = fence(&tx)?.term + 1;
            tx.execute(
                "UPDATE fence SET term = ?1, holder = ?2 WHERE id = 1",
                params![term as i64, holder],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(term)
        })
        .await
    }

    async fn apply(&self, term: u64, id: &str, command: &Command) -> Result<Applied> {
        let id = id.to_string();
        let command = command.clone();
        self.with_conn(move |conn| apply_in(conn, term, &id, &command))
            .await
    }

    async fn fence_state(&self) -> Result<FenceState> {
        self.with_conn(|conn| {
            let tx = conn.transaction().map_err(sql)?;
            fence(&tx)
        })
        .await
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        let id = id.to_string();
        self.with_conn(move |conn| Ok(load_record(conn, &id)?.map(|(record, _)| record)))
            .await
    }

    async fn expire(&self, before_ms: i64) -> Result<u64> {
        self.with_conn(move |conn| {
            let n = conn
                .execute("DELETE FROM commands WHERE at_ms < ?1", [before_ms])
                .map_err(sql)?;
            Ok(n as u64)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[test]
    fn concurrent_first_opens_of_a_fresh_file_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fresh.db");
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        EmbeddedStore::open(&path).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().expect("open");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn embedded_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicU32::new(0);
        conformance::run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("case-{n}.db"));
            async move {
                let a: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
                let b: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
                (a, b)
            }
        })
        .await;
    }
}
