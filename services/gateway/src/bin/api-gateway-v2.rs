//! api-gateway-v2: circuit breaker, bulkhead, short timeout and fallback.
// Every service allocates on each request. Under `make bench` glibc's malloc took ~10% of the
// gateway's CPU (perf); with mimalloc v2 served ~15% more requests at a lower p99. Chosen here,
// in the binary: a library must not choose the allocator for its users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::run_v2()
}
