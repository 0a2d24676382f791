//! `tapestry app delete`.
use anyhow::Result;

use super::policy::print_policies;
use super::ApiArgs;

#[derive(clap::Args, Debug)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
enum AppCommand {
    /// Delete an app (network.admin): its policies and internal routes are removed and its tag
    /// freed; policies naming it later are removed by the periodic cleanup.
    Delete {
        /// The app GUID.
        app: String,
    },
}

pub fn run_app(args: AppArgs) -> Result<()> {
    let api = &args.api;
    match args.command {
        AppCommand::Delete { app } => {
            let id = app.clone();
            let removed = api.run(|c| async move { c.delete_app(&id).await })?;
            if api.json {
                return api.print_json(&serde_json::json!({
                    "total_policies": removed.len(), "policies": removed
                }));
            }
            println!("deleted app {app}: removed {} policies", removed.len());
            if !removed.is_empty() {
                print_policies(&removed);
            }
            Ok(())
        }
    }
}
