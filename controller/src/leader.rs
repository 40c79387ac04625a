//! Leader election on a Lease, by client-go's rules (its `leaderelection` package), so that at
//! most one of the controller's replicas writes at any moment:
//!
//! - The leader tries to renew every `retry_period`. It leads until `renew_deadline` after the
//!   start of its last successful renewal, on its own monotonic clock, whatever its connection
//!   does meanwhile: a renewal that hangs ends its leadership on time, and every write path
//!   asks [`LeaderGate::is_leading`] at the moment it writes.
//! - A candidate takes a held Lease over only once `lease_duration` has passed since it last
//!   saw the Lease's record change, on its own monotonic clock. The holder's wall-clock
//!   `renewTime` is written for people to read and never compared with anyone's clock, so
//!   clock skew or a clock step cannot hand a healthy Lease over.
//! - Every write of the Lease is a compare-and-swap on its resourceVersion.
//!
//! A renewal that a candidate saw was sent before the candidate saw it, so with
//! `renew_deadline < lease_duration` the old leader has stopped at least the difference before
//! a candidate starts. A leader that stops leading stands by again; it does not exit.
//!
//! Written here rather than taken from a crate: kube-lease-manager (used before) and
//! kube-leader-election both judge expiry on the holder's wall-clock `renewTime`, and
//! kube-lease-manager keeps a leader leading while its renewals fail.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::context::MANAGER;

/// How long a stopping leader tries to give the Lease up before it exits anyway.
const RELEASE_WITHIN: Duration = Duration::from_secs(3);

/// How the Lease is held (client-go's `LeaseDuration`, `RenewDeadline`, `RetryPeriod`).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (the pod's name in the cluster).
    pub identity: String,
    /// How long a candidate waits, from the last change of the Lease it saw, before it takes
    /// the Lease over.
    pub duration: Duration,
    /// How long after the start of its last successful renewal the leader stops leading.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate tries (candidates up to 20% later).
    pub retry_period: Duration,
}

impl LeaseSettings {
    fn check(&self) -> Result<(), LeaderError> {
        let whole = self.duration.subsec_nanos() == 0 && !self.duration.is_zero();
        if whole
            && !self.retry_period.is_zero()
            && self.retry_period < self.renew_deadline
            && self.renew_deadline < self.duration
        {
            Ok(())
        } else {
            Err(LeaderError::Settings {
                duration: self.duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease settings: need 0 < retry period ({retry_period:?}) < renew deadline ({renew_deadline:?}) < lease duration ({duration:?}), the duration in whole seconds")]
    Settings {
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    },
}

/// Whether this replica leads now: the one question every write path asks.
#[derive(Clone)]
pub struct LeaderGate {
    /// The instant until which this replica leads; `None` while it does not.
    until: watch::Receiver<Option<Instant>>,
}

impl LeaderGate {
    pub fn is_leading(&self) -> bool {
        leads_now(*self.until.borrow())
    }

    /// Waits until this replica leads.
    pub async fn acquired(&self) {
        let mut until = self.until.clone();
        while !self.is_leading() {
            if until.changed().await.is_err() {
                // The election has stopped: it never leads again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when this replica stops leading: at its renew deadline, even if the election
    /// task is still waiting on the API server.
    pub async fn lost(&self) {
        let mut until = self.until.clone();
        loop {
            let Some(deadline) = *until.borrow_and_update() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if *until.borrow() == Some(deadline) {
                        return;
                    }
                }
                changed = until.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// A gate that always leads, for reconcile tests without an election.
    #[cfg(test)]
    pub(crate) fn held() -> Self {
        // The value outlives its sender.
        let (_, until) = watch::channel(Some(Instant::now() + Duration::from_secs(3600)));
        Self { until }
    }

    /// A gate that never leads.
    #[cfg(test)]
    pub(crate) fn standing_by() -> Self {
        let (_, until) = watch::channel(None);
        Self { until }
    }
}

/// This replica's part in the election, running in the background until [`Self::release`].
pub struct Leadership {
    gate: LeaderGate,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub identity: String,
}

impl Leadership {
    pub fn start(client: kube::Client, lease: LeaseSettings) -> Result<Self, LeaderError> {
        lease.check()?;
        let (send, until) = watch::channel(None);
        let (stop, stopping) = watch::channel(false);
        let identity = lease.identity.clone();
        let elector = Elector {
            api: Api::namespaced(client, &lease.namespace),
            lease,
            until: send,
            observed: None,
            written: None,
        };
        let task = tokio::spawn(elector.run(stopping));
        Ok(Self {
            gate: LeaderGate { until },
            stop,
            task,
            identity,
        })
    }

    pub fn gate(&self) -> LeaderGate {
        self.gate.clone()
    }

    /// Stops the election and gives the Lease up if this replica leads, so a standby takes
    /// over at its next try instead of a Lease duration later; at most [`RELEASE_WITHIN`], so
    /// an unreachable API server does not hold up the exit.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(RELEASE_WITHIN, self.task)
            .await
            .is_err()
        {
            tracing::warn!(identity = %self.identity, "the Lease was not released in time; it lapses instead");
        }
    }
}

/// The Lease's record as last seen, and when (on this replica's monotonic clock).
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    lease: LeaseSettings,
    until: watch::Sender<Option<Instant>>,
    observed: Option<Observed>,
    /// The Lease as this replica last wrote it, while it leads: renewed without a read first.
    written: Option<Lease>,
}

impl Elector {
    async fn run(mut self, mut stopping: watch::Receiver<bool>) {
        loop {
            let started = Instant::now();
            let leading_until = (*self.until.borrow()).filter(|until| started < *until);
            // A leader's attempt may last until its deadline and no longer; a candidate's, a
            // renew deadline.
            let budget = leading_until.map_or(self.lease.renew_deadline, |until| until - started);
            let attempt = tokio::time::timeout(budget, self.try_acquire_or_renew());
            tokio::select! {
                outcome = attempt => self.settle(started, leading_until, outcome),
                _ = stopping.changed() => break,
            }
            // A leader renews a retry period after its last try began; candidates spread out.
            let mut next = started + self.lease.retry_period;
            if !self.is_leading() {
                next += self.lease.retry_period.mul_f64(rand::random::<f64>() * 0.2);
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = stopping.changed() => break,
            }
        }
        // Also when this replica does not lead by its own clock: a takeover write may have
        // landed as it stopped. The release reads the holder first and leaves others' alone.
        self.release().await;
    }

    fn is_leading(&self) -> bool {
        leads_now(*self.until.borrow())
    }

    fn settle(
        &self,
        started: Instant,
        leading_until: Option<Instant>,
        outcome: Result<Result<Attempt, kube::Error>, tokio::time::error::Elapsed>,
    ) {
        let identity = &self.lease.identity;
        match outcome {
            Ok(Ok(Attempt::Leading)) => {
                if leading_until.is_none() {
                    tracing::info!(%identity, "acquired the Lease");
                }
                self.until
                    .send_replace(Some(started + self.lease.renew_deadline));
                return;
            }
            Ok(Ok(Attempt::HeldBy(holder))) => {
                if leading_until.is_some() {
                    tracing::warn!(%identity, %holder, "another replica holds the Lease: standing by");
                }
                self.until.send_replace(None);
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%identity, %error, "cannot acquire or renew the Lease")
            }
            Err(_) => tracing::warn!(%identity, "the Lease's API server did not answer in time"),
        }
        if leading_until.is_some() && !self.is_leading() {
            tracing::warn!(%identity, "no renewal within the renew deadline: standing by");
            self.until.send_replace(None);
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let name = &self.lease.name;
        // The leader's fast path (client-go's too): one request, the write on what it wrote
        // last, so a slow API server costs one round trip a renewal, not two. A 409 says the
        // Lease moved on: read it.
        if let Some(mut mine) = self.written.take().filter(|_| self.is_leading()) {
            let old = mine.spec.take();
            mine.spec = Some(self.record(old.as_ref()));
            match self.api.replace(name, &post_params(), &mine).await {
                Ok(written) => return Ok(self.took(written)),
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => return Err(err),
            }
        }
        let Some(current) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.record(None)),
            };
            return match self.api.create(&post_params(), &lease).await {
                Ok(made) => Ok(self.took(made)),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldBy("(made by another replica just now)".into()))
                }
                Err(err) => Err(err),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        // Observed now, after the read: the record was written before this instant.
        if self.observed.as_ref().map(|o| &o.spec) != Some(&spec) {
            self.observed = Some(Observed {
                spec: spec.clone(),
                at: Instant::now(),
            });
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if let Some(holder) = holder.as_ref().filter(|h| **h != self.lease.identity) {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.lease.duration, Duration::from_secs);
            let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if Instant::now() < seen + duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
        }
        let mut next = current;
        next.spec = Some(self.record(Some(&spec)));
        match self.api.replace(name, &post_params(), &next).await {
            Ok(written) => Ok(self.took(written)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy(holder.unwrap_or_else(|| {
                    "(taken by another replica just now)".into()
                })))
            }
            Err(err) => Err(err),
        }
    }

    fn took(&mut self, lease: Lease) -> Attempt {
        self.observed = Some(Observed {
            spec: lease.spec.clone().unwrap_or_default(),
            at: Instant::now(),
        });
        self.written = Some(lease);
        Attempt::Leading
    }

    /// The record this replica writes: renewed if it holds the Lease, else taken over.
    fn record(&self, old: Option<&LeaseSpec>) -> LeaseSpec {
        let now = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        let identity = &self.lease.identity;
        let held = old.filter(|old| old.holder_identity.as_ref() == Some(identity));
        LeaseSpec {
            holder_identity: Some(identity.clone()),
            lease_duration_seconds: i32::try_from(self.lease.duration.as_secs()).ok(),
            acquire_time: held.map_or(now.clone(), |old| old.acquire_time.clone()),
            renew_time: now,
            lease_transitions: match (held, old) {
                (Some(held), _) => held.lease_transitions,
                (None, Some(old)) => Some(old.lease_transitions.unwrap_or(0) + 1),
                (None, None) => Some(0),
            },
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up, as client-go's `ReleaseOnCancel`: no holder, a 1 s duration; a
    /// compare-and-swap, so a Lease taken over meanwhile is left alone.
    async fn release(&self) {
        let identity = &self.lease.identity;
        // Stop saying it leads before the Lease goes: a standby may lead the moment it does.
        self.until.send_replace(None);
        let released = async {
            let mut lease = self.api.get(&self.lease.name).await?;
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(false);
            };
            if spec.holder_identity.as_ref() != Some(identity) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            self.api
                .replace(&self.lease.name, &post_params(), &lease)
                .await
                .map(|_| true)
        };
        match released.await {
            Ok(true) => tracing::info!(%identity, "Lease released"),
            Ok(false) => {
                tracing::debug!(%identity, "the Lease is not this replica's: nothing to release")
            }
            Err(error) => {
                tracing::warn!(%identity, %error, "could not release the Lease; it lapses instead")
            }
        }
    }
}

/// The one rule of "leads now", for the gate and the election alike.
fn leads_now(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() < until)
}

enum Attempt {
    Leading,
    HeldBy(String),
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    }
}

/// The settings' checks, and a gate's answers over time.
#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, deadline: u64, retry: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn the_deadline_must_fall_between_the_retry_period_and_the_duration() {
        assert!(settings(10, 7, 1).check().is_ok());
        assert!(settings(10, 10, 1).check().is_err());
        assert!(settings(10, 7, 7).check().is_err());
        assert!(settings(10, 7, 0).check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_stops_leading_at_its_deadline_without_a_word_from_the_election() {
        let (send, until) = watch::channel(Some(Instant::now() + Duration::from_secs(7)));
        let gate = LeaderGate { until };
        assert!(gate.is_leading());
        let lost = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.lost().await;
                Instant::now()
            }
        });
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        // a renewal at 5 s moves the deadline to 12 s
        send.send_replace(Some(Instant::now() + Duration::from_secs(7)));
        let stopped = lost.await.unwrap();
        assert_eq!(stopped - start, Duration::from_secs(12));
        assert!(!gate.is_leading());
        drop(send);
    }
}
