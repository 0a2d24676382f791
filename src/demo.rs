//! `tapestry demo` (not yet wired).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("tapestry demo is not implemented yet")
}
