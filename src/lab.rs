//! `tapestry lab`: N cells and M containers in this process, unprivileged (see the
//! tapestry-lab crate), with the time until every container is reachable by its allowed peers
//! and the memory used.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tapestry_lab::{Lab, LabConfig, UnderlayKind};

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Cells (switches), 1-254.
    #[arg(long, default_value_t = 50)]
    cells: usize,
    /// Containers, spread round-robin over the cells (in-process smoltcp hosts).
    #[arg(long, default_value_t = 500)]
    containers: usize,
    /// The underlay: loopback UDP sockets, or memory (virtual clock, deterministic).
    #[arg(long, default_value = "loopback", value_name = "loopback|memory")]
    underlay: UnderlayKind,
    /// Seeds the hosts' sequence numbers and ports.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TCP connections each container opens to its allowed peer.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// VmRSS and VmHWM (peak) of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn run(args: LabArgs) -> Result<()> {
    if args.flows == 0 || args.flows > 64 {
        bail!("--flows {} must be 1 to 64", args.flows);
    }
    let t0 = Instant::now();
    let mut cfg = LabConfig::new(args.cells, args.containers, args.underlay);
    cfg.seed = args.seed;
    cfg.flows_per_container = args.flows;
    if args.underlay == UnderlayKind::Loopback {
        // Real time: long enough for denied SYNs to be retried and dropped again.
        cfg.deadline = Duration::from_millis(1500);
    }
    let mut lab = Lab::new(cfg)?;
    let built = t0.elapsed();
    let (rss_built, _) = memory_kib();
    let report = lab.run();
    let ready = lab.ready_wall().map(|t| t - t0);
    let (rss, hwm) = memory_kib();
    if args.json {
        let drops: serde_json::Map<String, serde_json::Value> = report
            .drops
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), (*n).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cells": report.cells,
                "containers": report.containers,
                "underlay": args.underlay.to_string(),
                "policies": report.policies,
                "built_ms": built.as_secs_f64() * 1e3,
                "ready_ms": ready.map(|d| d.as_secs_f64() * 1e3),
                "lab_time_to_ready_ms": report.ready_after.as_secs_f64() * 1e3,
                "allowed": report.allowed,
                "allowed_answered": report.allowed_answered,
                "denied": report.denied,
                "denied_answered": report.denied_answered,
                "frames": report.frames,
                "datagrams": report.datagrams,
                "drops": drops,
                "rss_kib": rss,
                "rss_after_build_kib": rss_built,
                "peak_rss_kib": hwm,
                "ok": report.ok(),
            })
        );
    } else {
        println!(
            "lab: {} cells, {} containers, {} policies, {} underlay",
            report.cells, report.containers, report.policies, args.underlay
        );
        println!(
            "  built (cells, containers, tables published) in {:.1} ms",
            built.as_secs_f64() * 1e3
        );
        match ready {
            Some(d) => println!(
                "  every container reachable by its allowed peers after {:.1} ms ({:.1} ms of lab time)",
                d.as_secs_f64() * 1e3,
                report.ready_after.as_secs_f64() * 1e3
            ),
            None => println!("  NOT every container was reachable by its allowed peers"),
        }
        println!(
            "  allowed probes answered: {}/{}; denied probes answered: {}/{} (must be 0)",
            report.allowed_answered, report.allowed, report.denied_answered, report.denied
        );
        println!(
            "  frames switched: {}, underlay datagrams: {}",
            report.frames, report.datagrams
        );
        let drops: Vec<String> = report
            .drops
            .iter()
            .map(|(r, n)| format!("{} {n}", r.as_str()))
            .collect();
        println!(
            "  drops: {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(", ")
            }
        );
        println!(
            "  memory: {:.1} MiB resident ({:.1} MiB after building, peak {:.1} MiB)",
            rss as f64 / 1024.0,
            rss_built as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    if !report.ok() {
        bail!(
            "the lab did not converge: {}/{} allowed probes answered, {} denied probes answered",
            report.allowed_answered,
            report.allowed,
            report.denied_answered
        );
    }
    Ok(())
}
