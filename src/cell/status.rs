//! `tapestry cell status`: what a running cell holds and has counted.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::api::{self, Request};
use super::attach::mac_string;
use super::Cell;

impl Cell {
    pub fn status(&self) -> Value {
        let inner = self.lock();
        let snap = self.tables.load();
        let counters = self.counters.snapshot();
        let port_stats: std::collections::HashMap<u32, Value> = counters
            .ports
            .iter()
            .map(|(id, s)| (id.0, json!(s)))
            .collect();
        let ports: Vec<Value> = inner
            .containers
            .containers
            .values()
            .map(|c| {
                let id = super::state::port_id_for(self.config.subnet.network(), c.ip);
                json!({
                    "port": id,
                    "handle": c.handle,
                    "app_id": c.app_id,
                    "space_id": c.space_id,
                    "ip": c.ip.to_string(),
                    "mac": mac_string(super::attach::container_mac(c.ip)),
                    "tag": inner.view.tag_of(&c.app_id).map(|t| format!("{t:04x}")),
                    "ifname": c.ifname,
                    "netns": c.netns,
                    "lifecycle": c.lifecycle.as_str(),
                    "asg": super::egress::port_status(snap.egress(), tapestry_switch::PortId(id)),
                    "attached": inner.taps.contains_key(&c.key()),
                    "counters": port_stats.get(&id).cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        let (flows, denials): (Vec<Value>, Vec<Value>) = match self.dataplane.stack_flows() {
            Ok((flows, denials)) => {
                let now = std::time::Instant::now();
                let by_port: std::collections::HashMap<u32, &super::state::ContainerRecord> = inner
                    .containers
                    .containers
                    .values()
                    .map(|c| {
                        (
                            super::state::port_id_for(self.config.subnet.network(), c.ip),
                            c,
                        )
                    })
                    .collect();
                let flows = flows
                    .iter()
                    .map(|f| {
                        json!({
                            "port": f.port.0,
                            "protocol": f.protocol,
                            "container": f.container.to_string(),
                            "remote": f.remote.to_string(),
                            "direction": f.direction,
                            "state": f.state,
                            "asg_group": f.rule.as_ref().map(|r| r.0.clone()),
                            "asg_rule": f.rule.as_ref().map(|r| r.1),
                        })
                    })
                    .collect();
                // Each denial with the rule set that applied: the container's space and
                // lifecycle, and the groups compiled for it.
                let denials = denials
                    .iter()
                    .map(|d| {
                        let c = by_port.get(&d.port.0);
                        json!({
                            "port": d.port.0,
                            "handle": c.map(|c| c.handle.clone()),
                            "protocol": d.protocol,
                            "container": d.container.to_string(),
                            "remote": d.remote.to_string(),
                            "reason": d.reason,
                            "seconds_ago": now.saturating_duration_since(d.at).as_secs(),
                            "rule_set": {
                                "space": c.map(|c| c.space_id.clone()),
                                "lifecycle": c.map(|c| c.lifecycle.as_str()),
                                "asg": super::egress::port_status(snap.egress(), d.port),
                            },
                        })
                    })
                    .collect();
                (flows, denials)
            }
            Err(e) => (vec![json!({ "error": format!("{e:#}") })], vec![]),
        };
        let drops: serde_json::Map<String, Value> = counters
            .drops
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "underlay_ip": self.config.underlay_ip.to_string(),
            "vtep_port": self.config.vtep_port,
            "lease": {
                "overlay_subnet": self.config.subnet.to_string(),
                "vtep_ip": self.config.vtep_ip().to_string(),
                "vtep_mac": mac_string(super::attach::container_mac(self.config.vtep_ip())),
            },
            "container_mtu": self.config.container_mtu(),
            "workers": self.dataplane.workers(),
            "worker_stats": self
                .dataplane
                .worker_stats()
                .iter()
                .enumerate()
                .map(|(i, (frames, buffers))| json!({
                    "worker": i,
                    "port_frames": frames,
                    "underlay_buffers": buffers,
                }))
                .collect::<Vec<_>>(),
            "control": inner.control.to_json(),
            "feed_version": inner.view.version(),
            "remote_cells": snap.remote_count(),
            "policies_in_force": snap.policy_count(),
            "deny_networks": self.config.deny_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "asg_errors": snap.egress().errors().iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "conntrack_entries": self.conntrack.len(),
            "flow_log": self.flow_log.is_on(),
            "capture": self.capture_status(),
            "ports": ports,
            "net_in_address": self.config.net_in_address.to_string(),
            "net_in": self.net_in_status(&inner),
            "max_containers": self.config.max_containers,
            "tap_txqueuelen": self.config.tap_txqueuelen,
            "port_kind": self.config.port_kind.as_str(),
            "drops": drops,
            "stack_flows": flows,
            "asg_denials": denials,
            "totals": json!(counters.totals),
        })
    }
}

pub fn print(state_dir: &Path, as_json: bool) -> Result<()> {
    let v = api::call(&state_dir.join("cell.sock"), &Request::Status)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "cell {}:{}, {} dataplane worker(s)",
        s(&v["underlay_ip"]),
        s(&v["vtep_port"]),
        s(&v["workers"])
    );
    for w in v["worker_stats"].as_array().into_iter().flatten() {
        println!(
            "  worker {}: {} frames from TAP queues, {} underlay receive buffers",
            s(&w["worker"]),
            s(&w["port_frames"]),
            s(&w["underlay_buffers"])
        );
    }
    println!(
        "lease {} (VTEP {} {}), container MTU {}",
        s(&v["lease"]["overlay_subnet"]),
        s(&v["lease"]["vtep_ip"]),
        s(&v["lease"]["vtep_mac"]),
        s(&v["container_mtu"])
    );
    println!(
        "control: {}  feed version {}  remote cells {}  policies in force {}  tracked connections {}",
        s(&v["control"]["state"]),
        s(&v["feed_version"]),
        s(&v["remote_cells"]),
        s(&v["policies_in_force"]),
        s(&v["conntrack_entries"])
    );
    let list = |v: &Value| {
        let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
        if items.is_empty() {
            "(none)".to_string()
        } else {
            items.join(", ")
        }
    };
    println!("deny-networks: {}", list(&v["deny_networks"]));
    if v["capture"].is_object() {
        println!(
            "captures: {} active, {} frames dropped (capture queue full)",
            s(&v["capture"]["active"]),
            s(&v["capture"]["dropped"])
        );
    }
    for e in v["asg_errors"].as_array().into_iter().flatten() {
        println!("ASG not applied: {}", s(e));
    }
    println!();
    println!(
        "{:<6} {:<24} {:<16} {:<15} {:<5} {:<8} {:>9} {:>10} {:>10} {:>8}",
        "PORT", "HANDLE", "APP", "IP", "TAG", "LIFE", "ASG RULES", "RX", "TX", "DROPS"
    );
    for p in v["ports"].as_array().into_iter().flatten() {
        let c = &p["counters"];
        println!(
            "{:<6} {:<24} {:<16} {:<15} {:<5} {:<8} {:>9} {:>10} {:>10} {:>8}",
            s(&p["port"]),
            s(&p["handle"]),
            s(&p["app_id"]),
            s(&p["ip"]),
            s(&p["tag"]),
            s(&p["lifecycle"]),
            s(&p["asg"]["rules"]),
            s(&c["rx_packets"]),
            s(&c["tx_packets"]),
            s(&c["drop_packets"])
        );
    }
    println!();
    let net_in = v["net_in"].as_array().cloned().unwrap_or_default();
    if net_in.is_empty() {
        println!("net-in on {}: (no mappings)", s(&v["net_in_address"]));
    } else {
        println!("net-in on {}:", s(&v["net_in_address"]));
        println!(
            "  {:<9} {:<5} {:<21} {:<24} IFNAME",
            "HOST PORT", "PROTO", "CONTAINER", "HANDLE"
        );
        for m in &net_in {
            let suspended = if m["in_force"] == Value::Bool(false) {
                "  (not in force: see the cell's log)"
            } else {
                ""
            };
            println!(
                "  {:<9} {:<5} {:<21} {:<24} {}{suspended}",
                s(&m["host_port"]),
                s(&m["protocol"]),
                format!("{}:{}", s(&m["container_ip"]), s(&m["container_port"])),
                s(&m["handle"]),
                s(&m["ifname"]),
            );
        }
    }
    println!();
    println!("drops by reason:");
    let mut any = false;
    for (k, n) in v["drops"].as_object().into_iter().flatten() {
        if n.as_u64().unwrap_or(0) > 0 {
            println!("  {k:<24} {n}");
            any = true;
        }
    }
    if !any {
        println!("  (none)");
    }
    println!();
    println!("latest ASG denials (with the rule set that applied):");
    let denials = v["asg_denials"].as_array().cloned().unwrap_or_default();
    if denials.is_empty() {
        println!("  (none)");
    }
    for d in &denials {
        let rs = &d["rule_set"];
        println!(
            "  {}s ago  {:<16} {:<4} {:<22} -> {:<22} {:<18} space {} {} groups [{}]",
            s(&d["seconds_ago"]),
            s(&d["handle"]),
            s(&d["protocol"]),
            s(&d["container"]),
            s(&d["remote"]),
            s(&d["reason"]),
            s(&rs["space"]),
            s(&rs["lifecycle"]),
            list(&rs["asg"]["groups"])
        );
    }
    println!();
    println!("local stack flows (egress and net-in):");
    let flows = v["stack_flows"].as_array().cloned().unwrap_or_default();
    if flows.is_empty() {
        println!("  (none)");
    }
    for f in &flows {
        let rule = match (&f["asg_group"], &f["asg_rule"]) {
            (Value::String(g), n) => format!("ASG {g} rule {}", s(n)),
            _ => "-".into(),
        };
        println!(
            "  {:<8} {:<4} {:<22} {:<22} {:<12} {}",
            s(&f["direction"]),
            s(&f["protocol"]),
            s(&f["container"]),
            s(&f["remote"]),
            s(&f["state"]),
            rule
        );
    }
    Ok(())
}
