//! Placeholder until this command lands.
pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
