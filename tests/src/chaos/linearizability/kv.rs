//! The key-value model: bully's single-key commands, checked one key at a time.
//!
//! `put`, `get`, `delete`, `cas` and `incr` each read or write exactly one key, so a history is
//! linearizable if and only if each key's sub-history is (linearizability is *local*); checking
//! keys separately turns one exponential search into several small ones. `list` reads many keys
//! and is not modelled: the chaos workload does not issue it, and [`check_kv`] has no input for
//! it.
//!
//! Values are compared as the server compares them (`serde_json::Value` equality), through a
//! canonical form: integers (what `incr` reads and writes) as `i64`, every other value interned
//! by its JSON text, so a model state is a small `Copy` value that hashes fast.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DEFAULT_BUDGET, Model, Operation, Verdict, check};

/// A command as the checker sees it (its key is in [`KvOp::key`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvInput {
    Put { value: Value },
    Get,
    Delete,
    Cas { expected: Option<Value>, new: Value },
    Incr { delta: i64 },
}

impl KvInput {
    /// True for commands that change nothing.
    pub fn is_read(&self) -> bool {
        matches!(self, KvInput::Get)
    }
}

/// An observed result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KvOutput {
    /// put, delete of an existing key, successful cas.
    Ok,
    /// get of an existing key.
    Value { value: Value },
    /// get or delete of a missing key.
    NotFound,
    /// cas that found another value (`None`: the key is missing).
    CasMismatch { current: Option<Value> },
    /// incr's new value.
    Counter { value: i64 },
    /// incr on a non-integer, or an overflow.
    TypeMismatch,
}

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvOp {
    pub client: usize,
    pub key: String,
    pub input: KvInput,
    pub call: u64,
    /// `None`: indeterminate (see [`Operation::ret`]).
    pub ret: Option<u64>,
    /// `None`: unknown.
    pub output: Option<KvOutput>,
}

/// A value in canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    Absent,
    Int(i64),
    /// Any other JSON value, by its index in the interner.
    Json(u32),
}

#[derive(Clone, Copy, Debug)]
pub enum In {
    Put(Cell),
    Get,
    Delete,
    Cas { expected: Cell, new: Cell },
    Incr(i64),
}

#[derive(Clone, Copy, Debug)]
pub enum Out {
    Ok,
    Value(Cell),
    NotFound,
    CasMismatch(Cell),
    Counter(i64),
    TypeMismatch,
}

/// The sequential specification of one key, mirroring `bully_server::store::logic::evaluate`.
pub struct KvModel;

impl Model for KvModel {
    type State = Cell;
    type Input = In;
    type Output = Out;

    fn init(&self) -> Cell {
        Cell::Absent
    }

    fn step(&self, state: &Cell, input: &In, output: Option<&Out>) -> Option<Cell> {
        let state = *state;
        let (result, after) = match *input {
            In::Put(value) => (Out::Ok, value),
            In::Get => match state {
                Cell::Absent => (Out::NotFound, state),
                value => (Out::Value(value), state),
            },
            In::Delete => match state {
                Cell::Absent => (Out::NotFound, state),
                _ => (Out::Ok, Cell::Absent),
            },
            In::Cas { expected, new } if state == expected => (Out::Ok, new),
            In::Cas { .. } => (Out::CasMismatch(state), state),
            In::Incr(delta) => {
                let base = match state {
                    Cell::Absent => Some(0),
                    Cell::Int(n) => Some(n),
                    Cell::Json(_) => None,
                };
                match base.and_then(|b| b.checked_add(delta)) {
                    Some(sum) => (Out::Counter(sum), Cell::Int(sum)),
                    None => (Out::TypeMismatch, state),
                }
            }
        };
        let Some(observed) = output else {
            return Some(after);
        };
        let same = match (observed, result) {
            (Out::Ok, Out::Ok) | (Out::NotFound, Out::NotFound) => true,
            (Out::TypeMismatch, Out::TypeMismatch) => true,
            (Out::Value(a), Out::Value(b)) | (Out::CasMismatch(a), Out::CasMismatch(b)) => *a == b,
            (Out::Counter(a), Out::Counter(b)) => *a == b,
            _ => false,
        };
        same.then_some(after)
    }
}

/// JSON text with object keys sorted, so equal values (`Value` equality ignores key order)
/// have equal text whether or not serde_json preserves insertion order.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Interns values by their canonical JSON text; integers stay integers.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    values: Vec<Value>,
}

impl Interner {
    fn cell(&mut self, value: Option<&Value>) -> Cell {
        let Some(value) = value else {
            return Cell::Absent;
        };
        // `incr` reads exactly what `as_i64` accepts; `Value::from(i64)` writes it back the same.
        if let Some(n) = value.as_i64() {
            return Cell::Int(n);
        }
        let mut text = String::new();
        canonical(value, &mut text);
        if let Some(id) = self.ids.get(&text) {
            return Cell::Json(*id);
        }
        let id = self.values.len() as u32;
        self.ids.insert(text, id);
        self.values.push(value.clone());
        Cell::Json(id)
    }

    fn value(&self, cell: Cell) -> Option<Value> {
        match cell {
            Cell::Absent => None,
            Cell::Int(n) => Some(Value::from(n)),
            Cell::Json(id) => self.values.get(id as usize).cloned(),
        }
    }

    fn input(&mut self, input: &KvInput) -> In {
        match input {
            KvInput::Put { value } => In::Put(self.cell(Some(value))),
            KvInput::Get => In::Get,
            KvInput::Delete => In::Delete,
            KvInput::Cas { expected, new } => In::Cas {
                expected: self.cell(expected.as_ref()),
                new: self.cell(Some(new)),
            },
            KvInput::Incr { delta } => In::Incr(*delta),
        }
    }

    fn output(&mut self, output: &KvOutput) -> Out {
        match output {
            KvOutput::Ok => Out::Ok,
            KvOutput::Value { value } => Out::Value(self.cell(Some(value))),
            KvOutput::NotFound => Out::NotFound,
            KvOutput::CasMismatch { current } => Out::CasMismatch(self.cell(current.as_ref())),
            KvOutput::Counter { value } => Out::Counter(*value),
            KvOutput::TypeMismatch => Out::TypeMismatch,
        }
    }
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    pub result: KeyResult,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum KeyResult {
    Linearizable,
    NotLinearizable {
        /// Indexes (into the `ops` given to [`check_kv`]) of the longest linearizable prefix.
        longest_prefix: Vec<usize>,
        /// The key's value after that prefix.
        value_after_prefix: Option<Value>,
        /// Index of the operation the search could not get past.
        stuck_at: Option<usize>,
    },
    Inconclusive {
        steps: u64,
    },
}

/// Checks each key's operations separately (`budget` search steps per key).
pub fn check_kv(ops: &[KvOp], budget: u64) -> Vec<KeyVerdict> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    by_key
        .into_iter()
        .map(|(key, indexes)| {
            let mut interner = Interner::default();
            let history: Vec<Operation<In, Out>> = indexes
                .iter()
                .map(|&i| {
                    let op = &ops[i];
                    Operation {
                        client: op.client,
                        input: interner.input(&op.input),
                        call: op.call,
                        ret: op.ret,
                        output: op.output.as_ref().map(|o| interner.output(o)),
                    }
                })
                .collect();
            let result = match check(&KvModel, &history, budget) {
                Verdict::Linearizable => KeyResult::Linearizable,
                Verdict::Inconclusive { steps } => KeyResult::Inconclusive { steps },
                Verdict::NotLinearizable(failure) => KeyResult::NotLinearizable {
                    longest_prefix: failure.longest_prefix.iter().map(|&i| indexes[i]).collect(),
                    value_after_prefix: interner.value(failure.state),
                    stuck_at: failure.stuck_at.map(|i| indexes[i]),
                },
            };
            KeyVerdict {
                key: key.to_string(),
                ops: indexes.len(),
                result,
            }
        })
        .collect()
}

/// [`check_kv`] with the default budget; true when every key is linearizable.
pub fn is_linearizable(ops: &[KvOp]) -> bool {
    check_kv(ops, DEFAULT_BUDGET)
        .iter()
        .all(|v| v.result == KeyResult::Linearizable)
}

/// Replays operations in a given total order (e.g. the store's sequence numbers) and returns
/// the position of the first whose output the model does not produce, with the value it saw.
pub fn replay_in_order(ops: &[&KvOp]) -> Result<(), (usize, Option<Value>)> {
    let mut interner = Interner::default();
    let mut states: HashMap<&str, Cell> = HashMap::new();
    for (position, op) in ops.iter().enumerate() {
        let input = interner.input(&op.input);
        let output = op.output.as_ref().map(|o| interner.output(o));
        let state = states.entry(op.key.as_str()).or_insert(Cell::Absent);
        match KvModel.step(state, &input, output.as_ref()) {
            Some(after) => *state = after,
            None => return Err((position, interner.value(*state))),
        }
    }
    Ok(())
}
