//! The re-watch backoff of every watch on the breaker's objects (the controller's on
//! BreakerPolicies, v2's on its ConfigMap).
//!
//! kube's default backoff grows to 30 s with jitter, so after a short API server outage a
//! watch could wait half a minute to resume; changes made meanwhile would wait with it. This
//! one doubles from 250 ms to a 4 s cap and starts over once a watch succeeds.

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
        let delay = self.next;
        self.next = (self.next * 2).min(CAP);
        Some(delay)
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
    fn doubles_to_the_cap_and_resets() {
        let mut b = RewatchBackoff::default();
        let first: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }
}
