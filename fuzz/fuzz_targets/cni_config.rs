//! The CNI plugin's input: the environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`) and the network configuration on stdin, checked by `tapestry::cni::parse`, the
//! function `execute` runs before it talks to the cell.
//!
//! Input: `KEY=VALUE` lines, an empty line, then stdin. Not UTF-8: the plugin refuses it when
//! reading stdin, before any parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapestry::cell::api::{AttachRequest, Request};
use tapestry::cni::{parse, Invocation, SUPPORTED};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (env, stdin) = text.split_once("\n\n").unwrap_or((text, ""));
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let inv = Invocation::from_vars(|k| {
        vars.iter()
            .rev()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    });
    match parse(&inv, stdin) {
        Ok(None) => assert_eq!(inv.command, "VERSION"),
        Ok(Some(p)) => {
            assert!(SUPPORTED.contains(&p.version.as_str()), "{}", p.version);
            let needs_container = !matches!(p.request, Request::Status | Request::Gc { .. });
            assert!(!needs_container || !inv.container_id.is_empty());
            match &p.request {
                Request::Up(up) | Request::Attach(AttachRequest { up, .. }) => {
                    assert_eq!(inv.command, "ADD");
                    assert_eq!(up.handle, inv.container_id);
                    assert!(!up.netns.as_os_str().is_empty() && !up.ifname.is_empty());
                }
                Request::Down { handle } => {
                    assert_eq!(inv.command, "DEL");
                    assert_eq!(handle, &inv.container_id);
                }
                Request::Detach { handle, ifname } => {
                    assert_eq!(inv.command, "DEL");
                    assert_eq!((handle, ifname), (&inv.container_id, &inv.ifname));
                }
                Request::CheckAttachment { handle, ifname, .. } => {
                    assert_eq!(inv.command, "CHECK");
                    assert_eq!((handle, ifname), (&inv.container_id, &inv.ifname));
                }
                Request::Check { handle } => {
                    assert_eq!(inv.command, "CHECK");
                    assert_eq!(handle, &inv.container_id);
                }
                Request::Status => assert_eq!(inv.command, "STATUS"),
                Request::Gc { .. } => assert_eq!(inv.command, "GC"),
                Request::Trace { .. } | Request::FlowLog { .. } | Request::Capture { .. } => {
                    panic!("the CNI plugin never sends {:?}", p.request)
                }
            }
            // What the plugin sends, the cell reads back the same.
            let wire = serde_json::to_string(&p.request).expect("a request serialises");
            let back: Request = serde_json::from_str(&wire).expect("the cell parses it");
            assert_eq!(
                serde_json::to_string(&back).unwrap(),
                wire,
                "request round trip"
            );
        }
        Err(e) => {
            assert!(
                [1, 4, 6, 7].contains(&e.code),
                "a configuration error has a CNI error code: {e:?}"
            );
            assert!(!e.msg.is_empty());
        }
    }
});
