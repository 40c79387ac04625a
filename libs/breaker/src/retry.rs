//! Retries that cannot feed an overload: a [`RetryBudget`] (as Linkerd's and Envoy's) lets
//! retries be at most a share of the recent requests plus a small floor a second, and
//! [`jittered_backoff`] spreads them out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Clock;

/// How far back the budget looks (Linkerd's default TTL).
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// The window in buckets of one second.
const BUCKETS: u64 = 10;

/// What a budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetSettings {
    /// Retries may be this share (0 to 1) of the requests of the last [`BUDGET_WINDOW`]…
    pub ratio: f64,
    /// …plus this many a second, so a client with little traffic may still retry.
    pub min_per_second: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

/// Counts requests and retries per second over the window; a retry is allowed while the
/// window's retries stay within `ratio × requests + min_per_second × window`.
pub struct RetryBudget {
    clock: Arc<dyn Clock>,
    buckets: Mutex<VecDeque<Bucket>>,
    settings: Mutex<RetryBudgetSettings>,
}

/// What the budget says of a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryVerdict {
    Allowed,
    /// Over the budget: the caller gives up (and, in Observe, says it would have).
    Refused,
}

impl RetryBudget {
    pub fn new(settings: RetryBudgetSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            buckets: Mutex::new(VecDeque::new()),
            settings: Mutex::new(settings),
        }
    }

    pub fn update_settings(&self, settings: RetryBudgetSettings) {
        *self.settings.lock() = settings;
    }

    /// The bucket of this second, the window's older ones kept, older still dropped.
    fn with_current<T>(&self, f: impl FnOnce(&mut VecDeque<Bucket>) -> T) -> T {
        let second = self.clock.now().as_secs();
        let mut buckets = self.buckets.lock();
        while buckets
            .front()
            .is_some_and(|b| b.second + BUCKETS <= second)
        {
            buckets.pop_front();
        }
        if buckets.back().is_none_or(|b| b.second != second) {
            buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
        }
        f(&mut buckets)
    }

    /// A first attempt was made: it adds `ratio` of a retry to the budget.
    pub fn record_request(&self) {
        self.with_current(|b| b.back_mut().expect("current bucket").requests += 1);
    }

    /// Asks to retry once; an allowed retry is counted against the budget.
    pub fn try_retry(&self) -> RetryVerdict {
        let s = *self.settings.lock();
        self.with_current(|buckets| {
            let (requests, retries) = buckets
                .iter()
                .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
            let allowed = s.ratio * requests as f64 + f64::from(s.min_per_second) * BUCKETS as f64;
            if (retries as f64) < allowed {
                buckets.back_mut().expect("current bucket").retries += 1;
                RetryVerdict::Allowed
            } else {
                RetryVerdict::Refused
            }
        })
    }

    /// Requests and retries in the window now.
    #[cfg(test)]
    fn window(&self) -> (u64, u64) {
        self.with_current(|buckets| {
            buckets
                .iter()
                .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
        })
    }
}

/// "Full jitter" backoff before retry `attempt` (1 for the first retry): a random share of
/// `base × 2^(attempt-1)`, capped at `base × 32`, so that callers who failed together do not
/// retry together. `draw` is a number in [0, 1).
pub fn jittered_backoff(base: Duration, attempt: u32, draw: f64) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(5);
    base.saturating_mul(factor).mul_f64(draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn budget(ratio: f64, min_per_second: u32) -> (RetryBudget, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let settings = RetryBudgetSettings {
            ratio,
            min_per_second,
        };
        (RetryBudget::new(settings, clock.clone()), clock)
    }

    fn allowed(budget: &RetryBudget, asks: usize) -> usize {
        (0..asks)
            .filter(|_| budget.try_retry() == RetryVerdict::Allowed)
            .count()
    }

    #[test]
    fn retries_are_a_share_of_the_recent_requests_plus_a_floor() {
        let (budget, _) = budget(0.2, 1);
        for _ in 0..100 {
            budget.record_request();
        }
        // 20% of 100, and 1 a second over the 10 s window.
        assert_eq!(allowed(&budget, 1000), 30);
        assert_eq!(budget.window(), (100, 30));
    }

    #[test]
    fn the_budget_forgets_what_left_the_window() {
        let (budget, clock) = budget(0.5, 0);
        for _ in 0..10 {
            budget.record_request();
        }
        assert_eq!(allowed(&budget, 100), 5);
        clock.advance(Duration::from_secs(9));
        assert_eq!(allowed(&budget, 100), 0, "still within the window");
        clock.advance(Duration::from_secs(1));
        assert_eq!(budget.window(), (0, 0));
        for _ in 0..4 {
            budget.record_request();
        }
        assert_eq!(allowed(&budget, 100), 2);
    }

    #[test]
    fn without_requests_only_the_floor_is_left() {
        let (budget, _) = budget(1.0, 2);
        assert_eq!(allowed(&budget, 100), 20);
    }

    #[test]
    fn under_concurrency_the_budget_is_never_overdrawn() {
        let (budget, _) = budget(0.1, 0);
        for _ in 0..1000 {
            budget.record_request();
        }
        let budget = Arc::new(budget);
        let granted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| allowed(&budget, 500)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 100);
    }

    #[test]
    fn backoff_is_full_jitter_doubling_to_a_cap() {
        let base = Duration::from_millis(10);
        assert_eq!(jittered_backoff(base, 1, 0.0), Duration::ZERO);
        assert_eq!(jittered_backoff(base, 1, 0.5), Duration::from_millis(5));
        assert_eq!(jittered_backoff(base, 3, 0.5), Duration::from_millis(20));
        assert_eq!(jittered_backoff(base, 40, 0.5), Duration::from_millis(160));
        assert!(jittered_backoff(base, 2, 0.999_999) < Duration::from_millis(20));
    }
}
