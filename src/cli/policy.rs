//! `tapestry policy add|list|remove|tags`.
use anyhow::Result;
use reqwest::Method;
use serde_json::Value;
use tapestry_policy::model::{Policy, Tag};

use super::table::Table;
use super::{parse_port_range, percent_encode, ApiArgs};

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args, Debug)]
struct PolicySpec {
    /// Source app GUID.
    source: String,
    /// Destination app GUID.
    destination: String,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    protocol: String,
    /// Destination port or range, e.g. 8080 or 8080-8090.
    #[arg(long, default_value = "8080", value_parser = parse_port_range)]
    port: (u16, u16),
}

impl PolicySpec {
    fn policy(&self) -> Policy {
        Policy::new(
            &self.source,
            &self.destination,
            &self.protocol,
            self.port.0,
            self.port.1,
        )
    }
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCommand {
    /// Allow SOURCE to reach DESTINATION on a protocol and port range.
    Add(PolicySpec),
    /// List policies (all, or those touching some apps).
    List {
        /// Only policies whose source or destination is one of these apps (comma-separated).
        #[arg(long)]
        id: Option<String>,
        /// Only policies from this source app.
        #[arg(long)]
        source: Option<String>,
        /// Only policies to this destination app.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Remove a policy (removing one that does not exist is not an error).
    #[command(alias = "delete")]
    Remove(PolicySpec),
    /// List the 16-bit tags assigned to apps.
    Tags,
    /// Remove the policies of deleted apps now (the control plane also does so every
    /// --cleanup-interval) and list them.
    Cleanup,
}

pub fn run_policy(args: PolicyArgs) -> Result<()> {
    let api = &args.api;
    match args.command {
        PolicyCommand::Add(spec) => {
            let p = spec.policy();
            api.run(|c| async move { c.create_policies(&[p]).await })?;
            report(api, "added", &spec)
        }
        PolicyCommand::Remove(spec) => {
            let p = spec.policy();
            api.run(|c| async move { c.delete_policies(&[p]).await })?;
            report(api, "removed", &spec)
        }
        PolicyCommand::List {
            id,
            source,
            destination,
        } => {
            let mut query = vec![];
            for (k, v) in [("id", id), ("source_id", source), ("dest_id", destination)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", percent_encode(&v)));
                }
            }
            let path = if query.is_empty() {
                "/networking/v1/external/policies".to_string()
            } else {
                format!("/networking/v1/external/policies?{}", query.join("&"))
            };
            let v = api.run(|c| async move { c.request(Method::GET, &path, None).await })?;
            if api.json {
                return api.print_json(&v);
            }
            let policies: Vec<Policy> =
                serde_json::from_value(v.get("policies").cloned().unwrap_or(Value::Array(vec![])))?;
            print_policies(&policies);
            Ok(())
        }
        PolicyCommand::Cleanup => {
            let removed = api.run(|c| async move { c.cleanup_policies().await })?;
            if api.json {
                return api.print_json(&serde_json::json!({
                    "total_policies": removed.len(), "policies": removed
                }));
            }
            println!("removed {} stale policies", removed.len());
            print_policies(&removed);
            Ok(())
        }
        PolicyCommand::Tags => {
            let tags: Vec<Tag> = api.run(|c| async move { c.list_tags().await })?;
            if api.json {
                return api.print_json(&serde_json::json!({ "tags": tags }));
            }
            let mut t = Table::new(&["ID", "TYPE", "TAG"]);
            for tag in tags {
                t.row(vec![tag.id, tag.kind, tag.tag]);
            }
            t.print();
            Ok(())
        }
    }
}

fn report(api: &ApiArgs, verb: &str, spec: &PolicySpec) -> Result<()> {
    if api.json {
        return api.print_json(&serde_json::json!({ "policies": [spec.policy()] }));
    }
    println!(
        "{verb} policy {} -> {} {} {}",
        spec.source,
        spec.destination,
        spec.protocol,
        ports(spec.port.0, spec.port.1)
    );
    Ok(())
}

fn ports(start: u16, end: u16) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

pub(super) fn print_policies(policies: &[Policy]) {
    let mut t = Table::new(&["SOURCE", "DESTINATION", "PROTOCOL", "PORTS", "TAGS"]);
    for p in policies {
        let tags = match (&p.source.tag, &p.destination.tag) {
            (Some(s), Some(d)) => format!("{s} -> {d}"),
            _ => String::new(),
        };
        t.row(vec![
            p.source.id.clone(),
            p.destination.id.clone(),
            p.destination.protocol.clone(),
            ports(p.destination.ports.start, p.destination.ports.end),
            tags,
        ]);
    }
    t.print();
}
