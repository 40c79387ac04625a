//! The re-watch backoff of every watch on the breaker's objects (the controller's on
//! BreakerPolicies, v2's on its ConfigMap).
//!
//! kube's default backoff grows to 30 s with jitter, so after a short API server outage a
//! watch could wait half a minute to resume; changes made meanwhile would wait with it. This
//! one doubles from 250 ms to a 4 s cap and starts over once a watch succeeds. Each delay is
//! drawn from its upper half, so the watches of many pods that lost the API server together
//! do not all come back in the same instant.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(250);
const CAP: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct RewatchBackoff {
    next: Duration,
}

impl Default for RewatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for RewatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.next;
        self.next = (self.next * 2).min(CAP);
        Some(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0))
    }
}

impl Backoff for RewatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_each_delay_in_its_upper_half_and_resets() {
        let ceilings = [250, 500, 1000, 2000, 4000, 4000, 4000];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = RewatchBackoff::default();
            for (delay, ceiling) in b.by_ref().take(7).zip(ceilings) {
                let ms = delay.as_secs_f64() * 1000.0;
                assert!(
                    (ceiling as f64 / 2.0..=ceiling as f64).contains(&ms),
                    "{ms} of {ceiling}"
                );
                seen.insert(delay);
            }
            b.reset();
            let first = b.next().unwrap();
            assert!(first >= FIRST / 2 && first <= FIRST, "{first:?}");
        }
        assert!(
            seen.len() > 100,
            "the delays are jittered: {} distinct",
            seen.len()
        );
    }
}
