//! The lab end to end: real switches, smoltcp containers, both underlays.

use std::sync::Arc;

use tapestry_lab::{Lab, LabConfig, UnderlayKind};
use tapestry_switch::pipeline::extension::{IngressStep, NewFlow};
use tapestry_switch::DropReason;

#[test]
fn memory_lab_reaches_allowed_peers_and_holds_the_rest() {
    let mut lab = Lab::new(LabConfig::new(4, 20, UnderlayKind::Memory)).unwrap();
    let r = lab.run();
    assert_eq!((r.cells, r.containers, r.policies), (4, 20, 40));
    assert_eq!(r.allowed, 40, "one TCP and one UDP probe per container");
    assert_eq!(r.allowed_answered, 40, "{r:?}");
    assert_eq!((r.denied, r.denied_answered), (20, 0), "{r:?}");
    let denied = r
        .drops
        .iter()
        .find(|(d, _)| *d == DropReason::PolicyDenied)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert!(
        denied >= 20,
        "every denied SYN is dropped and counted: {r:?}"
    );
    assert!(r.datagrams > 0, "cross-cell traffic went over the underlay");
    assert!(r.ok());
}

#[test]
fn memory_lab_runs_repeat_exactly() {
    let run = || {
        Lab::new(LabConfig::new(3, 12, UnderlayKind::Memory))
            .unwrap()
            .run()
    };
    assert_eq!(run(), run());
}

#[test]
fn loopback_lab_carries_vxlan_over_the_kernel() {
    let mut cfg = LabConfig::new(3, 9, UnderlayKind::Loopback);
    cfg.deadline = std::time::Duration::from_millis(500);
    let r = Lab::new(cfg).unwrap().run();
    assert!(r.ok(), "{r:?}");
    assert!(r.datagrams > 0);
}

#[derive(Debug)]
struct DenyTag(u16);

impl IngressStep for DenyTag {
    fn new_flow(&self, f: &NewFlow, policy: Result<(), DropReason>) -> Result<(), DropReason> {
        if f.src_tag == self.0 {
            Err(DropReason::IngressStep)
        } else {
            policy
        }
    }
}

#[test]
fn an_ingress_step_overrules_the_policy() {
    let mut cfg = LabConfig::new(2, 6, UnderlayKind::Memory);
    cfg.deadline = std::time::Duration::from_secs(2);
    let mut lab = Lab::new(cfg).unwrap();
    lab.set_ingress_step(Some(Arc::new(DenyTag(1))));
    let r = lab.run();
    assert_eq!(r.allowed, 12);
    assert_eq!(
        r.allowed_answered, 10,
        "tag 1's TCP and UDP probes are refused: {r:?}"
    );
    assert_eq!(r.denied_answered, 0);
    assert!(
        r.drops
            .iter()
            .any(|(d, n)| *d == DropReason::IngressStep && *n >= 2),
        "{r:?}"
    );
}

#[test]
fn bad_sizes_are_refused_with_the_reason() {
    let e = Lab::new(LabConfig::new(0, 10, UnderlayKind::Memory))
        .err()
        .unwrap();
    assert!(e.to_string().contains("--cells 0"), "{e}");
    let e = Lab::new(LabConfig::new(1, 300, UnderlayKind::Memory))
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not fit"), "{e}");
}
