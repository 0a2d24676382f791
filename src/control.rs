//! `tapestry control` (not yet wired).
#[derive(clap::Args, Debug)]
pub struct ControlArgs {}

pub fn run(_args: ControlArgs) -> anyhow::Result<()> {
    anyhow::bail!("tapestry control is not implemented yet")
}
