//! api-gateway-v1: no breaker, one long timeout, all or nothing. The cascading failure.
fn main() -> std::process::ExitCode {
    gateway::run_v1()
}
