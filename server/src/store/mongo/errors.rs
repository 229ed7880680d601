//! Classifying driver errors for the retry loop: which failures are transient (failover,
//! step-down, network, write conflicts), the commit that must be retried as a commit, and a
//! short description of an error for logs.

use std::time::Duration;

use mongodb::ClientSession;
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};

use crate::store::StoreError;

/// Codes worth retrying: the node is not (or no longer) primary, is shutting down or the
/// network failed (the driver's own retryable sets), a transaction lost a write conflict (112),
/// no longer exists (251), or ran out of time (50, 64, 262). 11000 (duplicate key) would mean
/// the id's record appeared after the check: running again finds it.
const TRANSIENT_CODES: [i32; 18] = [
    6, 7, 50, 64, 89, 91, 112, 189, 251, 262, 9001, 10107, 11000, 11600, 11601, 11602, 13435, 13436,
];
/// First retry delay; doubled up to [`MAX_BACKOFF`]. Write conflicts clear within milliseconds,
/// a failover within seconds: start small, but do not hammer an electing replica set.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(10);
pub(super) const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why one attempt failed: a final answer, or a driver error for the retry loop to classify.
pub(super) enum Fail {
    Final(StoreError),
    Driver(DriverError),
}

impl From<DriverError> for Fail {
    fn from(e: DriverError) -> Self {
        Fail::Driver(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Final(e)
    }
}

pub(super) type Attempt<T> = std::result::Result<T, Fail>;

/// Commits, retrying while the result is unknown (the MongoDB-specified way to resolve it,
/// bounded by the caller's deadline). Any other failure means the transaction was aborted:
/// the caller runs it again, and a record it finds then is returned as a duplicate.
pub(super) async fn commit(session: &mut ClientSession) -> Attempt<()> {
    let mut backoff = MIN_BACKOFF;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => {
                tracing::debug!(error = %describe(&e), "commit result unknown, committing again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(super) fn code(e: &DriverError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
    .or_else(|| cause(e).and_then(code))
}

/// The driver wraps some errors (e.g. a failed handshake) in another one.
fn cause(e: &DriverError) -> Option<&DriverError> {
    std::error::Error::source(e)?.downcast_ref()
}

pub(super) fn is_transient(e: &DriverError) -> bool {
    let network = matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
    );
    network
        || [
            TRANSIENT_TRANSACTION_ERROR,
            UNKNOWN_TRANSACTION_COMMIT_RESULT,
            "RetryableWriteError",
        ]
        .iter()
        .any(|label| e.contains_label(label))
        || code(e).is_some_and(|c| TRANSIENT_CODES.contains(&c))
        || cause(e).is_some_and(is_transient)
}

/// The error and its labels, without the server's full response the driver's `Display` adds.
pub(super) fn describe(e: &DriverError) -> String {
    let mut labels: Vec<&str> = e.labels().iter().map(String::as_str).collect();
    labels.sort_unstable();
    format!("{} {labels:?}", e.kind)
}
