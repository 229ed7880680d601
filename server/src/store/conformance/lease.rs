//! Leases: a claim waits for the holder's lease, judged by the store's clock, unless it was
//! released, has run out, is the claimer's own, or its holder is known dead.

use std::time::Duration;

use bully_client::Outcome;
use serde_json::json;

use super::{Pair, put};
use crate::store::{Claim, StoreError};

fn claim<'a>(holder: &'a str, lease: Duration, break_holder: Option<&'a str>) -> Claim<'a> {
    Claim {
        holder,
        lease,
        break_holder,
    }
}

const LONG: Duration = Duration::from_secs(30);

pub(super) async fn a_running_lease_refuses_other_claimers((a, b): Pair) {
    let t1 = a.claim(claim("a", LONG, None)).await.unwrap();
    match b.claim(claim("b", LONG, None)).await {
        Err(StoreError::LeaseHeld {
            holder,
            remaining_ms,
        }) => {
            assert_eq!(holder, "a");
            assert!(remaining_ms > 0 && remaining_ms <= LONG.as_millis() as u64);
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // Nothing changed: the holder still commits under its term.
    assert_eq!(a.fence_state().await.unwrap().term, t1);
    let applied = a.apply(t1, "w1", &put("k", json!(1))).await.unwrap();
    assert_eq!(applied.outcome, Outcome::Ok);
    // Its own lease does not stop the holder from claiming again.
    let t2 = a.claim(claim("a", LONG, None)).await.unwrap();
    assert_eq!(t2, t1 + 1);
    // A claimer that knows the holder dead breaks its lease.
    let t3 = b.claim(claim("b", LONG, Some("a"))).await.unwrap();
    assert_eq!(t3, t2 + 1);
    // Naming another holder breaks nothing.
    assert!(matches!(
        a.claim(claim("a", LONG, Some("c"))).await,
        Err(StoreError::LeaseHeld { .. })
    ));
}

pub(super) async fn a_released_lease_lets_the_next_claim_through((a, b): Pair) {
    let t1 = a.claim(claim("a", LONG, None)).await.unwrap();
    a.release_lease(t1).await.unwrap();
    let t2 = b.claim(claim("b", LONG, None)).await.unwrap();
    assert_eq!(t2, t1 + 1);
    // The deposed holder can neither renew nor release any more.
    assert!(matches!(
        a.renew_lease(t1).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        a.release_lease(t1).await,
        Err(StoreError::Fenced { .. })
    ));
}

pub(super) async fn a_lease_runs_out_unless_renewed((a, b): Pair) {
    let lease = Duration::from_millis(1_500);
    let t1 = a.claim(claim("a", lease, None)).await.unwrap();
    // Renewed more often than it runs out (by renewals and by writing batches), it holds.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if i % 2 == 0 {
            a.renew_lease(t1).await.unwrap();
        } else {
            a.apply(t1, &format!("w{i}"), &put("k", json!(i)))
                .await
                .unwrap();
        }
        assert!(
            matches!(
                b.claim(claim("b", lease, None)).await,
                Err(StoreError::LeaseHeld { .. })
            ),
            "renewal {i}"
        );
    }
    // Left alone, it runs out, and the claim goes through.
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let t2 = b.claim(claim("b", lease, None)).await.unwrap();
    assert_eq!(t2, t1 + 1);
    // A claim without a lease (here breaking b's) leaves none.
    let t3 = a
        .claim(claim("a", Duration::ZERO, Some("b")))
        .await
        .unwrap();
    assert_eq!(b.claim(claim("b", lease, None)).await.unwrap(), t3 + 1);
}
