//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod agent_double;
pub mod pki;
pub mod sidecar;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns true; panics after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
