//! api-gateway-v1: no breaker, one long timeout, all or nothing. The cascading failure.
// mimalloc, as in every binary of this project (why: services/gateway/src/bin/api-gateway-v2.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::run_v1()
}
