//! The store conformance suite ([`bully_server::store::conformance`]) against each backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bully_server::store::Store;
use bully_server::store::conformance::{self, Backend, Pair};
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_tests::secantus::Secantus;
use mongodb::bson::doc;

/// A fresh database per case on one SecantusDB; poisoning arms the `failCommand` failpoint
/// on `insert` with a code the store does not retry (so any batch that writes fails after its
/// reads, in the middle of its transaction).
struct Databases {
    server: Secantus,
    cases: AtomicU32,
}

#[async_trait::async_trait]
impl Backend for Databases {
    async fn fresh(&self) -> Pair {
        let database = format!("conformance_{}", self.cases.fetch_add(1, Ordering::SeqCst));
        let uri = self.server.uri();
        let open = || MongoStore::connect(&uri, &database, MongoOptions::default());
        let a: Arc<dyn Store> = Arc::new(open().await.expect("connect a"));
        let b: Arc<dyn Store> = Arc::new(open().await.expect("connect b"));
        (a, b)
    }

    async fn poison(&self, on: bool) {
        if on {
            // 2: BadValue, not a transient code.
            let data = doc! { "failCommands": ["insert"], "errorCode": 2 };
            self.server.fail_command("alwaysOn", data).await;
        } else {
            self.server.fail_command("off", doc! {}).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mongo_backend_conforms() {
    let databases = Databases {
        server: Secantus::start().await,
        cases: AtomicU32::new(0),
    };
    conformance::run_all(&databases).await;
}
