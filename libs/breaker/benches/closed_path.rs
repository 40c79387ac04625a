//! Cost of one protected call while the circuit is closed: acquire a permit, record success.
use std::sync::Arc;
use std::time::{Duration, Instant};

use breaker::{CircuitBreaker, MonotonicClock, Settings, SettingsSpec};
use criterion::{criterion_group, criterion_main, Criterion};

fn breaker(settings: Settings) -> CircuitBreaker {
    CircuitBreaker::new(settings, Arc::new(MonotonicClock::new()))
}

fn call(b: &CircuitBreaker) {
    b.try_acquire().expect("closed circuit admits").success();
}

fn closed_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_path");
    let plain = breaker(valid(SettingsSpec::default()));
    group.bench_function("uncontended", |bench| bench.iter(|| call(&plain)));

    let full = breaker(valid(SettingsSpec {
        failure_rate_threshold: Some(50.0),
        slow_call_duration: Some(Duration::from_secs(1)),
        max_concurrent_calls: Some(1000),
        ..Default::default()
    }));
    group.bench_function("uncontended_all_features", |bench| {
        bench.iter(|| call(&full))
    });

    // Two threads share one breaker; the time reported is per call on each thread.
    let shared = breaker(valid(SettingsSpec::default()));
    group.bench_function("two_threads", |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| (0..iters).for_each(|_| call(&shared)));
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, closed_path);
criterion_main!(benches);

fn valid(spec: SettingsSpec) -> Settings {
    Settings::new(spec).expect("valid settings")
}
