//! Leader election among the controller's replicas, on a `coordination.k8s.io/v1` Lease.
//!
//! The Lease is held and renewed by [`kube_lease_manager`]; this module only decides what its
//! answers mean for the controller, and adds the one guarantee the crate leaves to its user: a
//! leader that cannot renew stops leading *before* the lease runs out.
//!
//! - The crate renews the lease `grace` seconds before it runs out. Every request of the Lease
//!   client is bounded by [`LeaseConfig::request_timeout`] (half the grace), so a renewal that
//!   hangs (the API server partitioned away) fails while the lease still runs, and a failed
//!   Lease request while leading makes this replica a standby at once, without waiting for an
//!   answer. It then rebuilds its lease manager after the retry period; when the Lease still
//!   names it (the failure was a blip) it leads again at once.
//! - A standby sleeps until the holder's lease runs out (by its own clock: the grace also
//!   bounds the clock skew the election tolerates), then takes the lease with a server-side
//!   apply that conflicts if another standby got there first.
//! - On shutdown a leader releases the lease. A standby notices only when the released lease
//!   would have run out, so a controller rollout costs at most one lease duration of label
//!   updates; the servers redirect clients meanwhile.

use std::future::Future;
use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;

/// What this replica does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease: runs the controller.
    Leader,
    /// Waits for the lease; reconciles nothing.
    Standby,
}

impl Role {
    /// `leader` or `standby`, as `/readyz` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Which Lease, and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's holder identity (its pod name).
    pub identity: String,
    /// A lease runs out this long after its last renewal.
    pub duration_seconds: u64,
    /// The leader renews this long before the lease runs out.
    pub grace_seconds: u64,
    /// Wait after a failed Lease request before trying again.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks the durations (the crate panics on a grace not below the duration).
    pub fn validate(&self) -> Result<(), String> {
        if self.grace_seconds == 0 {
            return Err("--lease-grace-seconds must be at least 1".into());
        }
        if self.grace_seconds >= self.duration_seconds {
            return Err(format!(
                "--lease-grace-seconds ({}) must be below --lease-duration-seconds ({}): the \
                 leader renews that long before its lease runs out",
                self.grace_seconds, self.duration_seconds
            ));
        }
        if self.name.is_empty() || self.identity.is_empty() {
            return Err("the lease name and the holder identity must not be empty".into());
        }
        Ok(())
    }

    /// The timeout of every request of the Lease client (a `tower::timeout::TimeoutLayer`;
    /// kube's own read timeout is unset): half the grace, so that a renewal started `grace`
    /// before the end of the lease has failed by mid-grace.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.grace_seconds) / 2
    }
}

/// Takes part in the election until `stop` resolves, publishing this replica's role on `role`
/// (which starts as [`Role::Standby`]). A leader releases the lease when stopped.
pub async fn elect(
    client: kube::Client,
    config: LeaseConfig,
    role: watch::Sender<Role>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let set = |new: Role| {
        role.send_if_modified(|current| {
            let changed = *current != new;
            if changed {
                tracing::info!(lease = %config.name, identity = %config.identity, role = new.as_str(), "leader election");
            }
            *current = new;
            changed
        });
    };
    loop {
        let manager = tokio::select! {
            biased;
            _ = &mut stop => return,
            built = build(&client, &config) => built,
        };
        match manager {
            Ok(manager) => loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => {
                        if *role.borrow() == Role::Leader {
                            // Bounded by the client's timeout; the lease runs out anyway.
                            if let Err(err) = manager.release().await {
                                tracing::warn!(error = %err, "releasing the lease failed; it runs out by itself");
                            }
                        }
                        set(Role::Standby);
                        return;
                    }
                    changed = manager.changed() => match changed {
                        Ok(true) => set(Role::Leader),
                        Ok(false) => set(Role::Standby),
                        Err(err) => {
                            if *role.borrow() == Role::Leader {
                                tracing::warn!(error = %err, "lease request failed while leading: standing by until it succeeds");
                            } else {
                                tracing::warn!(error = %err, "lease request failed");
                            }
                            set(Role::Standby);
                            break;
                        }
                    },
                }
            },
            Err(err) => {
                tracing::warn!(lease = %config.name, error = %err, "reading or creating the lease failed");
                set(Role::Standby);
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
}

async fn build(
    client: &kube::Client,
    config: &LeaseConfig,
) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_parameters(LeaseParams::new(
            &config.identity,
            config.duration_seconds,
            config.grace_seconds,
        ))
        .build()
        .await
}
