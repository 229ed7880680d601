//! What the chaos clients saw: one record per command, and its translation for the checker.

use std::collections::HashMap;

use bully_client::{Command, CommandResponse, Outcome};
use bully_server::store::Record;
use serde::{Deserialize, Serialize};

use super::linearizability::kv::{KvInput, KvOp, KvOutput};

/// One command as a client issued it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    /// The issuing client (the final checks use ids past the workload's).
    pub client: usize,
    /// The command id, the same on every retry.
    pub id: String,
    pub command: Command,
    /// Microseconds since the run's epoch, just before the client was called.
    pub invoke_us: u64,
    /// Just after it returned; `None` when the outcome is unknown.
    pub complete_us: Option<u64>,
    pub result: OpResult,
}

/// How a command ended for its client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpResult {
    /// Acknowledged.
    Ok { response: CommandResponse },
    /// Refused with a non-retryable error (4xx): certainly not applied.
    Rejected { code: String, error: String },
    /// The client gave up (deadline, connection resets): may or may not have been applied.
    Indeterminate { error: String, gave_up_us: u64 },
}

impl OpRecord {
    pub fn response(&self) -> Option<&CommandResponse> {
        match &self.result {
            OpResult::Ok { response } => Some(response),
            _ => None,
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        matches!(self.result, OpResult::Indeterminate { .. })
    }
}

/// The checker's form of a command (`None` for `list`, which is not modelled).
pub fn kv_input(command: &Command) -> Option<(String, KvInput)> {
    Some(match command {
        Command::Put { key, value, .. } => (
            key.clone(),
            KvInput::Put {
                value: value.clone(),
            },
        ),
        Command::Get { key } => (key.clone(), KvInput::Get),
        Command::Delete { key } => (key.clone(), KvInput::Delete),
        Command::Cas { key, expected, new } => (
            key.clone(),
            KvInput::Cas {
                expected: expected.clone(),
                new: new.clone(),
            },
        ),
        Command::Incr { key, delta } => (key.clone(), KvInput::Incr { delta: *delta }),
        Command::List { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseKeepalive { .. }
        | Command::LeaseRevoke { .. } => return None,
    })
}

/// The checker's form of an outcome (`None` for a `list` page).
pub fn kv_output(outcome: &Outcome) -> Option<KvOutput> {
    Some(match outcome {
        Outcome::Ok => KvOutput::Ok,
        Outcome::Value { value } => KvOutput::Value {
            value: value.clone(),
        },
        Outcome::NotFound => KvOutput::NotFound,
        Outcome::CasMismatch { current } => KvOutput::CasMismatch {
            current: current.clone(),
        },
        Outcome::Counter { value } => KvOutput::Counter { value: *value },
        Outcome::TypeMismatch { .. } => KvOutput::TypeMismatch,
        Outcome::Page { .. } | Outcome::Lease { .. } | Outcome::LeaseNotFound { .. } => {
            return None;
        }
    })
}

/// A history operation ready for the checker, with the sequence number the store gave it
/// (from the response, or from the store's record for an indeterminate write).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub op: KvOp,
    pub seq: Option<u64>,
    pub term: Option<u64>,
    /// Index into the history.
    pub index: usize,
}

/// Translates the history for the checker.
///
/// - Acknowledged commands: their interval and outcome.
/// - Rejected commands: left out (not applied).
/// - Indeterminate reads: left out (no effect, nothing observed).
/// - Indeterminate writes: `records` holds what the store says after every server was stopped.
///   With a record, the command was applied and its outcome is known: it must be placed
///   somewhere after its invocation. Without one, it was never applied before any observation
///   (every observation, the final reads included, happened before the lookup): left out, which
///   is the same as placing it after everything.
pub fn resolve(history: &[OpRecord], records: &HashMap<String, Record>) -> Vec<Resolved> {
    let mut out = Vec::new();
    for (index, record) in history.iter().enumerate() {
        let Some((key, input)) = kv_input(&record.command) else {
            continue;
        };
        let (ret, output, seq, term) = match &record.result {
            OpResult::Ok { response } => (
                record.complete_us,
                kv_output(&response.outcome),
                Some(response.seq),
                Some(response.term),
            ),
            OpResult::Rejected { .. } => continue,
            OpResult::Indeterminate { .. } if record.command.is_read() => continue,
            OpResult::Indeterminate { .. } => match records.get(&record.id) {
                Some(stored) => (
                    None,
                    kv_output(&stored.outcome),
                    Some(stored.seq),
                    Some(stored.term),
                ),
                None => continue,
            },
        };
        out.push(Resolved {
            op: KvOp {
                client: record.client,
                key,
                input,
                call: record.invoke_us,
                ret,
                output,
            },
            seq,
            term,
            index,
        });
    }
    out
}
