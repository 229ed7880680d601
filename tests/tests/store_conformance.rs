//! The store conformance suite ([`bully_server::store::conformance`]) against each backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bully_server::store::Store;
use bully_server::store::conformance;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_tests::secantus::Secantus;

#[tokio::test(flavor = "multi_thread")]
async fn mongo_backend_conforms() {
    let server = Secantus::start().await;
    let uri = server.uri();
    let cases = AtomicU32::new(0);
    conformance::run_all(|| {
        // A fresh database per case: the suite expects an empty store each time.
        let database = format!("conformance_{}", cases.fetch_add(1, Ordering::SeqCst));
        let uri = uri.clone();
        async move {
            let open = || MongoStore::connect(&uri, &database, MongoOptions::default());
            let a: Arc<dyn Store> = Arc::new(open().await.expect("connect a"));
            let b: Arc<dyn Store> = Arc::new(open().await.expect("connect b"));
            (a, b)
        }
    })
    .await;
}
