//! A rate-limited JSON-lines log file, shared by the ASG log and the flow log: a token bucket of
//! [`RATE`] lines a second with bursts of [`BURST`]; lines over the limit are counted, and the
//! count is written (`suppressed_before`) with the next line that passes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Lines a second at most, on average.
pub const RATE: f64 = 100.0;
/// Lines at once at most.
pub const BURST: f64 = 200.0;

/// The ASG log's name (its lines also go to tracing target `asg`).
pub const ASG: &str = "ASG log";
/// The flow log's name (its lines also go to tracing target `flows`).
pub const FLOWS: &str = "flow log";

pub struct RateLimitedLog {
    file: File,
    /// What the log is, for its error messages and tracing target.
    what: &'static str,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Opens `path` for appending (created 0600).
    pub fn open(path: &Path, what: &'static str) -> Result<RateLimitedLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening the {what} {}", path.display()))?;
        Ok(RateLimitedLog {
            file,
            what,
            tokens: BURST,
            last: Instant::now(),
            suppressed: 0,
        })
    }

    /// Writes the line `line` makes, if the rate allows (then it is made, with the count of
    /// lines suppressed before it added), else counts it.
    pub fn write(&mut self, line: impl FnOnce() -> serde_json::Value) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * RATE).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1.0;
        let mut v = line();
        if self.suppressed > 0 {
            v["suppressed_before"] = self.suppressed.into();
        }
        self.suppressed = 0;
        let line = v.to_string();
        // The cell's log too, under a target of its own (`asg`, `flows`).
        match self.what {
            ASG => tracing::info!(target: "asg", "{line}"),
            _ => tracing::info!(target: "flows", "{line}"),
        }
        if let Err(e) = writeln!(self.file, "{line}") {
            tracing::warn!("writing the {}: {e}", self.what);
        }
    }

    /// Counts lines that were lost before they reached the log (reported with the next line).
    pub fn count_suppressed(&mut self, n: u64) {
        self.suppressed += n;
    }
}

/// Seconds since the epoch, as the logs' `timestamp`.
pub fn timestamp() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_limited_and_the_suppressed_count_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = RateLimitedLog::open(&path, "test log").unwrap();
        let n = BURST as usize + 50;
        for i in 0..n {
            log.write(|| serde_json::json!({ "i": i }));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The burst passes; a handful more may pass as tokens refill during the loop.
        assert!(
            lines.len() >= BURST as usize && lines.len() < n,
            "{}",
            lines.len()
        );
        assert!(lines.iter().all(|l| l.get("suppressed_before").is_none()));
        // After a pause, the next line carries the count of those left out.
        log.last -= std::time::Duration::from_secs(1);
        log.write(|| serde_json::json!({ "i": "after" }));
        let text = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["i"], "after");
        assert_eq!(
            last["suppressed_before"].as_u64().unwrap() as usize,
            n - lines.len()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
