//! Embedded backend: SQLite in WAL mode, the local default.
//!
//! Several server processes on one machine share one database file: every claim and every batch
//! that writes runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock at the
//! start, so the term check, the effects and the command records commit atomically and in one
//! global order across processes, with one fsync for the whole batch. A batch of reads only
//! runs in a read transaction: its snapshot holds the fence it checks and the values it reads,
//! and nothing is written or synced. The busy timeout makes a process wait for the lock instead
//! of failing.
//!
//! # Checkpoints
//! SQLite's automatic checkpoint runs on the committing connection, after the commit: every
//! thousand WAL pages the executor would stop to copy them into the database file and fsync it,
//! with every command behind it waiting. Instead a checkpointer thread with its own connection
//! copies pages in the background (every 100 ms, `PASSIVE`: it never blocks a writer),
//! and once the WAL holds 16 MiB it finishes with a `TRUNCATE` checkpoint, which
//! waits for the commit under way, copies what is left (little: the passive rounds did the rest)
//! and empties the file, so the WAL stays bounded under a continuous write load. The automatic
//! checkpoint stays as a backstop, far above that bound, should the thread fall behind.
//!
//! # Schema
//! - `fence(id = 1, term, holder, seq, lease_at, lease_ms)`: the one fencing record; the
//!   holder's lease runs `lease_ms` from `lease_at` (milliseconds of SQLite's clock, which is
//!   the clock of the one machine every process sharing the file runs on).
//! - `kv(key PRIMARY KEY, value)`: each value as its JSON text (exact round trip).
//! - `commands(id PRIMARY KEY, seq, term, fingerprint, outcome, at_ms)`: the exactly-once log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bully_client::Entry;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::logic::{self, ListQuery, Snapshot};
use super::{Applied, Claim, FenceState, Op, Record, Result, Store, StoreError};

/// How long a process waits for another one's write lock before reporting the store unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the checkpointer copies WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL pages (4 KiB each) at which the checkpointer empties the WAL: 16 MiB.
const RESTART_FRAMES: i64 = 4096;

/// WAL pages at which a committing connection checkpoints by itself (the backstop): 64 MiB.
const BACKSTOP_FRAMES: i64 = 4 * RESTART_FRAMES;

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
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_FRAMES)
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
        // Files from before leases existed get the lease columns.
        // (Checked and altered under the write lock: processes opening one file at once.)
        retry_busy(&path, || {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let migrated = (|| {
                let has_lease: bool = conn
                    .prepare("SELECT 1 FROM pragma_table_info('fence') WHERE name = 'lease_at'")?
                    .exists([])?;
                if !has_lease {
                    conn.execute_batch(
                        "ALTER TABLE fence ADD COLUMN lease_at INTEGER NOT NULL DEFAULT 0;
                         ALTER TABLE fence ADD COLUMN lease_ms INTEGER NOT NULL DEFAULT 0;",
                    )?;
                }
                Ok(())
            })();
            match migrated {
                Ok(()) => conn.execute_batch("COMMIT"),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })?;
        let conn = Arc::new(Mutex::new(conn));
        spawn_checkpointer(&path, Arc::downgrade(&conn))?;
        Ok(EmbeddedStore { conn, path })
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

/// Starts the background checkpointer of the module docs; it ends once `store` is dropped.
fn spawn_checkpointer(path: &Path, store: std::sync::Weak<Mutex<Connection>>) -> Result<()> {
    let conn = Connection::open(path).map_err(|e| unavailable(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| unavailable(path, e))?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            while store.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                match checkpoint(&conn, RESTART_FRAMES) {
                    Ok(()) => failing = false,
                    // Said once per run of failures; the backstop keeps the WAL bounded.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(store = %shown, error = %e, "background checkpoint failed");
                    }
                    Err(_) => {}
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}

/// One checkpointer round: copy what it can without blocking anyone; empty the WAL once it
/// holds `restart_frames` pages.
fn checkpoint(conn: &Connection, restart_frames: i64) -> rusqlite::Result<()> {
    let wal_frames = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get::<_, i64>(1)
        })
    };
    if wal_frames("PASSIVE")? >= restart_frames {
        wal_frames("TRUNCATE")?;
    }
    Ok(())
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

/// The store's clock: milliseconds since the Unix epoch, as SQLite reads it.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

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
        .prepare_cached("SELECT seq, term, outcome, fingerprint FROM commands WHERE id = ?1")
        .map_err(sql)?
        .query_row([id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
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

/// The stored value of `key`, if any.
fn stored_value(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<Option<serde_json::Value>> {
    let stored = tx
        .prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .map_err(sql)?
        .query_row([key], |row| row.get::<_, String>(0))
        .optional()
        .map_err(sql)?;
    stored.map(|text| parse(&text, "stored value")).transpose()
}

/// One batch in one transaction: `BEGIN IMMEDIATE` (the write lock, held to the commit) when
/// it writes, a plain read transaction (a consistent snapshot, no fsync) when it only reads.
fn apply_batch_in(conn: &mut Connection, term: u64, ops: &[Op]) -> Result<Vec<Result<Applied>>> {
    let writes = ops.iter().any(|op| !op.command.is_read());
    let behavior = if writes {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let tx = conn.transaction_with_behavior(behavior).map_err(sql)?;
    let state = fence(&tx)?;
    // Term 0 is the state before any claim: nobody holds it.
    if state.term != term || term == 0 {
        return Err(StoreError::Fenced {
            mine: term,
            current: state.term,
        });
    }
    let mut snapshot = Snapshot::default();
    let mut needed = logic::NeededValues::default();
    for op in ops {
        if !op.command.is_read()
            && !snapshot.records.contains_key(&op.id)
            && let Some(found) = load_record(&tx, &op.id)?
        {
            snapshot.records.insert(op.id.clone(), found);
        }
        if let Some(key) = needed.first_read(op, &snapshot)
            && let Some(value) = stored_value(&tx, key)?
        {
            snapshot.values.insert(key.to_string(), value);
        }
    }
    // Leases: the reserved keys the batch's commands need, in (at most two) rounds.
    loop {
        let keys = logic::extra_reads(ops, &snapshot);
        if keys.is_empty() {
            break;
        }
        for key in keys {
            if let Some(value) = stored_value(&tx, &key)? {
                snapshot.values.insert(key.clone(), value);
            }
            snapshot.fetched.insert(key);
        }
    }
    for (query, n) in logic::list_scans(ops) {
        snapshot.lists.push(scan(&tx, &query, n)?);
    }
    let plan = logic::plan_batch(term, state.seq, ops, &snapshot)?;
    for (key, value) in &plan.values {
        match value {
            Some(value) => tx
                .prepare_cached(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(params![key, value.to_string()]))
                .map_err(sql)?,
            None => tx
                .prepare_cached("DELETE FROM kv WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(sql)?,
        };
    }
    let now = super::now_ms();
    for new in &plan.records {
        tx.prepare_cached(
            "INSERT INTO commands (id, seq, term, fingerprint, outcome, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                new.record.id,
                new.record.seq as i64,
                new.record.term as i64,
                new.fingerprint,
                new.outcome_json,
                now
            ])
        })
        .map_err(sql)?;
    }
    if plan.seq != state.seq {
        // Writing anyway: renew the lease in the same statement.
        tx.prepare_cached(&format!(
            "UPDATE fence SET seq = ?1, lease_at = {NOW_MS} WHERE id = 1"
        ))
        .and_then(|mut s| s.execute([plan.seq as i64]))
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(plan.results)
}

/// Sets `assignment` on the fence if `term` is current.
fn lease_update(conn: &mut Connection, term: u64, assignment: &str) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let state = fence(&tx)?;
    if state.term != term || term == 0 {
        return Err(StoreError::Fenced {
            mine: term,
            current: state.term,
        });
    }
    tx.execute(&format!("UPDATE fence SET {assignment} WHERE id = 1"), [])
        .map_err(sql)?;
    tx.commit().map_err(sql)
}

/// Up to `n` stored entries of `query`'s range, in key order.
fn scan(tx: &rusqlite::Transaction<'_>, query: &ListQuery, n: usize) -> Result<Vec<Entry>> {
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
    while entries.len() < n
        && let Some(row) = rows.next().map_err(sql)?
    {
        let key: String = row.get(0).map_err(sql)?;
        // The server's own keys sort after every user key.
        if !key.starts_with(&query.prefix)
            || (!query.reserved() && key.starts_with(bully_client::RESERVED_PREFIX))
        {
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
    }
    Ok(entries)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<u64> {
        let holder = claim.holder.to_string();
        let breaks = claim.break_holder.map(String::from);
        let lease_ms = claim.lease.as_millis() as i64;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let (term, current, lease_at, lease, now): (i64, String, i64, i64, i64) = tx
                .query_row(
                    &format!(
                        "SELECT term, holder, lease_at, lease_ms, {NOW_MS} FROM fence WHERE id = 1"
                    ),
                    [],
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    },
                )
                .map_err(sql)?;
            let remaining = lease_at + lease - now;
            if remaining > 0 && current != holder && breaks.as_deref() != Some(current.as_str()) {
                return Err(StoreError::LeaseHeld {
                    holder: current,
                    remaining_ms: remaining as u64,
                });
            }
            let term = to_u64(term) + 1;
            tx.execute(
                &format!(
                    "UPDATE fence SET term = ?1, holder = ?2, lease_at = {NOW_MS}, lease_ms = ?3
                     WHERE id = 1"
                ),
                params![term as i64, holder, lease_ms],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(term)
        })
        .await
    }

    async fn renew_lease(&self, term: u64) -> Result<()> {
        self.with_conn(move |conn| lease_update(conn, term, &format!("lease_at = {NOW_MS}")))
            .await
    }

    async fn release_lease(&self, term: u64) -> Result<()> {
        self.with_conn(move |conn| lease_update(conn, term, "lease_ms = 0"))
            .await
    }

    async fn apply_batch(&self, term: u64, ops: &[Op]) -> Result<Vec<Result<Applied>>> {
        let ops = ops.to_vec();
        self.with_conn(move |conn| apply_batch_in(conn, term, &ops))
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

    #[test]
    fn a_checkpoint_empties_a_large_wal_and_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        // The schema; then no background checkpointer and no automatic checkpoint, so that
        // only the calls below move pages.
        drop(EmbeddedStore::open(&path).unwrap());
        std::thread::sleep(CHECKPOINT_EVERY * 3);
        let mut writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        let value = "x".repeat(3000);
        for batch in 0..40 {
            let tx = writer.transaction().unwrap();
            for i in 0..20 {
                tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                    params![format!("k{batch:03}-{i:02}"), value],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let wal = dir.path().join("wal.db-wal");
        let frames = |conn: &Connection| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(1)
            })
            .unwrap()
        };
        let checkpointer = Connection::open(&path).unwrap();
        // Below the bound: pages are copied, the WAL is kept.
        checkpoint(&checkpointer, i64::MAX).unwrap();
        assert!(
            frames(&checkpointer) >= 800,
            "800 pages of writes are in the WAL"
        );
        // At the bound: emptied.
        checkpoint(&checkpointer, 800).unwrap();
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "the WAL is truncated"
        );
        let count: i64 = writer
            .query_row(
                "SELECT count(*) FROM kv WHERE value = ?1",
                [&value],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(count, 800, "every write survives the checkpoint");
    }

    /// Fresh files in one directory; poisoning installs a trigger that aborts a write of
    /// [`conformance::POISON`] in the latest one.
    struct Files {
        dir: tempfile::TempDir,
        cases: std::sync::atomic::AtomicU32,
    }

    impl Files {
        fn latest(&self) -> PathBuf {
            let n = self.cases.load(std::sync::atomic::Ordering::SeqCst);
            self.dir.path().join(format!("case-{}.db", n - 1))
        }
    }

    #[async_trait]
    impl conformance::Backend for Files {
        async fn fresh(&self) -> conformance::Pair {
            let n = self.cases.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = self.dir.path().join(format!("case-{n}.db"));
            let a: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
            let b: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
            (a, b)
        }

        async fn poison(&self, on: bool) {
            let conn = Connection::open(self.latest()).unwrap();
            let sql = if on {
                format!(
                    "CREATE TRIGGER poison BEFORE INSERT ON kv WHEN NEW.key = '{}'
                     BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
                    conformance::POISON
                )
            } else {
                "DROP TRIGGER poison".to_string()
            };
            conn.execute_batch(&sql).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn embedded_backend_conforms() {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
            cases: Default::default(),
        };
        conformance::run_all(&files).await;
    }
}
