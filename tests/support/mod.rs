//! What the CLI and fault tests share: a `tapestry control` process on loopback ports.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tapestry_policy::client::ExternalClient;
use tapestry_policy::model::{Destination, Policy, Ports, Source};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// A `tapestry control` on loopback ports it picks itself; killed (SIGKILL) when dropped.
pub struct Control {
    pub child: Child,
    pub external: String,
    pub internal: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tapestry control ---\n{}", self.stderr.lock().unwrap());
        }
    }
}

impl Control {
    pub fn start(data: &Path, extra: &[&str]) -> Control {
        let mut child = Command::new(bin())
            .args(["control", "--data-dir"])
            .arg(data)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push_str(&format!("{line}\n"));
                // "tapestry control: external API http://A (...), internal API https://B (...)"
                if let Some(rest) = line.strip_prefix("tapestry control: external API http://") {
                    let ext = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let int = rest
                        .split("internal API https://")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send((ext, int));
                }
            }
        });
        let Ok((ext, int)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "the control plane did not start:\n{}",
                stderr.lock().unwrap()
            );
        };
        Control {
            child,
            external: format!("http://{ext}"),
            internal: format!("https://{int}"),
            stderr,
        }
    }

    pub fn admin(&self, data: &Path) -> ExternalClient {
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
        ExternalClient::new(&self.external, token.trim()).unwrap()
    }
}

/// A policy from `src` to app-dst, tcp 8080.
pub fn policy(src: &str) -> Policy {
    Policy {
        source: Source {
            id: src.into(),
            tag: None,
        },
        destination: Destination {
            id: "app-dst".into(),
            tag: None,
            protocol: "tcp".into(),
            ports: Ports {
                start: 8080,
                end: 8080,
            },
        },
    }
}

/// A two-thread runtime for the clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
