//! The objects the control plane stores and serves, in their wire (JSON) form.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A port range of a policy destination (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ports {
    pub start: u16,
    pub end: u16,
}

/// The source of a policy: an app GUID and, when served, its tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The destination of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub protocol: String,
    pub ports: Ports,
}

/// A v1 policy: `source` may reach `destination` on `protocol` and `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub source: Source,
    pub destination: Destination,
}

/// The identity of a policy (tags are not part of it).
pub type PolicyKey = (String, String, String, u16, u16);

impl Policy {
    pub fn new(src: &str, dst: &str, protocol: &str, start: u16, end: u16) -> Policy {
        Policy {
            source: Source {
                id: src.into(),
                tag: None,
            },
            destination: Destination {
                id: dst.into(),
                tag: None,
                protocol: protocol.into(),
                ports: Ports { start, end },
            },
        }
    }
    pub fn key(&self) -> PolicyKey {
        (
            self.source.id.clone(),
            self.destination.id.clone(),
            self.destination.protocol.clone(),
            self.destination.ports.start,
            self.destination.ports.end,
        )
    }
    /// The v0 rendering (`destination.port`).
    pub fn to_v0(&self) -> serde_json::Value {
        serde_json::json!({
            "source": {"id": self.source.id},
            "destination": {
                "id": self.destination.id,
                "protocol": self.destination.protocol,
                "port": self.destination.ports.start,
            }
        })
    }
}

/// An app's 16-bit tag, rendered like Cloud Foundry ("0001").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub tag: String,
}

/// Renders a tag number as CF does: 4 hex digits.
pub fn render_tag(n: u16) -> String {
    format!("{n:04X}")
}

/// Parses a rendered tag back to its number.
pub fn parse_tag(s: &str) -> Option<u16> {
    u16::from_str_radix(s, 16).ok()
}

/// Who holds a lease: a Tapestry cell (renews it) or a statically registered kernel VTEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    Tapestry,
    Static,
}

/// An overlay subnet held by the cell at `underlay_ip`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub underlay_ip: Ipv4Addr,
    pub overlay_subnet: Ipv4Net,
    pub overlay_hardware_addr: String,
    /// Unix seconds; `None` for static leases, which never expire.
    pub expires_at: Option<i64>,
    pub kind: LeaseKind,
}

/// The VTEP MAC of a subnet, as Silk: ee:ee + the 4 bytes of the subnet base address.
pub fn hardware_addr(subnet: &Ipv4Net) -> String {
    let o = subnet.network().octets();
    format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// A container instance running on a cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub cell: Ipv4Addr,
    pub handle: String,
    pub app_id: String,
    #[serde(default)]
    pub space_id: String,
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub instance_index: u32,
    pub ip: Ipv4Addr,
}

/// An internal route: `host` (under apps.internal) answers with the IPs of `app_id`'s instances.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub host: String,
    pub app_id: String,
}

/// Where an ASG applies globally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GloballyEnabled {
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub staging: bool,
}

/// One ASG rule in Cloud Foundry's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub protocol: String,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(default)]
    pub log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An application security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub name: String,
    /// Cloud Controller's GUID of a group synced from it (CF's internal API shows the name
    /// where there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub globally_enabled: GloballyEnabled,
    #[serde(default)]
    pub running_spaces: Vec<String>,
    #[serde(default)]
    pub staging_spaces: Vec<String>,
}

/// Everything a cell needs, at one version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub leases: Vec<Lease>,
    pub tags: Vec<Tag>,
    pub policies: Vec<Policy>,
    pub instances: Vec<Instance>,
    pub routes: Vec<Route>,
    pub security_groups: Vec<SecurityGroup>,
}

/// put or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
}

/// Which kind of object a change carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Lease,
    Tag,
    Policy,
    Instance,
    Route,
    SecurityGroup,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "lease",
            Kind::Tag => "tag",
            Kind::Policy => "policy",
            Kind::Instance => "instance",
            Kind::Route => "route",
            Kind::SecurityGroup => "security_group",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "lease" => Kind::Lease,
            "tag" => Kind::Tag,
            "policy" => Kind::Policy,
            "instance" => Kind::Instance,
            "route" => Kind::Route,
            "security_group" => Kind::SecurityGroup,
            _ => return None,
        })
    }
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub version: u64,
    pub op: Op,
    pub kind: Kind,
    pub value: serde_json::Value,
}

/// The answer of `GET /internal/feed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedResponse {
    pub version: u64,
    pub snapshot: Option<Snapshot>,
    pub changes: Vec<Change>,
}

/// What a bearer token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub scope: String,
    pub spaces: Vec<String>,
    /// The UAA user (`sub`) of a UAA token, whose spaces Cloud Controller knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The UAA token itself, for Cloud Controller lookups made with the user's own token
    /// (never stored).
    #[serde(skip)]
    pub bearer: Option<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.scope == crate::SCOPE_ADMIN
    }
}
