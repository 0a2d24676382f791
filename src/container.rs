//! `tapestry container up|down`: attach a container to a cell the way Garden's external
//! networker does, printing the same JSON (`container_ip`, `mtu`, `dns_servers`, `search_domains`).

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::cell::api::{self, AttachRequest, Attachment, Lifecycle, Request, UpRequest};

#[derive(clap::Args, Debug)]
pub struct ContainerArgs {
    #[command(subcommand)]
    command: ContainerCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ContainerCommand {
    /// Attach a container: create its interface in NETNS and give it an overlay address.
    Up {
        #[arg(long)]
        cell_socket: PathBuf,
        #[arg(long)]
        handle: String,
        /// App GUID (the policy group id).
        #[arg(long)]
        app: String,
        #[arg(long, default_value = "")]
        space: String,
        #[arg(long, default_value = "")]
        org: String,
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Path of the container's network namespace, e.g. /var/run/netns/NAME.
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Which ASGs apply: those bound to the space for `running` apps (the default) or for
        /// `staging`, plus the global ones for that lifecycle.
        #[arg(long, default_value = "running", value_parser = api::parse_lifecycle)]
        lifecycle: Lifecycle,
    },
    /// Detach a container (succeeds if it is already gone).
    Down {
        #[arg(long)]
        cell_socket: PathBuf,
        #[arg(long)]
        handle: String,
    },
}

pub fn run(args: ContainerArgs) -> Result<()> {
    match args.command {
        ContainerCommand::Up {
            cell_socket,
            handle,
            app,
            space,
            org,
            index,
            netns,
            ifname,
            lifecycle,
        } => {
            let req = AttachRequest {
                up: UpRequest {
                    handle,
                    app_id: app,
                    space_id: space,
                    org_id: org,
                    instance_index: index,
                    netns,
                    ifname,
                },
                lifecycle,
                network: None,
                ip: None,
                port_mappings: vec![],
            };
            let v = api::call(&cell_socket, &req.into_request())?;
            let a: Attachment = serde_json::from_value(v)?;
            println!(
                "{}",
                json!({
                    "container_ip": a.container_ip.to_string(),
                    "mtu": a.mtu,
                    "dns_servers": a.dns_servers,
                    "search_domains": a.search_domains,
                })
            );
        }
        ContainerCommand::Down {
            cell_socket,
            handle,
        } => {
            api::call(&cell_socket, &Request::Down { handle })?;
            println!("{{}}");
        }
    }
    Ok(())
}
