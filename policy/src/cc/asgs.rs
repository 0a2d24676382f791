//! Application security groups from Cloud Controller, as CF's `policy-server-asg-syncer` reads
//! them: `GET /v3/security_groups?per_page=5000&page=N` with the client's token, every page.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::lookups::{Guid, Pagination};
use super::{CcError, CloudController};
use crate::model::{GloballyEnabled, Rule, SecurityGroup};

/// CF's `SECURITY_GROUPS_PER_PAGE`.
const PER_PAGE: usize = 5000;
/// More pages than this is an answer that never ends (25 million groups).
const MAX_PAGES: usize = 5000;

#[derive(Deserialize, Default)]
struct ToMany {
    #[serde(default)]
    data: Vec<Guid>,
}

#[derive(Deserialize, Default)]
struct Relationships {
    #[serde(default)]
    staging_spaces: ToMany,
    #[serde(default)]
    running_spaces: ToMany,
}

#[derive(Deserialize)]
struct Resource {
    guid: String,
    name: String,
    #[serde(default)]
    globally_enabled: GloballyEnabled,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    relationships: Relationships,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    pagination: Pagination,
    #[serde(default)]
    resources: Vec<Resource>,
}

impl Resource {
    /// The group as Tapestry stores it; an error names a space relationship without a GUID
    /// (CF's syncer fails the same way).
    fn into_group(self) -> Result<SecurityGroup, CcError> {
        let spaces = |m: ToMany, kind: &str| {
            m.data
                .into_iter()
                .map(|d| {
                    d.guid.ok_or_else(|| {
                        CcError::Answer(format!(
                            "no 'guid' found for {kind}-space-relationship on asg '{}'",
                            self.guid
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let staging_spaces = spaces(self.relationships.staging_spaces, "staging")?;
        let running_spaces = spaces(self.relationships.running_spaces, "running")?;
        Ok(SecurityGroup {
            guid: Some(self.guid.clone()),
            name: self.name,
            rules: self.rules,
            globally_enabled: self.globally_enabled,
            running_spaces,
            staging_spaces,
        })
    }
}

impl CloudController {
    /// Every security group Cloud Controller has, by name. A listing that changed while it was
    /// read (fewer or more groups than `total_results`, or one name twice) is an error, so that
    /// nothing is replaced from an inconsistent listing; the next round reads it again.
    pub async fn security_groups(&self) -> Result<Vec<SecurityGroup>, CcError> {
        let per_page = PER_PAGE.to_string();
        let mut groups = BTreeMap::new();
        let mut total = None;
        for page in 1..=MAX_PAGES {
            let n = page.to_string();
            let url = self.url(
                &["v3", "security_groups"],
                &[("per_page", per_page.as_str()), ("page", n.as_str())],
            );
            let Some(answer) = self.get::<Page>(url, None).await? else {
                return Err(CcError::Answer(
                    "/v3/security_groups: 404 (is --cloud-controller right?)".into(),
                ));
            };
            if page == 1 {
                total = answer.pagination.total_results;
            }
            let last = answer.resources.is_empty()
                || answer
                    .pagination
                    .next
                    .as_ref()
                    .and_then(|h| h.href.as_deref())
                    .is_none_or(str::is_empty);
            for r in answer.resources {
                let g = r.into_group()?;
                if let Some(prev) = groups.insert(g.name.clone(), g) {
                    return Err(CcError::Answer(format!(
                        "/v3/security_groups: the listing changed while it was read ('{}' twice)",
                        prev.name
                    )));
                }
            }
            if last {
                if let Some(t) = total.filter(|t| *t != groups.len() as u64) {
                    return Err(CcError::Answer(format!(
                        "/v3/security_groups: the listing changed while it was read ({t} groups announced, {} listed)",
                        groups.len()
                    )));
                }
                return Ok(groups.into_values().collect());
            }
        }
        Err(CcError::Answer(format!(
            "/v3/security_groups: more than {MAX_PAGES} pages"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_resource_becomes_a_group() {
        // The resource of CAPI v3's "List security groups" (and CF's fixture OneSecurityGroup).
        let r: Resource = serde_json::from_str(
            r#"{
              "guid": "b85a788e-671f-4549-814d-e34cdb2f539a",
              "created_at": "2020-02-20T17:42:08Z",
              "name": "my-group0",
              "globally_enabled": {"running": true, "staging": false},
              "rules": [
                {"protocol": "tcp", "destination": "10.10.10.0/24", "ports": "443,80,8080"},
                {"protocol": "icmp", "destination": "10.10.10.0/24", "type": 8, "code": 0,
                 "description": "Allow ping requests to private services"}
              ],
              "relationships": {
                "staging_spaces": {"data": [{"guid": "space-guid-1"}, {"guid": "space-guid-2"}]},
                "running_spaces": {"data": [{"guid": "space-guid-3"}]}
              },
              "links": {"self": {"href": "https://api.example.org/v3/security_groups/b85a"}}
            }"#,
        )
        .unwrap();
        let g = r.into_group().unwrap();
        assert_eq!(
            g.guid.as_deref(),
            Some("b85a788e-671f-4549-814d-e34cdb2f539a")
        );
        assert_eq!(g.name, "my-group0");
        assert!(g.globally_enabled.running && !g.globally_enabled.staging);
        assert_eq!(g.staging_spaces, ["space-guid-1", "space-guid-2"]);
        assert_eq!(g.running_spaces, ["space-guid-3"]);
        assert_eq!(g.rules[0].ports.as_deref(), Some("443,80,8080"));
        assert_eq!((g.rules[1].icmp_type, g.rules[1].code), (Some(8), Some(0)));
        crate::validate::security_group(&g).unwrap();
    }

    #[test]
    fn a_space_without_guid_is_named() {
        let r: Resource = serde_json::from_str(
            r#"{"guid": "g1", "name": "n", "relationships": {"running_spaces": {"data": [{}]}}}"#,
        )
        .unwrap();
        let e = r.into_group().unwrap_err().to_string();
        assert_eq!(
            e,
            "no 'guid' found for running-space-relationship on asg 'g1'"
        );
    }
}
