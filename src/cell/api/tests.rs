use super::*;

#[test]
fn pending_dels_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    assert!(pending_dels(&sock).is_empty());
    let a = PendingDel {
        handle: "c/1 weird".into(),
        ifname: "eth0".into(),
    };
    let b = PendingDel {
        handle: "c2".into(),
        ifname: String::new(),
    };
    let pa = record_pending_del(&sock, &a).unwrap();
    assert_eq!(
        record_pending_del(&sock, &a).unwrap(),
        pa,
        "same DEL, same file"
    );
    record_pending_del(&sock, &b).unwrap();
    std::fs::write(pending_del_dir(&sock).join("junk.json"), "{").unwrap();
    let got = pending_dels(&sock);
    assert_eq!(got.len(), 3);
    let dels: Vec<PendingDel> = got
        .iter()
        .filter_map(|(_, d)| d.as_ref().ok().cloned())
        .collect();
    assert!(dels.contains(&a) && dels.contains(&b));
    assert!(got
        .iter()
        .any(|(p, d)| d.is_err() && p.ends_with("junk.json")));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pa).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mode = std::fs::metadata(pending_del_dir(&sock))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn net_in_flags_parse_and_bad_ones_say_why() {
    let m = parse_net_in("0:8080").unwrap();
    assert_eq!(
        m,
        PortMapping {
            host_port: 0,
            container_port: 8080,
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(
        parse_net_in("61001:53/udp").unwrap().to_string(),
        "61001:53/udp"
    );
    assert_eq!(
        parse_net_in("80:8080/tcp").unwrap().to_string(),
        "80:8080/tcp"
    );
    assert_eq!(parse_net_in("65535:1").unwrap().host_port, 65535);
    for (bad, why) in [
        ("8080", "HOST:CONTAINER"),
        ("", "HOST:CONTAINER"),
        ("a:80", "host port \"a\" is out of range"),
        ("-1:80", "host port \"-1\" is out of range"),
        ("65536:80", "host port \"65536\" is out of range (0-65535)"),
        ("80:0", "container port \"0\" is out of range (1-65535)"),
        ("80:", "container port \"\" is out of range"),
        ("80:70000", "container port \"70000\" is out of range"),
        ("80:80/sctp", "protocol \"sctp\" must be tcp or udp"),
        ("80:80/UDP", "must be tcp or udp"),
        ("0:61443", "61443 is reserved for the cell's TLS terminator"),
    ] {
        let e = parse_net_in(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn mapping_lists_refuse_duplicates_and_the_tls_port() {
    let m = |h, c, protocol| PortMapping {
        host_port: h,
        container_port: c,
        protocol,
    };
    use Protocol::*;
    assert!(check_port_mappings(&[]).is_ok());
    // Zeros may repeat; one host port may serve tcp and udp.
    assert!(
        check_port_mappings(&[m(0, 80, Tcp), m(0, 80, Tcp), m(53, 53, Tcp), m(53, 53, Udp)])
            .is_ok()
    );
    let e = check_port_mappings(&[m(53, 53, Udp), m(53, 54, Udp)]).unwrap_err();
    assert!(e.contains("host port 53/udp is mapped twice"), "{e}");
    let e = check_port_mappings(&[m(8443, TLS_PORT, Tcp)]).unwrap_err();
    assert!(e.contains("8443:61443/tcp") && e.contains("TLS"), "{e}");
    let e = check_port_mappings(&[m(80, 0, Udp)]).unwrap_err();
    assert!(e.contains("container port 0 is out of range"), "{e}");
    // Host port 61443 is an ordinary host port.
    assert!(check_port_mappings(&[m(61443, 8080, Tcp)]).is_ok());
}

#[test]
fn attach_carries_port_mappings_and_old_replies_load() {
    let line = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n",
        "port_mappings":[{"hostPort":0,"containerPort":8080}]}"#;
    let Request::Attach(a) = serde_json::from_str(line).unwrap() else {
        panic!("not an attach")
    };
    assert_eq!(a.port_mappings[0].to_string(), "0:8080/tcp");
    // A running container with mappings goes out as `attach` (`up` has no mappings).
    assert!(matches!(a.clone().into_request(), Request::Attach(_)));
    let json = serde_json::to_string(&Request::Attach(a)).unwrap();
    assert!(
        json.contains(r#""port_mappings":[{"hostPort":0,"containerPort":8080,"protocol":"tcp"}]"#),
        "{json}"
    );
    // A reply from a cell without net-in has no mappings.
    let old = r#"{"handle":"h","container_ip":"10.255.1.2","gateway":"169.254.0.1",
        "mac":"ee:ee:0a:ff:01:02","mtu":1450,"ifname":"eth0","netns":"/n","dns_servers":[],
        "search_domains":[]}"#;
    let a: Attachment = serde_json::from_str(old).unwrap();
    assert!(a.port_mappings.is_empty());
    // ... nor credentials; a newer one has their paths at the top level.
    assert!(a.instance_identity.is_none());
    let new = old.replace(
        '}',
        r#","instance_cert":"/s/c","instance_key":"/s/k","instance_ca":"/s/a"}"#,
    );
    let a: Attachment = serde_json::from_str(&new).unwrap();
    let id = a.instance_identity.clone().unwrap();
    assert_eq!(
        (id.instance_key.to_str(), id.instance_identity_pending),
        (Some("/s/k"), false)
    );
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["instance_cert"], "/s/c");
    assert!(v.get("instance_identity").is_none());
}

#[test]
fn attach_carries_an_optional_lifecycle() {
    let line = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n","lifecycle":"staging"}"#;
    let Request::Attach(a) = serde_json::from_str(line).unwrap() else {
        panic!("not an attach")
    };
    assert_eq!(a.lifecycle, Lifecycle::Staging);
    assert_eq!((a.up.handle.as_str(), a.up.ifname.as_str()), ("h", "eth0"));
    let line = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n"}"#;
    let Request::Attach(a) = serde_json::from_str(line).unwrap() else {
        panic!("not an attach")
    };
    assert_eq!(a.lifecycle, Lifecycle::Running);
    let bad = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n","lifecycle":"build"}"#;
    let e = serde_json::from_str::<Request>(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("build") && e.contains("staging"), "{e}");
    // Round trip, and running goes out as a plain `up`.
    let json = serde_json::to_string(&Request::Attach(a.clone())).unwrap();
    assert!(json.contains(r#""op":"attach""#) && json.contains(r#""lifecycle":"running""#));
    assert!(matches!(a.clone().into_request(), Request::Up(_)));
    let staging = AttachRequest {
        lifecycle: Lifecycle::Staging,
        ..a
    };
    assert!(matches!(staging.into_request(), Request::Attach(_)));
    assert_eq!(parse_lifecycle("staging"), Ok(Lifecycle::Staging));
    assert!(parse_lifecycle("Staging")
        .unwrap_err()
        .contains("\"running\" or \"staging\""));
}
