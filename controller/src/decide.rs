//! The controller's decision, free of I/O: given what each selected pod answered, who is
//! coordinator, which labels must change, and what the `BullyCluster` status says.
//!
//! Rules:
//! - Only a pod whose `/v1/status` says `role: coordinator` can be coordinator. When several
//!   say so (a split brain that fencing in the store makes harmless, but worth a Warning), the
//!   highest term wins; a claimant with a term beats one without (it has not claimed its term in
//!   the store yet); then readiness, then rank.
//! - Every other selected pod is labelled `follower`, including pods that are not running,
//!   terminating, or did not answer: the client Service selects `coordinator`, so `follower` just
//!   keeps them out of it, and a visible label says the controller has seen the pod.
//! - The status is only rewritten when something other than `lastSeen` changed, or when a
//!   `lastSeen` is older than [`LAST_SEEN_REFRESH`]: every status write is a watch event, and
//!   the servers are polled every second.

use std::cmp::Ordering;

use bully_client::{Role, Status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{
    BullyClusterStatus, CONDITION_AVAILABLE, CONDITION_DEGRADED, MemberStatus, ROLE_COORDINATOR,
    ROLE_FOLLOWER,
};

/// How stale a member's `lastSeen` may get before the status is rewritten for it alone.
pub const LAST_SEEN_REFRESH: SignedDuration = SignedDuration::from_secs(30);

/// Why a selected pod has no status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Its phase is not `Running`.
    NotRunning,
    /// It has a deletion timestamp.
    Terminating,
    /// Running, but no pod IP yet.
    NoPodIp,
    /// The status request failed or timed out.
    Unreachable,
    /// It answered, but not with a status (wrong code or body).
    BadResponse,
}

impl Missing {
    /// The `reason` written into the member's status.
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::NotRunning => "NotRunning",
            Missing::Terminating => "Terminating",
            Missing::NoPodIp => "NoPodIP",
            Missing::Unreachable => "Unreachable",
            Missing::BadResponse => "BadResponse",
        }
    }
}

/// What one selected pod told the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Answered(Box<Status>),
    Missing(Missing),
}

/// One selected pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub pod: String,
    /// Its current role label, if any.
    pub label: Option<String>,
    pub probe: Probe,
}

/// A pod that says it is coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub pod: String,
    pub term: Option<u64>,
    pub rank: u64,
    pub ready: bool,
}

impl Claimant {
    fn key(&self) -> (bool, Option<u64>, bool, u64) {
        (self.term.is_some(), self.term, self.ready, self.rank)
    }

    /// `bully-2 (term 7)`, as used in events and conditions.
    pub fn describe(&self) -> String {
        match self.term {
            Some(term) => format!("{} (term {term})", self.pod),
            None => format!("{} (term not yet claimed)", self.pod),
        }
    }
}

/// What the controller should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub coordinator: Option<Claimant>,
    /// Other pods that claim to be coordinator, best first.
    pub losers: Vec<Claimant>,
    /// Role labels to set: the coordinator first (so the client Service never goes empty while
    /// the label moves), then the others by name. Only pods whose label differs.
    pub labels: Vec<(String, &'static str)>,
    pub status: BullyClusterStatus,
    /// Whether `status` differs from the previous status enough to be written.
    pub write_status: bool,
}

/// Decides from the members (any order) and the previous status; `reconciled_by` is this
/// controller replica, recorded in the status.
pub fn plan(
    mut members: Vec<Member>,
    previous: Option<&BullyClusterStatus>,
    generation: Option<i64>,
    reconciled_by: Option<&str>,
    now: Timestamp,
) -> Plan {
    members.sort_by(|a, b| a.pod.cmp(&b.pod));

    let mut claimants: Vec<Claimant> = members
        .iter()
        .filter_map(|m| match &m.probe {
            Probe::Answered(s) if s.role == Role::Coordinator => Some(Claimant {
                pod: m.pod.clone(),
                term: s.term,
                rank: s.rank,
                ready: s.ready,
            }),
            _ => None,
        })
        .collect();
    claimants.sort_by(|a, b| b.key().cmp(&a.key()).then_with(|| a.pod.cmp(&b.pod)));
    let mut claimants = claimants.into_iter();
    let coordinator = claimants.next();
    let losers: Vec<Claimant> = claimants.collect();

    let mut labels = Vec::new();
    let desired = |m: &Member| {
        if coordinator.as_ref().is_some_and(|c| c.pod == m.pod) {
            ROLE_COORDINATOR
        } else {
            ROLE_FOLLOWER
        }
    };
    for m in &members {
        let want = desired(m);
        if m.label.as_deref() != Some(want) {
            labels.push((m.pod.clone(), want));
        }
    }
    labels.sort_by(
        |a, b| match (a.1 == ROLE_COORDINATOR, b.1 == ROLE_COORDINATOR) {
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => a.0.cmp(&b.0),
        },
    );

    let previous_member =
        |pod: &str| previous.and_then(|p| p.members.iter().find(|m| m.pod == pod));
    let member_statuses: Vec<MemberStatus> = members
        .iter()
        .map(|m| match &m.probe {
            Probe::Answered(s) => MemberStatus {
                pod: m.pod.clone(),
                rank: Some(s.rank.to_string()),
                role: Some(s.role.as_str().to_string()),
                term: s.term,
                ready: s.ready,
                reason: None,
                last_seen: Some(Time(now)),
            },
            Probe::Missing(why) => MemberStatus {
                pod: m.pod.clone(),
                reason: Some(why.as_str().to_string()),
                last_seen: previous_member(&m.pod).and_then(|p| p.last_seen.clone()),
                ..MemberStatus::default()
            },
        })
        .collect();

    let total = members.len() as u32;
    let ready = member_statuses.iter().filter(|m| m.ready).count() as u32;
    let conditions = conditions(
        coordinator.as_ref(),
        &losers,
        ready,
        total,
        generation,
        previous,
        now,
    );

    // A failover is a new coordinator pod or term, once its term is known (as the
    // `CoordinatorChanged` event); losing the coordinator keeps the time of the last one.
    let previous_coordinator = previous
        .map(|p| (p.coordinator.clone(), p.term))
        .unwrap_or_default();
    let last_failover_time = match &coordinator {
        Some(c) if c.term.is_some() && (Some(c.pod.clone()), c.term) != previous_coordinator => {
            Some(Time(now))
        }
        _ => previous.and_then(|p| p.last_failover_time.clone()),
    };

    let status = BullyClusterStatus {
        coordinator: coordinator.as_ref().map(|c| c.pod.clone()),
        term: coordinator.as_ref().and_then(|c| c.term),
        rank: coordinator.as_ref().map(|c| c.rank.to_string()),
        ready: format!("{ready}/{total}"),
        ready_members: ready,
        total_members: total,
        members: member_statuses,
        last_failover_time,
        conditions,
        reconciled_by: reconciled_by.map(String::from),
        observed_generation: generation,
    };
    let write_status = match previous {
        None => true,
        Some(previous) => {
            without_last_seen(previous) != without_last_seen(&status)
                || status.members.iter().any(|m| {
                    m.reason.is_none()
                        && previous_member(&m.pod)
                            .and_then(|p| p.last_seen.as_ref())
                            .is_none_or(|seen| now.duration_since(seen.0) >= LAST_SEEN_REFRESH)
                })
        }
    };
    Plan {
        coordinator,
        losers,
        labels,
        status,
        write_status,
    }
}

/// The status for a spec the controller refuses to act on (it touches no pod).
pub fn invalid_spec_status(
    message: &str,
    generation: Option<i64>,
    previous: Option<&BullyClusterStatus>,
    now: Timestamp,
) -> BullyClusterStatus {
    BullyClusterStatus {
        ready: "0/0".into(),
        conditions: vec![
            condition(
                CONDITION_AVAILABLE,
                false,
                "InvalidSpec",
                message,
                generation,
                previous,
                now,
            ),
            condition(
                CONDITION_DEGRADED,
                true,
                "InvalidSpec",
                message,
                generation,
                previous,
                now,
            ),
        ],
        observed_generation: generation,
        ..BullyClusterStatus::default()
    }
}

fn without_last_seen(status: &BullyClusterStatus) -> BullyClusterStatus {
    let mut status = status.clone();
    for m in &mut status.members {
        m.last_seen = None;
    }
    status
}

fn conditions(
    coordinator: Option<&Claimant>,
    losers: &[Claimant],
    ready: u32,
    total: u32,
    generation: Option<i64>,
    previous: Option<&BullyClusterStatus>,
    now: Timestamp,
) -> Vec<Condition> {
    let available = match coordinator {
        Some(c) if c.ready => (true, "CoordinatorReady", c.describe()),
        Some(c) => (false, "CoordinatorNotReady", c.describe()),
        None => (
            false,
            "NoCoordinator",
            "no selected pod reports the coordinator role".to_string(),
        ),
    };
    let degraded = if !losers.is_empty() {
        let others: Vec<String> = losers.iter().map(Claimant::describe).collect();
        (
            true,
            "ConflictingCoordinators",
            format!(
                "{} wins; also claiming: {}",
                coordinator.map(Claimant::describe).unwrap_or_default(),
                others.join(", ")
            ),
        )
    } else if total == 0 {
        (true, "NoMembers", "the selector matches no pod".to_string())
    } else if coordinator.is_none() {
        (
            true,
            "NoCoordinator",
            format!("{ready}/{total} members ready"),
        )
    } else if ready < total {
        (
            true,
            "MembersUnavailable",
            format!("{ready}/{total} members ready"),
        )
    } else {
        (
            false,
            "AllMembersReady",
            format!("{ready}/{total} members ready"),
        )
    };
    vec![
        condition(
            CONDITION_AVAILABLE,
            available.0,
            available.1,
            &available.2,
            generation,
            previous,
            now,
        ),
        condition(
            CONDITION_DEGRADED,
            degraded.0,
            degraded.1,
            &degraded.2,
            generation,
            previous,
            now,
        ),
    ]
}

/// A condition whose `lastTransitionTime` moves only when its status does.
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: Option<&BullyClusterStatus>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.condition(type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rank: u64, role: Role, term: Option<u64>, ready: bool) -> Probe {
        Probe::Answered(Box::new(Status {
            rank,
            role,
            term,
            client_addr: "10.0.0.1:7070".into(),
            peer_addr: "10.0.0.1:7071".into(),
            coordinator: None,
            ready,
            last_seq: None,
            peers: vec![],
            version: "0.1.0".into(),
        }))
    }

    fn member(pod: &str, label: Option<&str>, probe: Probe) -> Member {
        Member {
            pod: pod.into(),
            label: label.map(String::from),
            probe,
        }
    }

    fn now() -> Timestamp {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn sole_claimant_is_labelled_first() {
        let plan = plan(
            vec![
                member("b-0", None, status(1, Role::Follower, None, true)),
                member("b-2", None, status(3, Role::Coordinator, Some(7), true)),
                member(
                    "b-1",
                    Some("follower"),
                    status(2, Role::Follower, None, true),
                ),
            ],
            None,
            Some(1),
            Some("ctl-0"),
            now(),
        );
        assert_eq!(
            plan.coordinator.as_ref().unwrap().describe(),
            "b-2 (term 7)"
        );
        assert_eq!(
            plan.labels,
            vec![
                ("b-2".into(), ROLE_COORDINATOR),
                ("b-0".into(), ROLE_FOLLOWER)
            ]
        );
        assert_eq!(plan.status.ready, "3/3");
        assert_eq!(plan.status.rank.as_deref(), Some("3"));
        let available = plan.status.condition(CONDITION_AVAILABLE).unwrap();
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            ("True", "CoordinatorReady")
        );
        let degraded = plan.status.condition(CONDITION_DEGRADED).unwrap();
        assert_eq!(degraded.status, "False");
        assert!(plan.write_status);
    }

    #[test]
    fn highest_term_wins_then_term_then_rank() {
        let plan = plan(
            vec![
                member(
                    "a",
                    None,
                    status(u64::MAX, Role::Coordinator, Some(6), true),
                ),
                member("b", None, status(1, Role::Coordinator, Some(7), false)),
                member("c", None, status(9, Role::Coordinator, None, true)),
            ],
            None,
            None,
            Some("ctl-0"),
            now(),
        );
        assert_eq!(plan.coordinator.unwrap().pod, "b");
        let losers: Vec<_> = plan.losers.iter().map(|c| c.pod.as_str()).collect();
        assert_eq!(losers, ["a", "c"]);
        let degraded = plan.status.condition(CONDITION_DEGRADED).unwrap();
        assert_eq!(degraded.reason, "ConflictingCoordinators");
        assert_eq!(
            degraded.message,
            "b (term 7) wins; also claiming: a (term 6), c (term not yet claimed)"
        );
        assert_eq!(
            plan.status.members[0].rank.as_deref(),
            Some("18446744073709551615")
        );
    }

    #[test]
    fn missing_pods_are_followers_and_keep_last_seen() {
        let seen = Time("2024-12-31T23:59:00Z".parse().unwrap());
        let previous = BullyClusterStatus {
            members: vec![MemberStatus {
                pod: "b-0".into(),
                last_seen: Some(seen.clone()),
                ..MemberStatus::default()
            }],
            ..BullyClusterStatus::default()
        };
        let plan = plan(
            vec![
                member(
                    "b-0",
                    Some("coordinator"),
                    Probe::Missing(Missing::Unreachable),
                ),
                member("b-1", Some("follower"), Probe::Missing(Missing::NotRunning)),
            ],
            Some(&previous),
            None,
            Some("ctl-0"),
            now(),
        );
        assert!(plan.coordinator.is_none());
        assert_eq!(plan.labels, vec![("b-0".into(), ROLE_FOLLOWER)]);
        assert_eq!(plan.status.members[0].last_seen, Some(seen));
        assert_eq!(
            plan.status.members[0].reason.as_deref(),
            Some("Unreachable")
        );
        assert_eq!(plan.status.ready, "0/2");
        assert_eq!(plan.status.coordinator, None);
        let available = plan.status.condition(CONDITION_AVAILABLE).unwrap();
        assert_eq!(available.reason, "NoCoordinator");
    }

    #[test]
    fn status_is_rewritten_only_on_change_or_stale_last_seen() {
        let members = || {
            vec![
                member(
                    "b-0",
                    Some("coordinator"),
                    status(5, Role::Coordinator, Some(2), true),
                ),
                member(
                    "b-1",
                    Some("follower"),
                    status(4, Role::Follower, None, true),
                ),
            ]
        };
        let first = plan(members(), None, Some(1), Some("ctl-0"), now());
        assert!(first.labels.is_empty());
        let later = now() + SignedDuration::from_secs(5);
        let second = plan(
            members(),
            Some(&first.status),
            Some(1),
            Some("ctl-0"),
            later,
        );
        assert!(!second.write_status, "nothing but lastSeen changed");
        // Conditions keep their transition time while their status holds.
        assert_eq!(second.status.conditions, first.status.conditions);
        let much_later = now() + LAST_SEEN_REFRESH;
        assert!(
            plan(
                members(),
                Some(&first.status),
                Some(1),
                Some("ctl-0"),
                much_later
            )
            .write_status
        );
        let mut changed = members();
        changed[1].probe = status(4, Role::Candidate, None, false);
        let third = plan(changed, Some(&first.status), Some(1), Some("ctl-0"), later);
        assert!(third.write_status);
        let degraded = third.status.condition(CONDITION_DEGRADED).unwrap();
        assert_eq!(degraded.reason, "MembersUnavailable");
        assert_eq!(degraded.last_transition_time, Time(later));
    }

    #[test]
    fn no_members_is_degraded() {
        let plan = plan(vec![], None, None, None, now());
        assert_eq!(plan.status.ready, "0/0");
        assert_eq!(
            plan.status.condition(CONDITION_DEGRADED).unwrap().reason,
            "NoMembers"
        );
    }

    #[test]
    fn last_failover_time_moves_with_the_coordinator() {
        let one = |pod: &str, term| {
            vec![member(
                pod,
                None,
                status(5, Role::Coordinator, Some(term), true),
            )]
        };
        let first = plan(one("b-0", 1), None, None, Some("ctl-0"), now());
        assert_eq!(first.status.last_failover_time, Some(Time(now())));
        assert_eq!(first.status.reconciled_by.as_deref(), Some("ctl-0"));
        let later = now() + SignedDuration::from_secs(5);
        let same = plan(
            one("b-0", 1),
            Some(&first.status),
            None,
            Some("ctl-0"),
            later,
        );
        assert_eq!(same.status.last_failover_time, Some(Time(now())));
        assert!(!same.write_status);
        // Another controller replica took over: the status says so, and is rewritten.
        let taken = plan(
            one("b-0", 1),
            Some(&first.status),
            None,
            Some("ctl-1"),
            later,
        );
        assert!(taken.write_status);
        // A new term on the same pod is a failover too; no coordinator keeps the last time.
        let reelected = plan(
            one("b-0", 2),
            Some(&first.status),
            None,
            Some("ctl-0"),
            later,
        );
        assert_eq!(reelected.status.last_failover_time, Some(Time(later)));
        let none = plan(vec![], Some(&reelected.status), None, Some("ctl-0"), later);
        assert_eq!(none.status.last_failover_time, Some(Time(later)));
        let moved = plan(
            one("b-1", 3),
            Some(&none.status),
            None,
            Some("ctl-0"),
            now() + SignedDuration::from_secs(9),
        );
        assert_eq!(
            moved.status.last_failover_time,
            Some(Time(now() + SignedDuration::from_secs(9)))
        );
    }
}
