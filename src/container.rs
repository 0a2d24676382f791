//! `tapestry container` (not yet wired).
#[derive(clap::Args, Debug)]
pub struct ContainerArgs {}

pub fn run(_args: ContainerArgs) -> anyhow::Result<()> {
    anyhow::bail!("tapestry container is not implemented yet")
}
