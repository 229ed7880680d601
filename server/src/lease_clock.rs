//! The coordinator's clock for leases on keys: when each lease expires.
//!
//! Expiry is the coordinator's decision, applied in the serial order: when a lease's deadline
//! passes, the executor applies an internal `lease_revoke` (id `expire:<lease>:<uuid>`; a revoke is
//! idempotent, so a retry after a store error needs no common id) between two batches, like any other command, and
//! every observer sees the deletion of its keys at one sequence number.
//!
//! The clock lives only in the coordinator's memory and is fed by the commands it answers: a
//! grant or keepalive restarts the lease's full TTL, a revoke ends it. A new coordinator does
//! not know when its predecessor last renewed a lease, so on taking over it lists the leases
//! in the store and restarts every one at its full TTL. A lease therefore never expires less
//! than TTL after its last grant or keepalive (every renewal the old coordinator answered came
//! before the new one's term, hence before it listed the leases), and at most TTL plus the
//! failover time (from that last renewal to the takeover) after it.
//!
//! Pure: time is passed in, so tests drive it without sleeping.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// Every lease this coordinator knows, with its deadline.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// Lease id -> (deadline, TTL).
    leases: HashMap<u64, (Instant, Duration)>,
    /// (deadline, lease id), ordered: the next expiry first.
    order: BTreeSet<(Instant, u64)>,
}

impl LeaseClock {
    /// Lease `id` (with `ttl`) was granted or kept alive at `now`: it expires at `now + ttl`.
    pub fn renewed(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.revoked(id);
        let deadline = now + ttl;
        self.leases.insert(id, (deadline, ttl));
        self.order.insert((deadline, id));
    }

    /// Lease `id` is gone (revoked, expired, or not found): forget it.
    pub fn revoked(&mut self, id: u64) {
        if let Some((deadline, _)) = self.leases.remove(&id) {
            self.order.remove(&(deadline, id));
        }
    }

    /// Forgets every lease (this server stopped coordinating).
    pub fn clear(&mut self) {
        self.leases.clear();
        self.order.clear();
    }

    /// When the next lease expires, if any does.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.first().map(|(deadline, _)| *deadline)
    }

    /// The leases whose deadline is `now` or earlier, soonest first. They stay in the clock
    /// until [`revoked`](Self::revoked): an expiry that failed is retried.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.order
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Postpones lease `id` (whose expiry could not be applied) by `delay`.
    pub fn retry_later(&mut self, id: u64, delay: Duration, now: Instant) {
        if let Some(&(_, ttl)) = self.leases.get(&id) {
            self.revoked(id);
            let deadline = now + delay;
            self.leases.insert(id, (deadline, ttl));
            self.order.insert((deadline, id));
        }
    }

    /// How many leases the clock holds.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when the clock holds no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// The id of the internal command that expires lease `id`, attempt `n` (a fresh id per
/// attempt, see the executor).
pub fn expiry_id(id: u64, n: &str) -> String {
    format!("expire:{id}:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_lease_expires_ttl_after_its_last_renewal() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        clock.renewed(7, 3 * S, t0);
        assert_eq!(clock.next_deadline(), Some(t0 + 3 * S));
        assert!(clock.due(t0 + 2 * S).is_empty());
        // A keepalive at 2 s moves the deadline to 5 s.
        clock.renewed(7, 3 * S, t0 + 2 * S);
        assert!(clock.due(t0 + 4 * S).is_empty());
        assert_eq!(clock.due(t0 + 5 * S), [7]);
        assert_eq!(clock.len(), 1);
        clock.revoked(7);
        assert!(clock.is_empty());
        assert_eq!(clock.next_deadline(), None);
    }

    #[test]
    fn leases_fall_due_soonest_first() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        clock.renewed(1, 5 * S, t0);
        clock.renewed(2, S, t0);
        clock.renewed(3, 2 * S, t0);
        assert_eq!(clock.due(t0 + 2 * S), [2, 3]);
        assert_eq!(clock.due(t0 + 10 * S), [2, 3, 1]);
        clock.revoked(2);
        assert_eq!(clock.next_deadline(), Some(t0 + 2 * S));
    }

    #[test]
    fn a_failed_expiry_is_retried_and_clear_forgets_everything() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        clock.renewed(1, S, t0);
        clock.retry_later(1, S / 10, t0 + S);
        assert!(clock.due(t0 + S).is_empty());
        assert_eq!(clock.due(t0 + S + S / 10), [1]);
        // A lease the clock does not hold is not added by a retry.
        clock.retry_later(9, S, t0);
        assert_eq!(clock.len(), 1);
        clock.clear();
        assert!(clock.is_empty() && clock.due(t0 + 100 * S).is_empty());
    }

    /// After a failover every known lease restarts at its full TTL from the takeover: never
    /// earlier than TTL after the takeover.
    #[test]
    fn a_takeover_restarts_every_lease_at_full_ttl() {
        let takeover = Instant::now() + 10 * S;
        let mut clock = LeaseClock::default();
        for (id, ttl) in [(4, 2 * S), (5, 3 * S)] {
            clock.renewed(id, ttl, takeover);
        }
        assert!(
            clock
                .due(takeover + 2 * S - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(clock.due(takeover + 3 * S), [4, 5]);
    }

    #[test]
    fn expiry_ids_are_valid_command_ids() {
        let id = expiry_id(42, &bully_client::new_command_id());
        assert!(id.starts_with("expire:42:"));
        assert!(bully_client::validate_id(&id).is_ok());
    }
}
