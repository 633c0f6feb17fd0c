//! Scrub and repair of a shard (`admin scrub`, and the background scrub): every record
//! read again and checked by the store, and every ref's closure walked
//! ([`closure_missing`]); each object the index serves from a damaged record, or that a
//! closure lacks, is fetched again from a member that holds it, checked against its
//! id, and written anew. What cannot be repaired (no member has it, or it is a raft
//! value) is reported and logged, and stays unserved: reads check every record.

use super::*;
use repospanner_storage::Damaged;

/// Objects asked of a member per request (its answer is bounded anyway).
const ASK_MAX: usize = 10_000;

/// What one shard's scrub found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScrubSummary {
    pub shard: usize,
    /// The repository scrubbed, or every record of the shard.
    pub repo: Option<String>,
    /// Whether this shard holds what was asked for (the repository, or anything).
    pub found: bool,
    pub records: u64,
    pub objects: u64,
    pub damaged_regions: usize,
    pub damaged: usize,
    pub repaired: usize,
    /// Objects still damaged (hex ids, at most 100 listed).
    pub unrepaired: Vec<String>,
    pub unrepaired_count: usize,
    /// Raft log or metadata values in damaged regions (not repaired here).
    pub damaged_values: usize,
    /// Objects a ref's closure names that the repository lacks, and of those, how many
    /// were fetched from the members.
    pub missing: usize,
    pub missing_fetched: usize,
    /// When it ended, in seconds since the Unix epoch.
    pub finished: u64,
}

impl<D: Dir> NodeBackend<D> {
    /// Scrubs `repo`'s objects, or every record of the shard, at most
    /// `bytes_per_second` read, and repairs what it can from the members.
    pub async fn scrub(
        &self,
        repo: Option<&str>,
        bytes_per_second: u64,
    ) -> Result<ScrubSummary, repospanner_storage::Error> {
        let store = &self.inner.store;
        let mut summary = ScrubSummary {
            shard: self.inner.shard,
            repo: repo.map(str::to_owned),
            ..ScrubSummary::default()
        };
        info!(shard = self.inner.shard, repo, "scrub started");
        let damaged = match repo {
            Some(name) => match self.ns_of(name) {
                Some(ns) => {
                    summary.found = true;
                    let d = store
                        .scrub_namespace(Namespace(ns), bytes_per_second)
                        .await?;
                    summary.objects = store.oids_in(Namespace(ns)).len() as u64;
                    d
                }
                None => Vec::new(),
            },
            None => {
                summary.found = true;
                let r = store.scrub(bytes_per_second).await?;
                for c in &r.verify.corruptions {
                    warn!(shard = self.inner.shard, segment = c.segment, offset = c.offset, len = c.len, reason = %c.reason, "scrub: damaged region");
                }
                summary.records = r.verify.records;
                summary.objects = r.verify.objects;
                summary.damaged_regions = r.verify.corruptions.len();
                summary.damaged_values = r.damaged_values;
                r.damaged
            }
        };
        summary.damaged = damaged.len();
        let left = self.repair(damaged).await;
        // After the repair: a damaged object repaired is no longer missing.
        let repos: Vec<(String, u64, Vec<Oid>)> = self.inner.sm.with_state(|st| {
            st.repos
                .iter()
                .filter(|(name, _)| repo.is_none_or(|r| r == name.as_str()))
                .map(|(name, r)| {
                    let tips = r
                        .refs
                        .values()
                        .filter_map(|h| repospanner_net::git::parse_hex(h.as_bytes()))
                        .collect();
                    (name.clone(), r.id, tips)
                })
                .collect()
        });
        for (name, ns, tips) in repos {
            let missing = self.missing_in(ns, tips).await;
            if !missing.is_empty() {
                warn!(shard = self.inner.shard, repo = %name, missing = missing.len(), "scrub: a ref's closure lacks objects");
                summary.missing += missing.len();
                summary.missing_fetched += self.fetch_missing_objects(ns, missing).await;
            }
        }
        summary.repaired = summary.damaged - left.len();
        summary.unrepaired_count = left.len();
        summary.unrepaired = left.iter().take(100).map(|d| hex(&d.oid)).collect();
        summary.finished = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if summary.damaged > 0 || summary.damaged_values > 0 {
            warn!(
                shard = self.inner.shard,
                damaged = summary.damaged,
                repaired = summary.repaired,
                unrepaired = summary.unrepaired_count,
                damaged_values = summary.damaged_values,
                "scrub found damage"
            );
        } else {
            info!(
                shard = self.inner.shard,
                records = summary.records,
                objects = summary.objects,
                "scrub found nothing damaged"
            );
        }
        *self.inner.last_scrub.borrow_mut() = Some(summary.clone());
        Ok(summary)
    }

    /// What the closures of `tips` in namespace `ns` lack (damaged objects are not
    /// missing: the store's scrub names those).
    async fn missing_in(&self, ns: u64, tips: Vec<Oid>) -> Vec<Oid> {
        let store = &self.inner.store;
        let ns = Namespace(ns);
        closure_missing(
            tips,
            |o| async move {
                match store.read_object(ns, &o).await {
                    Ok(Some(x)) => Read::Found(x),
                    Ok(None) => Read::Missing,
                    Err(_) => Read::Damaged,
                }
            },
            |o| store.contains(ns, o),
        )
        .await
    }

    /// Fetches `missing` objects of `ns` from the members, each checked against its id
    /// before it is stored; how many it stored.
    async fn fetch_missing_objects(&self, ns: u64, missing: Vec<Oid>) -> usize {
        let mut stored = 0;
        for (oid, o) in self.fetch_from_members(ns, &missing).await {
            match self.inner.store.add_checked(Namespace(ns), o).await {
                Ok(true) => stored += 1,
                Ok(false) => warn!(object = %hex(&oid), "scrub: a member's copy is not the object"),
                Err(e) => warn!(error = %e, "scrub: storing a fetched object"),
            }
        }
        stored
    }

    /// The stored entries of `want` (objects of namespace `ns`) that the members have,
    /// asked of one member after another until every one is found; unchecked.
    async fn fetch_from_members(&self, ns: u64, want: &[Oid]) -> HashMap<Oid, StoredObject> {
        let peers = crate::cluster::peers_of(self.raft(), self.inner.identity.id);
        let mut fetched: HashMap<Oid, StoredObject> = HashMap::new();
        for (_, addr) in &peers {
            loop {
                let ask: Vec<Oid> = want
                    .iter()
                    .filter(|o| !fetched.contains_key(*o))
                    .take(ASK_MAX)
                    .copied()
                    .collect();
                if ask.is_empty() {
                    return fetched;
                }
                let body = Bytes::from(encode_ids(ns, &ask));
                let path = Op::Fetch.path(self.inner.shard);
                let reply = self
                    .inner
                    .client
                    .post(addr, &path, body.into(), Duration::from_secs(300))
                    .await;
                match reply.map(|b| decode_objects(&b)) {
                    // Ask this member again only while it answers with something.
                    Ok(Ok(objs)) if !objs.is_empty() => {
                        fetched.extend(objs.into_iter().map(|o| (o.oid, o)));
                    }
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        warn!(peer = %addr, error = %e, "repair: a member's answer");
                        break;
                    }
                    Err(e) => {
                        warn!(peer = %addr, error = %e, "repair: asking a member");
                        break;
                    }
                }
            }
        }
        fetched
    }

    /// The error for a failed read; a damaged record it found is repaired from the
    /// members in the background (once at a time per place), so that the reader's next
    /// try succeeds.
    pub(super) fn read_failed(&self, e: repospanner_storage::Error) -> BackendError {
        if let repospanner_storage::Error::Corrupt {
            segment, offset, ..
        } = &e
        {
            let place = (*segment, *offset);
            let damaged = self.inner.store.served_at(place.0, place.1);
            if !damaged.is_empty() && self.inner.repairing.borrow_mut().insert(place) {
                warn!(
                    shard = self.inner.shard,
                    segment = place.0,
                    offset = place.1,
                    objects = damaged.len(),
                    "a read found a damaged record; repairing it from the members"
                );
                let me = self.clone();
                glommio::spawn_local(async move {
                    let left = me.repair(damaged).await;
                    if !left.is_empty() {
                        warn!(
                            shard = me.inner.shard,
                            objects = left.len(),
                            "a damaged record could not be repaired from the members"
                        );
                    }
                    me.inner.repairing.borrow_mut().remove(&place);
                })
                .detach();
            }
        }
        err(e)
    }

    /// Fetches `damaged` objects again from the members and writes them anew; returns
    /// those it could not. Objects of namespaces that are no repository here (a push's
    /// aside objects, a deleted repository) are left: nothing serves them.
    async fn repair(&self, damaged: Vec<Damaged>) -> Vec<Damaged> {
        let repos: HashSet<u64> = self
            .inner
            .sm
            .with_state(|s| s.repos.values().map(|r| r.id).collect());
        let (mut left, skipped): (Vec<Damaged>, Vec<Damaged>) =
            damaged.into_iter().partition(|d| repos.contains(&d.ns.0));
        // Twice: a delta whose base was damaged too is written once its base is.
        for _ in 0..2 {
            let mut again = Vec::new();
            let mut by_ns: BTreeMap<u64, Vec<Damaged>> = BTreeMap::new();
            for d in left {
                by_ns.entry(d.ns.0).or_default().push(d);
            }
            for (ns, ds) in by_ns {
                let want: Vec<Oid> = ds.iter().map(|d| d.oid).collect();
                let fetched = self.fetch_from_members(ns, &want).await;
                for d in ds {
                    let done = match fetched.get(&d.oid) {
                        Some(o) => self
                            .inner
                            .store
                            .replace_damaged(d, o.clone())
                            .await
                            .unwrap_or_else(|e| {
                                warn!(error = %e, "repair: writing an object anew");
                                false
                            }),
                        None => false,
                    };
                    if done {
                        info!(shard = self.inner.shard, object = %hex(&d.oid), "repaired a damaged object from a member");
                    } else {
                        again.push(d);
                    }
                }
            }
            left = again;
        }
        left.extend(skipped);
        left
    }
}

/// What reading one object found.
pub(super) enum Read {
    Found((ObjectKind, Vec<u8>)),
    Missing,
    Damaged,
}

/// The objects the closures of `tips` name that are not there: commits, trees and tags
/// are read (`read`) and their links followed; blobs only looked up (`has`). An
/// object that cannot be read is not walked further (the store's scrub reports it).
pub(super) async fn closure_missing<F, Fut>(
    tips: Vec<Oid>,
    read: F,
    has: impl Fn(&Oid) -> bool,
) -> Vec<Oid>
where
    F: Fn(Oid) -> Fut,
    Fut: std::future::Future<Output = Read>,
{
    let mut seen: HashSet<Oid> = HashSet::new();
    let mut stack: Vec<Oid> = tips;
    let mut missing = Vec::new();
    while let Some(o) = stack.pop() {
        if !seen.insert(o) {
            continue;
        }
        match read(o).await {
            Read::Found((kind, content)) => {
                let Ok(links) = repospanner_net::git::objects::links(kind, &content) else {
                    continue;
                };
                for (t, k) in links.targets {
                    if k == ObjectKind::Blob {
                        if seen.insert(t) && !has(&t) {
                            missing.push(t);
                        }
                    } else {
                        stack.push(t);
                    }
                }
            }
            Read::Missing => missing.push(o),
            Read::Damaged => {}
        }
        if seen.len().is_multiple_of(1024) {
            glommio::yield_if_needed().await;
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: ObjectKind, content: &[u8]) -> Oid {
        repospanner_storage::object::object_id(kind, content).expect("no collision")
    }

    #[test]
    fn a_closure_lacking_a_blob_a_tree_and_a_parent_names_them() {
        let blob = id(ObjectKind::Blob, b"present\n");
        let lost_blob = [7u8; 20];
        let mut lost_tree_entry = b"100644 gone\0".to_vec();
        lost_tree_entry.extend_from_slice(&lost_blob);
        let sub = lost_tree_entry.clone();
        let sub_id = id(ObjectKind::Tree, &sub);
        let mut tree = b"100644 a\0".to_vec();
        tree.extend_from_slice(&blob);
        tree.extend_from_slice(b"40000 d\0");
        tree.extend_from_slice(&sub_id);
        let tree_id = id(ObjectKind::Tree, &tree);
        let missing_tree = [9u8; 20];
        let parent_gone = [5u8; 20];
        let commit = |tree: &Oid, parent: Option<&Oid>| {
            let mut c = format!("tree {}\n", hex(tree));
            if let Some(p) = parent {
                c.push_str(&format!("parent {}\n", hex(p)));
            }
            c.push_str("author A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nm\n");
            c.into_bytes()
        };
        let c1 = commit(&tree_id, Some(&parent_gone));
        let c1_id = id(ObjectKind::Commit, &c1);
        let c2 = commit(&missing_tree, Some(&c1_id));
        let c2_id = id(ObjectKind::Commit, &c2);
        let objects: HashMap<Oid, (ObjectKind, Vec<u8>)> = [
            (c1_id, (ObjectKind::Commit, c1)),
            (c2_id, (ObjectKind::Commit, c2)),
            (tree_id, (ObjectKind::Tree, tree)),
            (sub_id, (ObjectKind::Tree, sub)),
            (blob, (ObjectKind::Blob, b"present\n".to_vec())),
        ]
        .into_iter()
        .collect();
        let objects = &objects;
        let mut missing = futures_lite::future::block_on(closure_missing(
            vec![c2_id],
            |o| async move {
                match objects.get(&o) {
                    Some(x) => Read::Found(x.clone()),
                    None => Read::Missing,
                }
            },
            |o| objects.contains_key(o),
        ));
        missing.sort_unstable();
        let mut want = vec![lost_blob, missing_tree, parent_gone];
        want.sort_unstable();
        assert_eq!(missing, want);
    }
}
