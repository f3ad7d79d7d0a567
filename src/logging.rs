//! Log output: `tracing` to stderr as text or JSON lines (the journal captures it).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => filter(&env)?,
        _ => filter(level).map_err(|e| anyhow::anyhow!("setting `log_level`: {e}"))?,
    };
    // Colour only for a person at a terminal, never into files or journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd the journal adds its own timestamps.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, under_journal) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// The filter for a `log_level` or `RUST_LOG` spec. Automerge opens a span
/// at INFO in every commit and change encoding: at the default level each
/// write would pay for creating and formatting spans that never show up in
/// a log line. So automerge is capped at `warn` when the spec's default level
/// (its bare level, which automerge gets) is more verbose, unless the spec
/// names automerge. A quieter default is never raised.
fn filter(spec: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(spec)?;
    // Without a bare level, targets the spec does not name log nothing.
    let default = spec.rsplit(',').find_map(|directive| directive.trim().parse::<LevelFilter>().ok());
    if default.is_none_or(|level| level <= LevelFilter::WARN) || spec.contains("automerge") {
        return Ok(filter);
    }
    let quiet_automerge: Directive = "automerge=warn".parse()?;
    Ok(filter.add_directive(quiet_automerge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automerge_spans_stay_off_at_every_verbose_level() {
        for level in ["info", "debug", "trace", "info,peat_sidecar::mesh=trace", "peat_sidecar=debug,info"] {
            let directives = filter(level).unwrap().to_string();
            assert!(directives.split(',').any(|d| d == "automerge=warn"), "{level}: {directives}");
        }
    }

    #[test]
    fn a_quieter_level_is_not_raised_for_automerge() {
        for level in ["warn", "error", "off", "error,peat_sidecar::mesh=debug", "peat_sidecar=debug"] {
            let directives = filter(level).unwrap().to_string();
            assert!(!directives.contains("automerge"), "{level}: {directives}");
        }
    }

    #[test]
    fn a_spec_naming_automerge_is_kept_as_written() {
        let directives = filter("info,automerge=trace").unwrap().to_string();
        assert!(directives.contains("automerge=trace"), "{directives}");
        assert!(!directives.contains("automerge=warn"), "{directives}");
    }

    #[test]
    fn a_bad_spec_is_an_error() {
        assert!(filter("info,[=").is_err());
    }
}
