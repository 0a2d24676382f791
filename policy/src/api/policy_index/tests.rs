use std::collections::HashSet;

use proptest::prelude::*;
use serde::Serialize;

use super::*;
use crate::store::{Settings, Val};

/// The body as the list handler rendered it before the index: serde over the filtered list.
fn reference(
    all: &[Policy],
    f: &PolicyFilter,
    allowed: Option<&HashSet<String>>,
    v0: bool,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct PolicyList<T> {
        total_policies: usize,
        policies: Vec<T>,
    }
    let has =
        |ids: &Option<Vec<String>>, a: &str| ids.as_ref().is_none_or(|v| v.iter().any(|i| i == a));
    let list: Vec<Policy> = all
        .iter()
        .filter(|p| {
            let (s, d) = (p.source.id.as_str(), p.destination.id.as_str());
            (f.id.is_none() || has(&f.id, s) || has(&f.id, d))
                && has(&f.source_id, s)
                && has(&f.dest_id, d)
                && allowed.is_none_or(|a| a.contains(s) && a.contains(d))
        })
        .cloned()
        .collect();
    if v0 {
        let policies: Vec<serde_json::Value> = list.iter().map(Policy::to_v0).collect();
        serde_json::to_vec(&PolicyList {
            total_policies: policies.len(),
            policies,
        })
    } else {
        serde_json::to_vec(&PolicyList {
            total_policies: list.len(),
            policies: list,
        })
    }
    .unwrap()
}

fn pol(s: &str, d: &str, port: u16) -> Policy {
    Policy::new(s, d, "tcp", port, port)
}

fn changes(version: u64, ops: Vec<(Op, Policy)>) -> PolicyDelta {
    PolicyDelta::Changes {
        version,
        changes: ops,
    }
}

#[test]
fn keeps_creation_order_across_deletes_and_re_creates() {
    let mut i = PolicyIndex::default();
    let (a, b, c) = (pol("A", "B", 1), pol("A", "C", 2), pol("B", "C", 3));
    i.apply(PolicyDelta::Full {
        version: 3,
        policies: vec![a.clone(), b.clone()],
    });
    i.apply(changes(
        5,
        vec![
            (Op::Put, c.clone()),
            (Op::Delete, a.clone()),
            (Op::Put, a.clone()),
            (Op::Put, b.clone()), // already there: ignored
        ],
    ));
    assert_eq!(i.version(), Some(5));
    assert_eq!(i.len(), 3);
    let all = [b, c, a];
    let f = PolicyFilter::default();
    for v0 in [false, true] {
        assert_eq!(
            i.render(&f, None, v0).unwrap().to_vec(),
            reference(&all, &f, None, v0)
        );
    }
}

#[test]
fn cached_body_follows_changes() {
    let mut i = PolicyIndex::default();
    let f = PolicyFilter::default();
    i.apply(changes(1, vec![(Op::Put, pol("A", "B", 1))]));
    let first = i.render(&f, None, false).unwrap().to_vec();
    assert_eq!(i.render(&f, None, false).unwrap().to_vec(), first);
    // A change that is not a policy (a version bump only) keeps the body.
    i.apply(changes(2, vec![]));
    assert_eq!(i.render(&f, None, false).unwrap().to_vec(), first);
    i.apply(changes(3, vec![(Op::Delete, pol("A", "B", 1))]));
    assert_eq!(
        &i.render(&f, None, false).unwrap().to_vec()[..],
        br#"{"total_policies":0,"policies":[]}"#
    );
}

#[test]
fn chunks_follow_changes_across_boundaries() {
    let mut i = PolicyIndex::default();
    let f = PolicyFilter::default();
    let n = 3 * CHUNK as u16 + 7;
    let mut model: Vec<Policy> = (0..n)
        .map(|k| pol(&format!("s{}", k % 5), "d", k + 1))
        .collect();
    i.apply(PolicyDelta::Full {
        version: 1,
        policies: model.clone(),
    });
    for v0 in [false, true] {
        assert_eq!(
            i.render(&f, None, v0).unwrap().to_vec(),
            reference(&model, &f, None, v0)
        );
    }
    // Empty the first chunk and the second entirely but one, touch the last, add a few.
    let gone: Vec<Policy> = model
        .iter()
        .enumerate()
        .filter(|(k, _)| {
            *k < CHUNK as usize
                || (*k > CHUNK as usize && *k < 2 * CHUNK as usize)
                || *k == n as usize - 1
        })
        .map(|(_, p)| p.clone())
        .collect();
    let added: Vec<Policy> = (0..3).map(|k| pol("new", "d", k + 1)).collect();
    let mut ops: Vec<(Op, Policy)> = gone.iter().map(|p| (Op::Delete, p.clone())).collect();
    ops.extend(added.iter().map(|p| (Op::Put, p.clone())));
    i.apply(changes(2, ops));
    model.retain(|p| !gone.contains(p));
    model.extend(added);
    for v0 in [false, true] {
        let body = i.render(&f, None, v0).unwrap();
        assert_eq!(body.len(), body.to_vec().len());
        assert_eq!(body.to_vec(), reference(&model, &f, None, v0));
    }
    let by_source = PolicyFilter {
        source_id: Some(vec!["s1".into(), "new".into()]),
        ..Default::default()
    };
    assert_eq!(
        i.render(&by_source, None, false).unwrap().to_vec(),
        reference(&model, &by_source, None, false)
    );
}

fn app() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["A", "B", "C", "d\"q", "e\\u", "f\u{e9}", "g\n"])
        .prop_map(String::from)
}

fn ids() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(app(), 0..3))
}

proptest! {
    /// Same bytes as serde over the filtered list, for every filter and API version, after any
    /// sequence of creates and deletes.
    #[test]
    fn renders_like_serde(
        ops in prop::collection::vec((any::<bool>(), app(), app(), 1u16..4, any::<bool>()), 0..40),
        id in ids(), source_id in ids(), dest_id in ids(),
        allowed in prop::option::of(prop::collection::hash_set(app(), 0..5)),
        v0 in any::<bool>(),
    ) {
        let mut i = PolicyIndex::default();
        let mut model: Vec<Policy> = Vec::new();
        for (n, (put, s, d, port, udp)) in ops.into_iter().enumerate() {
            let mut p = pol(&s, &d, port);
            if udp {
                p.destination.protocol = "udp".into();
            }
            if put {
                if !model.contains(&p) {
                    model.push(p.clone());
                }
            } else {
                model.retain(|q| *q != p);
            }
            i.apply(changes(n as u64 + 1, vec![(if put { Op::Put } else { Op::Delete }, p)]));
        }
        let f = PolicyFilter { id, source_id, dest_id };
        let body = i.render(&f, allowed.as_ref(), v0).unwrap().to_vec();
        prop_assert_eq!(&body[..], &reference(&model, &f, allowed.as_ref(), v0)[..]);
        // Served twice (the unfiltered body from the cache): same bytes.
        prop_assert_eq!(i.render(&f, allowed.as_ref(), v0).unwrap().to_vec(), body);
        // The apps of the matching policies (what Cloud Controller is asked about).
        let listed: serde_json::Value =
            serde_json::from_slice(&reference(&model, &f, None, false)).unwrap();
        let want: HashSet<String> = listed["policies"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| [&p["source"]["id"], &p["destination"]["id"]])
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        prop_assert_eq!(i.matching_apps(&f), want);
    }
}

async fn sqlite_store(dir: &std::path::Path) -> Store {
    Store::open(
        None,
        dir,
        Settings::new("10.255.0.0/16".parse().unwrap(), 24),
    )
    .await
    .unwrap()
}

async fn create(store: &Store, ps: Vec<Policy>) {
    let settings = store.settings.clone();
    store
        .call(Mode::Write, move |tx| {
            ops::create_policies(tx, &settings, &ps, ops::Quota::Enforce)
        })
        .await
        .unwrap();
}

async fn delete(store: &Store, ps: Vec<Policy>) {
    store
        .call(Mode::Write, move |tx| ops::delete_policies(tx, &ps))
        .await
        .unwrap();
}

async fn from_table(store: &Store) -> Vec<Policy> {
    store
        .call(Mode::Read, |tx| {
            ops::list_policies(tx, &PolicyFilter::default(), false)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn follows_the_change_log_and_reloads_after_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let lists = PolicyLists::default();
    let f = PolicyFilter::default;
    create(&store, vec![pol("A", "B", 1), pol("A", "C", 1)]).await;
    let body = lists
        .list(&store, f(), ListAccess::All, false)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(
        body,
        reference(&from_table(&store).await, &f(), None, false)
    );
    let loaded = lists.version().unwrap();

    // Incremental: only the new changes are read.
    create(&store, vec![pol("C", "A", 2)]).await;
    delete(&store, vec![pol("A", "B", 1)]).await;
    create(&store, vec![pol("A", "B", 1)]).await;
    let body = lists
        .list(&store, f(), ListAccess::All, false)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(
        body,
        reference(&from_table(&store).await, &f(), None, false)
    );
    assert!(lists.version().unwrap() > loaded);

    // The log lost changes the index has not seen: it reloads from the table.
    let seen = lists.version().unwrap();
    create(&store, vec![pol("D", "E", 3)]).await;
    delete(&store, vec![pol("A", "C", 1)]).await;
    store
        .call(Mode::Write, move |tx| {
            tx.exec(
                "DELETE FROM changes WHERE version <= $1",
                &[Val::I(seen as i64 + 2)],
            )
        })
        .await
        .unwrap();
    let body = lists
        .list(&store, f(), ListAccess::All, true)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(body, reference(&from_table(&store).await, &f(), None, true));
    let body = lists
        .list(&store, f(), ListAccess::All, false)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(
        body,
        reference(&from_table(&store).await, &f(), None, false)
    );

    // A database whose log is behind the index (another or a reset database): reload.
    let other = tempfile::tempdir().unwrap();
    let store2 = sqlite_store(other.path()).await;
    create(&store2, vec![pol("X", "Y", 9)]).await;
    let body = lists
        .list(&store2, f(), ListAccess::All, false)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(
        &body[..],
        &reference(&[pol("X", "Y", 9)], &f(), None, false)[..]
    );
}
