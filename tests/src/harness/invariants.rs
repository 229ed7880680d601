//! The invariants every harness checks against the store after a workload, as pure functions
//! that return what they found broken (one message each), so that each can be shown to fail
//! on a known-bad input:
//!
//! - [`acks_match_records`]: every acknowledged write is in the store, with the seq, term and
//!   outcome it was acknowledged with (none lost, none answered from a different execution);
//! - [`seqs_unique`]: no sequence number was given to two commands;
//! - [`terms_follow_seqs`]: terms never go back as sequence numbers go up (no deposed
//!   coordinator committed after a newer term was claimed);
//! - [`program_order`]: each client's acknowledged sequence numbers increase;
//! - [`counter_matches`]: a counter holds the sum of the increments that were applied (none
//!   lost, none applied twice).
//!
//! [`check_exactly_once`] applies them to an `incr counter` workload's [`Report`].

use std::collections::{BTreeMap, HashMap};

use bully_client::{Client, Command, CommandRequest, CommandResponse, Outcome};
use bully_server::store::{Record, Store};
use serde_json::Value;

use super::Report;

/// Each acknowledged write `(id, response)` against the store's records.
pub fn acks_match_records<'a>(
    acks: impl IntoIterator<Item = (&'a str, &'a CommandResponse)>,
    records: &HashMap<String, Record>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (id, response) in acks {
        match records.get(id) {
            None => found.push(format!("acknowledged {id} has no record in the store")),
            Some(r)
                if (r.seq, r.term, &r.outcome)
                    != (response.seq, response.term, &response.outcome) =>
            {
                found.push(format!(
                    "{id} was acknowledged as seq {} term {} {:?} but the store has seq {} term \
                     {} {:?}",
                    response.seq, response.term, response.outcome, r.seq, r.term, r.outcome
                ))
            }
            Some(_) => {}
        }
    }
    found
}

/// `(seq, label)` pairs: each seq at most once.
pub fn seqs_unique(items: impl IntoIterator<Item = (u64, String)>) -> Vec<String> {
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut found = Vec::new();
    for (seq, label) in items {
        if let Some(other) = seen.insert(seq, label.clone()) {
            found.push(format!("seq {seq} was given to both {other} and {label}"));
        }
    }
    found
}

/// `(seq, term, label)` triples, in any order: sorted by seq, the terms never decrease.
pub fn terms_follow_seqs(items: impl IntoIterator<Item = (u64, u64, String)>) -> Vec<String> {
    let mut items: Vec<(u64, u64, String)> = items.into_iter().collect();
    items.sort_by_key(|(seq, _, _)| *seq);
    let mut found = Vec::new();
    for pair in items.windows(2) {
        let ((s1, t1, l1), (s2, t2, l2)) = (&pair[0], &pair[1]);
        if t2 < t1 {
            found.push(format!(
                "term went back as seq went up: {l1} (seq {s1}, term {t1}) then {l2} (seq {s2}, \
                 term {t2})"
            ));
        }
    }
    found
}

/// Each client's acknowledged `(seq, label)`s in the order it issued them: increasing.
pub fn program_order(clients: &[Vec<(u64, String)>]) -> Vec<String> {
    let mut found = Vec::new();
    for (client, acks) in clients.iter().enumerate() {
        for pair in acks.windows(2) {
            let ((s1, l1), (s2, l2)) = (&pair[0], &pair[1]);
            if s2 <= s1 {
                found.push(format!(
                    "client {client} got seq {s2} for {l2} after seq {s1} for {l1}"
                ));
            }
        }
    }
    found
}

/// A counter's stored value (absent counts as 0) against the sum of the applied increments.
pub fn counter_matches(key: &str, value: Option<&Value>, applied_sum: i64) -> Option<String> {
    let actual = value.map_or(Some(0), Value::as_i64);
    (actual != Some(applied_sum)).then(|| {
        format!(
            "counter {key} is {value:?} in the store, but the applied increments add up to \
             {applied_sum} (lost or doubly applied increments)"
        )
    })
}

/// Checks an `incr counter` workload against the store and the cluster (through `client`):
/// every invariant above, over every acknowledged command and every issued one that the
/// store shows as applied. Panics with everything found. Returns the applied records.
pub async fn check_exactly_once(
    report: &Report,
    store: &dyn Store,
    client: &Client,
) -> HashMap<String, Record> {
    let mut records = HashMap::new();
    for id in &report.issued {
        if let Some(record) = store.record(id).await.expect("read the store") {
            records.insert(id.clone(), record);
        }
    }
    let acks = report
        .acked
        .iter()
        .flatten()
        .map(|(id, response)| (id.as_str(), response));
    let mut found = acks_match_records(acks, &records);
    found.extend(seqs_unique(records.values().map(|r| (r.seq, r.id.clone()))));
    found.extend(terms_follow_seqs(
        records.values().map(|r| (r.seq, r.term, r.id.clone())),
    ));
    let clients: Vec<Vec<(u64, String)>> = report
        .acked
        .iter()
        .map(|w| w.iter().map(|(id, r)| (r.seq, id.clone())).collect())
        .collect();
    found.extend(program_order(&clients));
    let get = CommandRequest::new(Command::Get {
        key: "counter".into(),
    });
    let value = match client.execute(&get).await.expect("get counter").outcome {
        Outcome::Value { value } => Some(value),
        Outcome::NotFound => None,
        other => panic!("unexpected {other:?}"),
    };
    found.extend(counter_matches(
        "counter",
        value.as_ref(),
        records.len() as i64,
    ));
    assert!(
        found.is_empty(),
        "{} invariant(s) broken:\n{}",
        found.len(),
        found.join("\n")
    );
    records
}

#[cfg(test)]
mod tests {
    //! Each invariant fed a known-bad input reports it.
    use super::*;

    fn response(seq: u64, term: u64, value: i64) -> CommandResponse {
        CommandResponse {
            id: String::new(),
            seq,
            term,
            outcome: Outcome::Counter { value },
            duplicate: false,
        }
    }

    fn record(id: &str, seq: u64, term: u64, value: i64) -> (String, Record) {
        let r = Record {
            id: id.into(),
            seq,
            term,
            outcome: Outcome::Counter { value },
        };
        (id.into(), r)
    }

    #[test]
    fn a_lost_or_altered_write_is_reported() {
        let records: HashMap<String, Record> = [record("a", 1, 1, 1), record("b", 2, 1, 2)].into();
        let (a, b, c) = (response(1, 1, 1), response(2, 1, 2), response(3, 1, 3));
        assert!(acks_match_records([("a", &a), ("b", &b)], &records).is_empty());
        let lost = acks_match_records([("c", &c)], &records);
        assert!(lost[0].contains("no record"), "{lost:?}");
        let other_outcome = response(2, 1, 7);
        let altered = acks_match_records([("b", &other_outcome)], &records);
        assert!(altered[0].contains("the store has"), "{altered:?}");
        let other_term = response(2, 2, 2);
        assert_eq!(acks_match_records([("b", &other_term)], &records).len(), 1);
    }

    #[test]
    fn a_seq_given_twice_is_reported() {
        assert!(seqs_unique([(1, "a".into()), (2, "b".into())]).is_empty());
        let found = seqs_unique([(1, "a".into()), (2, "b".into()), (1, "c".into())]);
        assert_eq!(found, ["seq 1 was given to both a and c"]);
    }

    #[test]
    fn a_late_commit_of_an_old_term_is_reported() {
        assert!(
            terms_follow_seqs([(2, 1, "b".into()), (1, 1, "a".into()), (3, 2, "c".into())])
                .is_empty()
        );
        let found = terms_follow_seqs([(1, 1, "a".into()), (2, 3, "b".into()), (3, 2, "c".into())]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("term went back"));
    }

    #[test]
    fn a_client_seeing_seqs_out_of_its_order_is_reported() {
        let ok = vec![
            vec![(1, "a".into()), (4, "b".into())],
            vec![(2, "c".into())],
        ];
        assert!(program_order(&ok).is_empty());
        let bad = vec![vec![(4, "a".into()), (1, "b".into())]];
        assert_eq!(program_order(&bad).len(), 1);
    }

    #[test]
    fn a_doubly_applied_or_lost_increment_is_reported() {
        assert!(counter_matches("c", Some(&Value::from(3)), 3).is_none());
        assert!(counter_matches("c", None, 0).is_none());
        assert!(counter_matches("c", Some(&Value::from(4)), 3).is_some());
        assert!(counter_matches("c", None, 1).is_some());
        assert!(counter_matches("c", Some(&Value::from("x")), 0).is_some());
    }
}
