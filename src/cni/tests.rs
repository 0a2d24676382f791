use super::*;
use crate::cell::api::AttachmentKey;

impl Invocation {
    pub(super) fn clone_for_test(&self) -> Invocation {
        Invocation {
            command: self.command.clone(),
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
        }
    }
}

pub(super) fn inv(cmd: &str) -> Invocation {
    Invocation {
        command: cmd.into(),
        container_id: "c1".into(),
        netns: "/var/run/netns/x".into(),
        ifname: "eth0".into(),
        args: String::new(),
    }
}

#[test]
fn version_lists_supported() {
    let v = execute(&inv("VERSION"), "").unwrap().unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    let listed: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(listed, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    // Answered in the caller's version when we speak it.
    let v = execute(&inv("VERSION"), r#"{"cniVersion":"1.0.0"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    let v = execute(&inv("VERSION"), r#"{"cniVersion":"7.0.0"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
}

pub(super) fn conf_v(version: &str, sock: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"net1","type":"tapestry-cni","cell_socket":{sock:?}{extra}}}"#
    )
}

pub(super) fn no_container(cmd: &str) -> Invocation {
    Invocation::from_vars(|k| (k == "CNI_COMMAND").then(|| cmd.to_string()))
}

#[test]
fn version_1_1_is_accepted_and_status_gc_need_it() {
    let p = parse(
        &inv("ADD"),
        &conf_v("1.1.0", "/x", r#","metadata":{"app_id":"A"}"#),
    )
    .unwrap()
    .unwrap();
    assert_eq!(p.version, "1.1.0");
    assert!(matches!(p.request, Request::Attach(ref a) if a.network.as_deref() == Some("net1")));
    for old in ["0.3.1", "0.4.0", "1.0.0"] {
        for cmd in ["STATUS", "GC"] {
            let e = parse(&no_container(cmd), &conf_v(old, "/x", "")).unwrap_err();
            assert_eq!(e.code, E_INCOMPATIBLE_VERSION, "{cmd} {old}");
            assert_eq!(
                e.msg,
                format!("CNI_COMMAND {cmd} is not supported in cniVersion {old}")
            );
        }
    }
    // STATUS and GC need no container id, netns or ifname.
    let p = parse(&no_container("STATUS"), &conf_v("1.1.0", "/x", ""))
        .unwrap()
        .unwrap();
    assert!(matches!(p.request, Request::Status));
    let p = parse(
        &no_container("GC"),
        &conf_v(
            "1.1.0",
            "/x",
            r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}]"#,
        ),
    )
    .unwrap()
    .unwrap();
    let Request::Gc { network, valid } = p.request else {
        panic!("GC asks for Gc: {:?}", p.request)
    };
    assert_eq!(network, "net1");
    assert_eq!(
        valid,
        [
            AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into()
            },
            AttachmentKey {
                container_id: "c2".into(),
                ifname: "net1".into()
            }
        ]
    );
    let p = parse(
        &no_container("GC"),
        &conf_v("1.1.0", "/x", r#","cni.dev/valid-attachments":[]"#),
    )
    .unwrap()
    .unwrap();
    assert!(matches!(p.request, Request::Gc { ref valid, .. } if valid.is_empty()));
    // A missing or malformed list is an error, never "release everything".
    let e = parse(&no_container("GC"), &conf_v("1.1.0", "/x", "")).unwrap_err();
    assert_eq!(e.code, E_INVALID_CONFIG);
    assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
    for bad in [r#"{}"#, r#"[{"containerID":"c1"}]"#, r#"["c1"]"#] {
        let e = parse(
            &no_container("GC"),
            &conf_v(
                "1.1.0",
                "/x",
                &format!(r#","cni.dev/valid-attachments":{bad}"#),
            ),
        )
        .unwrap_err();
        assert_eq!(e.code, E_INVALID_CONFIG, "{bad}");
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
    }
    // Config errors still come first.
    let e = parse(
        &no_container("STATUS"),
        r#"{"cniVersion":"1.1.0","name":"n","type":"tapestry-cni"}"#,
    )
    .unwrap_err();
    assert!(e.msg.contains("cell_socket"), "{}", e.msg);
    // STATUS with no cell behind the socket: 50.
    let e = execute(
        &no_container("STATUS"),
        &conf_v("1.1.0", "/nonexistent.sock", ""),
    )
    .unwrap_err();
    assert_eq!(e.code, E_NOT_AVAILABLE);
    // Other commands without a container id still say so.
    let e = parse(&no_container("DEL"), &conf_v("1.1.0", "/x", "")).unwrap_err();
    assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
}

/// A fake cell answering STATUS with `status` and GC by recording the request.
struct FakeCell {
    status: Mutex<Value>,
    seen: Mutex<Vec<String>>,
}
use std::sync::{Arc, Mutex};

impl api::Handler for FakeCell {
    fn handle(&self, req: Request) -> anyhow::Result<Value> {
        match req {
            Request::Status => Ok(self.status.lock().unwrap().clone()),
            Request::Gc { network, valid } => {
                self.seen
                    .lock()
                    .unwrap()
                    .push(format!("gc {network} {}", valid.len()));
                Ok(json!({"released": []}))
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

#[test]
fn status_and_gc_ask_the_cell() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    let cell = Arc::new(FakeCell {
        status: Mutex::new(json!({"lease":{"overlay_subnet":"10.255.1.0/24"},
            "ports":[{"handle":"a"}],"max_containers":2})),
        seen: Mutex::new(vec![]),
    });
    api::serve(&sock, cell.clone()).unwrap();
    let conf = |extra: &str| conf_v("1.1.0", sock.to_str().unwrap(), extra);
    assert!(execute(&no_container("STATUS"), &conf(""))
        .unwrap()
        .is_none());
    *cell.status.lock().unwrap() = json!({"lease":{"overlay_subnet":"10.255.1.0/24"},
        "ports":[{"handle":"a"},{"handle":"b"}],"max_containers":2});
    let e = execute(&no_container("STATUS"), &conf("")).unwrap_err();
    assert_eq!(e.code, E_NOT_AVAILABLE);
    assert!(e.msg.contains("full"), "{}", e.msg);
    *cell.status.lock().unwrap() = json!({"ports":[]});
    let e = execute(&no_container("STATUS"), &conf("")).unwrap_err();
    assert_eq!(e.code, E_NOT_AVAILABLE);
    assert!(e.msg.contains("lease"), "{}", e.msg);
    let gc = conf(r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]"#);
    assert!(execute(&no_container("GC"), &gc).unwrap().is_none());
    assert_eq!(*cell.seen.lock().unwrap(), ["gc net1 1"]);
}

#[test]
fn lifecycle_metadata_reaches_the_cell() {
    struct Recorder(Mutex<Vec<String>>);
    impl api::Handler for Recorder {
        fn handle(&self, req: Request) -> anyhow::Result<Value> {
            let (up, lc) = match req {
                Request::Up(up) => (up, "up"),
                Request::Attach(a) => (a.up, a.lifecycle.as_str()),
                _ => anyhow::bail!("unexpected"),
            };
            self.0.lock().unwrap().push(format!("{}:{lc}", up.handle));
            Ok(serde_json::to_value(Attachment {
                handle: up.handle,
                container_ip: "10.255.1.2".parse().unwrap(),
                gateway: "169.254.0.1".parse().unwrap(),
                mac: "ee:ee:0a:ff:01:02".into(),
                mtu: 1450,
                ifname: up.ifname,
                netns: up.netns,
                dns_servers: vec![],
                search_domains: vec![],
                port_mappings: vec![],
                instance_identity: None,
            })?)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    let rec = Arc::new(Recorder(Mutex::new(vec![])));
    api::serve(&sock, rec.clone()).unwrap();
    let conf = |md: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":{:?},"metadata":{md}}}"#,
            sock.display().to_string()
        )
    };
    execute(
        &inv("ADD"),
        &conf(r#"{"app_id":"A","lifecycle":"staging"}"#),
    )
    .unwrap();
    execute(
        &inv("ADD"),
        &conf(r#"{"app_id":"A","lifecycle":"running"}"#),
    )
    .unwrap();
    execute(&inv("ADD"), &conf(r#"{"app_id":"A"}"#)).unwrap();
    // CNI always sends `attach`, which carries the network's name.
    assert_eq!(
        *rec.0.lock().unwrap(),
        ["c1:staging", "c1:running", "c1:running"]
    );
    for bad in [r#""build""#, "1", r#""STAGING""#] {
        let e = execute(
            &inv("ADD"),
            &conf(&format!(r#"{{"app_id":"A","lifecycle":{bad}}}"#)),
        )
        .unwrap_err();
        assert_eq!(e.code, E_INVALID_CONFIG);
        assert!(e.msg.contains("metadata.lifecycle"), "{}", e.msg);
    }
    assert_eq!(
        rec.0.lock().unwrap().len(),
        3,
        "a bad lifecycle never reaches the cell"
    );
}

#[test]
fn del_with_the_cell_down_is_recorded_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    let conf = conf_v("1.1.0", sock.to_str().unwrap(), "");
    assert!(execute(&inv("DEL"), &conf).unwrap().is_none());
    let mut all = inv("DEL");
    all.ifname = String::new();
    assert!(execute(&all, &conf).unwrap().is_none());
    let mut dels: Vec<PendingDel> = api::pending_dels(&sock)
        .into_iter()
        .map(|(_, d)| d.unwrap())
        .collect();
    dels.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    assert_eq!(
        dels,
        [
            PendingDel {
                handle: "c1".into(),
                ifname: String::new()
            },
            PendingDel {
                handle: "c1".into(),
                ifname: "eth0".into()
            }
        ]
    );
    // A cell that answers and refuses: the error is the cell's, nothing is recorded.
    let dir2 = tempfile::tempdir().unwrap();
    let sock2 = dir2.path().join("cell.sock");
    let cell = Arc::new(FakeCell {
        status: Mutex::new(Value::Null),
        seen: Mutex::new(vec![]),
    });
    api::serve(&sock2, cell).unwrap();
    let e = execute(&inv("DEL"), &conf_v("1.1.0", sock2.to_str().unwrap(), "")).unwrap_err();
    assert_eq!(e.code, E_IO);
    assert!(api::pending_dels(&sock2).is_empty());
    // With nowhere to record it, the DEL fails with "try again later".
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let sock3 = file.join("cell.sock");
    let e = execute(&inv("DEL"), &conf_v("1.1.0", sock3.to_str().unwrap(), "")).unwrap_err();
    assert_eq!(e.code, E_TRY_LATER);
    assert!(e.msg.contains("could not be recorded"), "{}", e.msg);
}
