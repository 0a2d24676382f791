//! CF's ASG logging: one JSON line per new connection admitted by a rule with `log: true`, in
//! `STATE_DIR/asg.log` and through tracing (target `asg`). Rate-limited (a token bucket of
//! [`RATE`] lines a second, bursts of [`BURST`]); lines over the limit are counted, and the
//! count is written with the next line that passes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tapestry_switch::stack::Admitted;
use tapestry_switch::Snapshot;

/// Lines a second at most, on average.
pub const RATE: f64 = 100.0;
/// Lines at once at most.
pub const BURST: f64 = 200.0;

pub struct AsgLog {
    file: File,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl AsgLog {
    pub fn open(path: &Path) -> Result<AsgLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening the ASG log {}", path.display()))?;
        Ok(AsgLog {
            file,
            tokens: BURST,
            last: Instant::now(),
            suppressed: 0,
        })
    }

    /// Logs a flow admitted by a logging rule, if the rate allows.
    pub fn admitted(&mut self, snap: &Snapshot, a: &Admitted) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * RATE).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1.0;
        let line = line(snap, a, self.suppressed);
        self.suppressed = 0;
        tracing::info!(target: "asg", "{line}");
        if let Err(e) = writeln!(self.file, "{line}") {
            tracing::warn!("writing the ASG log: {e}");
        }
    }
}

/// One log line.
pub fn line(snap: &Snapshot, a: &Admitted, suppressed: u64) -> String {
    let label = snap.label(a.port).cloned().unwrap_or_default();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut v = serde_json::json!({
        "timestamp": ts,
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
    });
    if suppressed > 0 {
        v["suppressed_before"] = suppressed.into();
    }
    v.to_string()
}
