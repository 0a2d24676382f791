//! Seeing inside the cell: `tapestry trace` (a synthetic packet through the real pipeline, a dry
//! run) and the run-time switch of the flow log (`tapestry cell flow-log on|off`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use tapestry_switch::pipeline::probe::Probe;
use tapestry_switch::{Counters, PacketBuf, Switch};

use super::api::{self, Request};
use super::Cell;

/// `tapestry trace`: what the cell's pipeline does with one packet, stage by stage.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The running cell's state directory (its socket is STATE_DIR/cell.sock).
    #[arg(long)]
    state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The packet: `[from port HANDLE | from underlay [vtep IP[:PORT]] [tag N]]`
    /// `tcp|udp SRC:PORT -> DST:PORT [flags syn,ack,fin,rst,psh]` or `icmp SRC -> DST [type N]
    /// [code N]`, optionally `ttl N`. Without `from`, it comes from the local container with
    /// address SRC; a TCP segment is a SYN unless `flags` says otherwise.
    #[arg(required = true, num_args = 1.., value_name = "EXPRESSION")]
    expr: Vec<String>,
}

pub fn run_trace(args: TraceArgs) -> Result<()> {
    let expr = args.expr.join(" ");
    // Parsed here too, so a bad expression fails without a running cell.
    Probe::parse(&expr).map_err(|e| anyhow!("{expr:?}: {e}"))?;
    let v = api::call(&args.state_dir.join("cell.sock"), &Request::Trace { expr })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

/// The text form of a trace answer.
pub fn render(v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("packet: {} (from {})\n", s(&v["packet"]), s(&v["input"]));
    for (i, st) in v["steps"].as_array().into_iter().flatten().enumerate() {
        out += &format!(
            "{:>3}. {:<11} {}\n",
            i + 1,
            s(&st["stage"]),
            s(&st["detail"])
        );
    }
    match v["drop_reason"].as_str() {
        Some(r) => out += &format!("verdict: drop ({r})\n"),
        None => out += &format!("verdict: {}\n", s(&v["verdict"])),
    }
    out
}

/// `tapestry cell flow-log on|off`.
pub fn run_flow_log(state_dir: &std::path::Path, on: bool) -> Result<()> {
    let v = api::call(&state_dir.join("cell.sock"), &Request::FlowLog { on })?;
    println!(
        "flow log {} ({})",
        if v["on"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        v["path"].as_str().unwrap_or("-")
    );
    Ok(())
}

impl Cell {
    /// Traces the packet `expr` describes through a scratch switch over the cell's tables and
    /// connection tracker: the tracker is only read, and nothing is counted.
    pub(super) fn trace(&self, expr: &str) -> Result<Value> {
        let probe = Probe::parse(expr).map_err(|e| anyhow!("{expr:?}: {e}"))?;
        let snap = self.tables.load_full();
        let mut buf = PacketBuf::new();
        let input = probe
            .build(&snap, &mut buf)
            .map_err(|e| anyhow!("{expr:?}: {e}"))?;
        let mut sw = Switch::new(
            self.tables.clone(),
            self.conntrack.clone(),
            Arc::new(Counters::new()),
        );
        let t = sw.trace(input, &mut buf, Instant::now());
        let input = match input {
            tapestry_switch::pipeline::trace::Input::Port(p) => match snap.label(p) {
                Some(l) => format!("port {} (container {})", p.0, l.handle),
                None => format!("port {}", p.0),
            },
            tapestry_switch::pipeline::trace::Input::Underlay(a) => format!("underlay {a}"),
        };
        Ok(json!({
            "packet": probe.describe(),
            "input": input,
            "steps": t.steps,
            "verdict": t.verdict,
            "drop_reason": t.drop_reason,
        }))
    }

    pub(super) fn set_flow_log(&self, on: bool) -> Value {
        self.flow_log.set(on);
        json!({ "on": on, "path": self.state.path("flows.log") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_steps_and_the_verdict() {
        let v = json!({
            "packet": "tcp 10.0.0.2:1 -> 10.0.0.3:2 [syn]",
            "input": "port 2 (container a)",
            "steps": [{"stage": "in_port", "detail": "port 2"}, {"stage": "route", "detail": "local"}],
            "verdict": "drop",
            "drop_reason": "policy_denied",
        });
        let text = render(&v);
        assert_eq!(
            text,
            "packet: tcp 10.0.0.2:1 -> 10.0.0.3:2 [syn] (from port 2 (container a))\n  \
             1. in_port     port 2\n  2. route       local\nverdict: drop (policy_denied)\n"
        );
    }
}
