//! An adaptive concurrency limit (AIMD, as Netflix's concurrency-limits `AIMDLimit`): calls in
//! flight are capped at a limit that grows by one while calls come back quick and well with
//! the limit in use, and shrinks by a tenth when one comes back slow or failed. A dependency
//! that starts to queue is sent less work at once, so its line drains instead of growing.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Clock;

/// The share of the limit kept after a slow or failed call.
pub const BACKOFF_RATIO: f64 = 0.9;

/// What the limit may be, and what counts as slow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveLimitSettings {
    pub min: u32,
    pub max: u32,
    /// A call that takes longer is a sign of queueing: the limit shrinks.
    pub slow_after: Duration,
}

#[derive(Debug)]
struct Core {
    settings: AdaptiveLimitSettings,
    limit: f64,
    in_flight: u32,
    shed: u64,
}

/// Shared by all calls to one dependency.
pub struct AdaptiveLimit {
    clock: Arc<dyn Clock>,
    core: Mutex<Core>,
}

/// The limit's state, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSnapshot {
    pub limit: u32,
    pub in_flight: u32,
    /// Calls refused (or, in Observe, that would have been) since the start.
    pub shed: u64,
}

/// A call let through: report it with [`LimitPermit::record`]; dropped unreported, it only
/// frees its place.
#[must_use = "a permit must be recorded, or dropped to release it"]
pub struct LimitPermit {
    limit: Arc<AdaptiveLimit>,
    started: Duration,
    /// The limit was at least half used when it was let through: only then does a good call
    /// say the limit could be higher.
    busy: bool,
    done: bool,
}

impl AdaptiveLimit {
    /// Starts at the largest limit allowed: it only comes down when the dependency says so.
    pub fn new(settings: AdaptiveLimitSettings, clock: Arc<dyn Clock>) -> Self {
        let settings = Self::bounded(settings);
        Self {
            clock,
            core: Mutex::new(Core {
                settings,
                limit: f64::from(settings.max),
                in_flight: 0,
                shed: 0,
            }),
        }
    }

    /// `min` above `max` is taken as `max`.
    fn bounded(mut settings: AdaptiveLimitSettings) -> AdaptiveLimitSettings {
        settings.min = settings.min.clamp(1, settings.max.max(1));
        settings
    }

    /// New bounds; the limit now is kept within them.
    pub fn update_settings(&self, settings: AdaptiveLimitSettings) {
        let settings = Self::bounded(settings);
        let mut core = self.core.lock();
        core.settings = settings;
        core.limit = core
            .limit
            .clamp(f64::from(settings.min), f64::from(settings.max));
    }

    /// A place for one call, or `None` when the limit is reached (counted as shed). `observe`:
    /// let it through anyway (a dry run), still counted as shed.
    pub fn try_acquire(self: &Arc<Self>, observe: bool) -> (Option<LimitPermit>, bool) {
        let mut core = self.core.lock();
        let over = f64::from(core.in_flight) >= core.limit.floor();
        if over {
            core.shed += 1;
            if !observe {
                return (None, true);
            }
        }
        let busy = f64::from(core.in_flight + 1) * 2.0 >= core.limit;
        core.in_flight += 1;
        drop(core);
        let permit = LimitPermit {
            limit: self.clone(),
            started: self.clock.now(),
            busy,
            done: false,
        };
        (Some(permit), over)
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        let core = self.core.lock();
        LimitSnapshot {
            limit: core.limit.floor() as u32,
            in_flight: core.in_flight,
            shed: core.shed,
        }
    }
}

impl LimitPermit {
    /// The call came back: `failed` (an error or a timeout) or slower than `slow_after`
    /// shrinks the limit; a quick good one grows it, if the limit was in use.
    pub fn record(mut self, failed: bool) {
        self.done = true;
        let took = self.limit.clock.now().saturating_sub(self.started);
        let mut core = self.limit.core.lock();
        core.in_flight -= 1;
        let s = core.settings;
        if failed || took > s.slow_after {
            core.limit = (core.limit * BACKOFF_RATIO).max(f64::from(s.min));
        } else if self.busy {
            core.limit = (core.limit + 1.0).min(f64::from(s.max));
        }
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        if !self.done {
            self.limit.core.lock().in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limit(min: u32, max: u32) -> (Arc<AdaptiveLimit>, ManualClock) {
        let clock = ManualClock::new();
        let settings = AdaptiveLimitSettings {
            min,
            max,
            slow_after: Duration::from_millis(100),
        };
        (
            Arc::new(AdaptiveLimit::new(settings, Arc::new(clock.clone()))),
            clock,
        )
    }

    #[test]
    fn slow_calls_cut_the_limit_by_a_tenth_down_to_the_minimum() {
        let (l, clock) = limit(2, 20);
        for expected in [
            18, 16, 14, 13, 11, 10, 9, 8, 7, 6, 6, 5, 5, 4, 4, 3, 3, 3, 2, 2, 2,
        ] {
            let (permit, _) = l.try_acquire(false);
            clock.advance(Duration::from_millis(101));
            permit.unwrap().record(false);
            assert_eq!(l.snapshot().limit, expected);
        }
    }

    #[test]
    fn failures_cut_it_too_and_quick_calls_with_the_limit_in_use_raise_it_by_one() {
        let (l, _) = limit(1, 10);
        let (permit, _) = l.try_acquire(false);
        permit.unwrap().record(true);
        assert_eq!(l.snapshot().limit, 9);
        // One call in flight of 9: not in use, so a good call says nothing.
        let (permit, _) = l.try_acquire(false);
        permit.unwrap().record(false);
        assert_eq!(l.snapshot().limit, 9);
        // Five at once: the limit is in use; each quick answer raises it, up to the max.
        let permits: Vec<_> = (0..5).map(|_| l.try_acquire(false).0.unwrap()).collect();
        for p in permits {
            p.record(false);
        }
        assert_eq!(l.snapshot().limit, 10);
    }

    #[test]
    fn calls_past_the_limit_are_shed_and_observe_lets_them_through_counted() {
        let (l, _) = limit(1, 3);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire(false).0.unwrap()).collect();
        let (none, over) = l.try_acquire(false);
        assert!(none.is_none() && over);
        let (observed, over) = l.try_acquire(true);
        assert!(observed.is_some() && over);
        assert_eq!(l.snapshot().shed, 2);
        assert_eq!(l.snapshot().in_flight, 4);
        drop(observed);
        drop(held);
        assert_eq!(
            l.snapshot().in_flight,
            0,
            "dropped permits free their places"
        );
        assert_eq!(l.snapshot().limit, 3, "and judge nothing");
    }

    #[test]
    fn under_concurrency_no_more_than_the_limit_is_ever_in_flight() {
        let (l, _) = limit(1, 8);
        let peak = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..2000 {
                        if let (Some(permit), _) = l.try_acquire(false) {
                            peak.fetch_max(
                                l.snapshot().in_flight,
                                std::sync::atomic::Ordering::SeqCst,
                            );
                            permit.record(false);
                        }
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 8);
        assert_eq!(l.snapshot().in_flight, 0);
    }

    #[test]
    fn new_bounds_hold_the_limit_and_a_minimum_over_the_maximum_is_the_maximum() {
        let (l, _) = limit(1, 10);
        l.update_settings(AdaptiveLimitSettings {
            min: 50,
            max: 4,
            slow_after: Duration::from_millis(100),
        });
        assert_eq!(l.snapshot().limit, 4);
    }
}
