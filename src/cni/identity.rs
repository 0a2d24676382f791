//! Who a container is: app, space, org, instance index and lifecycle, gathered per field from
//! four places, highest precedence first:
//!
//! 1. `runtimeConfig.tapestry` — the `tapestry` capability, per container, from the runtime;
//! 2. `CNI_ARGS` — `APP_ID`, `POLICY_GROUP_ID`, `SPACE_ID`, `ORG_ID`, `INSTANCE_INDEX`,
//!    `LIFECYCLE` (per container; `podman run --network name:...` / `CNI_ARGS=...`);
//! 3. `args.cni` in the network configuration (the Podman/Kubernetes `args` convention);
//! 4. `metadata` in the network configuration (Garden's, as before).
//!
//! Each field is taken from the first source that has it, so a runtime can override one field
//! (say the instance index) and keep the rest from the network. Within a source
//! `policy_group_id` wins over `app_id`.

use serde_json::{Map, Value};

use super::{CniError, E_INVALID_CONFIG, E_INVALID_ENV};
use crate::cell::api::Lifecycle;

/// `CNI_ARGS` keys this plugin reads (besides `IgnoreUnknown`), and those it accepts and
/// ignores because runtimes always send them.
const ARGS_KNOWN: &[&str] = &[
    "APP_ID",
    "POLICY_GROUP_ID",
    "SPACE_ID",
    "ORG_ID",
    "INSTANCE_INDEX",
    "LIFECYCLE",
    "IP",
];
const ARGS_IGNORED: &[&str] = &[
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// The parsed `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Without `IgnoreUnknown=1` (or
/// `true`) a key this plugin does not know is an error, as in the CNI conventions.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut pairs = vec![];
    for entry in s.split(';').filter(|e| !e.trim().is_empty()) {
        let Some((k, v)) = entry.split_once('=') else {
            return Err(CniError::new(
                E_INVALID_ENV,
                format!("CNI_ARGS entry {entry:?} is not KEY=VALUE"),
                "",
            ));
        };
        pairs.push((k.trim().to_string(), v.trim().to_string()));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("IgnoreUnknown") && (v == "1" || v.eq_ignore_ascii_case("true"))
    });
    if !ignore_unknown {
        if let Some((k, _)) = pairs.iter().find(|(k, _)| {
            !k.eq_ignore_ascii_case("IgnoreUnknown")
                && !ARGS_KNOWN.contains(&k.as_str())
                && !ARGS_IGNORED.contains(&k.as_str())
        }) {
            return Err(CniError::new(
                E_INVALID_ENV,
                format!("CNI_ARGS key {k} is not known (add IgnoreUnknown=1 to pass it through)"),
                format!("known keys: {}", ARGS_KNOWN.join(", ")),
            ));
        }
    }
    Ok(pairs)
}

/// One source of identity fields, and how its fields are named in errors.
struct Source {
    values: Map<String, Value>,
    /// `true`: CNI_ARGS, whose keys are upper case (`APP_ID`) and errors are E_INVALID_ENV.
    env: bool,
    prefix: &'static str,
}

impl Source {
    fn key(&self, field: &str) -> String {
        if self.env {
            field.to_ascii_uppercase()
        } else {
            field.to_string()
        }
    }
    fn label(&self, field: &str) -> String {
        format!("{}{}", self.prefix, self.key(field))
    }
    fn error(&self, field: &str, what: &str, value: &Value) -> CniError {
        let (code, kind) = if self.env {
            (E_INVALID_ENV, "")
        } else {
            (E_INVALID_CONFIG, "network configuration field ")
        };
        CniError::new(
            code,
            format!("{kind}{} {what}", self.label(field)),
            value.to_string(),
        )
    }
}

/// The first source that has one of `fields` (in this order): the source, the field, the value.
fn find<'a>(
    sources: &'a [Source],
    fields: &[&'static str],
) -> Option<(&'a Source, &'static str, &'a Value)> {
    sources.iter().find_map(|s| {
        fields.iter().find_map(|f| match s.values.get(&s.key(f)) {
            None | Some(Value::Null) => None,
            Some(v) => Some((s, *f, v)),
        })
    })
}

/// The identity of one container.
#[derive(Debug, PartialEq)]
pub struct Identity {
    pub app_id: String,
    pub space_id: String,
    pub org_id: String,
    pub instance_index: u32,
    pub lifecycle: Lifecycle,
    /// The app's port behind 61443 (`app_port`).
    pub app_port: Option<u16>,
    /// 61443 requires a client certificate (`tls_client_auth`).
    pub tls_client_auth: bool,
}

/// Gathers the identity from `runtimeConfig`, the parsed `CNI_ARGS`, `args` and `metadata`.
pub fn identity(
    runtime_config: Option<&Value>,
    cni_args: &[(String, String)],
    args: Option<&Value>,
    metadata: Option<&Value>,
) -> Result<Identity, CniError> {
    let obj = |v: Option<&Value>, name: &str| -> Result<Map<String, Value>, CniError> {
        match v {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(other) => Err(CniError::new(
                E_INVALID_CONFIG,
                format!("network configuration field {name} must be an object"),
                other.to_string(),
            )),
        }
    };
    let sources = [
        Source {
            values: obj(
                runtime_config.and_then(|r| r.get("tapestry")),
                "runtimeConfig.tapestry",
            )?,
            env: false,
            prefix: "runtimeConfig.tapestry.",
        },
        Source {
            values: cni_args
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            env: true,
            prefix: "CNI_ARGS ",
        },
        Source {
            values: obj(args.and_then(|a| a.get("cni")), "args.cni")?,
            env: false,
            prefix: "args.cni.",
        },
        Source {
            values: obj(metadata, "metadata")?,
            env: false,
            prefix: "metadata.",
        },
    ];
    let string = |fields: &[&'static str]| -> Result<Option<String>, CniError> {
        match find(&sources, fields) {
            None => Ok(None),
            Some((_, _, Value::String(s))) if !s.is_empty() => Ok(Some(s.clone())),
            Some((s, f, v)) => Err(s.error(f, "must be a non-empty string", v)),
        }
    };
    let app_id = string(&["policy_group_id", "app_id"])?.ok_or_else(|| {
        CniError::new(
            E_INVALID_CONFIG,
            "the container has no app id: set runtimeConfig.tapestry.app_id, CNI_ARGS APP_ID, \
             args.cni.app_id, or network configuration field metadata.policy_group_id (or \
             metadata.app_id)",
            "",
        )
    })?;
    let instance_index = match find(&sources, &["instance_index"]) {
        None => 0,
        Some((s, f, v)) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| s.error(f, "is not a non-negative integer", v))?,
    };
    let lifecycle = match find(&sources, &["lifecycle"]) {
        None => Lifecycle::Running,
        Some((s, f, v)) => v
            .as_str()
            .and_then(Lifecycle::parse)
            .ok_or_else(|| s.error(f, "must be \"running\" or \"staging\"", v))?,
    };
    let app_port = match find(&sources, &["app_port"]) {
        None => None,
        Some((s, f, v)) => Some(
            v.as_u64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
                .and_then(|n| u16::try_from(n).ok())
                .filter(|p| *p != 0 && *p != 61443)
                .ok_or_else(|| s.error(f, "must be a port from 1 to 65535 other than 61443", v))?,
        ),
    };
    let tls_client_auth = match find(&sources, &["tls_client_auth"]) {
        None => false,
        Some((s, f, v)) => v
            .as_bool()
            .or_else(|| match v.as_str() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            })
            .ok_or_else(|| s.error(f, "must be true or false", v))?,
    };
    Ok(Identity {
        app_port,
        tls_client_auth,
        app_id,
        space_id: string(&["space_id"])?.unwrap_or_default(),
        org_id: string(&["org_id"])?.unwrap_or_default(),
        instance_index,
        lifecycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(s: &str) -> Vec<(String, String)> {
        parse_cni_args(s).unwrap()
    }

    #[test]
    fn cni_args_parse_and_refuse_unknown_keys_unless_told() {
        assert_eq!(
            args("APP_ID=a;INSTANCE_INDEX=2"),
            [
                ("APP_ID".into(), "a".into()),
                ("INSTANCE_INDEX".into(), "2".into())
            ]
        );
        assert!(args("").is_empty());
        assert_eq!(args("IgnoreUnknown=1;FOO=bar;;").len(), 2);
        assert_eq!(args("IgnoreUnknown=true;FOO=bar").len(), 2);
        // Kubernetes' and Podman's own keys are fine without IgnoreUnknown.
        assert_eq!(args("K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns").len(), 2);
        let e = parse_cni_args("FOO=bar").unwrap_err();
        assert_eq!(e.code, E_INVALID_ENV);
        assert!(
            e.msg.contains("FOO") && e.msg.contains("IgnoreUnknown"),
            "{}",
            e.msg
        );
        let e = parse_cni_args("IgnoreUnknown=0;FOO=bar").unwrap_err();
        assert!(e.msg.contains("FOO"), "{}", e.msg);
        let e = parse_cni_args("APP_ID").unwrap_err();
        assert_eq!(e.code, E_INVALID_ENV);
        assert!(e.msg.contains("KEY=VALUE"), "{}", e.msg);
    }

    #[test]
    fn each_field_comes_from_the_highest_source_that_has_it() {
        let md = json!({"policy_group_id": "md-app", "space_id": "md-space", "org_id": "md-org",
            "instance_index": 1, "lifecycle": "staging"});
        let only_md = identity(None, &[], None, Some(&md)).unwrap();
        assert_eq!(
            only_md,
            Identity {
                app_port: None,
                tls_client_auth: false,
                app_id: "md-app".into(),
                space_id: "md-space".into(),
                org_id: "md-org".into(),
                instance_index: 1,
                lifecycle: Lifecycle::Staging,
            }
        );
        let a = json!({"cni": {"app_id": "args-app", "instance_index": "2"}});
        let id = identity(None, &[], Some(&a), Some(&md)).unwrap();
        assert_eq!((id.app_id.as_str(), id.instance_index), ("args-app", 2));
        assert_eq!(id.space_id, "md-space");
        let env = args("IgnoreUnknown=1;APP_ID=env-app;SPACE_ID=env-space;K8S_POD_NAME=x");
        let id = identity(None, &env, Some(&a), Some(&md)).unwrap();
        assert_eq!(
            (id.app_id.as_str(), id.space_id.as_str(), id.instance_index),
            ("env-app", "env-space", 2)
        );
        let rc =
            json!({"tapestry": {"instance_index": 7, "lifecycle": "running"}, "portMappings": []});
        let id = identity(Some(&rc), &env, Some(&a), Some(&md)).unwrap();
        assert_eq!(
            (id.app_id.as_str(), id.instance_index, id.lifecycle),
            ("env-app", 7, Lifecycle::Running)
        );
        assert_eq!(id.org_id, "md-org");
        // Within one source policy_group_id wins over app_id; a higher source's app_id wins
        // over a lower source's policy_group_id.
        let md2 = json!({"app_id": "x", "policy_group_id": "pg"});
        assert_eq!(identity(None, &[], None, Some(&md2)).unwrap().app_id, "pg");
        assert_eq!(
            identity(None, &args("APP_ID=e"), None, Some(&md2))
                .unwrap()
                .app_id,
            "e"
        );
        // Only runtimeConfig: defaults for the rest.
        let rc = json!({"tapestry": {"app_id": "r"}});
        let id = identity(Some(&rc), &[], None, None).unwrap();
        assert_eq!(
            id,
            Identity {
                app_port: None,
                tls_client_auth: false,
                app_id: "r".into(),
                space_id: String::new(),
                org_id: String::new(),
                instance_index: 0,
                lifecycle: Lifecycle::Running,
            }
        );
    }

    #[test]
    fn bad_values_name_the_field_and_source() {
        let err = |rc: Option<Value>, env: &str, a: Option<Value>, md: Option<Value>| {
            identity(rc.as_ref(), &args(env), a.as_ref(), md.as_ref()).unwrap_err()
        };
        let e = err(None, "", None, None);
        assert_eq!(e.code, E_INVALID_CONFIG);
        for way in [
            "runtimeConfig.tapestry.app_id",
            "CNI_ARGS APP_ID",
            "args.cni.app_id",
            "metadata.policy_group_id",
        ] {
            assert!(e.msg.contains(way), "{way}: {}", e.msg);
        }
        let e = err(None, "APP_ID=a;INSTANCE_INDEX=-1", None, None);
        assert_eq!(e.code, E_INVALID_ENV);
        assert!(e.msg.starts_with("CNI_ARGS INSTANCE_INDEX "), "{}", e.msg);
        let e = err(None, "APP_ID=a;INSTANCE_INDEX=4294967296", None, None);
        assert!(e.msg.contains("INSTANCE_INDEX"), "{}", e.msg);
        let e = err(None, "APP_ID=a;LIFECYCLE=build", None, None);
        assert!(
            e.msg.contains("CNI_ARGS LIFECYCLE") && e.msg.contains("staging"),
            "{}",
            e.msg
        );
        let e = err(None, "APP_ID=", None, None);
        assert!(e.msg.contains("CNI_ARGS APP_ID"), "{}", e.msg);
        let e = err(Some(json!({"tapestry": {"app_id": 5}})), "", None, None);
        assert_eq!(e.code, E_INVALID_CONFIG);
        assert!(e.msg.contains("runtimeConfig.tapestry.app_id"), "{}", e.msg);
        let e = err(Some(json!({"tapestry": "a"})), "", None, None);
        assert!(
            e.msg.contains("runtimeConfig.tapestry must be an object"),
            "{}",
            e.msg
        );
        let e = err(
            None,
            "",
            Some(json!({"cni": {"app_id": "a", "instance_index": 1.5}})),
            None,
        );
        assert!(e.msg.contains("args.cni.instance_index"), "{}", e.msg);
        let e = err(None, "", Some(json!({"cni": []})), None);
        assert!(e.msg.contains("args.cni must be an object"), "{}", e.msg);
        let e = err(None, "", None, Some(json!({"app_id": "a", "space_id": 3})));
        assert!(e.msg.contains("metadata.space_id"), "{}", e.msg);
        // A higher source's bad value is an error even when a lower one is fine.
        let e = err(
            None,
            "INSTANCE_INDEX=x",
            None,
            Some(json!({"app_id": "a", "instance_index": 1})),
        );
        assert!(e.msg.contains("CNI_ARGS INSTANCE_INDEX"), "{}", e.msg);
    }
}
