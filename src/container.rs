//! `tapestry container up|down`: attach a container to a cell the way Garden's external
//! networker does, printing the same JSON (`container_ip`, `mtu`, `dns_servers`, `search_domains`)
//! and, with `--net-in`, the mapped ports: `mapped_ports` and Garden's `properties`
//! (`garden.network.mapped-ports`, a JSON string of `[{"HostPort":..,"ContainerPort":..}]`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use crate::cell::api::{
    self, AttachRequest, Attachment, Lifecycle, PortMapping, Request, UpRequest,
};

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
        /// Net-in: the cell listens on its --net-in-address at HOST and forwards to the
        /// container's CONTAINER port (tcp unless /udp). HOST 0 picks a free port from
        /// 61000-65535. Repeat for several mappings.
        #[arg(long = "net-in", value_name = "HOST:CONTAINER[/udp]", value_parser = api::parse_net_in)]
        net_in: Vec<PortMapping>,
        /// The app's port behind the TLS terminator on 61443 (CF's app_port).
        #[arg(long, value_name = "PORT", default_value = None)]
        app_port: Option<u16>,
        /// 61443 requires a client certificate from the instance identity CA (mTLS; not in CF).
        #[arg(long)]
        tls_client_auth: bool,
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
            net_in,
            app_port,
            tls_client_auth,
        } => {
            if let Err(e) = api::check_port_mappings(&net_in) {
                bail!("--net-in: {e}");
            }
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
                port_mappings: net_in.clone(),
                app_port,
                tls_client_auth,
            };
            let v = api::call(&cell_socket, &req.into_request())?;
            let a: Attachment = serde_json::from_value(v)?;
            if a.port_mappings.len() != net_in.len() {
                bail!(
                    "the cell attached handle {} but mapped {} of the {} --net-in ports \
                     (is it older than this client?); detach it with `tapestry container down`",
                    a.handle,
                    a.port_mappings.len(),
                    net_in.len()
                );
            }
            println!("{}", up_output(&a));
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

/// What `container up` prints: the fields it always printed, plus the mapped ports flat
/// (`mapped_ports`) and as Garden's external networker reports them (`properties`).
fn up_output(a: &Attachment) -> serde_json::Value {
    let garden: Vec<serde_json::Value> = a
        .port_mappings
        .iter()
        .map(|m| json!({"HostPort": m.host_port, "ContainerPort": m.container_port}))
        .collect();
    let mapped: Vec<serde_json::Value> = a
        .port_mappings
        .iter()
        .map(|m| {
            json!({"HostPort": m.host_port, "ContainerPort": m.container_port,
                "Protocol": m.protocol.as_str()})
        })
        .collect();
    let mut out = json!({
        "container_ip": a.container_ip.to_string(),
        "mtu": a.mtu,
        "dns_servers": a.dns_servers,
        "search_domains": a.search_domains,
        "mapped_ports": mapped,
        "properties": {
            "garden.network.container-ip": a.container_ip.to_string(),
            "garden.network.mapped-ports": serde_json::Value::Array(garden).to_string(),
        },
    });
    // Instance identity: our names, and the environment CF gives the app (CF_INSTANCE_*).
    if let Some(id) = &a.instance_identity {
        out["instance_cert"] = json!(id.instance_cert);
        out["instance_key"] = json!(id.instance_key);
        out["instance_ca"] = json!(id.instance_ca);
        out["instance_identity_pending"] = json!(id.instance_identity_pending);
        out["env"] = json!({"CF_INSTANCE_CERT": id.instance_cert,
            "CF_INSTANCE_KEY": id.instance_key, "CF_INSTANCE_CA_CERT": id.instance_ca});
    }
    out
}
