//! CLI clients of the external API (not yet wired).
macro_rules! stub {
    ($args:ident, $run:ident) => {
        #[derive(clap::Args, Debug)]
        pub struct $args {}
        pub fn $run(_a: $args) -> anyhow::Result<()> {
            anyhow::bail!("not implemented yet")
        }
    };
}
stub!(PolicyArgs, run_policy);
stub!(AsgArgs, run_asg);
stub!(RouteArgs, run_route);
stub!(LeaseArgs, run_lease);
