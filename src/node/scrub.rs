//! Scrub and repair of a shard (`admin scrub`, and the background scrub): every record
//! read again and checked by the store; each object the index serves from a damaged
//! record is fetched again from a member that holds it, checked against its id, and
//! written anew. What cannot be repaired (no member has it, or it is a raft value) is
//! reported and logged, and stays unserved: reads check every record.

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
        let peers = crate::cluster::peers_of(self.raft(), self.inner.identity.id);
        // Twice: a delta whose base was damaged too is written once its base is.
        for _ in 0..2 {
            let mut again = Vec::new();
            let mut by_ns: BTreeMap<u64, Vec<Damaged>> = BTreeMap::new();
            for d in left {
                by_ns.entry(d.ns.0).or_default().push(d);
            }
            for (ns, ds) in by_ns {
                let mut fetched: HashMap<Oid, StoredObject> = HashMap::new();
                for (_, addr) in &peers {
                    let want: Vec<Oid> = ds
                        .iter()
                        .map(|d| d.oid)
                        .filter(|o| !fetched.contains_key(o))
                        .take(ASK_MAX)
                        .collect();
                    if want.is_empty() {
                        break;
                    }
                    let body = Bytes::from(encode_ids(ns, &want));
                    let reply = self
                        .inner
                        .client
                        .post(
                            addr,
                            &Op::Fetch.path(self.inner.shard),
                            body,
                            Duration::from_secs(300),
                        )
                        .await;
                    match reply.map(|b| decode_objects(&b)) {
                        Ok(Ok(objs)) => fetched.extend(objs.into_iter().map(|o| (o.oid, o))),
                        Ok(Err(e)) => warn!(peer = %addr, error = %e, "repair: a member's answer"),
                        Err(e) => warn!(peer = %addr, error = %e, "repair: asking a member"),
                    }
                }
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
