//! api-gateway-v2: circuit breaker, bulkhead, short timeout and fallback.
fn main() -> std::process::ExitCode {
    gateway::run_v2()
}
