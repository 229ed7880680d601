//! Wire types shared by servers, clients and the controller.
//!
//! Everything here is plain data with serde derives: the JSON bodies of the client API
//! (`POST /v1/commands`), its error bodies, and `GET /v1/status`.
//!
//! # Layout
//! - [`Command`], [`CommandRequest`], [`Limits`]: what a client asks, and how it is validated.
//! - [`CommandResponse`], [`Outcome`]: what the coordinator answers once a command is applied.
//! - [`ErrorBody`], [`ErrorCode`]: every non-2xx answer, with a stable machine-readable code.
//! - [`Status`], [`PeerStatus`], [`Role`]: a server's view of the cluster.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default limit on a key's length in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = 512;
/// Default limit on a value's size in bytes (its compact JSON encoding).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Default (and largest allowed) page size for `list`.
pub const DEFAULT_MAX_PAGE: u32 = 1000;
/// Longest accepted command id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The first character of the keys the server keeps for itself (leases, the keys attached to
/// them): U+10FFFF sorts after every other key, and user keys may not start with it.
pub const RESERVED_PREFIX: char = '\u{10FFFF}';
/// Shortest lease TTL, in milliseconds.
pub const MIN_LEASE_TTL_MS: u64 = 100;
/// Longest lease TTL, in milliseconds (7 days).
pub const MAX_LEASE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// One client command. The JSON form is internally tagged by `op`:
/// `{"op":"put","key":"a","value":{"x":1}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Store `value` under `key`, replacing any previous value. With `lease`, the key is
    /// attached to that lease and deleted when it expires or is revoked; without, it is
    /// detached from any lease it had.
    Put {
        key: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    /// Read the value under `key`.
    Get { key: String },
    /// Remove `key`.
    Delete { key: String },
    /// Set `key` to `new` only if its current value equals `expected`;
    /// `expected` absent (or `null`) means "the key does not exist".
    Cas {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<Value>,
        new: Value,
    },
    /// Add `delta` (default 1) to the integer under `key` (absent counts as 0).
    Incr {
        key: String,
        #[serde(default = "default_delta")]
        delta: i64,
    },
    /// Keys in ascending byte order, optionally restricted to `prefix`, starting after `after`.
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Create a lease that the coordinator expires `ttl_ms` after its last grant or
    /// keepalive; its id is the grant's sequence number.
    LeaseGrant { ttl_ms: u64 },
    /// Restart the lease's TTL (answers `lease`, or `lease_not_found`).
    LeaseKeepalive { id: u64 },
    /// End the lease now, deleting every key attached to it in the same step.
    LeaseRevoke { id: u64 },
}

fn default_delta() -> i64 {
    1
}

impl Command {
    /// The command's name, as used in metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Get { .. } => "get",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "cas",
            Command::Incr { .. } => "incr",
            Command::List { .. } => "list",
            Command::LeaseGrant { .. } => "lease_grant",
            Command::LeaseKeepalive { .. } => "lease_keepalive",
            Command::LeaseRevoke { .. } => "lease_revoke",
        }
    }

    /// About how many bytes the command carries: its key and the JSON of its values. The
    /// executor bounds a batch by it.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + json_size(value),
            Command::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, json_size) + json_size(new)
            }
            Command::Get { key } | Command::Delete { key } | Command::Incr { key, .. } => key.len(),
            Command::List { prefix, after, .. } => {
                prefix.as_ref().map_or(0, String::len) + after.as_ref().map_or(0, String::len)
            }
            Command::LeaseGrant { .. }
            | Command::LeaseKeepalive { .. }
            | Command::LeaseRevoke { .. } => 8,
        }
    }

    /// True for commands that never change the store.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Get { .. } | Command::List { .. } | Command::LeaseKeepalive { .. }
        )
    }

    /// Checks the command against the size limits. Keys must be non-empty; values must not be
    /// JSON `null` (absence is expressed by `delete`, and `null` would be ambiguous in `cas`).
    pub fn validate(&self, limits: &Limits) -> Result<(), Invalid> {
        let check_key = |key: &str| -> Result<(), Invalid> {
            if key.is_empty() {
                return Err(Invalid::new(
                    ErrorCode::InvalidCommand,
                    "key must not be empty",
                ));
            }
            if key.starts_with(RESERVED_PREFIX) {
                return Err(Invalid::new(
                    ErrorCode::InvalidCommand,
                    "key must not start with U+10FFFF (reserved for the server's own keys)",
                ));
            }
            if key.len() > limits.max_key_bytes {
                return Err(Invalid::new(
                    ErrorCode::KeyTooLong,
                    format!(
                        "key is {} bytes; the limit is {} bytes (max_key_bytes)",
                        key.len(),
                        limits.max_key_bytes
                    ),
                ));
            }
            Ok(())
        };
        let check_value = |what: &str, value: &Value| -> Result<(), Invalid> {
            if value.is_null() {
                return Err(Invalid::new(
                    ErrorCode::InvalidCommand,
                    format!("{what} must not be null (use delete to remove a key)"),
                ));
            }
            let size = json_size(value);
            if size > limits.max_value_bytes {
                return Err(Invalid::new(
                    ErrorCode::ValueTooLarge,
                    format!(
                        "{what} is {size} bytes; the limit is {} bytes (max_value_bytes)",
                        limits.max_value_bytes
                    ),
                ));
            }
            Ok(())
        };
        match self {
            Command::Put { key, value, .. } => {
                check_key(key)?;
                check_value("value", value)
            }
            Command::LeaseGrant { ttl_ms } => {
                if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(ttl_ms) {
                    Ok(())
                } else {
                    Err(Invalid::new(
                        ErrorCode::InvalidCommand,
                        format!(
                            "ttl_ms is {ttl_ms}; a lease lasts {MIN_LEASE_TTL_MS} ms to \
                             {MAX_LEASE_TTL_MS} ms"
                        ),
                    ))
                }
            }
            Command::LeaseKeepalive { .. } | Command::LeaseRevoke { .. } => Ok(()),
            Command::Get { key } | Command::Delete { key } | Command::Incr { key, .. } => {
                check_key(key)
            }
            Command::Cas { key, expected, new } => {
                check_key(key)?;
                if let Some(expected) = expected {
                    check_value("expected", expected)?;
                }
                check_value("new", new)
            }
            Command::List {
                prefix,
                limit,
                after,
            } => {
                for (what, key) in [("prefix", prefix), ("after", after)] {
                    if let Some(key) = key
                        && key.starts_with(RESERVED_PREFIX)
                    {
                        return Err(Invalid::new(
                            ErrorCode::InvalidCommand,
                            format!("{what} must not start with U+10FFFF (reserved)"),
                        ));
                    }
                    if let Some(key) = key
                        && key.len() > limits.max_key_bytes
                    {
                        return Err(Invalid::new(
                            ErrorCode::KeyTooLong,
                            format!(
                                "{what} is {} bytes; the limit is {} bytes (max_key_bytes)",
                                key.len(),
                                limits.max_key_bytes
                            ),
                        ));
                    }
                }
                match limit {
                    Some(0) => Err(Invalid::new(
                        ErrorCode::InvalidCommand,
                        "limit must be at least 1",
                    )),
                    Some(n) if *n > limits.max_page => Err(Invalid::new(
                        ErrorCode::PageTooLarge,
                        format!(
                            "limit is {n}; the largest page is {} (max_page)",
                            limits.max_page
                        ),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Size of a value's compact JSON encoding, the unit of `max_value_bytes`.
pub fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to an infallible sink cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Size limits a server enforces on commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_page: DEFAULT_MAX_PAGE,
        }
    }
}

/// Why a request was refused before it reached the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub message: String,
}

impl Invalid {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// The body of `POST /v1/commands`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Client-generated id; a retry reuses it and gets the first execution's result.
    pub id: String,
    pub command: Command,
}

impl CommandRequest {
    /// A request with a fresh random id.
    pub fn new(command: Command) -> Self {
        CommandRequest {
            id: new_command_id(),
            command,
        }
    }

    /// Validates the id and the command.
    pub fn validate(&self, limits: &Limits) -> Result<(), Invalid> {
        validate_id(&self.id)?;
        self.command.validate(limits)
    }
}

/// A fresh, globally unique command id: a UUIDv7, whose leading bits are the time, so ids
/// from all clients arrive at the coordinator in nearly ascending order and its exactly-once
/// log appends to the end of its id index instead of dirtying a random page per command.
pub fn new_command_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Ids are 1 to 128 bytes of `[A-Za-z0-9._:-]`: safe in logs, URLs and store keys.
pub fn validate_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Invalid::new(
            ErrorCode::InvalidId,
            format!("id must be 1 to {MAX_ID_BYTES} bytes, got {}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Invalid::new(
            ErrorCode::InvalidId,
            format!("id may hold only letters, digits and . _ : - (found {c:?})"),
        ));
    }
    Ok(())
}

/// The answer to an applied (or deduplicated) command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub id: String,
    /// Position in the single global order; strictly increasing across terms.
    pub seq: u64,
    /// The coordinator term under which the command was applied.
    pub term: u64,
    pub outcome: Outcome,
    /// True when this id had already been applied and the stored result is returned.
    #[serde(default)]
    pub duplicate: bool,
}

/// The result of a command. `NotFound`, `CasMismatch` and `TypeMismatch` are command-level
/// failures: the command was executed (and is recorded), but did not do what was asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// `put`, `delete` or a successful `cas` took effect.
    Ok,
    /// `get` found the key.
    Value { value: Value },
    /// `get` or `delete` on a missing key.
    NotFound,
    /// `cas` found another value (`current` absent means the key does not exist).
    CasMismatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<Value>,
    },
    /// `incr`'s new value.
    Counter { value: i64 },
    /// `incr` on a value that is not an integer, or an overflow.
    TypeMismatch { message: String },
    /// One page of `list`; `next` is the `after` for the next page, if any.
    Page {
        items: Vec<Entry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// `lease_grant` or `lease_keepalive`: the lease and its TTL.
    Lease { id: u64, ttl_ms: u64 },
    /// `lease_keepalive`, `lease_revoke` or `put` with a lease that does not exist (it
    /// expired, was revoked, or never was).
    LeaseNotFound { id: u64 },
}

impl Outcome {
    /// False for command-level failures.
    pub fn is_success(&self) -> bool {
        !matches!(
            self,
            Outcome::NotFound
                | Outcome::CasMismatch { .. }
                | Outcome::TypeMismatch { .. }
                | Outcome::LeaseNotFound { .. }
        )
    }
}

/// One key and its value in a `list` page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: Value,
}

/// Every error answer of the HTTP APIs: `{"code":"...","message":"..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// For `not_coordinator`: the coordinator's client address, to try next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// For retryable errors: how long to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Stable, machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON.
    InvalidJson,
    /// The JSON is not a valid request (missing field, wrong type, bad value).
    InvalidCommand,
    /// `op` names no known command.
    UnknownCommand,
    /// The command id is malformed.
    InvalidId,
    /// A key exceeds `max_key_bytes`.
    KeyTooLong,
    /// A value exceeds `max_value_bytes`.
    ValueTooLarge,
    /// A `list` limit exceeds `max_page`.
    PageTooLarge,
    /// The request body exceeds the server's body limit.
    PayloadTooLarge,
    /// The request (including a slowly sent body) took longer than the server allows; a
    /// command may or may not have been applied, and retrying it with the same id is safe.
    RequestTimeout,
    /// The id was already used for a different command.
    IdConflict,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// No such route.
    NotFound,
    /// Plain HTTP on a port that speaks HTTPS.
    TlsRequired,
    /// This server is not the coordinator; `coordinator` names the one it knows.
    NotCoordinator,
    /// No coordinator is known right now (an election is under way).
    NoCoordinator,
    /// The coordinator's queue is full.
    QueueFull,
    /// This server lost its term to a newer coordinator; the command was not applied.
    Fenced,
    /// The store did not answer in time; the command may or may not have been applied,
    /// and a retry with the same id is safe.
    StoreUnavailable,
    /// The server is shutting down.
    ShuttingDown,
    /// Anything else.
    Internal,
    /// A code this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorCode {
    /// The wire name, e.g. `not_coordinator`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(Value::String(name)) => f.write_str(&name),
            _ => write!(f, "{self:?}"),
        }
    }
}

impl ErrorCode {
    /// Whether retrying the same request (same id), here or on another server, can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotCoordinator
                | ErrorCode::NoCoordinator
                | ErrorCode::QueueFull
                | ErrorCode::Fenced
                | ErrorCode::StoreUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::RequestTimeout
                | ErrorCode::Internal
                | ErrorCode::Unknown
        )
    }
}

/// A server's role in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a known coordinator (or waits to learn one).
    Follower,
    /// Has sent ELECTION to higher ranks and waits for an answer.
    Candidate,
    /// A higher rank answered; waits for its COORDINATOR announcement.
    AwaitingCoordinator,
    /// Asked the current, lower-ranked coordinator to hand over; waits for the handoff.
    TakingOver,
    /// Won the election. Executes commands once its term is claimed in the store.
    Coordinator,
    /// Coordinator that stopped accepting commands and drains its queue before handing over.
    HandingOff,
    /// Shutting down.
    Leaving,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::AwaitingCoordinator => "awaiting_coordinator",
            Role::TakingOver => "taking_over",
            Role::Coordinator => "coordinator",
            Role::HandingOff => "handing_off",
            Role::Leaving => "leaving",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This server's random election rank.
    pub rank: u64,
    pub role: Role,
    /// The term this server holds as coordinator, once claimed in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Address clients use.
    pub client_addr: String,
    /// Address peers use.
    pub peer_addr: String,
    /// The coordinator this server knows, if any (itself included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorInfo>,
    /// True when a live coordinator is known and, if it is this server, its term is claimed.
    pub ready: bool,
    /// Highest sequence number this server applied or saw returned by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub peers: Vec<PeerStatus>,
    pub version: String,
}

/// The coordinator as one server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub rank: u64,
    pub client_addr: String,
    pub peer_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// One discovered peer as a server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Milliseconds since the last message from this peer; absent if never heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Heard within the heartbeat timeout.
    pub live: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_round_trip_through_json() {
        let cases = [
            json!({"op":"put","key":"a","value":{"x":[1,2]}}),
            json!({"op":"get","key":"a"}),
            json!({"op":"delete","key":"a"}),
            json!({"op":"cas","key":"a","new":1}),
            json!({"op":"cas","key":"a","expected":1,"new":2}),
            json!({"op":"incr","key":"a","delta":-3}),
            json!({"op":"list","prefix":"p","limit":10,"after":"p1"}),
        ];
        for case in cases {
            let cmd: Command = serde_json::from_value(case.clone()).unwrap();
            assert_eq!(serde_json::to_value(&cmd).unwrap(), case);
        }
        let incr: Command = serde_json::from_value(json!({"op":"incr","key":"n"})).unwrap();
        assert_eq!(
            incr,
            Command::Incr {
                key: "n".into(),
                delta: 1
            }
        );
    }

    #[test]
    fn unknown_op_and_wrong_types_are_rejected() {
        assert!(serde_json::from_value::<Command>(json!({"op":"drop","key":"a"})).is_err());
        assert!(serde_json::from_value::<Command>(json!({"op":"get","key":5})).is_err());
        assert!(
            serde_json::from_value::<Command>(json!({"op":"incr","key":"a","delta":"x"})).is_err()
        );
        assert!(
            serde_json::from_value::<CommandRequest>(
                json!({"id":"a","command":{"op":"get","key":"a"},"x":1})
            )
            .is_err()
        );
    }

    #[test]
    fn validation_names_the_limit() {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_page: 10,
        };
        let err = Command::Get {
            key: "abcde".into(),
        }
        .validate(&limits)
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::KeyTooLong);
        assert!(err.message.contains("max_key_bytes"), "{}", err.message);
        let err = Command::Put {
            key: "k".into(),
            value: json!("0123456789"),
            lease: None,
        }
        .validate(&limits)
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValueTooLarge);
        assert!(err.message.contains("max_value_bytes"), "{}", err.message);
        let err = Command::Put {
            key: "k".into(),
            value: Value::Null,
            lease: None,
        }
        .validate(&limits)
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCommand);
        let err = Command::List {
            prefix: None,
            limit: Some(11),
            after: None,
        }
        .validate(&limits)
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::PageTooLarge);
        assert!(
            Command::Put {
                key: "k".into(),
                value: json!(12345),
                lease: None,
            }
            .validate(&limits)
            .is_ok()
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id(&new_command_id()).is_ok());
        assert_eq!(validate_id("").unwrap_err().code, ErrorCode::InvalidId);
        assert_eq!(validate_id("a b").unwrap_err().code, ErrorCode::InvalidId);
        assert_eq!(
            validate_id(&"x".repeat(129)).unwrap_err().code,
            ErrorCode::InvalidId
        );
    }

    #[test]
    fn unknown_error_codes_decode() {
        let body: ErrorBody =
            serde_json::from_value(json!({"code":"from_the_future","message":"m"})).unwrap();
        assert_eq!(body.code, ErrorCode::Unknown);
        assert!(body.code.is_retryable());
        assert!(!ErrorCode::KeyTooLong.is_retryable());
    }
}
