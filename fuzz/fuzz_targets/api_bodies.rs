//! The external API's request bodies, through the parse and validation functions the handlers
//! use: `POST policies` and `policies/delete` (v1 and v0), `POST security_groups`, `PUT
//! security_groups/{name}`, `POST routes` and `routes/delete`, `POST leases`.
//!
//! Input: the first byte picks the endpoint, the rest is the body. An accepted body is checked
//! for what the store relies on, and what the API serves back parses again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tapestry_policy::api::external::{
    parse_asg, parse_asg_update, parse_route, parse_static_lease,
};
use tapestry_policy::validate;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 6 {
        0 | 1 => {
            let v0 = sel % 6 == 1;
            let Ok(policies) = validate::parse_policies(body, v0) else {
                return;
            };
            assert!(!policies.is_empty());
            for p in &policies {
                assert!(!p.source.id.trim().is_empty() && !p.destination.id.trim().is_empty());
                assert!(p.source.id.len() <= 255 && p.destination.id.len() <= 255);
                assert!(matches!(p.destination.protocol.as_str(), "tcp" | "udp"));
                let ports = p.destination.ports;
                assert!(ports.start >= 1 && ports.start <= ports.end);
                assert!(p.source.tag.is_none() && p.destination.tag.is_none());
            }
            // The list the API serves (and the CLI sends back) parses to the same policies.
            let again = if v0 {
                let list: Vec<_> = policies.iter().map(|p| p.to_v0()).collect();
                serde_json::to_vec(&json!({ "policies": list })).unwrap()
            } else {
                serde_json::to_vec(&json!({ "policies": policies })).unwrap()
            };
            assert_eq!(
                validate::parse_policies(&again, v0).expect("served policies parse"),
                policies
            );
        }
        2 | 3 => {
            let g = if sel % 6 == 2 {
                parse_asg(body)
            } else {
                parse_asg_update(body, "from-the-path")
            };
            let Ok(g) = g else {
                return;
            };
            assert!(!g.name.trim().is_empty() && !g.name.contains('/'));
            let again = serde_json::to_vec(&g).unwrap();
            let back = parse_asg(&again).expect("a served ASG parses");
            assert_eq!(back, g, "ASG round trip");
        }
        4 => {
            let Ok(r) = parse_route(body) else {
                return;
            };
            assert!(r.host.ends_with(".apps.internal") && r.host.len() <= 253);
            assert_eq!(
                validate::route(&r.host, &r.app_id).expect("a stored route validates"),
                r,
                "route normalisation is idempotent"
            );
        }
        _ => {
            let _ = parse_static_lease(body);
        }
    }
});
