//! MongoDB backend: a replica set through the official `mongodb` driver.
//!
//! Every write uses write concern `majority`, so an acknowledged command survives a primary
//! failover; reads outside transactions use read concern `majority`, and transactions read a
//! `snapshot`. The semantics of each command come from [`logic`], as for the embedded backend.
//!
//! # Schema
//! - `fence`: one document `{_id: "fence", term, holder, seq, claimed_at, lease_at, lease_ms}`
//!   (`term`/`seq`/`lease_ms` Int64, `claimed_at`/`lease_at` DateTimes), created with term 0 at
//!   connect unless it exists. `lease_at` is always set by the server (`$currentDate`) and a
//!   claim compares it with the server's clock, read the same way: hosts' clocks never meet.
//! - `kv`: `{_id: key, value}` with `value` the JSON text of the value. Text rather than BSON
//!   because text round-trips every JSON value exactly: BSON has no u64 (`u64::MAX` would not
//!   survive), and object keys with `$` or `.` need care as field names.
//! - `commands`: `{_id: id, seq, term, fingerprint, outcome, at}`, the exactly-once log;
//!   `outcome` is the JSON text of the [`Outcome`](bully_client::Outcome), `at` a DateTime with
//!   an index for [`Store::expire`].
//!
//! # Fencing and exactly-once
//! [`Store::apply_batch`] is one multi-document transaction at a snapshot: it reads the fence
//! document *filtered on the caller's term* (nothing matches once the term moved on: fenced,
//! and aborted), and a batch that writes ends by setting the fence's `seq`, again filtered on
//! the term. Every such batch and every claim writes that one document, so they cannot
//! interleave: a claim committed after the batch's snapshot makes the batch's fence update a
//! `WriteConflict`, and the retry sees the newer term. The term check, the effects and the
//! command records commit atomically, in one global order. A batch of reads only writes
//! nothing: its snapshot (majority-committed, read at the primary) holds the fence it checked
//! and the values it read.
//!
//! # Retries
//! Transient failures (failover, step-down, network, write conflicts) are retried with backoff
//! until [`MongoOptions::op_deadline`], then reported as [`StoreError::Unavailable`]. A commit
//! whose result is unknown is retried as a commit. If the whole transaction runs again after
//! a commit that did succeed, it finds the record by id and returns it (`duplicate = true`)
//! instead of applying the command twice.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bully_client::Entry;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::Error as DriverError;
use mongodb::options::{ClientOptions, IndexOptions, ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use serde_json::Value;
use tokio::time::Instant;

mod errors;

use self::errors::{Attempt, Fail, MAX_BACKOFF, MIN_BACKOFF, code, commit, describe, is_transient};
use super::logic::{self, ListQuery, Snapshot};
use super::{Applied, Claim, FenceState, Op, Record, Result, Store, StoreError};

const FENCE_ID: &str = "fence";
/// [`bully_client::RESERVED_PREFIX`] as a string: where the server's own keys begin.
const RESERVED_START: &str = "\u{10FFFF}";

/// Options of [`MongoStore::connect`].
#[derive(Clone, Debug)]
pub struct MongoOptions {
    /// How long one store operation may take, retries included, before it fails with
    /// [`StoreError::Unavailable`]. Covers a replica-set election (typically a few seconds).
    pub op_deadline: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            op_deadline: Duration::from_secs(10),
        }
    }
}

/// MongoDB-backed [`Store`]. Cloning is cheap: the driver's `Client` is a shared pool.
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    fence: Collection<Document>,
    kv: Collection<Document>,
    commands: Collection<Document>,
    options: MongoOptions,
    /// `killAllSessions` filter: this store's own user, or every session without auth.
    kill_filter: Vec<Document>,
}

impl MongoStore {
    /// Connects to `uri`, uses `database`, and creates the collections and indexes if missing.
    pub async fn connect(uri: &str, database: &str, options: MongoOptions) -> Result<MongoStore> {
        let unavailable = |e: DriverError| {
            StoreError::Unavailable(format!("MongoDB at {}: {}", redact(uri), e.kind))
        };
        let mut client_options = ClientOptions::parse(uri).await.map_err(unavailable)?;
        client_options.write_concern = Some(WriteConcern::majority());
        client_options.read_concern = Some(ReadConcern::majority());
        client_options
            .app_name
            .get_or_insert_with(|| "bully-server".into());
        let kill_filter = match client_options.credential.as_ref() {
            Some(credential) => match &credential.username {
                Some(user) => vec![doc! {
                    "user": user,
                    "db": credential.source.clone().unwrap_or_else(|| "admin".into()),
                }],
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        let client = Client::with_options(client_options).map_err(unavailable)?;
        let db = client.database(database);
        let store = MongoStore {
            fence: db.collection("fence"),
            kv: db.collection("kv"),
            commands: db.collection("commands"),
            client,
            options,
            kill_filter,
        };
        store
            .retrying("create schema", || async {
                // Created up front because a transaction cannot always create a collection
                // (MongoDB < 4.4, or two transactions racing to create the same one).
                for name in ["fence", "kv", "commands"] {
                    match db.create_collection(name).await {
                        Err(e) if code(&e) == Some(48) => {} // NamespaceExists
                        other => other?,
                    }
                }
                // Created here rather than upserted by `claim_term`: SecantusDB answers racing
                // first upserts with `value: null` although each one applied, which would lose
                // the claimed term. Not recreated later: a term must never be handed out twice.
                // DuplicateKey (11000) means it exists.
                let fence = doc! {
                    "_id": FENCE_ID, "term": 0_i64, "holder": "", "seq": 0_i64,
                    "claimed_at": DateTime::now(),
                };
                if let Err(e) = store.fence.insert_one(fence).await
                    && code(&e) != Some(11000)
                {
                    return Err(e.into());
                }
                let options = IndexOptions::builder().name("at".to_string()).build();
                let index = IndexModel::builder()
                    .keys(doc! { "at": 1 })
                    .options(options);
                store.commands.create_index(index.build()).await?;
                Ok(())
            })
            .await?;
        tracing::info!(uri = %redact(uri), database, "connected to MongoDB");
        Ok(store)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.options.op_deadline;
        let mut backoff = MIN_BACKOFF;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (error, transient) = match tokio::time::timeout(remaining, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Fail::Final(e))) => return Err(e),
                Ok(Err(Fail::Driver(e))) => (describe(&e), is_transient(&e)),
                Err(_) => (
                    format!("no answer within {:?}", self.options.op_deadline),
                    false,
                ),
            };
            // Jitter keeps concurrent appliers that just conflicted from colliding again.
            let pause = backoff.mul_f64(rand::random_range(0.5..1.0));
            if !transient || Instant::now() + pause >= deadline {
                return Err(StoreError::Unavailable(format!("{what}: {error}")));
            }
            tracing::debug!(what, %error, "transient MongoDB error, retrying");
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn claim_once(&self, claim: Claim<'_>) -> Attempt<u64> {
        // A coordinator killed in the middle of a transaction leaves it open, holding the fence
        // document, until the server reaps it (transactionLifetimeLimitSeconds, 60 s by
        // default): the claim below would wait that long and failover with it. A new term
        // deposes the old coordinator anyway, so abort its sessions first. (Deploy bully with
        // a database user of its own: the kill is limited to that user's sessions.)
        let kill = doc! { "killAllSessions": self.kill_filter.clone() };
        if let Err(e) = self.client.database("admin").run_command(kill).await {
            tracing::debug!(error = %describe(&e), "killAllSessions before claiming failed");
        }
        let mut session = self.client.start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await?;
        // The store's clock, read by having it stamp the fence document.
        let fence = self
            .fence
            .find_one_and_update(
                doc! { "_id": FENCE_ID },
                doc! { "$currentDate": { "clock": true } },
            )
            .return_document(ReturnDocument::After)
            .session(&mut session)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the fence document is gone".into()))?;
        let now = fence
            .get_datetime("clock")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        let lease_at = fence
            .get_datetime("lease_at")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        let lease_ms = fence.get_i64("lease_ms").unwrap_or(0);
        let current = fence.get_str("holder").unwrap_or_default();
        let remaining = lease_at + lease_ms - now;
        if remaining > 0 && current != claim.holder && claim.break_holder != Some(current) {
            return Err(StoreError::LeaseHeld {
                holder: current.to_string(),
                remaining_ms: remaining as u64,
            }
            .into());
        }
        let term = int(&fence, "term")? + 1;
        let update = doc! {
            "$set": {
                "term": term as i64, "holder": claim.holder,
                "lease_ms": claim.lease.as_millis() as i64, "claimed_at": DateTime::now(),
            },
            "$currentDate": { "lease_at": true },
        };
        self.fence
            .update_one(doc! { "_id": FENCE_ID }, update)
            .session(&mut session)
            .await?;
        commit(&mut session).await?;
        Ok(term)
    }

    /// Applies `update` to the fence document if `term` is current.
    async fn lease_once(&self, term: u64, update: Document) -> Attempt<()> {
        let fenced = doc! { "_id": FENCE_ID, "term": term as i64 };
        let updated = self.fence.update_one(fenced, update).await?;
        if updated.matched_count == 1 {
            return Ok(());
        }
        let current = self.read_fence(None).await?.term;
        Err(StoreError::Fenced {
            mine: term,
            current,
        }
        .into())
    }

    /// One transaction of [`Store::apply_batch`]: the fence check, one query each for the
    /// batch's records and values (and one per `list`), then one delete and one insert of the
    /// changed values, one insert of the new records and one fence update, whatever the batch's
    /// size.
    async fn apply_batch_once(&self, term: u64, ops: &[Op]) -> Attempt<Vec<Result<Applied>>> {
        let mut session = self.client.start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await?;
        // Every early return drops the session with the transaction open, and the driver
        // aborts it: nothing is applied.
        let fenced = doc! { "_id": FENCE_ID, "term": term as i64 };
        let Some(fence) = self
            .fence
            .find_one(fenced.clone())
            .session(&mut session)
            .await?
        else {
            let current = self.read_fence(Some(&mut session)).await?.term;
            return Err(StoreError::Fenced {
                mine: term,
                current,
            }
            .into());
        };
        let start_seq = int(&fence, "seq")?;
        let mut snapshot = Snapshot::default();
        let mut ids: Vec<&str> = ops
            .iter()
            .filter(|op| !op.command.is_read())
            .map(|op| op.id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let docs: Vec<Document> = self
                .commands
                .find(doc! { "_id": { "$in": &ids } })
                .session(&mut session)
                .await?
                .stream(&mut session)
                .try_collect()
                .await?;
            for doc in &docs {
                let (record, fingerprint) = record_of(doc)?;
                snapshot
                    .records
                    .insert(record.id.clone(), (record, fingerprint));
            }
        }
        // Each key at most once: `first_read` yields a key only on its first command.
        let mut needed = logic::NeededValues::default();
        // The reserved keys of leases that need no earlier read go in the same query: a batch
        // of plain commands costs no extra round trip.
        let extra = logic::extra_reads(ops, &snapshot);
        let keys: Vec<&str> = ops
            .iter()
            .filter_map(|op| needed.first_read(op, &snapshot))
            .chain(extra.iter().map(String::as_str))
            .collect();
        if !keys.is_empty() {
            self.read_values(&keys, &mut snapshot, &mut session).await?;
        }
        snapshot.fetched.extend(extra);
        // Leases: the owners of a revoked lease's keys, once its record is read.
        loop {
            let keys = logic::extra_reads(ops, &snapshot);
            if keys.is_empty() {
                break;
            }
            self.read_values(&keys, &mut snapshot, &mut session).await?;
            snapshot.fetched.extend(keys);
        }
        for (query, n) in logic::list_scans(ops) {
            snapshot
                .lists
                .push(self.scan(&query, n, &mut session).await?);
        }
        let plan = logic::plan_batch(term, start_seq, ops, &snapshot)?;
        if !plan.values.is_empty() {
            let changed: Vec<&str> = plan.values.keys().map(String::as_str).collect();
            self.kv
                .delete_many(doc! { "_id": { "$in": &changed } })
                .session(&mut session)
                .await?;
            let set: Vec<Document> = plan
                .values
                .iter()
                .filter_map(|(key, value)| {
                    value
                        .as_ref()
                        .map(|v| doc! { "_id": key, "value": v.to_string() })
                })
                .collect();
            if !set.is_empty() {
                self.kv.insert_many(set).session(&mut session).await?;
            }
        }
        if !plan.records.is_empty() {
            let at = DateTime::from_millis(super::now_ms());
            let records = plan.records.iter().map(|new| {
                doc! {
                    "_id": &new.record.id, "seq": new.record.seq as i64,
                    "term": new.record.term as i64, "fingerprint": &new.fingerprint,
                    "outcome": &new.outcome_json, "at": at,
                }
            });
            self.commands
                .insert_many(records)
                .session(&mut session)
                .await?;
        }
        if plan.seq != start_seq {
            // Filtered on the term: a claim that committed since this transaction's snapshot
            // makes it a write conflict, and the retry finds the newer term.
            // Writing anyway: renew the lease in the same update.
            let update = doc! {
                "$set": { "seq": plan.seq as i64 },
                "$currentDate": { "lease_at": true },
            };
            let updated = self
                .fence
                .update_one(fenced, update)
                .session(&mut session)
                .await?;
            if updated.matched_count != 1 {
                let current = self.read_fence(Some(&mut session)).await?.term;
                return Err(StoreError::Fenced {
                    mine: term,
                    current,
                }
                .into());
            }
        }
        commit(&mut session).await?;
        Ok(plan.results)
    }

    /// The stored values of `keys` (those that exist) into `snapshot`, in one query.
    async fn read_values(
        &self,
        keys: &[impl AsRef<str>],
        snapshot: &mut Snapshot,
        session: &mut ClientSession,
    ) -> Attempt<()> {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let docs: Vec<Document> = self
            .kv
            .find(doc! { "_id": { "$in": &keys } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        for doc in &docs {
            snapshot
                .values
                .insert(text(doc, "_id")?.to_string(), value_of(doc)?);
        }
        Ok(())
    }

    /// Up to `n` entries of `query`'s range in `_id` order. MongoDB compares strings bytewise
    /// (no collation is set), which is UTF-8 byte order: the same as Rust's `str` ordering.
    async fn scan(
        &self,
        query: &ListQuery,
        n: usize,
        session: &mut ClientSession,
    ) -> Attempt<Vec<Entry>> {
        let mut range = match &query.after {
            Some(after) if *after >= query.prefix => doc! { "$gt": after },
            _ => doc! { "$gte": &query.prefix },
        };
        // The server's own keys sort after every user key: a user query stops before them.
        let end = match prefix_end(&query.prefix) {
            end if query.reserved() => end,
            Some(end) if end.as_str() < RESERVED_START => Some(end),
            _ => Some(RESERVED_START.to_string()),
        };
        if let Some(end) = end {
            range.insert("$lt", end);
        }
        let docs: Vec<Document> = self
            .kv
            .find(doc! { "_id": range })
            .sort(doc! { "_id": 1 })
            .limit(n as i64)
            .session(&mut *session)
            .await?
            .stream(session)
            .try_collect()
            .await?;
        // The bounds are exact; the filter only guards against a collation set by hand.
        let matching = docs
            .iter()
            .filter(|d| d.get_str("_id").is_ok_and(|k| query.matches(k)));
        let entries = matching.map(|doc| {
            let key = text(doc, "_id")?.to_string();
            Ok(Entry {
                value: value_of(doc)?,
                key,
            })
        });
        Ok(entries.collect::<Result<Vec<_>>>()?)
    }

    /// The fence document, read in `session` or on its own.
    async fn read_fence(&self, session: Option<&mut ClientSession>) -> Attempt<FenceState> {
        let find = self.fence.find_one(doc! { "_id": FENCE_ID });
        let found = match session {
            Some(session) => find.session(session).await?,
            None => find.await?,
        };
        let Some(doc) = found else {
            return Ok(FenceState::default());
        };
        Ok(FenceState {
            term: int(&doc, "term")?,
            holder: doc.get_str("holder").unwrap_or_default().to_string(),
            seq: int(&doc, "seq")?,
        })
    }

    /// The record of `id` and its fingerprint, read in `session` or on its own.
    async fn load_record(
        &self,
        id: &str,
        session: Option<&mut ClientSession>,
    ) -> Attempt<Option<(Record, String)>> {
        let find = self.commands.find_one(doc! { "_id": id });
        let found = match session {
            Some(session) => find.session(session).await?,
            None => find.await?,
        };
        let Some(doc) = found else { return Ok(None) };
        Ok(Some(record_of(&doc)?))
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<u64> {
        // A retry after a lost reply may claim twice and skip a term number: harmless, terms
        // only have to increase, and the holder (whose own lease does not stop it) is the same.
        self.retrying("claim term", || self.claim_once(claim)).await
    }

    async fn renew_lease(&self, term: u64) -> Result<()> {
        self.retrying("renew lease", || {
            self.lease_once(term, doc! { "$currentDate": { "lease_at": true } })
        })
        .await
    }

    async fn release_lease(&self, term: u64) -> Result<()> {
        self.retrying("release lease", || {
            self.lease_once(term, doc! { "$set": { "lease_ms": 0_i64 } })
        })
        .await
    }

    async fn apply_batch(&self, term: u64, ops: &[Op]) -> Result<Vec<Result<Applied>>> {
        if term == 0 {
            // Term 0 is the store's state before any claim: nobody holds it.
            let current = self.fence_state().await?.term;
            return Err(StoreError::Fenced { mine: 0, current });
        }
        let what = match ops {
            [op] => format!("apply {}", op.id),
            _ => format!("apply a batch of {}", ops.len()),
        };
        self.retrying(&what, || self.apply_batch_once(term, ops))
            .await
    }

    async fn fence_state(&self) -> Result<FenceState> {
        self.retrying("read fence", || self.read_fence(None)).await
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        self.retrying("read record", || async {
            Ok(self.load_record(id, None).await?.map(|(record, _)| record))
        })
        .await
    }

    async fn expire(&self, before_ms: i64) -> Result<u64> {
        self.retrying("expire records", || async {
            let filter = doc! { "at": { "$lt": DateTime::from_millis(before_ms) } };
            Ok(self.commands.delete_many(filter).await?.deleted_count)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }
}

fn int(doc: &Document, field: &str) -> Result<u64> {
    let n = match doc.get(field) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        other => return Err(StoreError::Corrupt(format!("field {field} is {other:?}"))),
    };
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("field {field} is {n}")))
}

/// A stored command record and its fingerprint.
fn record_of(doc: &Document) -> Result<(Record, String)> {
    let id = text(doc, "_id")?;
    let outcome = serde_json::from_str(text(doc, "outcome")?)
        .map_err(|e| StoreError::Corrupt(format!("stored outcome of {id}: {e}")))?;
    let record = Record {
        id: id.to_string(),
        seq: int(doc, "seq")?,
        term: int(doc, "term")?,
        outcome,
    };
    Ok((record, text(doc, "fingerprint")?.to_string()))
}

fn text<'a>(doc: &'a Document, field: &str) -> Result<&'a str> {
    doc.get_str(field)
        .map_err(|e| StoreError::Corrupt(format!("field {field}: {e}")))
}

fn value_of(doc: &Document) -> Result<Value> {
    serde_json::from_str(text(doc, "value")?)
        .map_err(|e| StoreError::Corrupt(format!("stored value: {e}")))
}

/// The least string above every string that starts with `prefix` (`None`: no upper bound).
/// Incrementing the last char that can be incremented works because UTF-8 byte order is code
/// point order.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'), // skip the surrogates, which are not chars
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `uri` with any password replaced, for logs and error messages.
fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "<unparsable URI>".into();
    };
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..hosts_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end("b/").as_deref(), Some("b0"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        let end = prefix_end("ké").unwrap();
        for key in ["ké", "ké\u{10FFFF}", "ké/zz"] {
            assert!(key < end.as_str(), "{key}");
        }
        assert!("kê" >= end.as_str());
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("mongodb://bully:s3cr@t@db-0:27017,db-1/?replicaSet=rs0"),
            "mongodb://bully:***@db-0:27017,db-1/?replicaSet=rs0"
        );
        assert_eq!(redact("mongodb://h:1/?a=b@c"), "mongodb://h:1/?a=b@c");
        assert_eq!(redact("garbage"), "<unparsable URI>");
    }
}
