//! `breaker-controller probe URL…`: what the chart's `helm test` pod runs against a release.

use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// GETs each URL in turn; prints one line per URL; success only if every one answered 2xx.
pub async fn all(urls: &[String]) -> ExitCode {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut failed = 0;
    for url in urls {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => {
                println!("ok    {url}: {}", response.status());
            }
            Ok(response) => {
                failed += 1;
                println!("FAIL  {url}: {}", response.status());
            }
            Err(err) => {
                failed += 1;
                println!("FAIL  {url}: {err}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} failed", urls.len());
        ExitCode::FAILURE
    }
}
