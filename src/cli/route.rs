//! `tapestry route map|unmap|list` and `tapestry lease list|add`.
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;
use tapestry_policy::model::{Lease, Route};

use super::table::Table;
use super::ApiArgs;

#[derive(clap::Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
enum RouteCommand {
    /// Map HOST (e.g. backend.apps.internal) to APP; its instances answer DNS for it.
    #[command(alias = "add")]
    Map { host: String, app: String },
    /// Remove a mapping.
    #[command(alias = "remove", alias = "delete")]
    Unmap { host: String, app: String },
    /// List internal routes.
    List,
}

pub fn run_route(args: RouteArgs) -> Result<()> {
    let api = &args.api;
    match args.command {
        RouteCommand::Map { host, app } => {
            let (h, a) = (host.clone(), app.clone());
            api.run(|c| async move { c.add_route(&h, &a).await })?;
            done(api, "mapped", &host, &app)
        }
        RouteCommand::Unmap { host, app } => {
            let (h, a) = (host.clone(), app.clone());
            api.run(|c| async move { c.delete_route(&h, &a).await })?;
            done(api, "unmapped", &host, &app)
        }
        RouteCommand::List => {
            let routes: Vec<Route> = api.run(|c| async move { c.list_routes().await })?;
            if api.json {
                return api.print_json(&serde_json::json!({ "routes": routes }));
            }
            let mut t = Table::new(&["HOST", "APP"]);
            for r in routes {
                t.row(vec![r.host, r.app_id]);
            }
            t.print();
            Ok(())
        }
    }
}

fn done(api: &ApiArgs, verb: &str, host: &str, app: &str) -> Result<()> {
    if api.json {
        return api.print_json(&serde_json::json!({ "host": host, "app_id": app }));
    }
    println!("{verb} route {host} -> {app}");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
enum LeaseCommand {
    /// List the cells' subnet leases (admin).
    List,
    /// Register a cell that is not a Tapestry cell (a kernel Silk VTEP) so Tapestry cells route to it.
    Add {
        #[arg(long)]
        underlay_ip: Ipv4Addr,
        #[arg(long)]
        overlay_subnet: Ipv4Net,
    },
}

pub fn run_lease(args: LeaseArgs) -> Result<()> {
    let api = &args.api;
    match args.command {
        LeaseCommand::List => {
            let leases: Vec<Lease> = api.run(|c| async move { c.list_leases().await })?;
            if api.json {
                return api.print_json(&serde_json::json!({ "leases": leases }));
            }
            print_leases(&leases);
            Ok(())
        }
        LeaseCommand::Add {
            underlay_ip,
            overlay_subnet,
        } => {
            let lease =
                api.run(|c| async move { c.add_static_lease(underlay_ip, overlay_subnet).await })?;
            if api.json {
                return api.print_json(&lease);
            }
            print_leases(&[lease]);
            Ok(())
        }
    }
}

fn print_leases(leases: &[Lease]) {
    let mut t = Table::new(&[
        "UNDERLAY IP",
        "OVERLAY SUBNET",
        "VTEP MAC",
        "KIND",
        "EXPIRES",
    ]);
    for l in leases {
        let kind = serde_json::to_value(l.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let expires = match l.expires_at {
            Some(t) => format_unix(t),
            None => "never".into(),
        };
        t.row(vec![
            l.underlay_ip.to_string(),
            l.overlay_subnet.to_string(),
            l.overlay_hardware_addr.clone(),
            kind,
            expires,
        ]);
    }
    t.print();
}

/// Formats a Unix time as UTC `YYYY-MM-DD HH:MM:SS`.
fn format_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_times() {
        assert_eq!(super::format_unix(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_unix(1_795_651_200), "2026-11-26 00:00:00");
        assert_eq!(super::format_unix(951_782_400), "2000-02-29 00:00:00");
    }
}
