//! `tapestry asg list|show|create|update|delete|bind|unbind`: application security groups in
//! Cloud Foundry's rule format.
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use tapestry_policy::model::{GloballyEnabled, Rule, SecurityGroup};

use super::table::Table;
use super::{percent_encode, ApiArgs};

#[derive(clap::Args, Debug)]
pub struct AsgArgs {
    #[command(subcommand)]
    command: AsgCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Staging,
}

#[derive(clap::Args, Debug)]
struct Binding {
    /// The space to bind to or unbind from.
    #[arg(long, required_unless_present = "global", conflicts_with = "global")]
    space: Option<String>,
    /// Bind globally (every space) instead of to one space.
    #[arg(long)]
    global: bool,
    /// Which lifecycle the group applies to.
    #[arg(long, value_enum, default_value = "running")]
    lifecycle: Lifecycle,
}

#[derive(clap::Subcommand, Debug)]
enum AsgCommand {
    /// List security groups and where they are bound.
    List,
    /// Show one group's rules.
    Show { name: String },
    /// Create a group from a JSON file of rules (CF format; `-` reads stdin).
    Create {
        name: String,
        rules_file: PathBuf,
        #[arg(long = "running-space", value_delimiter = ',')]
        running_spaces: Vec<String>,
        #[arg(long = "staging-space", value_delimiter = ',')]
        staging_spaces: Vec<String>,
        #[arg(long)]
        global_running: bool,
        #[arg(long)]
        global_staging: bool,
    },
    /// Replace a group's rules (its bindings are kept).
    Update { name: String, rules_file: PathBuf },
    /// Delete a group.
    #[command(alias = "remove")]
    Delete { name: String },
    /// Bind a group to a space (or globally) for running or staging apps.
    Bind {
        name: String,
        #[command(flatten)]
        binding: Binding,
    },
    /// Undo a binding.
    Unbind {
        name: String,
        #[command(flatten)]
        binding: Binding,
    },
}

pub fn run_asg(args: AsgArgs) -> Result<()> {
    let api = &args.api;
    match args.command {
        AsgCommand::List => {
            let groups = api.run(|c| async move { c.list_security_groups().await })?;
            if api.json {
                return api.print_json(&serde_json::json!({ "security_groups": groups }));
            }
            let mut t = Table::new(&["NAME", "RULES", "RUNNING", "STAGING"]);
            for g in groups {
                t.row(vec![
                    g.name.clone(),
                    g.rules.len().to_string(),
                    bound_to(g.globally_enabled.running, &g.running_spaces),
                    bound_to(g.globally_enabled.staging, &g.staging_spaces),
                ]);
            }
            t.print();
            Ok(())
        }
        AsgCommand::Show { name } => {
            let g = get(api, &name)?;
            if api.json {
                return api.print_json(&g);
            }
            println!("name:    {}", g.name);
            println!(
                "running: {}",
                bound_to(g.globally_enabled.running, &g.running_spaces)
            );
            println!(
                "staging: {}",
                bound_to(g.globally_enabled.staging, &g.staging_spaces)
            );
            let mut t = Table::new(&[
                "PROTOCOL",
                "DESTINATION",
                "PORTS",
                "ICMP",
                "LOG",
                "DESCRIPTION",
            ]);
            for r in &g.rules {
                let icmp = match (r.icmp_type, r.code) {
                    (Some(ty), Some(code)) => format!("type {ty} code {code}"),
                    (Some(ty), None) => format!("type {ty}"),
                    _ => String::new(),
                };
                t.row(vec![
                    r.protocol.clone(),
                    r.destination.clone(),
                    r.ports.clone().unwrap_or_default(),
                    icmp,
                    r.log.to_string(),
                    r.description.clone().unwrap_or_default(),
                ]);
            }
            t.print();
            Ok(())
        }
        AsgCommand::Create {
            name,
            rules_file,
            running_spaces,
            staging_spaces,
            global_running,
            global_staging,
        } => {
            let g = SecurityGroup {
                name,
                guid: None,
                rules: read_rules(&rules_file)?,
                globally_enabled: GloballyEnabled {
                    running: global_running,
                    staging: global_staging,
                },
                running_spaces,
                staging_spaces,
            };
            let body = g.clone();
            api.run(|c| async move { c.create_security_group(&body).await })?;
            done(api, "created", &g)
        }
        AsgCommand::Update { name, rules_file } => {
            let mut g = get(api, &name)?;
            g.rules = read_rules(&rules_file)?;
            put(api, &name, &g)?;
            done(api, "updated", &g)
        }
        AsgCommand::Delete { name } => {
            let n = name.clone();
            api.run(|c| async move { c.delete_security_group(&n).await })?;
            if api.json {
                return api.print_json(&serde_json::json!({ "name": name }));
            }
            println!("deleted security group {name}");
            Ok(())
        }
        AsgCommand::Bind { name, binding } => rebind(api, &name, &binding, true),
        AsgCommand::Unbind { name, binding } => rebind(api, &name, &binding, false),
    }
}

fn bound_to(global: bool, spaces: &[String]) -> String {
    if global {
        "(global)".into()
    } else {
        spaces.join(",")
    }
}

fn read_rules(path: &PathBuf) -> Result<Vec<Rule>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading rules from stdin")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading rules file {}", path.display()))?
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("rules file {} is not JSON", path.display()))?;
    // CF's format is a bare array of rules; accept {"rules": [...]} too.
    let rules = match v {
        serde_json::Value::Object(mut o) if o.contains_key("rules") => {
            o.remove("rules").unwrap_or_default()
        }
        other => other,
    };
    if !rules.is_array() {
        bail!(
            "rules file {} must hold a JSON array of rules",
            path.display()
        );
    }
    serde_json::from_value(rules)
        .with_context(|| format!("rules file {}: a rule is malformed", path.display()))
}

fn path_of(name: &str) -> String {
    format!(
        "/networking/v1/external/security_groups/{}",
        percent_encode(name)
    )
}

fn get(api: &ApiArgs, name: &str) -> Result<SecurityGroup> {
    let path = path_of(name);
    let v = api.run(|c| async move { c.request(Method::GET, &path, None).await })?;
    serde_json::from_value(v).context("the control plane sent a malformed security group")
}

fn put(api: &ApiArgs, name: &str, g: &SecurityGroup) -> Result<()> {
    let (n, g) = (name.to_string(), g.clone());
    api.run(|c| async move { c.update_security_group(&n, &g).await })
}

fn rebind(api: &ApiArgs, name: &str, b: &Binding, bind: bool) -> Result<()> {
    let mut g = get(api, name)?;
    let (global, spaces) = match b.lifecycle {
        Lifecycle::Running => (&mut g.globally_enabled.running, &mut g.running_spaces),
        Lifecycle::Staging => (&mut g.globally_enabled.staging, &mut g.staging_spaces),
    };
    if b.global {
        *global = bind;
    } else if let Some(space) = &b.space {
        spaces.retain(|s| s != space);
        if bind {
            spaces.push(space.clone());
        }
    }
    put(api, name, &g)?;
    done(api, if bind { "bound" } else { "unbound" }, &g)
}

fn done(api: &ApiArgs, verb: &str, g: &SecurityGroup) -> Result<()> {
    if api.json {
        return api.print_json(g);
    }
    println!(
        "{verb} security group {} ({} rules; running: {}; staging: {})",
        g.name,
        g.rules.len(),
        bound_to(g.globally_enabled.running, &g.running_spaces),
        bound_to(g.globally_enabled.staging, &g.staging_spaces)
    );
    Ok(())
}
