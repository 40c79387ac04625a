//! A dependency with a capacity, the third chapter's: `workers` requests are worked on at once,
//! each for `serviceTime` (times `slowdown`, the trigger); the rest wait in line, first come
//! first served. A request is worked on to its end even when its caller has gone away, as most
//! servers do: a caller that gives up frees nothing, and its retry queues again.
//!
//! With `c` workers and service time `s`, the `k`-th of `n` requests that arrive together
//! finishes at `ceil(k / c) * s`; `c / s` requests a second is the most it can answer. The line
//! may be bounded (`maxWaiting`): past it a request is refused at once, as a server whose
//! accept queue is full refuses connections.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The most workers one replica may have.
pub const MAX_WORKERS: u32 = 10_000;
/// The largest slowdown.
pub const MAX_SLOWDOWN: f64 = 100.0;

/// How much work one replica can do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySettings {
    /// Requests worked on at once; 0: no limit (and no service time): the capacity model is off.
    pub workers: u32,
    /// How long one request takes a worker.
    #[serde(with = "duration_text::serde")]
    pub service_time: Duration,
    /// The trigger: each request takes this many times its service time (1: normal).
    pub slowdown: f64,
    /// Requests that may wait for a worker; more are refused at once. 0: no bound.
    pub max_waiting: u32,
}

impl Default for CapacitySettings {
    fn default() -> Self {
        Self {
            workers: 0,
            service_time: Duration::from_millis(20),
            slowdown: 1.0,
            max_waiting: 0,
        }
    }
}

impl CapacitySettings {
    pub fn is_on(&self) -> bool {
        self.workers > 0
    }

    /// Requests a second it answers at most, with the slowdown in force; `None` when off.
    pub fn throughput(&self) -> Option<f64> {
        let work = self.service_time.mul_f64(self.slowdown).as_secs_f64();
        (self.is_on() && work > 0.0).then(|| f64::from(self.workers) / work)
    }
}

/// The workers and the line before them, with what it did as metrics.
#[derive(Default)]
pub struct Capacity {
    /// The workers, made again when their number changes (work under way keeps its old
    /// worker until it ends).
    pool: Mutex<Option<(u32, Arc<Semaphore>)>>,
    /// Requests waiting for a worker now.
    pub waiting: Gauge,
}

impl Capacity {
    fn pool(&self, workers: u32) -> Arc<Semaphore> {
        let mut pool = self.pool.lock();
        match &*pool {
            Some((n, semaphore)) if *n == workers => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(workers as usize));
                *pool = Some((workers, semaphore.clone()));
                semaphore
            }
        }
    }

    /// Does one request's work: waits in line for a worker, then works for the service time
    /// `settings()` gives when the work starts. The work runs on a task of its own, so it is
    /// done (and holds its worker) even if this future is dropped because the caller left.
    /// `Err(LineFull)` when the line is at its bound: no work is done.
    pub async fn work(
        self: &Arc<Self>,
        settings: impl Fn() -> CapacitySettings + Send + 'static,
    ) -> Result<(), LineFull> {
        let now = settings();
        if !now.is_on() {
            return Ok(());
        }
        if now.max_waiting > 0 && self.waiting.get() >= i64::from(now.max_waiting) {
            return Err(LineFull);
        }
        let pool = self.pool(now.workers);
        let this = self.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        // Its worker is held to the end, whoever still waits for it.
        this.waiting.inc();
        tokio::spawn(async move {
            let worker = pool.acquire_owned().await;
            this.waiting.dec();
            let s = settings();
            tokio::time::sleep(s.service_time.mul_f64(s.slowdown)).await;
            drop(worker);
            let _ = done.send(());
        });
        let _ = finished.await;
        Ok(())
    }
}

/// The line is at its bound (`maxWaiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded: the line is full")]
pub struct LineFull;

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    fn settings(workers: u32, ms: u64, slowdown: f64) -> CapacitySettings {
        CapacitySettings {
            workers,
            service_time: Duration::from_millis(ms),
            slowdown,
            max_waiting: 0,
        }
    }

    /// When each of `n` requests sent together finishes, in ms from their start.
    async fn finish_times(capacity: &Arc<Capacity>, s: CapacitySettings, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let calls = (0..n).map(|_| {
            let capacity = capacity.clone();
            tokio::spawn(async move {
                capacity.work(move || s).await.unwrap();
                start.elapsed().as_millis()
            })
        });
        let mut times = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            times.push(call.await.unwrap());
        }
        times.sort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn the_kth_request_finishes_at_ceil_k_over_c_service_times() {
        let capacity = Arc::new(Capacity::default());
        for (workers, ms, n) in [(1, 50, 4), (3, 100, 10), (8, 20, 33)] {
            let got = finish_times(&capacity, settings(workers, ms, 1.0), n).await;
            let formula: Vec<u128> = (1..=n as u128)
                .map(|k| k.div_ceil(u128::from(workers)) * u128::from(ms))
                .collect();
            assert_eq!(got, formula, "{workers} workers, {ms} ms, {n} requests");
        }
        assert_eq!(capacity.waiting.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowdown_multiplies_the_service_time_and_divides_the_throughput() {
        let capacity = Arc::new(Capacity::default());
        let slow = settings(2, 20, 5.0);
        assert_eq!(finish_times(&capacity, slow, 4).await, [100, 100, 200, 200]);
        assert_eq!(slow.throughput(), Some(20.0));
        assert_eq!(settings(2, 20, 1.0).throughput(), Some(100.0));
        assert_eq!(settings(0, 20, 1.0).throughput(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn work_whose_caller_left_is_still_done_and_delays_those_behind_it() {
        let capacity = Arc::new(Capacity::default());
        let s = settings(1, 100, 1.0);
        // The first caller gives up after 10 ms: its work still takes the one worker 100 ms.
        let first = tokio::time::timeout(Duration::from_millis(10), capacity.work(move || s));
        let second = {
            let capacity = capacity.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                capacity.work(move || s).await.unwrap();
                start.elapsed().as_millis()
            })
        };
        assert!(first.await.is_err(), "the caller gave up");
        assert_eq!(
            second.await.unwrap(),
            200,
            "it waited for the abandoned work"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_bound_the_line_refuses_at_once() {
        let capacity = Arc::new(Capacity::default());
        let s = CapacitySettings {
            max_waiting: 2,
            ..settings(1, 100, 1.0)
        };
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let capacity = capacity.clone();
                tokio::spawn(async move { capacity.work(move || s).await })
            })
            .collect();
        let mut refused = 0;
        for call in calls {
            refused += usize::from(call.await.unwrap() == Err(LineFull));
        }
        // Five at once: two wait (one of them gets the worker first), three are refused.
        assert_eq!(refused, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_workers_there_is_no_capacity_model() {
        let capacity = Arc::new(Capacity::default());
        assert_eq!(
            finish_times(&capacity, settings(0, 1000, 1.0), 5).await,
            [0; 5]
        );
    }
}
