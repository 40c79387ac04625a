//! Outlier ejection, as the meshes do it (Envoy's outlier detection, Linkerd's failure accrual)
//! but with the breaker's guarantees: one [`CircuitBreaker`] per endpoint of a service, all on
//! the same settings, so an endpoint whose breaker opens is out of rotation ("ejected") until a
//! probe (exactly `halfOpenMaxCalls` of them, per endpoint) brings it back.
//!
//! A ceiling keeps the service up: at most `maxEjectionPercent` of the endpoints may be out at
//! once, and never all of them (at least one stays, as in Envoy). An endpoint that would open
//! past the ceiling is refused ([`OpenGate`]) and stays in rotation; whatever it answers is the
//! caller's to handle (the gateway's service-level breaker and fallback).
//!
//! Calls go to the less busy of two endpoints drawn at random (power of two choices on calls
//! in flight), among those whose breaker admits the call. No I/O here: endpoints are names and
//! addresses, kept up to date by whoever watches them ([`EndpointSet::update`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use breaker::{
    BreakerObserver, CircuitBreaker, Clock, Mode, OpenGate, Outcome, Permit, Settings, Snapshot,
    State, Transition, TransitionReason, OPEN_JITTER,
};
use parking_lot::{Mutex, RwLock};

/// Told of every transition of every endpoint's breaker, under that breaker's lock.
pub trait EndpointObserver: Send + Sync {
    fn on_transition(&self, endpoint: &str, transition: &Transition);
}

/// An endpoint to call, as configuration or discovery gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointAddress {
    /// What people know it by: the pod's name in Kubernetes.
    pub name: String,
    /// Where to call it: a base URL such as `http://10.244.1.7:8082`.
    pub address: String,
}

impl EndpointAddress {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
        }
    }
}

/// One endpoint: where to call it, and its breaker.
pub struct Endpoint {
    /// What people know it by: the pod's name in Kubernetes.
    pub name: String,
    /// Where to call it: a base URL such as `http://10.244.1.7:8082`.
    pub address: Arc<str>,
    breaker: Arc<CircuitBreaker>,
    membership: Arc<Membership>,
    in_flight: AtomicU32,
}

impl Endpoint {
    pub fn snapshot(&self) -> Snapshot {
        self.breaker.snapshot()
    }

    /// When and why it left rotation, while it is out.
    pub fn ejection(&self) -> Option<Ejection> {
        self.membership
            .ejections
            .out
            .lock()
            .get(&self.name)
            .copied()
            .flatten()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Leave to call one endpoint: record the outcome ([`EndpointPermit::record`]), or drop it
/// to release the slot unjudged. It counts as a call in flight to its endpoint until then.
pub struct EndpointPermit {
    endpoint: Arc<Endpoint>,
    permit: Option<Permit<Arc<CircuitBreaker>>>,
}

impl EndpointPermit {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The breaker's permit: its timeouts, whether it is a probe.
    pub fn permit(&self) -> &Permit<Arc<CircuitBreaker>> {
        self.permit.as_ref().expect("held until recorded")
    }

    pub fn record(mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            permit.record(outcome);
        }
    }

    pub fn success(self) {
        self.record(Outcome::Success);
    }

    pub fn failure(self) {
        self.record(Outcome::Failure);
    }
}

impl Drop for EndpointPermit {
    fn drop(&mut self) {
        // An unrecorded permit is released here, unjudged, before the count goes down.
        drop(self.permit.take());
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no endpoint could be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The set is empty.
    Empty,
    /// Every endpoint's breaker refused the call (open, probes taken, bulkhead full, forced).
    AllRefused,
}

impl NoEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            NoEndpoint::Empty => "no_endpoints",
            NoEndpoint::AllRefused => "all_endpoints_refused",
        }
    }
}

/// When and why an endpoint left rotation: its breaker's opening from closed. (Its later
/// transitions, a probe and a failed probe, leave it out; only closing brings it back.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// On the set's clock.
    pub at: Duration,
    pub reason: TransitionReason,
}

/// The endpoints out of rotation, by name, and how many may be. A name is out from the moment
/// the gate lets its breaker open; the opening itself then says when and why.
struct Ejections {
    out: Mutex<HashMap<String, Option<Ejection>>>,
    endpoints: AtomicUsize,
    max_percent: AtomicU32,
}

impl Ejections {
    /// At most `percent` of `n`, and never all: 3 endpoints at 50% → 1; at 100% → 2.
    fn ceiling(n: usize, percent: u32) -> usize {
        (n * percent as usize / 100).min(n.saturating_sub(1))
    }

    /// Whether `name` is out, or could be taken out without passing the ceiling.
    fn has_room(&self, out: &HashMap<String, Option<Ejection>>, name: &str) -> bool {
        out.contains_key(name)
            || out.len()
                < Self::ceiling(
                    self.endpoints.load(Ordering::Relaxed),
                    self.max_percent.load(Ordering::Relaxed),
                )
    }

    fn room_for(&self, name: &str) -> bool {
        self.has_room(&self.out.lock(), name)
    }
}

/// One endpoint's view of the ejections: its gate and its observer. A retired membership (its
/// endpoint left the set, or the set was reset) neither takes its name out nor puts it back:
/// a call still in flight to the old breaker must not eject, or restore, the name afresh. Both
/// are decided under the ejections' lock, so retiring and judging cannot interleave.
struct Membership {
    name: String,
    retired: AtomicBool,
    ejections: Arc<Ejections>,
    forward: Option<Arc<dyn EndpointObserver>>,
}

impl Membership {
    fn retire(&self) {
        let mut out = self.ejections.out.lock();
        self.retired.store(true, Ordering::Relaxed);
        out.remove(&self.name);
    }
}

impl OpenGate for Membership {
    /// Takes the endpoint out if the ceiling allows; whether it is out now.
    fn may_open(&self) -> bool {
        let mut out = self.ejections.out.lock();
        if self.retired.load(Ordering::Relaxed) {
            return false;
        }
        let room = self.ejections.has_room(&out, &self.name);
        if room {
            out.entry(self.name.clone()).or_insert(None);
        }
        room
    }
}

impl BreakerObserver for Membership {
    fn on_transition(&self, t: &Transition) {
        {
            let mut out = self.ejections.out.lock();
            if self.retired.load(Ordering::Relaxed) {
                return;
            }
            match (t.from, t.to) {
                (_, State::Closed) => {
                    out.remove(&self.name);
                }
                (State::Closed, State::Open) => {
                    if let Some(ejection) = out.get_mut(&self.name) {
                        *ejection = Some(Ejection {
                            at: t.at,
                            reason: t.reason,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(forward) = &self.forward {
            forward.on_transition(&self.name, t);
        }
    }
}

pub struct EndpointSet {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    ejections: Arc<Ejections>,
    /// What new endpoints start with; every endpoint runs the same.
    config: Mutex<(Settings, Mode)>,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn EndpointObserver>>,
    /// Seeds each new endpoint's open-duration jitter, and draws the pairs.
    rng: Mutex<fastrand::Rng>,
}

impl EndpointSet {
    pub fn new(
        settings: Settings,
        max_ejection_percent: u32,
        clock: Arc<dyn Clock>,
        observer: Option<Arc<dyn EndpointObserver>>,
        seed: u64,
    ) -> Self {
        Self {
            endpoints: RwLock::new(Vec::new()),
            ejections: Arc::new(Ejections {
                out: Mutex::new(HashMap::new()),
                endpoints: AtomicUsize::new(0),
                max_percent: AtomicU32::new(max_ejection_percent),
            }),
            config: Mutex::new((settings, Mode::Auto)),
            clock,
            observer,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The endpoints now, in the order they were added.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.read().clone()
    }

    /// Names of the endpoints out of rotation.
    pub fn ejected(&self) -> Vec<String> {
        let mut out: Vec<String> = self.ejections.out.lock().keys().cloned().collect();
        out.sort();
        out
    }

    /// Makes the set these endpoints. An endpoint that stays keeps its breaker
    /// (state, window, counters) and its calls in flight; one that goes is forgotten (calls
    /// already made to it finish and are judged by its breaker, which no one asks again and
    /// which ejects nothing).
    pub fn update(&self, wanted: &[EndpointAddress]) {
        let mut endpoints = self.endpoints.write();
        endpoints.retain(|e| {
            let keep = wanted
                .iter()
                .any(|w| w.name == e.name && *w.address == *e.address);
            if !keep {
                e.membership.retire();
            }
            keep
        });
        for w in wanted {
            if !endpoints.iter().any(|e| e.name == w.name) {
                endpoints.push(self.endpoint(&w.name, &w.address));
            }
        }
        self.ejections
            .endpoints
            .store(endpoints.len(), Ordering::Relaxed);
    }

    fn endpoint(&self, name: &str, address: &str) -> Arc<Endpoint> {
        let (settings, mode) = self.config.lock().clone();
        let membership = Arc::new(Membership {
            name: name.to_string(),
            retired: AtomicBool::new(false),
            ejections: self.ejections.clone(),
            forward: self.observer.clone(),
        });
        let breaker = Arc::new(CircuitBreaker::with_observer(
            settings,
            self.clock.clone(),
            Some(membership.clone() as Arc<dyn BreakerObserver>),
        ));
        breaker.set_mode(mode);
        breaker.set_open_gate(membership.clone());
        breaker.set_open_jitter(OPEN_JITTER, self.rng.lock().u64(..));
        Arc::new(Endpoint {
            name: name.to_string(),
            address: address.into(),
            breaker,
            membership,
            in_flight: AtomicU32::new(0),
        })
    }

    /// Starts every endpoint's breaker afresh (closed, an empty window), none out of rotation:
    /// for a change of scope, after which what the old breakers judged no longer holds. Calls
    /// in flight finish on the old breakers, which eject nothing.
    pub fn reset(&self) {
        let mut endpoints = self.endpoints.write();
        for endpoint in endpoints.iter_mut() {
            endpoint.membership.retire();
            *endpoint = self.endpoint(&endpoint.name, &endpoint.address);
        }
    }

    /// New settings and mode for every endpoint's breaker (each keeps its state), and the
    /// ceiling on ejections.
    pub fn apply(&self, settings: Settings, mode: Mode, max_ejection_percent: u32) {
        *self.config.lock() = (settings.clone(), mode);
        self.ejections
            .max_percent
            .store(max_ejection_percent, Ordering::Relaxed);
        for endpoint in self.endpoints.read().iter() {
            endpoint.breaker.update_settings(settings.clone());
            endpoint.breaker.set_mode(mode);
        }
    }

    /// A new mode for every endpoint's breaker (each keeps its state and settings).
    pub fn set_mode(&self, mode: Mode) {
        self.config.lock().1 = mode;
        for endpoint in self.endpoints.read().iter() {
            endpoint.breaker.set_mode(mode);
        }
    }

    /// Whether a failure of `endpoint` is the set's to answer for: it is out of rotation, or
    /// could be taken out without passing the ceiling. When not, the service must.
    pub fn contains_failure(&self, endpoint: &Endpoint) -> bool {
        self.ejections.room_for(&endpoint.name)
    }

    /// Leave to call one endpoint: the less busy of two drawn at random among those whose
    /// breaker admits the call, else any that admits one.
    pub fn acquire(&self) -> Result<EndpointPermit, NoEndpoint> {
        // Read, not copied: this runs on every call, and an update waits only as long as a
        // few breakers' admissions take.
        let endpoints = self.endpoints.read();
        let n = endpoints.len();
        if n == 0 {
            return Err(NoEndpoint::Empty);
        }
        let (first, offset) = {
            let mut rng = self.rng.lock();
            (rng.usize(..n), rng.usize(..n.max(2) - 1))
        };
        let other = (first + 1 + offset) % n;
        let pick = if n > 1 && endpoints[other].in_flight() < endpoints[first].in_flight() {
            other
        } else {
            first
        };
        // The pick first, then the others from `first` on, as a fallback.
        let order =
            std::iter::once(pick).chain((0..n).map(|i| (first + i) % n).filter(|&i| i != pick));
        for i in order {
            let endpoint = &endpoints[i];
            match endpoint.breaker.try_acquire() {
                Ok(permit) => {
                    endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok(EndpointPermit {
                        permit: Some(permit.into_owned(&endpoint.breaker)),
                        endpoint: endpoint.clone(),
                    });
                }
                // Open, probes taken, bulkhead full, forced open: the next one.
                Err(_) => continue,
            }
        }
        Err(NoEndpoint::AllRefused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_leaves_at_least_one_endpoint() {
        assert_eq!(Ejections::ceiling(3, 50), 1);
        assert_eq!(Ejections::ceiling(3, 100), 2);
        assert_eq!(Ejections::ceiling(1, 100), 0);
        assert_eq!(Ejections::ceiling(10, 10), 1);
        assert_eq!(Ejections::ceiling(4, 10), 0);
        assert_eq!(Ejections::ceiling(0, 50), 0);
    }
}
