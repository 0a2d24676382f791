//! The policy list (`GET /networking/{v0,v1}/external/policies`) from an in-memory index.
//!
//! The index holds every policy in creation order, with lookups by key, source and destination.
//! It follows the committed change log, the same one the feed serves:
//! - every list reads the committed version in its own read transaction and, in that same
//!   transaction, applies the policy changes the index has not seen yet, so a list never shows
//!   less than was committed before it started, whichever replica committed it;
//! - a background task does the same shortly after each commit this process learns of (its
//!   own, or another replica's through PostgreSQL NOTIFY), so a list usually finds little to
//!   apply, and re-renders the chunks the commit touched;
//! - when the log no longer holds every change since the index's version (or the database is
//!   another one), the index is reloaded from the policies table.
//!
//! The unfiltered list is kept rendered in chunks of [`CHUNK`] consecutive policies; a change
//! re-renders only the chunk it touches, and the answer streams the chunks one after another
//! (with its exact Content-Length), so a list after a change costs about what a repeated one does.
use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::access::ListAccess;
use crate::error::StoreError;
use crate::model::{Op, Policy, PolicyKey};
use crate::store::{ops, Mode, PolicyDelta, PolicyFilter, Store, Tx};

/// Policies per rendered chunk of the unfiltered list (by creation sequence number).
pub const CHUNK: u64 = 512;

/// How long the background catch-up waits after a commit before applying it (with the commits
/// that follow in that time). Short next to the time it takes to write the changes the log
/// retains ([`crate::store::FEED_RETAIN`]), so the index keeps within the log and does not need
/// a full reload.
pub const UPDATE_DELAY: Duration = Duration::from_millis(100);

/// v0 shows only single-port policies (CF's v0 mapper leaves port ranges out, uncounted).
fn in_v0(k: &PolicyKey) -> bool {
    k.3 == k.4
}

/// Appends `,` and the policy's JSON without tags, exactly as `serde_json` writes a [`Policy`]
/// (v1) or [`Policy::to_v0`] (v0); `false` (nothing written) for a port range in v0.
fn render(out: &mut Vec<u8>, k: &PolicyKey, v0: bool) -> Result<bool, StoreError> {
    if v0 && !in_v0(k) {
        return Ok(false);
    }
    out.push(b',');
    let p = Policy::new(&k.0, &k.1, &k.2, k.3, k.4);
    if v0 {
        serde_json::to_writer(&mut *out, &p.to_v0())?;
    } else {
        serde_json::to_writer(&mut *out, &p)?;
    }
    Ok(true)
}

/// Every policy at one committed version.
#[derive(Default)]
pub struct PolicyIndex {
    /// `None` until loaded.
    version: Option<u64>,
    /// Sequence number of the next policy added (creation order).
    next: u64,
    entries: BTreeMap<u64, PolicyKey>,
    by_key: HashMap<PolicyKey, u64>,
    by_source: HashMap<String, BTreeSet<u64>>,
    by_dest: HashMap<String, BTreeSet<u64>>,
    /// Policies per chunk (`seq / CHUNK`), for the chunks that have any.
    counts: BTreeMap<u64, usize>,
    /// Rendered chunks (v1, v0): each policy preceded by a comma.
    chunks: [BTreeMap<u64, Bytes>; 2],
    /// Policies with a port range (which v0 leaves out).
    ranges: usize,
}

/// A list answer: JSON in parts, sent one after another.
#[derive(Clone, Debug)]
pub struct ListBody {
    parts: Vec<Bytes>,
    len: usize,
}

impl ListBody {
    fn new(parts: Vec<Bytes>) -> ListBody {
        let len = parts.iter().map(Bytes::len).sum();
        ListBody { parts, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

impl IntoResponse for ListBody {
    fn into_response(self) -> Response {
        let len = self.len;
        let stream = futures::stream::iter(self.parts.into_iter().map(Ok::<_, Infallible>));
        (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (header::CONTENT_LENGTH, len.to_string()),
            ],
            Body::from_stream(stream),
        )
            .into_response()
    }
}

fn head(total: usize) -> Bytes {
    Bytes::from(format!("{{\"total_policies\":{total},\"policies\":["))
}

const TAIL: &[u8] = b"]}";

/// The list filters and the apps a network.write token may see, as one predicate.
struct Matcher<'a> {
    id: Option<HashSet<&'a str>>,
    source: Option<HashSet<&'a str>>,
    dest: Option<HashSet<&'a str>>,
    allowed: Option<&'a HashSet<String>>,
}

fn set(ids: &Option<Vec<String>>) -> Option<HashSet<&str>> {
    ids.as_ref().map(|v| v.iter().map(String::as_str).collect())
}

impl Matcher<'_> {
    fn matches(&self, k: &PolicyKey) -> bool {
        let (s, d) = (k.0.as_str(), k.1.as_str());
        self.id
            .as_ref()
            .is_none_or(|i| i.contains(s) || i.contains(d))
            && self.source.as_ref().is_none_or(|i| i.contains(s))
            && self.dest.as_ref().is_none_or(|i| i.contains(d))
            && self.allowed.is_none_or(|a| a.contains(s) && a.contains(d))
    }
}

fn add_to(map: &mut HashMap<String, BTreeSet<u64>>, app: &str, seq: u64) {
    match map.get_mut(app) {
        Some(s) => {
            s.insert(seq);
        }
        None => {
            map.insert(app.to_string(), BTreeSet::from([seq]));
        }
    }
}

fn remove_from(map: &mut HashMap<String, BTreeSet<u64>>, app: &str, seq: u64) {
    if let Some(s) = map.get_mut(app) {
        s.remove(&seq);
        if s.is_empty() {
            map.remove(app);
        }
    }
}

impl PolicyIndex {
    /// The committed version the index reflects (`None`: not loaded yet).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// How many policies it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, p: &Policy) {
        let key = p.key();
        if self.by_key.contains_key(&key) {
            return;
        }
        let seq = self.next;
        self.next += 1;
        add_to(&mut self.by_source, &key.0, seq);
        add_to(&mut self.by_dest, &key.1, seq);
        self.by_key.insert(key.clone(), seq);
        self.ranges += usize::from(!in_v0(&key));
        self.entries.insert(seq, key);
        *self.counts.entry(seq / CHUNK).or_default() += 1;
        self.dirty(seq);
    }

    fn remove(&mut self, key: &PolicyKey) {
        let Some(seq) = self.by_key.remove(key) else {
            return;
        };
        self.entries.remove(&seq);
        self.ranges -= usize::from(!in_v0(key));
        remove_from(&mut self.by_source, &key.0, seq);
        remove_from(&mut self.by_dest, &key.1, seq);
        if let Slot::Occupied(mut n) = self.counts.entry(seq / CHUNK) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        self.dirty(seq);
    }

    /// Forgets the rendered chunk holding `seq`.
    fn dirty(&mut self, seq: u64) {
        for c in &mut self.chunks {
            c.remove(&(seq / CHUNK));
        }
    }

    /// Applies a delta read from the store.
    pub fn apply(&mut self, delta: PolicyDelta) {
        match delta {
            PolicyDelta::Current => {}
            PolicyDelta::Changes { version, changes } => {
                for (op, p) in &changes {
                    match op {
                        Op::Put => self.insert(p),
                        Op::Delete => self.remove(&p.key()),
                    }
                }
                self.version = Some(version);
            }
            PolicyDelta::Full { version, policies } => {
                *self = PolicyIndex::default();
                for p in &policies {
                    self.insert(p);
                }
                self.version = Some(version);
            }
        }
    }

    /// Brings the index to the version committed as seen by `tx`.
    pub fn catch_up(&mut self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        let delta = ops::policy_delta(tx, self.version)?;
        self.apply(delta);
        Ok(())
    }

    /// Sequence numbers of the policies that may match, in creation order; `None`: all.
    /// Uses the smallest of the by-source / by-destination unions the constraints allow.
    fn candidates<'a>(
        &'a self,
        f: &PolicyFilter,
        allowed: Option<&HashSet<String>>,
    ) -> Option<Vec<u64>> {
        let mut best: Option<(usize, Vec<&BTreeSet<u64>>)> = None;
        let mut consider = |sets: Vec<&'a BTreeSet<u64>>| {
            let n = sets.iter().map(|s| s.len()).sum();
            if best.as_ref().is_none_or(|(m, _)| n < *m) {
                best = Some((n, sets));
            }
        };
        let (src, dst) = (&self.by_source, &self.by_dest);
        if let Some(ids) = &f.id {
            consider(
                ids.iter()
                    .flat_map(|i| [src.get(i), dst.get(i)])
                    .flatten()
                    .collect(),
            );
        }
        if let Some(ids) = &f.source_id {
            consider(ids.iter().filter_map(|i| src.get(i)).collect());
        }
        if let Some(ids) = &f.dest_id {
            consider(ids.iter().filter_map(|i| dst.get(i)).collect());
        }
        if let Some(apps) = allowed {
            consider(apps.iter().filter_map(|a| src.get(a)).collect());
        }
        let (_, sets) = best?;
        let mut seqs: Vec<u64> = sets.into_iter().flatten().copied().collect();
        seqs.sort_unstable();
        seqs.dedup();
        Some(seqs)
    }

    /// The unfiltered list: the rendered chunks (rendering the missing ones).
    fn unfiltered(&mut self, v0: bool) -> Result<ListBody, StoreError> {
        let mut parts = Vec::with_capacity(self.counts.len() + 2);
        let total = if v0 {
            self.entries.len() - self.ranges
        } else {
            self.entries.len()
        };
        parts.push(head(total));
        let rendered = &mut self.chunks[usize::from(v0)];
        for (&c, &n) in &self.counts {
            let chunk = match rendered.entry(c) {
                Slot::Occupied(o) => o.get().clone(),
                Slot::Vacant(slot) => {
                    let mut out = Vec::with_capacity(n * 112);
                    for k in self.entries.range(c * CHUNK..(c + 1) * CHUNK).map(|e| e.1) {
                        render(&mut out, k, v0)?;
                    }
                    slot.insert(Bytes::from(out)).clone()
                }
            };
            if chunk.is_empty() {
                continue;
            }
            // Chunks start with a comma; the first one in the list drops it.
            parts.push(if parts.len() == 1 {
                chunk.slice(1..)
            } else {
                chunk
            });
        }
        parts.push(Bytes::from_static(TAIL));
        Ok(ListBody::new(parts))
    }

    /// Renders the unfiltered v1 chunks not rendered yet (so the next list need not).
    pub fn warm(&mut self) -> Result<(), StoreError> {
        self.unfiltered(false).map(drop)
    }

    /// The source and destination apps of the policies matching `f`.
    pub fn matching_apps(&self, f: &PolicyFilter) -> HashSet<String> {
        let m = Matcher {
            id: set(&f.id),
            source: set(&f.source_id),
            dest: set(&f.dest_id),
            allowed: None,
        };
        let mut out = HashSet::new();
        let mut add = |k: &PolicyKey| {
            if m.matches(k) {
                out.insert(k.0.clone());
                out.insert(k.1.clone());
            }
        };
        match self.candidates(f, None) {
            Some(seqs) => seqs
                .iter()
                .filter_map(|s| self.entries.get(s))
                .for_each(&mut add),
            None => self.entries.values().for_each(&mut add),
        }
        out
    }

    /// The list body, `{"total_policies":N,"policies":[...]}`, of the policies matching `f`
    /// (and, for a network.write token, whose apps are all in `allowed`), in creation order.
    pub fn render(
        &mut self,
        f: &PolicyFilter,
        allowed: Option<&HashSet<String>>,
        v0: bool,
    ) -> Result<ListBody, StoreError> {
        let Some(seqs) = self.candidates(f, allowed) else {
            return self.unfiltered(v0);
        };
        let m = Matcher {
            id: set(&f.id),
            source: set(&f.source_id),
            dest: set(&f.dest_id),
            allowed,
        };
        let mut out = Vec::new();
        let mut n = 0;
        for k in seqs.iter().filter_map(|s| self.entries.get(s)) {
            if m.matches(k) && render(&mut out, k, v0)? {
                n += 1;
            }
        }
        let mut body = head(n).to_vec();
        body.extend_from_slice(out.get(1..).unwrap_or_default());
        body.extend_from_slice(TAIL);
        Ok(ListBody::new(vec![Bytes::from(body)]))
    }
}

/// The shared index of one control-plane process.
#[derive(Clone, Default)]
pub struct PolicyLists(Arc<Mutex<PolicyIndex>>);

impl PolicyLists {
    /// The index; after a panic while it was held it starts over (reloaded on next use).
    fn lock(&self) -> MutexGuard<'_, PolicyIndex> {
        self.0.lock().unwrap_or_else(|poisoned| {
            self.0.clear_poison();
            let mut g = poisoned.into_inner();
            *g = PolicyIndex::default();
            g
        })
    }

    /// The list body at the committed version: one read transaction reads the token's apps
    /// (for [`ListAccess::Spaces`]), brings the index up to date and renders.
    pub async fn list(
        &self,
        store: &Store,
        filter: PolicyFilter,
        access: ListAccess,
        v0: bool,
    ) -> Result<ListBody, StoreError> {
        let me = self.clone();
        store
            .call(Mode::Read, move |tx| {
                // Taken before the first query, so this transaction's snapshot is at least as
                // new as the one the index was last brought to; held across the catch-up, so
                // one refresh runs at a time and the others find the index current.
                let mut index = me.lock();
                let in_spaces;
                let allowed = match &access {
                    ListAccess::All => None,
                    ListAccess::Spaces(s) => {
                        in_spaces = ops::apps_in_spaces(tx, s)?;
                        Some(&in_spaces)
                    }
                    ListAccess::Apps(a) => Some(a),
                };
                index.catch_up(tx)?;
                index.render(&filter, allowed, v0)
            })
            .await
    }

    /// The apps of the policies matching `filter`, at the committed version.
    pub async fn apps(
        &self,
        store: &Store,
        filter: PolicyFilter,
    ) -> Result<HashSet<String>, StoreError> {
        let me = self.clone();
        store
            .call(Mode::Read, move |tx| {
                let mut index = me.lock();
                index.catch_up(tx)?;
                Ok(index.matching_apps(&filter))
            })
            .await
    }

    /// Brings the index to the committed version and renders what changed.
    pub async fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        let me = self.clone();
        store
            .call(Mode::Read, move |tx| {
                let mut index = me.lock();
                index.catch_up(tx)?;
                index.warm()
            })
            .await
    }

    /// The version the index reflects (`None`: not loaded yet).
    pub fn version(&self) -> Option<u64> {
        self.lock().version()
    }

    /// Loads the index, then keeps it at the newest version this process knows, until
    /// `shutdown`.
    pub fn spawn_updater(
        &self,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut committed = store.subscribe();
            loop {
                committed.borrow_and_update();
                if let Err(e) = me.catch_up(&store).await {
                    tracing::warn!("policy index: {e}; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    r = committed.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                // Commits in a burst are applied together, and the catch-up does not compete
                // with the feed reads that the same commit wakes (lists catch up themselves).
                tokio::select! {
                    _ = tokio::time::sleep(UPDATE_DELAY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
