//! Concurrent clients issuing mixed commands on a few keys, recording every one.
//!
//! Each client is a real [`bully_client::Client`] (its own server order, so not everyone hits
//! the same server first) and issues one command at a time, each with its own id; retries are
//! the client's own. Register keys get put/get/cas/delete and a few incr (type mismatches on
//! text values); counter keys get only incr and get, so their final value counts applied
//! increments exactly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bully_client::{Client, ClientError, ClientOptions, Command, CommandRequest, Outcome};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::history::{OpRecord, OpResult};

/// The client's deadline for one command, across its retries: beyond a failover, a store
/// step-down and the store's own retry window, so most commands complete.
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);
/// The deadline of impatient clients.
pub const SHORT_OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// One HTTP attempt: a paused server costs this much before the client moves on.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn register_key(i: usize) -> String {
    format!("r{i}")
}

pub fn counter_key(i: usize) -> String {
    format!("c{i}")
}

/// Microseconds since `epoch`.
pub fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Executes one request and records it.
pub async fn execute(
    client: &Client,
    client_id: usize,
    request: CommandRequest,
    epoch: Instant,
) -> OpRecord {
    let invoke_us = micros(epoch);
    let result = client.execute(&request).await;
    let now = micros(epoch);
    let (complete_us, result) = match result {
        Ok(response) => (Some(now), OpResult::Ok { response }),
        Err(ClientError::Rejected { body, .. }) => (
            Some(now),
            OpResult::Rejected {
                code: format!("{:?}", body.code),
                error: body.message,
            },
        ),
        Err(e) => (
            None,
            OpResult::Indeterminate {
                error: e.to_string(),
                gave_up_us: now,
            },
        ),
    };
    OpRecord {
        client: client_id,
        id: request.id,
        command: request.command,
        invoke_us,
        complete_us,
        result,
    }
}

/// A client with its own order of servers.
pub fn client_for(servers: &[String], rng: &mut StdRng, timeout: Duration) -> Client {
    let mut order = servers.to_vec();
    order.shuffle(rng);
    Client::new(
        order,
        ClientOptions {
            timeout,
            attempt_timeout: ATTEMPT_TIMEOUT,
            token: None,
            tls: None,
        },
    )
    .expect("a client over a non-empty server list")
}

/// Runs client `id` until `stop` is set; returns its history.
pub async fn client_loop(
    id: usize,
    seed: u64,
    servers: Vec<String>,
    registers: usize,
    counters: usize,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> Vec<OpRecord> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
    // A third of the clients give up early, so some commands end indeterminate (a failover
    // takes longer than this) and the checker has to place them.
    let timeout = if rng.random_ratio(1, 3) {
        SHORT_OP_TIMEOUT
    } else {
        OP_TIMEOUT
    };
    let client = client_for(&servers, &mut rng, timeout);
    // The last value this client saw per key: what its next cas expects.
    let mut seen: HashMap<String, Option<Value>> = HashMap::new();
    let mut history = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let unique = format!("c{id}-{n}");
        let keys = registers + counters;
        let k = rng.random_range(0..keys);
        let command = if k < registers {
            let key = register_key(k);
            match rng.random_range(0..100) {
                0..30 => Command::Put {
                    key,
                    // Mostly text; sometimes an integer, so incr on registers can succeed.
                    value: if rng.random_ratio(1, 5) {
                        json!(rng.random_range(0..100))
                    } else {
                        json!(unique)
                    },
                    lease: None,
                },
                30..62 => Command::Get { key },
                62..87 => Command::Cas {
                    expected: seen.get(&key).cloned().flatten(),
                    new: json!(unique),
                    key,
                },
                87..95 => Command::Delete { key },
                _ => Command::Incr {
                    key,
                    delta: rng.random_range(1..4),
                },
            }
        } else {
            let key = counter_key(k - registers);
            if rng.random_ratio(3, 5) {
                Command::Incr {
                    key,
                    delta: rng.random_range(1..4),
                }
            } else {
                Command::Get { key }
            }
        };
        let key = match &command {
            Command::Put { key, .. }
            | Command::Get { key }
            | Command::Delete { key }
            | Command::Cas { key, .. }
            | Command::Incr { key, .. } => key.clone(),
            _ => unreachable!("the workload issues no list and no lease command"),
        };
        let request = CommandRequest {
            id: format!("s{seed}-{unique}"),
            command,
        };
        let record = execute(&client, id, request, epoch).await;
        if let Some(response) = record.response() {
            let value = match (&record.command, &response.outcome) {
                (_, Outcome::Value { value }) => Some(Some(value.clone())),
                (_, Outcome::NotFound) => Some(None),
                (_, Outcome::CasMismatch { current }) => Some(current.clone()),
                (_, Outcome::Counter { value }) => Some(Some(json!(value))),
                (Command::Put { value, .. }, Outcome::Ok) => Some(Some(value.clone())),
                (Command::Cas { new, .. }, Outcome::Ok) => Some(Some(new.clone())),
                (Command::Delete { .. }, Outcome::Ok) => Some(None),
                _ => None,
            };
            if let Some(value) = value {
                seen.insert(key, value);
            }
        }
        history.push(record);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
    }
    history
}
