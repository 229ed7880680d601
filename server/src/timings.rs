//! Every timing of a server, derived in one place from the few that users set, and validated
//! once.
//!
//! Users choose the heartbeat interval and timeout (how fast a dead coordinator is noticed, and
//! how long a pause is tolerated), the store timeout and the startup grace; everything else —
//! the election's inner timeouts, the driver's tick, how long a peer message stays worth
//! delivering, how long a request waits out an election — follows from them, with the
//! reasoning next to each value.

use std::time::Duration;

/// What the user sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimingArgs {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub store_timeout: Duration,
    pub startup_grace: Duration,
}

/// Every timing, derived from [`TimingArgs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// Every server heartbeats its peers this often.
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is dead; so is a coordinator.
    pub heartbeat_timeout: Duration,
    /// How long a candidate waits for an outranking peer to answer.
    pub answer_timeout: Duration,
    /// How long a candidate that got an answer waits for the winner's announcement.
    pub coordinator_wait: Duration,
    /// How long a taker-over waits for the old coordinator's drain and handoff.
    pub handoff_timeout: Duration,
    /// The wait before a failed term claim is retried.
    pub claim_retry: Duration,
    /// How long a coordinator's lease on its term lasts after each renewal (by the store's
    /// clock): no other server can claim a term meanwhile, unless it knows it dead.
    pub lease: Duration,
    /// How often an idle coordinator renews its lease (a busy one renews with every batch).
    pub lease_renewal: Duration,
    /// How long a new server waits to hear from the servers it expects before electing.
    pub startup_grace: Duration,
    /// How often the election driver advances the state machine's clock.
    pub tick: Duration,
    /// A queued peer message older than this is dropped, not delivered late.
    pub peer_message_ttl: Duration,
    /// How long a client request waits for an election in progress before it is bounced.
    pub hold: Duration,
    /// Upper bound on waiting for the executor's answer to one command.
    pub command_timeout: Duration,
}

impl Timings {
    /// Derives every timing; the error says which flag to change.
    pub fn derive(args: TimingArgs) -> Result<Timings, String> {
        let TimingArgs {
            heartbeat_interval: interval,
            heartbeat_timeout: timeout,
            store_timeout,
            startup_grace,
        } = args;
        if interval.is_zero() {
            return Err("--heartbeat-interval must be greater than zero".into());
        }
        if timeout < interval * 3 {
            return Err(format!(
                "--heartbeat-timeout ({timeout:?}) must be at least 3 x --heartbeat-interval \
                 ({interval:?}), or one lost heartbeat would start an election"
            ));
        }
        if store_timeout < Duration::from_millis(100) {
            return Err("--store-timeout must be at least 100ms".into());
        }
        Ok(Timings {
            heartbeat_interval: interval,
            heartbeat_timeout: timeout,
            // Three heartbeat intervals: enough for a round trip on a loaded machine, well below
            // the failure-detection timeout.
            answer_timeout: (interval * 3).min(timeout),
            coordinator_wait: timeout,
            // A drain is bounded by the executor's queue; give it a few failure timeouts.
            handoff_timeout: timeout * 4,
            // A failed claim means the store is unreachable or slow; retrying at once would only
            // add load. Two heartbeats is short next to a failover.
            claim_retry: (interval * 2).max(Duration::from_millis(50)),
            // As long as it takes the others to presume the coordinator dead: a server that
            // stops hearing it (a partition) finds the lease running when it would claim,
            // while a coordinator that stopped (a pause, a lost host) has let it run out by
            // then, so the lease adds nothing to that failover. A crash (a refused port) breaks
            // it at once.
            lease: timeout,
            // Four renewals per lease: one lost or late renewal does not let it run out.
            lease_renewal: timeout / 4,
            startup_grace,
            // A quarter of the heartbeat interval keeps heartbeats and timeouts within 25% of
            // their period without a busy loop.
            tick: (interval / 4).max(Duration::from_millis(5)),
            // A message older than the failure timeout is useless; one older than two
            // heartbeats describes a state that has since changed.
            peer_message_ttl: (interval * 2).max(Duration::from_millis(200)).min(timeout),
            // An election settles within a failure timeout or two; longer, and the client is
            // better off trying another server.
            hold: (timeout * 2).min(Duration::from_secs(3)),
            // The executor retries the store for up to `store_timeout`; leave room for the
            // queue ahead of the command.
            command_timeout: store_timeout + Duration::from_secs(5),
        })
    }

    /// The defaults of `bully-server serve`, for tests.
    pub fn defaults() -> Timings {
        Timings::derive(TimingArgs {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(800),
            store_timeout: Duration::from_secs(10),
            startup_grace: Duration::from_secs(5),
        })
        .unwrap_or_else(|e| unreachable!("the default timings are valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_timings_keep_their_order() {
        let t = Timings::defaults();
        assert!(t.tick < t.heartbeat_interval);
        assert!(t.answer_timeout <= t.heartbeat_timeout);
        assert!(t.peer_message_ttl <= t.heartbeat_timeout);
        assert!(t.handoff_timeout > t.heartbeat_timeout);
        assert!(t.hold > t.heartbeat_timeout);
        assert!(t.lease_renewal * 3 < t.lease);
        assert!(t.lease <= t.heartbeat_timeout);
    }

    #[test]
    fn invalid_timings_name_the_flag() {
        let ok = TimingArgs {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(800),
            store_timeout: Duration::from_secs(10),
            startup_grace: Duration::ZERO,
        };
        let zero = TimingArgs {
            heartbeat_interval: Duration::ZERO,
            ..ok
        };
        assert!(
            Timings::derive(zero)
                .unwrap_err()
                .contains("--heartbeat-interval")
        );
        let short = TimingArgs {
            heartbeat_timeout: Duration::from_millis(200),
            ..ok
        };
        assert!(
            Timings::derive(short)
                .unwrap_err()
                .contains("--heartbeat-timeout")
        );
    }
}
