//! What a command does, independent of where the data lives.
//!
//! A backend applies a batch in one atomic operation: it checks the fence, reads the records of
//! the batch's write ids and the values of the keys it touches ([`Snapshot`]), lets
//! [`plan_batch`] work out every result exactly as one-at-a-time execution would, and writes
//! the [`Plan`]'s values, records and sequence number. Keeping the semantics here means every
//! backend answers identically; [`evaluate`] is what one command does to its key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bully_client::{Command, Entry, Outcome, RESERVED_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Applied, Record, StoreError};

/// The change a command makes to its key.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    None,
    Set(Value),
    Remove,
}

/// Outcome and effect of a single-key command given the key's current value.
///
/// `list` is not single-key: backends answer it with [`page`].
pub fn evaluate(command: &Command, current: Option<&Value>) -> (Outcome, Effect) {
    match command {
        Command::Put { value, .. } => (Outcome::Ok, Effect::Set(value.clone())),
        Command::Get { .. } => match current {
            Some(value) => (
                Outcome::Value {
                    value: value.clone(),
                },
                Effect::None,
            ),
            None => (Outcome::NotFound, Effect::None),
        },
        Command::Delete { .. } => match current {
            Some(_) => (Outcome::Ok, Effect::Remove),
            None => (Outcome::NotFound, Effect::None),
        },
        Command::Cas { expected, new, .. } => {
            if current == expected.as_ref() {
                (Outcome::Ok, Effect::Set(new.clone()))
            } else {
                (
                    Outcome::CasMismatch {
                        current: current.cloned(),
                    },
                    Effect::None,
                )
            }
        }
        Command::Incr { delta, .. } => {
            let base = match current {
                None => Some(0),
                Some(value) => value.as_i64(),
            };
            match base {
                None => (
                    Outcome::TypeMismatch {
                        message: "the value is not an integer".into(),
                    },
                    Effect::None,
                ),
                Some(base) => match base.checked_add(*delta) {
                    Some(sum) => (
                        Outcome::Counter { value: sum },
                        Effect::Set(Value::from(sum)),
                    ),
                    None => (
                        Outcome::TypeMismatch {
                            message: format!("{base} + {delta} overflows a 64-bit integer"),
                        },
                        Effect::None,
                    ),
                },
            }
        }
        Command::List { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseKeepalive { .. }
        | Command::LeaseRevoke { .. } => (Outcome::NotFound, Effect::None),
    }
}

/// The key a single-key command touches (`None` for `list`).
pub fn key_of(command: &Command) -> Option<&str> {
    match command {
        Command::Put { key, .. }
        | Command::Get { key }
        | Command::Delete { key }
        | Command::Cas { key, .. }
        | Command::Incr { key, .. } => Some(key),
        Command::List { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseKeepalive { .. }
        | Command::LeaseRevoke { .. } => None,
    }
}

/// A `list` query in backend-neutral form: keys `> lower` (exclusive, if any) that start with
/// `prefix`, in ascending byte order, at most `limit + 1` of them (one extra to know whether a
/// next page exists).
#[derive(Clone, Debug, PartialEq)]
pub struct ListQuery {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
}

impl ListQuery {
    pub fn from_command(command: &Command, max_page: u32) -> Option<ListQuery> {
        match command {
            Command::List {
                prefix,
                limit,
                after,
            } => Some(ListQuery {
                prefix: prefix.clone().unwrap_or_default(),
                after: after.clone(),
                limit: limit.unwrap_or(max_page).clamp(1, max_page) as usize,
            }),
            _ => None,
        }
    }

    /// Whether `key` belongs to this query's range (ignoring the limit). The server's own
    /// keys (under [`RESERVED_PREFIX`]) belong only to a query for a reserved prefix, which
    /// only the server itself sends.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && self.after.as_deref().is_none_or(|after| key > after)
            && (self.reserved() || !key.starts_with(RESERVED_PREFIX))
    }

    /// True for a query of the server's own keys.
    pub fn reserved(&self) -> bool {
        self.prefix.starts_with(RESERVED_PREFIX)
    }
}

/// What a batch reads from the store before it is planned: the stored records of its write
/// ids (with their fingerprints), the current values of the keys its single-key commands
/// touch (a key or id absent from the maps is absent from the store), and for each `list` in
/// the batch, in order, the stored entries of the scan [`list_scans`] asks for.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub records: HashMap<String, (Record, String)>,
    pub values: HashMap<String, Value>,
    pub lists: Vec<Vec<Entry>>,
    /// The keys [`extra_reads`] asked for that were read (present or not).
    pub fetched: HashSet<String>,
}

/// Which stored values a batch must read: the key of each single-key command, once, except
/// where the batch's first command on that key is a `put` that will apply (its id neither
/// stored nor used earlier in the batch): it overwrites without looking, and every later
/// command of the batch on the key sees the put's value, so reading (and decoding) the stored
/// one would be wasted. A `put` that will not apply (a retry, an id conflict) reads as usual.
#[derive(Debug, Default)]
pub struct NeededValues<'a> {
    keys: HashSet<&'a str>,
    ids: HashSet<&'a str>,
}

impl<'a> NeededValues<'a> {
    /// `op`'s key if its stored value must be read. Call for every op in batch order, once
    /// `snapshot.records` holds `op`'s stored record (if it has one).
    pub fn first_read(&mut self, op: &'a Op, snapshot: &Snapshot) -> Option<&'a str> {
        let applies = !op.command.is_read()
            && self.ids.insert(op.id.as_str())
            && !snapshot.records.contains_key(&op.id);
        let key = key_of(&op.command)?;
        if !self.keys.insert(key) {
            return None;
        }
        // A put with a lease may be refused (the lease is gone) and leave the key as it was.
        let overwrites = applies && matches!(op.command, Command::Put { lease: None, .. });
        (!overwrites).then_some(key)
    }
}

/// The scans a batch's `list` commands need, in order: each query's range, and how many
/// stored entries to read (the page plus one, plus one for every write before it in the
/// batch, which may have removed a key of the range).
pub fn list_scans(ops: &[Op]) -> Vec<(ListQuery, usize)> {
    let mut writes = 0;
    let mut scans = Vec::new();
    for op in ops {
        if let Some(query) = ListQuery::from_command(&op.command, bully_client::DEFAULT_MAX_PAGE) {
            let n = query.limit + 1 + writes;
            scans.push((query, n));
        } else if !op.command.is_read() {
            writes += 1;
        }
    }
    scans
}

/// The writes a planned batch leaves to the backend, and every command's result.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per command, in order: the result, or [`StoreError::IdConflict`] (nothing applied).
    pub results: Vec<Result<Applied, StoreError>>,
    /// The final value of every key the batch changed (`None`: removed).
    pub values: BTreeMap<String, Option<Value>>,
    /// New command records, in sequence order.
    pub records: Vec<NewRecord>,
    /// The fence's sequence number after the batch.
    pub seq: u64,
}

/// A command record to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecord {
    pub record: Record,
    pub fingerprint: String,
    /// The outcome as the JSON text backends store.
    pub outcome_json: String,
}

/// One command of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub id: String,
    pub command: Command,
}

/// Plans a batch exactly as applying its commands one after another would: each write gets the
/// next sequence number and sees the writes before it (a repeated id inside the batch is a
/// duplicate of its first occurrence); a read reports the sequence number of the last write
/// before it and takes none. A `list` sees the batch's earlier writes laid over its stored
/// scan, so backends only read and write, never interpret.
pub fn plan_batch(
    term: u64,
    start_seq: u64,
    ops: &[Op],
    snapshot: &Snapshot,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        seq: start_seq,
        ..Plan::default()
    };
    let mut lists = snapshot.lists.iter();
    // Records written earlier in this batch, by id.
    let mut written: HashMap<&str, usize> = HashMap::new();
    for op in ops {
        let applied = |seq, outcome| Applied {
            seq,
            term,
            outcome,
            duplicate: false,
        };
        let fingerprint = if op.command.is_read() {
            String::new()
        } else {
            fingerprint(&op.command)
        };
        if !op.command.is_read() {
            let earlier = written
                .get(op.id.as_str())
                .map(|&i| {
                    (
                        &plan.records[i].record,
                        plan.records[i].fingerprint.as_str(),
                    )
                })
                .or_else(|| {
                    snapshot
                        .records
                        .get(&op.id)
                        .map(|(record, fp)| (record, fp.as_str()))
                });
            if let Some((record, stored)) = earlier {
                plan.results.push(if stored == fingerprint {
                    Ok(Applied {
                        seq: record.seq,
                        term: record.term,
                        outcome: record.outcome.clone(),
                        duplicate: true,
                    })
                } else {
                    Err(StoreError::IdConflict { id: op.id.clone() })
                });
                continue;
            }
        }
        let outcome = match ListQuery::from_command(&op.command, bully_client::DEFAULT_MAX_PAGE) {
            Some(query) => {
                let stored = lists.next().ok_or_else(|| {
                    StoreError::Corrupt("a list of the batch was not scanned".into())
                })?;
                page(&query, merged_list(&query, &plan.values, stored))
            }
            None => apply_one(&op.command, plan.seq + 1, &mut plan.values, snapshot)?,
        };
        if op.command.is_read() {
            plan.results.push(Ok(applied(plan.seq, outcome)));
            continue;
        }
        plan.seq += 1;
        let outcome_json = serde_json::to_string(&outcome)
            .map_err(|e| StoreError::Corrupt(format!("outcome: {e}")))?;
        written.insert(&op.id, plan.records.len());
        plan.records.push(NewRecord {
            record: Record {
                id: op.id.clone(),
                seq: plan.seq,
                term,
                outcome: outcome.clone(),
            },
            fingerprint,
            outcome_json,
        });
        plan.results.push(Ok(applied(plan.seq, outcome)));
    }
    Ok(plan)
}

/// The key of lease `id`'s record. Zero-padded so that leases list in id order.
pub fn lease_key(id: u64) -> String {
    format!("{RESERVED_PREFIX}lease/{id:020}")
}

/// The prefix of every lease record.
pub fn lease_prefix() -> String {
    format!("{RESERVED_PREFIX}lease/")
}

/// The key that records which lease `key` is attached to (its value: the lease id).
pub fn owner_key(key: &str) -> String {
    format!("{RESERVED_PREFIX}owner/{key}")
}

/// A lease as stored under [`lease_key`]: its TTL and the keys put with it. The list may hold
/// keys since detached (put again without the lease, deleted, attached to another lease): a
/// revoke deletes only those whose [`owner_key`] still names the lease, so detaching a key
/// never needs to read or rewrite its former lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_ms: u64,
    #[serde(default)]
    pub keys: Vec<String>,
}

impl LeaseRecord {
    pub fn parse(value: &Value) -> Result<LeaseRecord, StoreError> {
        serde_json::from_value(value.clone())
            .map_err(|e| StoreError::Corrupt(format!("lease record: {e}")))
    }

    fn to_value(&self) -> Value {
        serde_json::json!({"ttl_ms": self.ttl_ms, "keys": self.keys})
    }
}

/// The reserved keys a batch's commands need beyond their own keys: the owner of every key a
/// put or delete changes, the record of every lease a command names, and, once a revoked
/// lease's record has been read, the owner of each of its keys. A backend reads them in
/// rounds (recording each in [`Snapshot::fetched`]) until this returns nothing: at most two
/// rounds, and none for a batch of plain commands on keys without leases beyond the first.
pub fn extra_reads(ops: &[Op], snapshot: &Snapshot) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for op in ops {
        match &op.command {
            Command::Put { key, lease, .. } => {
                keys.insert(owner_key(key));
                if let Some(id) = lease {
                    keys.insert(lease_key(*id));
                }
            }
            Command::Delete { key } => {
                keys.insert(owner_key(key));
            }
            Command::LeaseKeepalive { id } => {
                keys.insert(lease_key(*id));
            }
            Command::LeaseRevoke { id } => {
                let record = lease_key(*id);
                if let Some(lease) = snapshot
                    .values
                    .get(&record)
                    .and_then(|v| LeaseRecord::parse(v).ok())
                {
                    keys.extend(lease.keys.iter().map(|k| owner_key(k)));
                }
                keys.insert(record);
            }
            _ => {}
        }
    }
    keys.into_iter()
        .filter(|k| !snapshot.fetched.contains(k))
        .collect()
}

/// The value of `key` as a command of the batch sees it: the batch's change, else the store's.
fn current(
    changed: &BTreeMap<String, Option<Value>>,
    snapshot: &Snapshot,
    key: &str,
) -> Option<Value> {
    match changed.get(key) {
        Some(value) => value.clone(),
        None => snapshot.values.get(key).cloned(),
    }
}

/// Removes `key`'s owner record, if it has one.
fn detach(changed: &mut BTreeMap<String, Option<Value>>, snapshot: &Snapshot, key: &str) {
    let owner = owner_key(key);
    if current(changed, snapshot, &owner).is_some() {
        changed.insert(owner, None);
    }
}

/// What one command (not a `list`) does, as the `seq`th write, to the batch's view of the
/// store (`changed` over `snapshot`).
fn apply_one(
    command: &Command,
    seq: u64,
    changed: &mut BTreeMap<String, Option<Value>>,
    snapshot: &Snapshot,
) -> Result<Outcome, StoreError> {
    let lease_of = |changed: &BTreeMap<String, Option<Value>>, id: u64| {
        current(changed, snapshot, &lease_key(id))
            .map(|v| LeaseRecord::parse(&v))
            .transpose()
    };
    Ok(match command {
        Command::LeaseGrant { ttl_ms } => {
            let record = LeaseRecord {
                ttl_ms: *ttl_ms,
                keys: Vec::new(),
            };
            changed.insert(lease_key(seq), Some(record.to_value()));
            Outcome::Lease {
                id: seq,
                ttl_ms: *ttl_ms,
            }
        }
        Command::LeaseKeepalive { id } => match lease_of(changed, *id)? {
            Some(lease) => Outcome::Lease {
                id: *id,
                ttl_ms: lease.ttl_ms,
            },
            None => Outcome::LeaseNotFound { id: *id },
        },
        Command::LeaseRevoke { id } => match lease_of(changed, *id)? {
            Some(lease) => {
                for key in &lease.keys {
                    let owner = owner_key(key);
                    if current(changed, snapshot, &owner).and_then(|v| v.as_u64()) == Some(*id) {
                        changed.insert(key.clone(), None);
                        changed.insert(owner, None);
                    }
                }
                changed.insert(lease_key(*id), None);
                Outcome::Ok
            }
            None => Outcome::LeaseNotFound { id: *id },
        },
        Command::Put {
            key,
            value,
            lease: Some(id),
        } => match lease_of(changed, *id)? {
            Some(mut lease) => {
                if let Err(at) = lease.keys.binary_search(key) {
                    lease.keys.insert(at, key.clone());
                    changed.insert(lease_key(*id), Some(lease.to_value()));
                }
                changed.insert(key.clone(), Some(value.clone()));
                changed.insert(owner_key(key), Some(Value::from(*id)));
                Outcome::Ok
            }
            None => Outcome::LeaseNotFound { id: *id },
        },
        _ => {
            let key = key_of(command).unwrap_or_default();
            let (outcome, effect) = evaluate(command, current(changed, snapshot, key).as_ref());
            match effect {
                Effect::None => {}
                Effect::Set(value) => {
                    if matches!(command, Command::Put { .. }) {
                        detach(changed, snapshot, key);
                    }
                    changed.insert(key.to_string(), Some(value));
                }
                Effect::Remove => {
                    detach(changed, snapshot, key);
                    changed.insert(key.to_string(), None);
                }
            }
            outcome
        }
    })
}

/// Up to `limit + 1` entries of `query`'s range: the stored scan, with the batch's changes laid
/// over it. The scan holds `limit + 1` entries plus one per earlier write of the batch (or all
/// of the range, if fewer), so every stored key below the last one returned is in it even if
/// those writes removed keys of the range.
fn merged_list(
    query: &ListQuery,
    changed: &BTreeMap<String, Option<Value>>,
    stored: &[Entry],
) -> Vec<Entry> {
    let in_range: Vec<(&String, &Option<Value>)> =
        changed.iter().filter(|(k, _)| query.matches(k)).collect();
    let mut merged: BTreeMap<String, Value> = stored
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    for (key, value) in in_range {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    merged
        .into_iter()
        .take(query.limit + 1)
        .map(|(key, value)| Entry { key, value })
        .collect()
}

/// Builds a page from up to `limit + 1` matching entries in key order.
pub fn page(query: &ListQuery, mut entries: Vec<Entry>) -> Outcome {
    let next = if entries.len() > query.limit {
        entries.truncate(query.limit);
        entries.last().map(|e| e.key.clone())
    } else {
        None
    };
    Outcome::Page {
        items: entries,
        next,
    }
}

/// A stable fingerprint of a command, stored with its record so that reusing an id for a
/// different command is detected: FNV-1a over a canonical walk of its JSON form (object keys
/// sorted, since serde_json may preserve insertion order when a dependency enables it).
pub fn fingerprint(command: &Command) -> String {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    match serde_json::to_value(command) {
        Ok(value) => hash.value(&value),
        Err(_) => hash.bytes(command.kind().as_bytes()),
    }
    format!("{:016x}", hash.0)
}

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Each token is tagged and length-prefixed, so distinct values cannot hash as one stream.
    fn value(&mut self, value: &Value) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                self.bytes(b"{");
                self.bytes(&(keys.len() as u64).to_le_bytes());
                for key in keys {
                    self.string(key);
                    self.value(&map[key]);
                }
            }
            Value::Array(items) => {
                self.bytes(b"[");
                self.bytes(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| self.value(item));
            }
            Value::String(s) => {
                self.bytes(b"s");
                self.string(s);
            }
            other => {
                self.bytes(b"v");
                self.string(&other.to_string());
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k() -> String {
        "k".to_string()
    }

    fn op(id: &str, command: Command) -> Op {
        Op {
            id: id.into(),
            command,
        }
    }

    /// Only a put that will apply, first on its key, skips reading the stored value.
    #[test]
    fn a_batch_reads_every_value_a_command_may_see() {
        let put = |key: &str| Command::Put {
            key: key.into(),
            value: json!("v"),
            lease: None,
        };
        let get = |key: &str| Command::Get { key: key.into() };
        let incr = |key: &str| Command::Incr {
            key: key.into(),
            delta: 1,
        };
        let ops = [
            op("1", put("a")),  // applies, first on a: no read
            op("2", get("a")),  // sees the put
            op("3", put("b")),  // a retry of a stored command: does not apply, b is read
            op("4", get("b")),  // needs b's stored value
            op("1", put("c")),  // id 1 again, on c: an id conflict, c is read
            op("5", incr("d")), // reads d
            op("6", put("d")),  // not first on d
        ];
        let mut snapshot = Snapshot::default();
        let stored = Record {
            id: "3".into(),
            seq: 1,
            term: 1,
            outcome: Outcome::Ok,
        };
        snapshot.records.insert("3".into(), (stored, String::new()));
        let mut needed = NeededValues::default();
        let read: Vec<&str> = ops
            .iter()
            .filter_map(|op| needed.first_read(op, &snapshot))
            .collect();
        assert_eq!(read, ["b", "c", "d"]);
    }

    #[test]
    fn single_key_semantics() {
        let one = json!(1);
        let cases: Vec<(Command, Option<&Value>, Outcome, Effect)> = vec![
            (
                Command::Put {
                    key: k(),
                    value: json!("v"),
                    lease: None,
                },
                None,
                Outcome::Ok,
                Effect::Set(json!("v")),
            ),
            (
                Command::Get { key: k() },
                None,
                Outcome::NotFound,
                Effect::None,
            ),
            (
                Command::Get { key: k() },
                Some(&one),
                Outcome::Value { value: json!(1) },
                Effect::None,
            ),
            (
                Command::Delete { key: k() },
                None,
                Outcome::NotFound,
                Effect::None,
            ),
            (
                Command::Delete { key: k() },
                Some(&one),
                Outcome::Ok,
                Effect::Remove,
            ),
            (
                Command::Cas {
                    key: k(),
                    expected: None,
                    new: json!(2),
                },
                None,
                Outcome::Ok,
                Effect::Set(json!(2)),
            ),
            (
                Command::Cas {
                    key: k(),
                    expected: None,
                    new: json!(2),
                },
                Some(&one),
                Outcome::CasMismatch {
                    current: Some(json!(1)),
                },
                Effect::None,
            ),
            (
                Command::Cas {
                    key: k(),
                    expected: Some(json!(1)),
                    new: json!(2),
                },
                Some(&one),
                Outcome::Ok,
                Effect::Set(json!(2)),
            ),
            (
                Command::Cas {
                    key: k(),
                    expected: Some(json!(1)),
                    new: json!(2),
                },
                None,
                Outcome::CasMismatch { current: None },
                Effect::None,
            ),
            (
                Command::Incr { key: k(), delta: 5 },
                None,
                Outcome::Counter { value: 5 },
                Effect::Set(json!(5)),
            ),
            (
                Command::Incr {
                    key: k(),
                    delta: -2,
                },
                Some(&one),
                Outcome::Counter { value: -1 },
                Effect::Set(json!(-1)),
            ),
        ];
        for (command, current, outcome, effect) in cases {
            assert_eq!(
                evaluate(&command, current),
                (outcome, effect),
                "{command:?} on {current:?}"
            );
        }
    }

    #[test]
    fn incr_rejects_non_integers_and_overflow() {
        let text = json!("x");
        let (outcome, effect) = evaluate(&Command::Incr { key: k(), delta: 1 }, Some(&text));
        assert!(matches!(outcome, Outcome::TypeMismatch { .. }));
        assert_eq!(effect, Effect::None);
        let max = json!(i64::MAX);
        let (outcome, effect) = evaluate(&Command::Incr { key: k(), delta: 1 }, Some(&max));
        assert!(matches!(outcome, Outcome::TypeMismatch { .. }));
        assert_eq!(effect, Effect::None);
    }

    #[test]
    fn pages_report_the_next_key() {
        let query = ListQuery {
            prefix: "a".into(),
            after: None,
            limit: 2,
        };
        let entries: Vec<Entry> = ["a1", "a2", "a3"]
            .iter()
            .map(|key| Entry {
                key: key.to_string(),
                value: json!(0),
            })
            .collect();
        match page(&query, entries.clone()) {
            Outcome::Page { items, next } => {
                assert_eq!(items.len(), 2);
                assert_eq!(next.as_deref(), Some("a2"));
            }
            other => panic!("{other:?}"),
        }
        match page(&query, entries[..2].to_vec()) {
            Outcome::Page { next, .. } => assert_eq!(next, None),
            other => panic!("{other:?}"),
        }
        assert!(query.matches("a9") && !query.matches("b1"));
        let after = ListQuery {
            after: Some("a2".into()),
            ..query
        };
        assert!(!after.matches("a2") && after.matches("a3"));
    }

    #[test]
    fn fingerprints_tell_commands_apart() {
        let a = Command::Put {
            key: k(),
            value: json!({"x": 1, "y": 2}),
            lease: None,
        };
        let b = Command::Put {
            key: k(),
            value: json!({"y": 2, "x": 1}),
            lease: None,
        };
        let c = Command::Put {
            key: k(),
            value: json!({"x": 2}),
            lease: None,
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
