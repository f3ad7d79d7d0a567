//! The poll loop: read the agent's three endpoints, publish what was read,
//! record health, wait (with backoff while the agent is down), repeat.
//!
//! Each part is published only when its call succeeded, so a failing or
//! malformed endpoint leaves its documents exactly as they were.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::agent_api::AgentClient;
use super::documents::{self, DEPLOYMENTS, PACKAGES};
use super::health::{AgentState, HealthTracker, PollReport, WatcherHealth};
use super::publish::{Publisher, Written};
use super::settings::WatcherConfig;
use super::transport::AgentConnection;

/// Longest agent error text kept in logs and health.
const MAX_ERROR_CHARS: usize = 300;

/// Runs until `stop` turns true (or its sender is dropped).
pub async fn run(
    config: WatcherConfig,
    publisher: Publisher,
    health: watch::Sender<WatcherHealth>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = AgentClient::new(AgentConnection::new(config.endpoint.clone(), config.call_timeout));
    let mut tracker = HealthTracker::new(config.endpoint.base_url.clone(), config.poll_interval, config.max_backoff);
    loop {
        let report = tokio::select! {
            report = poll_once(&mut client, &publisher, &config.agent_id) => report,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let delay = tracker.record(report);
        health.send_replace(tracker.health().clone());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    tracing::debug!("agent watcher stopped");
}

/// One poll of every endpoint.
async fn poll_once(client: &mut AgentClient, publisher: &Publisher, agent_id: &str) -> PollReport {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut failures: Vec<(&'static str, String)> = Vec::new();
    let mut written = Written::default();

    let status = client.status().await;
    if let Err(err) = &status
        && err.is_unreachable()
    {
        // Nothing answers: skip the other calls rather than wait for each to time out.
        return PollReport { state: AgentState::Down, error: Some(clip(format!("GET /status: {err}"))) };
    }
    match status {
        Ok(status) => {
            let stable = documents::platform(agent_id, &status);
            let volatile = documents::platform_volatile(&status, now);
            match publisher.platform(stable, volatile, now).await {
                Ok(w) => written += w,
                Err(err) => failures.push(("store:platforms", err.to_string())),
            }
        }
        Err(err) => failures.push(("status", err.to_string())),
    }

    let mut unreachable = 0;
    match client.list_packages().await {
        Ok(packages) => match publisher.collection(DEPLOYMENTS, &documents::deployments(agent_id, &packages)).await {
            Ok(w) => written += w,
            Err(err) => failures.push(("store:deployments", err.to_string())),
        },
        Err(err) => {
            unreachable += usize::from(err.is_unreachable());
            failures.push(("ListPackages", err.to_string()));
        }
    }
    match client.list_pulled_packages().await {
        Ok(registries) => match publisher.collection(PACKAGES, &documents::packages(agent_id, &registries)).await {
            Ok(w) => written += w,
            Err(err) => failures.push(("store:packages", err.to_string())),
        },
        Err(err) => {
            unreachable += usize::from(err.is_unreachable());
            failures.push(("ListPulledPackages", err.to_string()));
        }
    }

    if !written.is_empty() {
        tracing::info!(agent_id, updated = written.updated, deleted = written.deleted, "agent state changed");
    }
    if failures.is_empty() {
        return PollReport { state: AgentState::Up, error: None };
    }
    // Every call failed and the later ones could not reach the agent: it went away mid-poll.
    let state = if failures.len() == 3 && unreachable == 2 {
        AgentState::Down
    } else {
        AgentState::Degraded { failing: failures.iter().map(|(part, _)| *part).collect() }
    };
    let error = failures.iter().map(|(part, err)| format!("{part}: {err}")).collect::<Vec<_>>().join("; ");
    PollReport { state, error: Some(clip(error)) }
}

fn clip(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(index);
        text.push('…');
    }
    text
}
