//! A research example: replace one step of the switch's ingress decision (a limit on the new
//! flows each source tag may open per second) and measure its effect in the lab, without
//! touching the switch's source.
//!
//!     cargo run --release --example per_tag_limit -- [LIMIT_PER_SECOND]
//!
//! Every container opens 8 TCP connections to its allowed peer at once. Without the limit all
//! are admitted at once; with it the refused SYNs are dropped (counted as `ingress_step`) and
//! admitted when the client retransmits in a later second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tapestry_lab::{Lab, LabConfig, Report, UnderlayKind};
use tapestry_switch::pipeline::extension::{IngressStep, NewFlow};
use tapestry_switch::DropReason;

/// At most `per_second` new flows per source tag in each one-second window.
#[derive(Debug)]
struct PerTagLimit {
    per_second: u32,
    windows: Mutex<HashMap<u16, (Instant, u32)>>,
}

impl IngressStep for PerTagLimit {
    fn new_flow(&self, f: &NewFlow, policy: Result<(), DropReason>) -> Result<(), DropReason> {
        policy?; // never admit what the policy denies
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = w.entry(f.src_tag).or_insert((f.now, 0));
        if f.now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *n) = (f.now, 0);
        }
        if *n >= self.per_second {
            return Err(DropReason::IngressStep);
        }
        *n += 1;
        Ok(())
    }
}

fn run(step: Option<Arc<dyn IngressStep>>) -> Report {
    let mut cfg = LabConfig::new(10, 100, UnderlayKind::Memory);
    cfg.flows_per_container = 8;
    cfg.deadline = Duration::from_secs(10);
    let mut lab = Lab::new(cfg).expect("building the lab");
    lab.set_ingress_step(step);
    lab.run()
}

fn show(name: &str, r: &Report) {
    let limited = r.drops.iter().find(|(d, _)| *d == DropReason::IngressStep);
    println!(
        "{name:>12}: {}/{} allowed probes answered, all after {:.1} ms (virtual), {} SYNs refused by the step",
        r.allowed_answered,
        r.allowed,
        r.ready_after.as_secs_f64() * 1e3,
        limited.map_or(0, |(_, n)| *n)
    );
}

fn main() {
    let per_second = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("LIMIT_PER_SECOND must be a number"))
        .unwrap_or(4);
    show("policy only", &run(None));
    let step = PerTagLimit {
        per_second,
        windows: Mutex::new(HashMap::new()),
    };
    show(
        &format!("{per_second}/s per tag"),
        &run(Some(Arc::new(step))),
    );
}
