//! Watcher health: how the last poll went, what operators see of it, and
//! how long to wait before the next one.
//!
//! A warning is logged when the state changes (up → down, up → degraded,
//! ...), not on every failed poll; recovery is logged at info. While the
//! agent is down, polls back off exponentially from the poll interval up to
//! the configured maximum, so a missing agent costs almost nothing.
//!
//! Health checks see the state too: the `grpc.health.v1` service
//! [`HEALTH_SERVICE`] is SERVING while the agent answers (up or degraded)
//! and NOT_SERVING before the first poll and while it is down.

use std::time::{Duration, SystemTime};

use connectrpc_health::Status;

/// The health-check service name of the watcher (registered only when the
/// watcher runs): `grpc_health_probe -service=agent-watcher`.
pub const HEALTH_SERVICE: &str = "agent-watcher";

/// The watcher's view of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// No poll has finished yet.
    Starting,
    /// The last poll read every endpoint and stored the result.
    Up,
    /// The agent answered, but these parts failed (errors, malformed data,
    /// or the store refusing a write); their documents were left as they were.
    Degraded { failing: Vec<&'static str> },
    /// The agent could not be reached.
    Down,
}

impl AgentState {
    pub fn name(&self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Up => "up",
            AgentState::Degraded { .. } => "degraded",
            AgentState::Down => "down",
        }
    }

    /// The health-check status of this state. Degraded counts as serving:
    /// the agent answers, and what failed is logged.
    pub fn check_status(&self) -> Status {
        match self {
            AgentState::Up | AgentState::Degraded { .. } => Status::Serving,
            AgentState::Starting | AgentState::Down => Status::NotServing,
        }
    }
}

/// A snapshot of the watcher's health, published after every poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherHealth {
    pub state: AgentState,
    /// The error(s) of the last poll, if it failed in any part.
    pub last_error: Option<String>,
    /// When a poll last reached the agent.
    pub last_contact: Option<SystemTime>,
    /// Polls in a row that failed in any part.
    pub consecutive_failures: u32,
    /// Polls finished since the watcher started.
    pub polls: u64,
}

impl Default for WatcherHealth {
    fn default() -> Self {
        Self { state: AgentState::Starting, last_error: None, last_contact: None, consecutive_failures: 0, polls: 0 }
    }
}

/// The result of one poll, for health purposes.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub state: AgentState,
    pub error: Option<String>,
}

/// Folds poll reports into [`WatcherHealth`], logs state changes and picks
/// the delay before the next poll.
pub struct HealthTracker {
    agent: String,
    health: WatcherHealth,
    poll_interval: Duration,
    max_backoff: Duration,
    failures_while_down: u32,
}

impl HealthTracker {
    pub fn new(agent: String, poll_interval: Duration, max_backoff: Duration) -> Self {
        Self { agent, health: WatcherHealth::default(), poll_interval, max_backoff, failures_while_down: 0 }
    }

    pub fn health(&self) -> &WatcherHealth {
        &self.health
    }

    /// Records a finished poll; returns how long to wait before the next.
    pub fn record(&mut self, report: PollReport) -> Duration {
        let previous = std::mem::replace(&mut self.health.state, report.state.clone());
        self.health.polls += 1;
        if report.state != AgentState::Down {
            self.health.last_contact = Some(SystemTime::now());
        }
        if report.state == AgentState::Up {
            self.health.consecutive_failures = 0;
        } else {
            self.health.consecutive_failures = self.health.consecutive_failures.saturating_add(1);
        }
        self.health.last_error = report.error;
        if previous != report.state {
            self.log_transition(&previous);
        }
        if report.state == AgentState::Down {
            self.failures_while_down = self.failures_while_down.saturating_add(1);
        } else {
            self.failures_while_down = 0;
        }
        backoff(self.poll_interval, self.max_backoff, self.failures_while_down)
    }

    fn log_transition(&self, previous: &AgentState) {
        let agent = self.agent.as_str();
        let error = self.health.last_error.as_deref().unwrap_or("");
        match &self.health.state {
            AgentState::Up if *previous == AgentState::Starting => {
                tracing::info!(agent, "agent watcher: agent is up")
            }
            AgentState::Up => tracing::info!(agent, previous = previous.name(), "agent watcher: agent recovered"),
            AgentState::Degraded { failing } => tracing::warn!(
                agent,
                failing = failing.join(","),
                error,
                "agent watcher: agent answers, but part of its state could not be read or stored; keeping those documents as they are"
            ),
            AgentState::Down => tracing::warn!(
                agent,
                error,
                "agent watcher: agent unreachable; keeping its documents and retrying with backoff"
            ),
            AgentState::Starting => {}
        }
    }
}

/// The wait before the next poll after `failures` polls in a row found the
/// agent down: the poll interval doubled per failure, capped at `max`.
pub fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(16);
    interval.saturating_mul(factor).min(max.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), s(80), 0), s(10));
        assert_eq!(backoff(s(10), s(80), 1), s(20));
        assert_eq!(backoff(s(10), s(80), 3), s(80));
        assert_eq!(backoff(s(10), s(80), 40), s(80));
        assert_eq!(backoff(s(10), s(5), 2), s(10), "never faster than the poll interval");
    }

    #[test]
    fn tracker_counts_and_resets() {
        let mut t = HealthTracker::new("a".into(), Duration::from_millis(100), Duration::from_millis(800));
        let down = || PollReport { state: AgentState::Down, error: Some("refused".into()) };
        assert_eq!(t.record(down()), Duration::from_millis(200));
        assert_eq!(t.record(down()), Duration::from_millis(400));
        assert_eq!(t.health().consecutive_failures, 2);
        assert_eq!(t.health().last_error.as_deref(), Some("refused"));
        let degraded = PollReport { state: AgentState::Degraded { failing: vec!["ListPackages"] }, error: None };
        assert_eq!(t.record(degraded), Duration::from_millis(100));
        assert_eq!(t.record(PollReport { state: AgentState::Up, error: None }), Duration::from_millis(100));
        assert_eq!(t.health().consecutive_failures, 0);
        assert_eq!(t.health().polls, 4);
        assert!(t.health().last_contact.is_some());
    }
}
