//! A node's repositories on the storage engine: the [`Backend`] the network layer
//! serves from. Single node for now (replication is a later issue): a push is
//! acknowledged once its objects and its ref update are durable in the local store.
//!
//! Layout in the store: each repository has a numeric id, which is also its object
//! namespace; its state (refs, symrefs, settings) is one opaque value in stream
//! [`REPO_STREAM`] under that id, rewritten on every change. Changes to one repository
//! are serialised by a per-repository lock held from the compare-and-swap check until
//! the new state is durable, so of two concurrent pushes to the same ref exactly one
//! wins.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use repospanner_net::backend::{Backend, BackendError, RawObject, RefUpdate, RepoState};
use repospanner_net::git::{hex, parse_hex, ObjectKind, Oid};
use repospanner_storage::io::Dir;
use repospanner_storage::{Namespace, Store, StoredObject, Write};
use serde::{Deserialize, Serialize};

/// Opaque stream holding repository states, keyed by repository id.
pub const REPO_STREAM: u8 = 1;

/// Largest single append of objects (objects of a push are split into such batches).
const OBJECT_APPEND_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    state: RepoState,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    state: RepoState,
}

/// Who this node is (for status).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub cluster: String,
    pub region: String,
    pub name: String,
    pub id: u64,
}

struct Inner<D: Dir> {
    store: Store<D>,
    repos: RefCell<BTreeMap<String, Entry>>,
    next_id: Cell<u64>,
    locks: RefCell<HashMap<String, Rc<glommio::sync::Semaphore>>>,
    default_head: String,
    identity: Identity,
    /// Which shard of the node this is.
    shard: usize,
    started: Instant,
}

/// The node's repositories.
pub struct NodeBackend<D: Dir> {
    inner: Rc<Inner<D>>,
}

impl<D: Dir> Clone for NodeBackend<D> {
    fn clone(&self) -> Self {
        NodeBackend {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Dir> std::fmt::Debug for NodeBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBackend")
            .field("identity", &self.inner.identity)
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

fn to_storage_kind(k: ObjectKind) -> repospanner_storage::ObjectKind {
    match k {
        ObjectKind::Commit => repospanner_storage::ObjectKind::Commit,
        ObjectKind::Tree => repospanner_storage::ObjectKind::Tree,
        ObjectKind::Blob => repospanner_storage::ObjectKind::Blob,
        ObjectKind::Tag => repospanner_storage::ObjectKind::Tag,
    }
}

fn from_storage_kind(k: repospanner_storage::ObjectKind) -> ObjectKind {
    match k {
        repospanner_storage::ObjectKind::Commit => ObjectKind::Commit,
        repospanner_storage::ObjectKind::Tree => ObjectKind::Tree,
        repospanner_storage::ObjectKind::Blob => ObjectKind::Blob,
        repospanner_storage::ObjectKind::Tag => ObjectKind::Tag,
    }
}

impl<D: Dir> NodeBackend<D> {
    /// Loads every repository state from the store.
    pub async fn load(
        store: Store<D>,
        identity: Identity,
        default_head: String,
        shard: usize,
    ) -> Result<Self, BackendError> {
        let mut repos = BTreeMap::new();
        let mut next_id = 1;
        for id in store.opaque_keys(REPO_STREAM, 0..u64::MAX) {
            let bytes = store
                .get_opaque(REPO_STREAM, id)
                .await
                .map_err(err)?
                .unwrap_or_default();
            let s: Stored = serde_json::from_slice(&bytes)
                .map_err(|e| err(format!("repository record {id}: {e}")))?;
            repos.insert(s.name, Entry { id, state: s.state });
            next_id = next_id.max(id + 1);
        }
        Ok(NodeBackend {
            inner: Rc::new(Inner {
                store,
                repos: RefCell::new(repos),
                next_id: Cell::new(next_id),
                locks: RefCell::new(HashMap::new()),
                default_head,
                identity,
                shard,
                started: Instant::now(),
            }),
        })
    }

    pub fn store(&self) -> &Store<D> {
        &self.inner.store
    }

    fn lock_of(&self, repo: &str) -> Rc<glommio::sync::Semaphore> {
        self.inner
            .locks
            .borrow_mut()
            .entry(repo.to_owned())
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    }

    fn entry(&self, repo: &str) -> Option<Entry> {
        self.inner.repos.borrow().get(repo).cloned()
    }

    /// Makes `state` the durable state of `repo` (id `id`), then visible.
    async fn persist(&self, repo: &str, id: u64, state: RepoState) -> Result<(), BackendError> {
        let data = serde_json::to_vec(&Stored {
            name: repo.to_owned(),
            state: state.clone(),
        })
        .map_err(err)?;
        self.inner
            .store
            .append(vec![Write::Opaque {
                stream: REPO_STREAM,
                key: id,
                data,
            }])
            .await
            .map_err(err)?;
        self.inner
            .repos
            .borrow_mut()
            .insert(repo.to_owned(), Entry { id, state });
        Ok(())
    }
}

impl<D: Dir> Backend for NodeBackend<D> {
    async fn repo(&self, name: &str) -> Result<Option<RepoState>, BackendError> {
        Ok(self.entry(name).map(|e| e.state))
    }

    async fn object(
        &self,
        repo: &str,
        oid: &Oid,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>, BackendError> {
        let Some(e) = self.entry(repo) else {
            return Ok(None);
        };
        Ok(self
            .inner
            .store
            .read_object(Namespace(e.id), oid)
            .await
            .map_err(err)?
            .map(|(k, c)| (from_storage_kind(k), c)))
    }

    async fn raw(&self, repo: &str, oid: &Oid) -> Result<Option<RawObject>, BackendError> {
        let Some(e) = self.entry(repo) else {
            return Ok(None);
        };
        Ok(self
            .inner
            .store
            .read_raw(Namespace(e.id), oid)
            .await
            .map_err(err)?
            .map(|o| RawObject {
                oid: o.oid,
                kind: from_storage_kind(o.kind),
                object_size: o.object_size,
                entry_size: o.entry_size,
                base: o.base,
                deflated: o.deflated,
            }))
    }

    fn has_many(&self, repo: &str, oids: &[Oid]) -> Vec<bool> {
        match self.entry(repo) {
            Some(e) => self.inner.store.contains_many(Namespace(e.id), oids),
            None => vec![false; oids.len()],
        }
    }

    async fn store(&self, repo: &str, objects: Vec<RawObject>) -> Result<(), BackendError> {
        let e = self
            .entry(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        let ns = Namespace(e.id);
        let mut batch = Vec::new();
        let mut bytes = 0;
        for o in objects {
            bytes += o.deflated.len() + 128;
            batch.push(Write::Object(
                ns,
                StoredObject {
                    oid: o.oid,
                    kind: to_storage_kind(o.kind),
                    object_size: o.object_size,
                    entry_size: o.entry_size,
                    base: o.base,
                    deflated: o.deflated,
                },
            ));
            if bytes >= OBJECT_APPEND_BYTES {
                self.inner
                    .store
                    .append(std::mem::take(&mut batch))
                    .await
                    .map_err(err)?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.inner.store.append(batch).await.map_err(err)?;
        }
        Ok(())
    }

    async fn update_refs(
        &self,
        repo: &str,
        updates: &[RefUpdate],
        atomic: bool,
    ) -> Result<Vec<Result<(), String>>, BackendError> {
        let lock = self.lock_of(repo);
        let _held = lock.acquire_permit(1).await.map_err(err)?;
        let e = self
            .entry(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        let mut state = e.state.clone();
        let mut results = Vec::with_capacity(updates.len());
        for u in updates {
            let current = state
                .refs
                .get(&u.name)
                .and_then(|h| parse_hex(h.as_bytes()));
            if current != u.old {
                results.push(Err(
                    "stale info: the ref changed since you fetched it".to_string()
                ));
                continue;
            }
            match u.new {
                Some(n) => state.refs.insert(u.name.clone(), hex(&n)),
                None => state.refs.remove(&u.name),
            };
            results.push(Ok(()));
        }
        if atomic && results.iter().any(Result::is_err) {
            return Ok(results
                .into_iter()
                .map(|r| r.and(Err("atomic push failure".to_string())))
                .collect());
        }
        if results.iter().any(Result::is_ok) {
            self.persist(repo, e.id, state).await?;
        }
        Ok(results)
    }

    async fn create_repo(&self, name: &str, public: bool) -> Result<(), BackendError> {
        let lock = self.lock_of(name);
        let _held = lock.acquire_permit(1).await.map_err(err)?;
        if self.entry(name).is_some() {
            return Err(err(format!("Repo {name} already exists")));
        }
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        let mut state = RepoState {
            public,
            ..RepoState::default()
        };
        state.symrefs.insert(
            "HEAD".into(),
            format!("refs/heads/{}", self.inner.default_head),
        );
        self.persist(name, id, state).await
    }

    async fn delete_repo(&self, name: &str) -> Result<(), BackendError> {
        let lock = self.lock_of(name);
        let _held = lock.acquire_permit(1).await.map_err(err)?;
        let e = self
            .entry(name)
            .ok_or_else(|| err(format!("Repo {name} does not exist")))?;
        self.inner
            .store
            .append(vec![
                Write::DeleteRange {
                    stream: REPO_STREAM,
                    keys: e.id..e.id + 1,
                },
                Write::DropNamespace(Namespace(e.id)),
            ])
            .await
            .map_err(err)?;
        self.inner.repos.borrow_mut().remove(name);
        Ok(())
    }

    async fn edit_repo(
        &self,
        name: &str,
        public: Option<bool>,
        allow_non_fast_forward: Option<bool>,
        symrefs: &[(String, Option<String>)],
    ) -> Result<(), BackendError> {
        let lock = self.lock_of(name);
        let _held = lock.acquire_permit(1).await.map_err(err)?;
        let e = self
            .entry(name)
            .ok_or_else(|| err(format!("Repo {name} does not exist")))?;
        let mut state = e.state.clone();
        if let Some(p) = public {
            state.public = p;
        }
        if let Some(f) = allow_non_fast_forward {
            state.allow_non_fast_forward = f;
        }
        for (sym, target) in symrefs {
            match target {
                Some(t) => {
                    state.symrefs.insert(sym.clone(), t.clone());
                }
                None if sym == "HEAD" => {
                    return Err(err(
                        "HEAD cannot be deleted; point it elsewhere with HEAD=refs/heads/<branch>",
                    ))
                }
                None => {
                    state.symrefs.remove(sym);
                }
            }
        }
        self.persist(name, e.id, state).await
    }

    async fn list_repos(&self) -> Result<BTreeMap<String, RepoState>, BackendError> {
        Ok(self
            .inner
            .repos
            .borrow()
            .iter()
            .map(|(n, e)| (n.clone(), e.state.clone()))
            .collect())
    }

    fn node_status(&self) -> serde_json::Value {
        let id = &self.inner.identity;
        let s = self.inner.store.stats();
        serde_json::json!({
            "NodeID": id.id,
            "NodeName": id.name,
            "RegionName": id.region,
            "ClusterName": id.cluster,
            "Version": env!("CARGO_PKG_VERSION"),
            "Status": "ok",
            "Mode": "single node (replication not available yet)",
            "UptimeSeconds": self.inner.started.elapsed().as_secs(),
            "Shard": self.inner.shard,
            "Repositories": self.inner.repos.borrow().len(),
            "Objects": self.inner.store.object_count(),
            "Storage": {
                "NextLsn": self.inner.store.next_lsn(),
                "Appends": s.appends,
                "Batches": s.batches,
                "BytesWritten": s.bytes_written,
                "Checkpoints": s.checkpoints,
                "Corruptions": self.inner.store.corruptions().len(),
            },
        })
    }
}
