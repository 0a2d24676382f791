//! `tapestry cell` (not yet wired).
#[derive(clap::Args, Debug)]
pub struct CellArgs {}

pub fn run(_args: CellArgs) -> anyhow::Result<()> {
    anyhow::bail!("tapestry cell is not implemented yet")
}
