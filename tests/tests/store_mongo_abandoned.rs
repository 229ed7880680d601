//! A coordinator killed in the middle of a transaction must not stall failover: the
//! transaction it left open holds the fence document until the server reaps it (60 s by
//! default), so a new claim first aborts the old sessions.

use std::time::Duration;

use bully_server::store::Store;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_tests::secantus::Secantus;
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_not_blocked_by_a_dead_coordinators_transaction() {
    let mongo = Secantus::start().await;
    let options = MongoOptions {
        // Far below the server's 60 s transaction lifetime: only aborting the abandoned
        // transaction lets the claim through in time.
        op_deadline: Duration::from_secs(10),
    };
    let old = MongoStore::connect(&mongo.uri(), "abandoned", options.clone())
        .await
        .unwrap();
    let term = old.claim_term("old").await.unwrap();

    // The "old coordinator": a transaction that wrote the fence document and then vanished
    // (its session is leaked, so the driver never aborts it).
    let client = mongo.client().await;
    let fence = client
        .database("abandoned")
        .collection::<mongodb::bson::Document>("fence");
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    fence
        .update_one(
            doc! {"_id": "fence", "term": term as i64},
            doc! {"$inc": {"seq": 1_i64}},
        )
        .session(&mut session)
        .await
        .unwrap();
    std::mem::forget(session);

    let new = MongoStore::connect(&mongo.uri(), "abandoned", options)
        .await
        .unwrap();
    let claimed = new
        .claim_term("new")
        .await
        .expect("claim despite the abandoned transaction");
    assert_eq!(claimed, term + 1);
    let applied = new
        .apply(
            claimed,
            "after",
            &bully_client::Command::Incr {
                key: "n".into(),
                delta: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(applied.outcome, bully_client::Outcome::Counter { value: 1 });
    // The abandoned increment of `seq` never committed.
    assert_eq!(applied.seq, 1);
}
