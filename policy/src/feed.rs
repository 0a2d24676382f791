//! A cell's local replica of the control plane's state, kept current from the feed.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{
    Change, FeedResponse, Instance, Kind, Lease, Op, Policy, PolicyKey, Route, SecurityGroup,
    Snapshot, Tag,
};

/// What a cell knows, at `version`. Serialises as `{"version":N,"snapshot":{...}}` so a cell can
/// persist it and keep enforcing across restarts without the control plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "Persisted", from = "Persisted")]
pub struct View {
    version: u64,
    /// False until the first snapshot arrived.
    synced: bool,
    leases: BTreeMap<Ipv4Addr, Lease>,
    tags: BTreeMap<String, Tag>,
    policies: BTreeMap<PolicyKey, Policy>,
    instances: BTreeMap<(Ipv4Addr, String), Instance>,
    routes: BTreeMap<(String, String), Route>,
    asgs: BTreeMap<String, SecurityGroup>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Persisted {
    version: u64,
    #[serde(default)]
    synced: bool,
    snapshot: Snapshot,
}

impl From<View> for Persisted {
    fn from(v: View) -> Persisted {
        Persisted {
            version: v.version,
            synced: v.synced,
            snapshot: v.snapshot(),
        }
    }
}

impl From<Persisted> for View {
    fn from(p: Persisted) -> View {
        let mut v = View::default();
        v.replace(p.snapshot);
        v.version = p.version;
        v.synced = p.synced;
        v
    }
}

impl View {
    pub fn new() -> View {
        View::default()
    }

    /// The version to pass as `since`: None before the first snapshot.
    pub fn version(&self) -> Option<u64> {
        self.synced.then_some(self.version)
    }

    fn replace(&mut self, s: Snapshot) {
        *self = View::default();
        self.leases = s.leases.into_iter().map(|l| (l.underlay_ip, l)).collect();
        self.tags = s.tags.into_iter().map(|t| (t.id.clone(), t)).collect();
        self.policies = s.policies.into_iter().map(|p| (p.key(), p)).collect();
        self.instances = s
            .instances
            .into_iter()
            .map(|i| ((i.cell, i.handle.clone()), i))
            .collect();
        self.routes = s
            .routes
            .into_iter()
            .map(|r| ((r.host.clone(), r.app_id.clone()), r))
            .collect();
        self.asgs = s
            .security_groups
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect();
    }

    /// Applies a feed response: a snapshot replaces everything, then changes apply in order.
    /// Returns true when anything may have changed. Changes not newer than the view are skipped;
    /// a change whose value does not parse is skipped (logged), never a panic.
    pub fn apply(&mut self, r: FeedResponse) -> bool {
        let mut changed = false;
        if let Some(s) = r.snapshot {
            self.replace(s);
            self.synced = true;
            self.version = r.version;
            changed = true;
        }
        for c in r.changes {
            if self.synced && c.version <= self.version {
                continue;
            }
            let v = c.version;
            if let Err(e) = self.apply_change(c) {
                tracing::warn!("feed change {v} ignored: {e}");
            }
            self.version = v;
            changed = true;
        }
        if r.version > self.version && changed {
            self.version = r.version;
        }
        changed
    }

    fn apply_change(&mut self, c: Change) -> Result<(), serde_json::Error> {
        let put = c.op == Op::Put;
        match c.kind {
            Kind::Lease => {
                let l: Lease = serde_json::from_value(c.value)?;
                if put {
                    self.leases.insert(l.underlay_ip, l);
                } else {
                    self.leases.remove(&l.underlay_ip);
                }
            }
            Kind::Tag => {
                let t: Tag = serde_json::from_value(c.value)?;
                if put {
                    self.tags.insert(t.id.clone(), t);
                } else {
                    self.tags.remove(&t.id);
                }
            }
            Kind::Policy => {
                let p: Policy = serde_json::from_value(c.value)?;
                if put {
                    self.policies.insert(p.key(), p);
                } else {
                    self.policies.remove(&p.key());
                }
            }
            Kind::Instance => {
                let i: Instance = serde_json::from_value(c.value)?;
                let k = (i.cell, i.handle.clone());
                if put {
                    self.instances.insert(k, i);
                } else {
                    self.instances.remove(&k);
                }
            }
            Kind::Route => {
                let r: Route = serde_json::from_value(c.value)?;
                let k = (r.host.clone(), r.app_id.clone());
                if put {
                    self.routes.insert(k, r);
                } else {
                    self.routes.remove(&k);
                }
            }
            Kind::SecurityGroup => {
                let g: SecurityGroup = serde_json::from_value(c.value)?;
                if put {
                    self.asgs.insert(g.name.clone(), g);
                } else {
                    self.asgs.remove(&g.name);
                }
            }
        }
        Ok(())
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
    pub fn lease_of(&self, underlay_ip: Ipv4Addr) -> Option<&Lease> {
        self.leases.get(&underlay_ip)
    }
    pub fn tags(&self) -> impl Iterator<Item = &Tag> {
        self.tags.values()
    }
    /// The app's tag number.
    pub fn tag_of(&self, app_id: &str) -> Option<u16> {
        self.tags
            .get(app_id)
            .and_then(|t| crate::model::parse_tag(&t.tag))
    }
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }
    pub fn asgs(&self) -> impl Iterator<Item = &SecurityGroup> {
        self.asgs.values()
    }

    /// The whole view as a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            leases: self.leases.values().cloned().collect(),
            tags: self.tags.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            instances: self.instances.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
            security_groups: self.asgs.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snapshot_then_changes_then_persist() {
        let mut v = View::new();
        assert_eq!(v.version(), None);
        let snap = Snapshot {
            tags: vec![Tag {
                id: "A".into(),
                kind: "app".into(),
                tag: "0001".into(),
            }],
            ..Default::default()
        };
        assert!(v.apply(FeedResponse {
            version: 3,
            snapshot: Some(snap),
            changes: vec![]
        }));
        assert_eq!(v.version(), Some(3));
        assert_eq!(v.tag_of("A"), Some(1));
        let p = Policy::new("A", "B", "tcp", 80, 80);
        v.apply(FeedResponse {
            version: 5,
            snapshot: None,
            changes: vec![
                Change {
                    version: 4,
                    op: Op::Put,
                    kind: Kind::Policy,
                    value: serde_json::to_value(&p).unwrap(),
                },
                Change {
                    version: 5,
                    op: Op::Delete,
                    kind: Kind::Tag,
                    value: json!({"id":"A","type":"app","tag":"0001"}),
                },
                Change {
                    version: 5,
                    op: Op::Put,
                    kind: Kind::Route,
                    value: json!("garbage"),
                },
            ],
        });
        assert_eq!(v.version(), Some(5));
        assert_eq!(v.policies().count(), 1);
        assert_eq!(v.tag_of("A"), None);
        let s = serde_json::to_string(&v).unwrap();
        let back: View = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
        // An old change is ignored.
        v.apply(FeedResponse {
            version: 5,
            snapshot: None,
            changes: vec![Change {
                version: 4,
                op: Op::Delete,
                kind: Kind::Policy,
                value: serde_json::to_value(&p).unwrap(),
            }],
        });
        assert_eq!(v.policies().count(), 1);
    }
}
