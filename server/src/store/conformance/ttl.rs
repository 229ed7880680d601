//! Leases on keys: a grant's id is its sequence number; a key put with a lease is deleted, in
//! the same step, when the lease is revoked (or expired: the coordinator's internal revoke);
//! a key put again without the lease, or deleted, is detached from it; the server's own keys
//! never appear in a user's `list`.

use bully_client::{Command, Entry, Outcome};
use serde_json::json;

use super::{Pair, get, put, read};
use crate::store::logic::{self, LeaseRecord};
use crate::store::{Op, Store};

fn leased(key: &str, value: serde_json::Value, lease: u64) -> Command {
    Command::Put {
        key: key.into(),
        value,
        lease: Some(lease),
    }
}

async fn run(store: &dyn Store, term: u64, command: Command) -> Outcome {
    store
        .apply(term, &bully_client::new_command_id(), &command)
        .await
        .expect("apply")
        .outcome
}

async fn grant(store: &dyn Store, term: u64, ttl_ms: u64) -> u64 {
    let applied = store
        .apply(term, "grant-1", &Command::LeaseGrant { ttl_ms })
        .await
        .expect("grant");
    assert_eq!(
        applied.outcome,
        Outcome::Lease {
            id: applied.seq,
            ttl_ms
        },
        "a lease's id is its grant's sequence number"
    );
    // A retried grant gets the same lease.
    let again = store
        .apply(term, "grant-1", &Command::LeaseGrant { ttl_ms })
        .await
        .expect("grant again");
    assert!(again.duplicate);
    assert_eq!(again.outcome, applied.outcome);
    applied.seq
}

fn user_list() -> Command {
    Command::List {
        prefix: None,
        limit: None,
        after: None,
    }
}

pub(super) async fn revoking_a_lease_deletes_its_keys((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let id = grant(&*a, t, 5000).await;
    assert_eq!(run(&*a, t, leased("l/1", json!(1), id)).await, Outcome::Ok);
    assert_eq!(run(&*a, t, leased("l/2", json!(2), id)).await, Outcome::Ok);
    assert_eq!(run(&*a, t, put("plain", json!(3))).await, Outcome::Ok);
    assert_eq!(
        run(&*a, t, Command::LeaseKeepalive { id }).await,
        Outcome::Lease { id, ttl_ms: 5000 }
    );
    // The lease's own records are not the user's keys.
    match run(&*a, t, user_list()).await {
        Outcome::Page { items, next } => {
            let keys: Vec<&str> = items.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, ["l/1", "l/2", "plain"]);
            assert_eq!(next, None);
        }
        other => panic!("{other:?}"),
    }
    // The server lists its leases through a reserved prefix.
    let leases = Command::List {
        prefix: Some(logic::lease_prefix()),
        limit: None,
        after: None,
    };
    match run(&*a, t, leases.clone()).await {
        Outcome::Page { items, .. } => {
            assert_eq!(items.len(), 1);
            let Entry { key, value } = &items[0];
            assert_eq!(key, &logic::lease_key(id));
            let record = LeaseRecord::parse(value).unwrap();
            assert_eq!(record.ttl_ms, 5000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(run(&*a, t, Command::LeaseRevoke { id }).await, Outcome::Ok);
    assert_eq!(read(&*a, t, "l/1").await, Outcome::NotFound);
    assert_eq!(read(&*a, t, "l/2").await, Outcome::NotFound);
    assert_eq!(
        read(&*a, t, "plain").await,
        Outcome::Value { value: json!(3) }
    );
    assert_eq!(
        run(&*a, t, Command::LeaseKeepalive { id }).await,
        Outcome::LeaseNotFound { id }
    );
    assert_eq!(
        run(&*a, t, Command::LeaseRevoke { id }).await,
        Outcome::LeaseNotFound { id }
    );
    // A put with a lease that is gone is refused and changes nothing.
    assert_eq!(
        run(&*a, t, leased("plain", json!(4), id)).await,
        Outcome::LeaseNotFound { id }
    );
    assert_eq!(
        read(&*a, t, "plain").await,
        Outcome::Value { value: json!(3) }
    );
    match run(&*a, t, leases).await {
        Outcome::Page { items, .. } => assert!(items.is_empty(), "{items:?}"),
        other => panic!("{other:?}"),
    }
    match run(&*a, t, user_list()).await {
        Outcome::Page { items, .. } => assert_eq!(items.len(), 1, "{items:?}"),
        other => panic!("{other:?}"),
    }
}

pub(super) async fn a_key_put_again_or_deleted_leaves_its_lease((a, b): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let id = grant(&*a, t, 5000).await;
    let other = {
        let applied = a
            .apply(t, "grant-2", &Command::LeaseGrant { ttl_ms: 9000 })
            .await
            .unwrap();
        applied.seq
    };
    for key in ["again", "deleted", "moved", "kept"] {
        assert_eq!(run(&*a, t, leased(key, json!(0), id)).await, Outcome::Ok);
    }
    assert_eq!(run(&*a, t, put("again", json!(1))).await, Outcome::Ok);
    assert_eq!(
        run(
            &*a,
            t,
            Command::Delete {
                key: "deleted".into()
            }
        )
        .await,
        Outcome::Ok
    );
    assert_eq!(run(&*a, t, put("deleted", json!(1))).await, Outcome::Ok);
    assert_eq!(
        run(&*a, t, leased("moved", json!(1), other)).await,
        Outcome::Ok
    );
    // An incr keeps the key on its lease.
    assert_eq!(
        run(
            &*a,
            t,
            Command::Incr {
                key: "kept".into(),
                delta: 2
            }
        )
        .await,
        Outcome::Counter { value: 2 }
    );
    // Another handle (a new coordinator) revokes: the lease lives in the store.
    let t2 = b.claim_term("b").await.unwrap();
    assert_eq!(run(&*b, t2, Command::LeaseRevoke { id }).await, Outcome::Ok);
    assert_eq!(
        read(&*b, t2, "again").await,
        Outcome::Value { value: json!(1) }
    );
    assert_eq!(
        read(&*b, t2, "deleted").await,
        Outcome::Value { value: json!(1) }
    );
    assert_eq!(
        read(&*b, t2, "moved").await,
        Outcome::Value { value: json!(1) }
    );
    assert_eq!(read(&*b, t2, "kept").await, Outcome::NotFound);
    assert_eq!(
        run(&*b, t2, Command::LeaseRevoke { id: other }).await,
        Outcome::Ok
    );
    assert_eq!(read(&*b, t2, "moved").await, Outcome::NotFound);
}

pub(super) async fn a_batch_sees_its_own_lease_changes((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let id = grant(&*a, t, 5000).await;
    assert_eq!(run(&*a, t, leased("old", json!(0), id)).await, Outcome::Ok);
    let ops: Vec<Op> = [
        leased("new", json!(1), id),
        get("new"),
        Command::LeaseRevoke { id },
        get("new"),
        get("old"),
        Command::LeaseKeepalive { id },
        leased("late", json!(2), id),
        get("late"),
        Command::LeaseGrant { ttl_ms: 1000 },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, command)| Op {
        id: format!("b{i}"),
        command,
    })
    .collect();
    let results: Vec<Outcome> = a
        .apply_batch(t, &ops)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().outcome)
        .collect();
    assert_eq!(results[0], Outcome::Ok);
    assert_eq!(results[1], Outcome::Value { value: json!(1) });
    assert_eq!(results[2], Outcome::Ok);
    assert_eq!(results[3], Outcome::NotFound);
    assert_eq!(results[4], Outcome::NotFound);
    assert_eq!(results[5], Outcome::LeaseNotFound { id });
    assert_eq!(results[6], Outcome::LeaseNotFound { id });
    assert_eq!(results[7], Outcome::NotFound);
    assert!(matches!(results[8], Outcome::Lease { ttl_ms: 1000, .. }));
    assert_eq!(read(&*a, t, "new").await, Outcome::NotFound);
    assert_eq!(read(&*a, t, "old").await, Outcome::NotFound);
}
