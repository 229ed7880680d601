//! Reconcile against the mock API server: one scenario per case.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bully_client::Role;
use kube::runtime::controller::Action;

use crate::crd::{BullyClusterSpec, BullyClusterStatus, CONDITION_AVAILABLE, CONDITION_DEGRADED};
use crate::fixtures::{
    ExpectedEvent, FakeFetcher, Scenario, cluster, context, finish, pod, status,
};
use crate::metrics;
use crate::reconcile::{ERROR_REQUEUE, error_policy, reconcile};

async fn run(
    cluster: crate::BullyCluster,
    ctx: Arc<crate::reconcile::Context>,
) -> crate::Result<Action> {
    tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(cluster), ctx))
        .await
        .expect("reconcile hung: it made a request the scenario did not expect")
}

fn condition(status: &BullyClusterStatus, type_: &str) -> (String, String) {
    let c = status.condition(type_).expect("condition present");
    (c.status.clone(), c.reason.clone())
}

type Captured = Arc<Mutex<Option<BullyClusterStatus>>>;

/// Keeps the status the controller wrote, for the next reconcile.
fn capture() -> (Captured, Captured) {
    let cell = Arc::new(Mutex::new(None));
    (cell.clone(), cell)
}

fn event(type_: &'static str, reason: &'static str, note: &str) -> ExpectedEvent {
    ExpectedEvent {
        type_,
        reason,
        note: note.into(),
    }
}

#[tokio::test]
async fn coordinator_gets_labelled() {
    let fetcher = FakeFetcher::default()
        .with("10.0.0.10", status(10, Role::Follower, None))
        .with("10.0.0.11", status(20, Role::Follower, None))
        .with("10.0.0.12", status(30, Role::Coordinator, Some(7)));
    let (ctx, verifier, registry) = context(fetcher);
    let pods = vec![
        pod("bully-0", Some("10.0.0.10"), None),
        pod("bully-1", Some("10.0.0.11"), None),
        pod("bully-2", Some("10.0.0.12"), None),
    ];
    let server = verifier.run(Scenario::Reconcile {
        pods,
        labels: vec![
            ("bully-2", "coordinator"),
            ("bully-0", "follower"),
            ("bully-1", "follower"),
        ],
        events: vec![event("Normal", "CoordinatorChanged", "bully-2 (term 7)")],
        status: Some(Box::new(|s| {
            assert_eq!(s.coordinator.as_deref(), Some("bully-2"));
            assert_eq!(s.term, Some(7));
            assert_eq!(s.rank.as_deref(), Some("30"));
            assert_eq!(s.ready, "3/3");
            assert_eq!(s.observed_generation, Some(1));
            assert_eq!(
                s.reconciled_by.as_deref(),
                Some("test"),
                "the acting replica"
            );
            assert!(s.last_failover_time.is_some());
            assert_eq!(s.members.len(), 3);
            assert!(s.members.iter().all(|m| m.last_seen.is_some()));
            assert_eq!(
                condition(s, CONDITION_AVAILABLE),
                ("True".into(), "CoordinatorReady".into())
            );
            assert_eq!(
                condition(s, CONDITION_DEGRADED),
                ("False".into(), "AllMembersReady".into())
            );
        })),
    });
    let action = run(cluster(None), ctx).await.expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    finish(server).await;
    let text = metrics::encode(&registry);
    assert!(
        text.contains(
            r#"bully_controller_label_changes_total{cluster="testns/bully",role="follower"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"bully_controller_coordinator_changes_total{cluster="testns/bully"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn label_moves_after_a_new_election() {
    // bully-2 was coordinator (term 7) and stopped answering; bully-1 won term 8.
    let fetcher = FakeFetcher::default()
        .with("10.0.0.10", status(10, Role::Follower, None))
        .with("10.0.0.11", status(20, Role::Coordinator, Some(8)));
    let (ctx, verifier, _) = context(fetcher);
    let previous = BullyClusterStatus {
        coordinator: Some("bully-2".into()),
        term: Some(7),
        rank: Some("30".into()),
        ..BullyClusterStatus::default()
    };
    let server = verifier.run(Scenario::Reconcile {
        pods: vec![
            pod("bully-0", Some("10.0.0.10"), Some("follower")),
            pod("bully-1", Some("10.0.0.11"), Some("follower")),
            pod("bully-2", Some("10.0.0.12"), Some("coordinator")),
        ],
        // The new coordinator first, so the client Service is never empty.
        labels: vec![("bully-1", "coordinator"), ("bully-2", "follower")],
        events: vec![event("Normal", "CoordinatorChanged", "bully-1 (term 8)")],
        status: Some(Box::new(|s| {
            assert_eq!(s.coordinator.as_deref(), Some("bully-1"));
            assert_eq!(s.term, Some(8));
            assert_eq!(s.ready, "2/3");
            let gone = &s.members[2];
            assert_eq!(
                (gone.pod.as_str(), gone.reason.as_deref()),
                ("bully-2", Some("Unreachable"))
            );
            assert_eq!(gone.role, None);
            assert_eq!(
                condition(s, CONDITION_DEGRADED),
                ("True".into(), "MembersUnavailable".into())
            );
        })),
    });
    run(cluster(Some(previous)), ctx)
        .await
        .expect("reconcile succeeds");
    finish(server).await;
}

#[tokio::test]
async fn two_claimants_highest_term_wins_and_is_warned_once() {
    let fetcher = FakeFetcher::default()
        .with("10.0.0.10", status(99, Role::Coordinator, Some(6)))
        .with("10.0.0.11", status(20, Role::Coordinator, Some(7)));
    let (ctx, verifier, _) = context(fetcher);
    let (written, keep) = capture();
    let server = verifier.run(Scenario::Reconcile {
        pods: vec![
            pod("bully-0", Some("10.0.0.10"), Some("coordinator")),
            pod("bully-1", Some("10.0.0.11"), Some("follower")),
        ],
        labels: vec![("bully-1", "coordinator"), ("bully-0", "follower")],
        events: vec![
            event(
                "Warning",
                "ConflictingCoordinators",
                "bully-1 (term 7) wins; also claiming: bully-0 (term 6)",
            ),
            event("Normal", "CoordinatorChanged", "bully-1 (term 7)"),
        ],
        status: Some(Box::new(move |s| {
            assert_eq!(s.coordinator.as_deref(), Some("bully-1"));
            assert_eq!(
                condition(s, CONDITION_DEGRADED),
                ("True".into(), "ConflictingCoordinators".into())
            );
            *keep.lock().unwrap() = Some(s.clone());
        })),
    });
    run(cluster(None), ctx.clone())
        .await
        .expect("first reconcile");
    let verifier = finish(server).await;

    // The same conflict a second later: labels and status already match, and the Warning is
    // not repeated, so the reconcile only lists the pods.
    let previous = written.lock().unwrap().clone();
    let server = verifier.run(Scenario::Reconcile {
        pods: vec![
            pod("bully-0", Some("10.0.0.10"), Some("follower")),
            pod("bully-1", Some("10.0.0.11"), Some("coordinator")),
        ],
        labels: vec![],
        events: vec![],
        status: None,
    });
    run(cluster(previous), ctx).await.expect("second reconcile");
    finish(server).await;
}

#[tokio::test]
async fn pods_without_status_are_never_coordinator() {
    // bully-0 is Pending (no IP); bully-1 runs but does not answer, and still carries the
    // coordinator label from an earlier term; bully-2 answers as coordinator.
    let fetcher = FakeFetcher::default().with("10.0.0.12", status(5, Role::Coordinator, Some(3)));
    let (ctx, verifier, registry) = context(fetcher);
    let previous = BullyClusterStatus {
        coordinator: Some("bully-2".into()),
        term: Some(3),
        ..BullyClusterStatus::default()
    };
    let server = verifier.run(Scenario::Reconcile {
        pods: vec![
            pod("bully-0", None, None),
            pod("bully-1", Some("10.0.0.11"), Some("coordinator")),
            pod("bully-2", Some("10.0.0.12"), Some("coordinator")),
        ],
        labels: vec![("bully-0", "follower"), ("bully-1", "follower")],
        // Same coordinator and term as before: no event.
        events: vec![],
        status: Some(Box::new(|s| {
            let reasons: Vec<_> = s.members.iter().map(|m| m.reason.as_deref()).collect();
            assert_eq!(reasons, [Some("NotRunning"), Some("Unreachable"), None]);
            assert_eq!(s.ready, "1/3");
            assert_eq!(s.coordinator.as_deref(), Some("bully-2"));
        })),
    });
    run(cluster(Some(previous)), ctx)
        .await
        .expect("reconcile succeeds");
    finish(server).await;
    let text = metrics::encode(&registry);
    assert!(
        text.contains(r#"bully_controller_status_failures_total{cluster="testns/bully",reason="Unreachable"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn api_error_fails_the_reconcile_and_it_is_retried() {
    let fetcher = FakeFetcher::default().with("10.0.0.10", status(1, Role::Coordinator, Some(1)));
    let (ctx, verifier, registry) = context(fetcher);
    let pods = vec![pod("bully-0", Some("10.0.0.10"), None)];
    let server = verifier.run(Scenario::LabelPatchFails {
        pods: pods.clone(),
        pod: "bully-0",
        code: 500,
    });
    let the_cluster = Arc::new(cluster(None));
    let err = run((*the_cluster).clone(), ctx.clone())
        .await
        .expect_err("a 500 on the label patch fails the reconcile");
    assert_eq!(err.metric_label(), "api_500");
    let verifier = finish(server).await;
    assert_eq!(
        error_policy(the_cluster.clone(), &err, ctx.clone()),
        Action::requeue(ERROR_REQUEUE)
    );
    let text = metrics::encode(&registry);
    assert!(
        text.contains(
            r#"bully_controller_reconcile_errors_total{cluster="testns/bully",error="api_500"} 1"#
        ),
        "{text}"
    );

    // The requeued reconcile starts over and succeeds.
    let server = verifier.run(Scenario::Reconcile {
        pods,
        labels: vec![("bully-0", "coordinator")],
        events: vec![event("Normal", "CoordinatorChanged", "bully-0 (term 1)")],
        status: Some(Box::new(|s| {
            assert_eq!(s.coordinator.as_deref(), Some("bully-0"))
        })),
    });
    run((*the_cluster).clone(), ctx)
        .await
        .expect("the retry succeeds");
    finish(server).await;
}

#[tokio::test]
async fn empty_selector_touches_no_pod() {
    let (ctx, verifier, _) = context(FakeFetcher::default());
    let mut invalid = cluster(None);
    invalid.spec = BullyClusterSpec::with_selector(Default::default());
    let server = verifier.run(Scenario::StatusOnly(Box::new(|s| {
        assert_eq!(
            condition(s, CONDITION_DEGRADED),
            ("True".into(), "InvalidSpec".into())
        );
        assert_eq!(
            condition(s, CONDITION_AVAILABLE),
            ("False".into(), "InvalidSpec".into())
        );
    })));
    let action = run(invalid, ctx).await.expect("reconcile succeeds");
    assert_eq!(action, Action::await_change());
    finish(server).await;
}
