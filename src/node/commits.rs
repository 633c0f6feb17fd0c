//! The commit headers a shard keeps (tree, parents, committer time, by namespace): a
//! fetch's commit walk reads these instead of the commits. A one-commit fetch into a
//! clone with many refs walks every commit of the client's tips newer than its edge
//! (some 11,000 in git/git), and a node that stored them as deltas would read each
//! one's delta chain from the disk. Every node warms them with what each push brought
//! once it applies (a walk from the new tips down to what it keeps), so the first fetch
//! after a push finds them on any node. Bounded in bytes, oldest out first; a header is
//! only trusted while the store still holds its commit in the namespace.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use repospanner_net::git::objects::{CommitHeader, Malformed};
use repospanner_net::git::{hex, ObjectKind, Oid};
use repospanner_storage::io::Dir;
use repospanner_storage::{Namespace, Store};
use tracing::debug;

/// What the cache holds at most, per shard.
pub(crate) const COMMIT_CACHE_BYTES_MAX: usize = 32 << 20;

/// What a header costs the cache besides its parents: the map's slot and the
/// eviction queue's.
const ENTRY_BYTES: usize = 112;

/// What a header costs the cache: its parents' allocation and the bookkeeping.
fn cost(h: &CommitHeader) -> usize {
    ENTRY_BYTES + h.parents.capacity() * std::mem::size_of::<Oid>()
}

/// Most commits a batch of [`Commits::headers`] asks the store for, and most bytes
/// of contents it reads at once (what is past it is read alone).
const BATCH: usize = 256;
const BATCH_BYTES: u64 = 16 << 20;

/// A namespace and the new tips of a push to it.
type Tips = (u64, Vec<Oid>);

/// Why headers could not be read.
#[derive(Debug)]
pub(crate) enum HeaderError {
    Read(repospanner_storage::Error),
    Malformed(Oid, Malformed),
}

/// The shard's commit headers, shared by the node (fetches read them) and its apply
/// hook (which warms them with what each push brought).
pub(crate) struct Commits<D: Dir> {
    store: Store<D>,
    cache: Rc<RefCell<CommitCache>>,
    /// Namespaces and tips of applied pushes whose history is still to be warmed.
    queue: Rc<RefCell<VecDeque<Tips>>>,
    warming: Rc<Cell<bool>>,
}

impl<D: Dir> Clone for Commits<D> {
    fn clone(&self) -> Self {
        Commits {
            store: self.store.clone(),
            cache: self.cache.clone(),
            queue: self.queue.clone(),
            warming: self.warming.clone(),
        }
    }
}

impl<D: Dir> Commits<D> {
    pub(crate) fn new(store: Store<D>) -> Self {
        Commits {
            store,
            cache: Rc::default(),
            queue: Rc::default(),
            warming: Rc::default(),
        }
    }

    /// Headers kept, and the bytes they cost.
    pub(crate) fn len_and_bytes(&self) -> (usize, usize) {
        self.cache.borrow().len_and_bytes()
    }

    /// The headers of `oids` in namespace `ns` (`None` for each it lacks or that is
    /// not a commit): kept ones at once, the rest read together.
    pub(crate) async fn headers(
        &self,
        ns: u64,
        oids: &[Oid],
    ) -> Result<Vec<Option<CommitHeader>>, HeaderError> {
        let held = |o: &Oid| self.store.contains(Namespace(ns), o);
        let mut out: Vec<Option<CommitHeader>> = {
            let cache = self.cache.borrow();
            oids.iter()
                .map(|o| cache.get(ns, o).filter(|_| held(o)))
                .collect()
        };
        let missing: Vec<Oid> = oids
            .iter()
            .zip(&out)
            .filter(|(o, h)| h.is_none() && held(o))
            .map(|(o, _)| *o)
            .collect();
        let mut found: HashMap<Oid, CommitHeader> = HashMap::with_capacity(missing.len());
        for chunk in missing.chunks(BATCH) {
            let read = self
                .store
                .read_objects(Namespace(ns), chunk, BATCH_BYTES)
                .await
                .map_err(HeaderError::Read)?;
            for (oid, r) in chunk.iter().zip(read) {
                let content = match r {
                    Some(c) => Some(c),
                    // Past the batch's bytes: alone, if it is a commit at all (a ref
                    // may name a large blob).
                    None => {
                        let head = self.store.read_head(Namespace(ns), oid).await;
                        if head.map_err(HeaderError::Read)?.map(|h| h.kind)
                            != Some(ObjectKind::Commit)
                        {
                            continue;
                        }
                        let read = self.store.read_object(Namespace(ns), oid).await;
                        read.map_err(HeaderError::Read)?
                    }
                };
                if let Some((ObjectKind::Commit, c)) = content {
                    let h = CommitHeader::parse(&c).map_err(|e| HeaderError::Malformed(*oid, e))?;
                    found.insert(*oid, h);
                }
            }
        }
        let mut cache = self.cache.borrow_mut();
        for (o, slot) in oids.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                if let Some(h) = found.get(o) {
                    cache.put(ns, *o, h.clone(), COMMIT_CACHE_BYTES_MAX);
                    *slot = Some(h.clone());
                }
            }
        }
        Ok(out)
    }

    /// A push to `ns` applied with these new tips: the headers of the history they
    /// reach are read in the background, down to what is kept already.
    pub(crate) fn warm(&self, ns: u64, tips: Vec<Oid>) {
        if tips.is_empty() {
            return;
        }
        self.queue.borrow_mut().push_back((ns, tips));
        if self.warming.replace(true) {
            return;
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            loop {
                let next = me.queue.borrow_mut().pop_front();
                let Some((ns, tips)) = next else { break };
                me.walk(ns, tips).await;
            }
            me.warming.set(false);
        })
        .detach();
    }

    /// Reads the headers `tips` reach that are not kept, a generation at a time, at
    /// most half of what the cache holds.
    async fn walk(&self, ns: u64, tips: Vec<Oid>) {
        let most = COMMIT_CACHE_BYTES_MAX / ENTRY_BYTES / 2;
        let mut seen: HashSet<Oid> = HashSet::new();
        let mut level = tips;
        let mut read = 0;
        while !level.is_empty() && read < most {
            let want: Vec<Oid> = {
                let cache = self.cache.borrow();
                level
                    .drain(..)
                    .filter(|o| seen.insert(*o) && cache.get(ns, o).is_none())
                    .collect()
            };
            read += want.len();
            match self.headers(ns, &want).await {
                Ok(hs) => level = hs.into_iter().flatten().flat_map(|h| h.parents).collect(),
                Err(e) => {
                    debug!(ns, error = ?e, "commit headers not warmed");
                    return;
                }
            }
            glommio::yield_if_needed().await;
        }
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Read(e) => write!(f, "{e}"),
            HeaderError::Malformed(oid, e) => {
                write!(f, "stored commit {} is malformed: {e}", hex(oid))
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct CommitCache {
    map: HashMap<(u64, Oid), CommitHeader>,
    order: VecDeque<(u64, Oid)>,
    bytes: usize,
}

impl CommitCache {
    pub(crate) fn get(&self, ns: u64, oid: &Oid) -> Option<CommitHeader> {
        self.map.get(&(ns, *oid)).cloned()
    }

    pub(crate) fn put(&mut self, ns: u64, oid: Oid, header: CommitHeader, max: usize) {
        let c = cost(&header);
        if self.map.insert((ns, oid), header).is_none() {
            self.bytes += c;
            self.order.push_back((ns, oid));
        }
        while self.bytes > max {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(h) = self.map.remove(&k) {
                self.bytes -= cost(&h);
            }
        }
    }

    /// Headers kept, and the bytes they cost.
    pub(crate) fn len_and_bytes(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(parents: usize) -> CommitHeader {
        CommitHeader {
            tree: [1; 20],
            parents: vec![[2; 20]; parents],
            time: 7,
        }
    }

    #[test]
    fn keeps_within_its_bound_oldest_out_first() {
        let mut c = CommitCache::default();
        let one = cost(&header(1));
        for i in 0..10u8 {
            c.put(1, [i; 20], header(1), one * 4);
        }
        assert_eq!(c.len_and_bytes(), (4, one * 4));
        assert_eq!(c.get(1, &[9; 20]), Some(header(1)));
        assert_eq!(c.get(1, &[5; 20]), None, "the oldest went first");
        assert_eq!(c.get(2, &[9; 20]), None, "namespaces are apart");
        // The same header again costs nothing more.
        c.put(1, [9; 20], header(1), one * 4);
        assert_eq!(c.len_and_bytes(), (4, one * 4));
    }
}
