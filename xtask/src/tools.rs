//! Shared helpers: running commands, installing missing tools, the test tiers.
pub fn run_sidecar(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
pub fn test_all(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
