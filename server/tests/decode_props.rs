//! Property tests of the client API's request decoder: bad input never panics, every
//! rejection is a 4xx with a message, and every accepted request obeys the limits and
//! round-trips.
//!
//! Fast by default (proptest's 256 cases per property); for a long fuzzing session:
//! `PROPTEST_CASES=1000000 cargo test -p bully-server --release --test decode_props`.
//!
//! Round trips are compared exactly, floats included: the workspace enables serde_json's
//! `float_roundtrip` (without it about 30 % of random finite doubles parsed one ULP off, e.g.
//! `-1.4855530000482142e258` came back as `-1.4855530000482144e258`; `floats_round_trip_exactly`
//! keeps that fixed). Whether a request is within the limits is decided by an oracle written
//! here from the documented limits ([`within_limits`]), not by the validation under test.

use bully_client::{Command, CommandRequest, Limits};
use bully_server::error::status_of;
use bully_server::http::decode_request;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_non_null() -> impl Strategy<Value = Value> {
    arb_json().prop_filter("values are never null", |v| !v.is_null())
}

fn arb_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,128}"
}

fn arb_key() -> impl Strategy<Value = String> {
    ".{1,24}"
}

/// A command that is valid under the default limits.
fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (arb_key(), arb_non_null()).prop_map(|(key, value)| Command::Put {
            key,
            value,
            lease: None
        }),
        arb_key().prop_map(|key| Command::Get { key }),
        arb_key().prop_map(|key| Command::Delete { key }),
        (
            arb_key(),
            proptest::option::of(arb_non_null()),
            arb_non_null()
        )
            .prop_map(|(key, expected, new)| Command::Cas { key, expected, new }),
        (arb_key(), any::<i64>()).prop_map(|(key, delta)| Command::Incr { key, delta }),
        (
            proptest::option::of(".{0,8}"),
            proptest::option::of(1u32..=1000),
            proptest::option::of(".{0,8}"),
        )
            .prop_map(|(prefix, limit, after)| Command::List {
                prefix,
                limit,
                after
            }),
    ]
}

fn arb_request() -> impl Strategy<Value = CommandRequest> {
    (arb_id(), arb_command()).prop_map(|(id, command)| CommandRequest { id, command })
}

/// Default limits, or small ones that many generated requests exceed.
fn arb_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (1usize..32, 1usize..64, 1u32..20).prop_map(
            |(max_key_bytes, max_value_bytes, max_page)| Limits {
                max_key_bytes,
                max_value_bytes,
                max_page,
            }
        ),
    ]
}

/// Objects shaped like requests, with arbitrary (often wrong) field values.
fn arb_request_shaped() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just(json!("put")),
        Just(json!("get")),
        Just(json!("delete")),
        Just(json!("cas")),
        Just(json!("incr")),
        Just(json!("list")),
        arb_json(),
    ];
    let field = prop_oneof![
        Just("key"),
        Just("value"),
        Just("expected"),
        Just("new"),
        Just("delta"),
        Just("prefix"),
        Just("limit"),
        Just("after"),
        Just("extra"),
    ];
    let command =
        (op, prop::collection::vec((field, arb_json()), 0..5)).prop_map(|(op, fields)| {
            let mut map = Map::new();
            map.insert("op".into(), op);
            for (name, value) in fields {
                map.insert(name.into(), value);
            }
            Value::Object(map)
        });
    (
        prop_oneof![arb_id().prop_map(Value::String), arb_json()],
        command,
        proptest::option::of(arb_json()),
    )
        .prop_map(|(id, command, extra)| {
            let mut map = Map::new();
            map.insert("id".into(), id);
            map.insert("command".into(), command);
            if let Some(extra) = extra {
                map.insert("unexpected".into(), extra);
            }
            Value::Object(map)
        })
}

/// A change to a request's JSON text.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Remove(usize, usize),
    Insert(usize, Vec<u8>),
    Replace(usize, u8),
    /// Replace a top-level or command field with another JSON value.
    Field(bool, String, Value),
    /// Drop a top-level or command field.
    Drop(bool, String),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let name = prop_oneof![
        Just("id".to_string()),
        Just("command".to_string()),
        Just("op".to_string()),
        Just("key".to_string()),
        Just("value".to_string()),
        Just("expected".to_string()),
        Just("new".to_string()),
        Just("delta".to_string()),
        Just("limit".to_string()),
        ".{0,6}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..8).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (any::<bool>(), name.clone(), arb_json()).prop_map(|(c, n, v)| Mutation::Field(c, n, v)),
        (any::<bool>(), name).prop_map(|(c, n)| Mutation::Drop(c, n)),
    ]
}

fn mutate(request: &CommandRequest, mutation: &Mutation) -> Vec<u8> {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    fn object(value: &mut Value, in_command: bool) -> Option<&mut Map<String, Value>> {
        let top = value.as_object_mut()?;
        if in_command {
            top.get_mut("command")?.as_object_mut()
        } else {
            Some(top)
        }
    }
    match mutation {
        Mutation::Field(in_command, name, new) => {
            if let Some(map) = object(&mut value, *in_command) {
                map.insert(name.clone(), new.clone());
            }
        }
        Mutation::Drop(in_command, name) => {
            if let Some(map) = object(&mut value, *in_command) {
                map.remove(name);
            }
        }
        _ => {}
    }
    let mut bytes = serde_json::to_vec(&value).expect("values serialize");
    let len = bytes.len();
    match mutation {
        Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
        Mutation::Remove(at, n) => {
            let start = at % (len + 1);
            let end = (start + n).min(len);
            bytes.drain(start..end);
        }
        Mutation::Insert(at, new) => {
            let at = at % (len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Replace(at, b) if len > 0 => bytes[at % len] = *b,
        _ => {}
    }
    bytes
}

/// The documented limits, from first principles: ids of 1 to 128 bytes of `[A-Za-z0-9._:-]`;
/// keys of 1 to `max_key_bytes` bytes; values (and a cas's expected value) not null and at
/// most `max_value_bytes` bytes of compact JSON; a page of 1 to `max_page`; list bounds no
/// longer than a key; no key or bound starting with the reserved U+10FFFF; a lease TTL of
/// 100 ms to 7 days.
fn within_limits(request: &CommandRequest, limits: &Limits) -> bool {
    let id_ok = (1..=128).contains(&request.id.len())
        && request
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    let reserved = |key: &str| key.starts_with('\u{10FFFF}');
    let key_ok = |key: &str| (1..=limits.max_key_bytes).contains(&key.len()) && !reserved(key);
    let value_ok = |v: &Value| {
        !v.is_null() && serde_json::to_string(v).is_ok_and(|s| s.len() <= limits.max_value_bytes)
    };
    id_ok
        && match &request.command {
            Command::Put { key, value, .. } => key_ok(key) && value_ok(value),
            Command::Get { key } | Command::Delete { key } | Command::Incr { key, .. } => {
                key_ok(key)
            }
            Command::Cas { key, expected, new } => {
                key_ok(key) && expected.as_ref().is_none_or(value_ok) && value_ok(new)
            }
            Command::List {
                prefix,
                limit,
                after,
            } => {
                limit.is_none_or(|l| (1..=limits.max_page).contains(&l))
                    && [prefix, after]
                        .into_iter()
                        .flatten()
                        .all(|b| b.len() <= limits.max_key_bytes && !reserved(b))
            }
            Command::LeaseGrant { ttl_ms } => (100..=7 * 24 * 3600 * 1000).contains(ttl_ms),
            Command::LeaseKeepalive { .. } | Command::LeaseRevoke { .. } => true,
        }
}

/// What must hold for any body: a clean rejection, or an accepted request within the limits
/// that decodes to itself again.
fn check(body: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    match decode_request(body, limits) {
        Err(e) => {
            prop_assert!(
                e.status.is_client_error(),
                "rejection with status {}: {:?}",
                e.status,
                e.body
            );
            prop_assert!(!e.body.message.trim().is_empty(), "empty message: {:?}", e);
            prop_assert_eq!(e.status, status_of(e.body.code));
            prop_assert!(!e.body.code.is_retryable(), "{:?}", e.body.code);
        }
        Ok(request) => {
            prop_assert!(
                within_limits(&request, limits),
                "accepted outside the limits: {:?}",
                request
            );
            let again = serde_json::to_vec(&request).expect("requests serialize");
            let decoded = decode_request(&again, limits);
            prop_assert_eq!(decoded, Ok(request));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), limits in arb_limits()) {
        check(&body, &limits)?;
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json(), limits in arb_limits()) {
        check(&serde_json::to_vec(&value).unwrap(), &limits)?;
    }

    #[test]
    fn request_shaped_json_is_decoded_or_cleanly_rejected(value in arb_request_shaped(), limits in arb_limits()) {
        check(&serde_json::to_vec(&value).unwrap(), &limits)?;
    }

    #[test]
    fn valid_requests_are_accepted_unchanged(request in arb_request()) {
        let body = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(decode_request(&body, &Limits::default()), Ok(request));
    }

    #[test]
    fn requests_are_accepted_exactly_when_within_the_limits(request in arb_request(), limits in arb_limits()) {
        let body = serde_json::to_vec(&request).unwrap();
        let within = within_limits(&request, &limits);
        match decode_request(&body, &limits) {
            Ok(decoded) => {
                prop_assert!(within, "accepted outside the limits: {:?}", request);
                prop_assert_eq!(decoded, request);
            }
            Err(e) => {
                prop_assert!(!within, "a request within the limits was rejected: {:?}", e);
                check(&body, &limits)?;
            }
        }
    }

    #[test]
    fn mutated_requests_never_panic(request in arb_request(), mutations in prop::collection::vec(arb_mutation(), 1..4), limits in arb_limits()) {
        let mut body = serde_json::to_vec(&request).unwrap();
        for mutation in &mutations {
            let current = match serde_json::from_slice::<CommandRequest>(&body) {
                Ok(r) => r,
                Err(_) => {
                    // Already not a request: keep mutating the bytes only.
                    let mut scratch = body.clone();
                    if let Mutation::Truncate(at) = mutation {
                        scratch.truncate(at % (scratch.len() + 1));
                    }
                    body = scratch;
                    continue;
                }
            };
            body = mutate(&current, mutation);
        }
        check(&body, &limits)?;
    }
}

#[test]
fn oversized_and_deep_inputs_are_rejected_cleanly() {
    let limits = Limits::default();
    // Nesting past serde_json's recursion limit.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    check(deep.as_bytes(), &limits).unwrap();
    let deep_value = format!(
        r#"{{"id":"a","command":{{"op":"put","key":"k","value":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    check(deep_value.as_bytes(), &limits).unwrap();
    // A value just over the limit, and a huge key.
    let big = json!({"id": "a", "command": {"op": "put", "key": "k", "value": "x".repeat(limits.max_value_bytes)}});
    let err = decode_request(&serde_json::to_vec(&big).unwrap(), &limits).unwrap_err();
    assert_eq!(err.body.code, bully_client::ErrorCode::ValueTooLarge);
    let long_key = json!({"id": "a", "command": {"op": "get", "key": "k".repeat(100_000)}});
    check(&serde_json::to_vec(&long_key).unwrap(), &limits).unwrap();
    // Numbers out of range, lone surrogates, invalid UTF-8.
    for body in [
        &br#"{"id":"a","command":{"op":"incr","key":"k","delta":9223372036854775808}}"#[..],
        br#"{"id":"a","command":{"op":"put","key":"k","value":1e400}}"#,
        br#"{"id":"a","command":{"op":"get","key":"\ud800"}}"#,
        b"{\"id\":\"a\",\"command\":{\"op\":\"get\",\"key\":\"\xff\"}}",
        b"",
        b"null",
    ] {
        check(body, &limits).unwrap();
    }
}

proptest! {
    /// Failed before serde_json's `float_roundtrip` feature was enabled (see the module docs).
    #[test]
    fn floats_round_trip_exactly(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let request = CommandRequest {
            id: "f".into(),
            command: Command::Put { key: "k".into(), value: Value::from(f), lease: None },
        };
        let body = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(decode_request(&body, &Limits::default()), Ok(request));
    }
}
