//! CF's ASG logging: one JSON line per new connection admitted by a rule with `log: true`, in
//! `STATE_DIR/asg.log` and through tracing. Rate-limited by [`RateLimitedLog`].

use std::path::Path;

use anyhow::Result;
use tapestry_switch::stack::Admitted;
use tapestry_switch::Snapshot;

use super::ratelog::{timestamp, RateLimitedLog, ASG};

pub struct AsgLog(RateLimitedLog);

impl AsgLog {
    pub fn open(path: &Path) -> Result<AsgLog> {
        Ok(AsgLog(RateLimitedLog::open(path, ASG)?))
    }

    /// Logs a flow admitted by a logging rule, if the rate allows.
    pub fn admitted(&mut self, snap: &Snapshot, a: &Admitted) {
        self.0.write(|| line(snap, a));
    }
}

/// One log line.
pub fn line(snap: &Snapshot, a: &Admitted) -> serde_json::Value {
    let label = snap.label(a.port).cloned().unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp(),
        "event": "asg_allowed",
        "container": label.handle,
        "app": label.app_id,
        "space": label.space_id,
        "source": a.src.to_string(),
        "destination": a.dst.ip().to_string(),
        "port": a.dst.port(),
        "protocol": a.protocol,
        "group": a.group,
        "rule": a.rule,
    })
}
