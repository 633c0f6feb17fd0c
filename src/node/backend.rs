//! The shard as the network layer's [`Backend`].

use super::*;
use repospanner_net::backend::{HookScript, Objects, Pushes};
use repospanner_net::git::objects::CommitHeader;
use repospanner_raft::types::{HookKind, Script};

impl<D: Dir> Objects for NodeBackend<D> {
    type Chunk = repospanner_storage::Chunk;

    async fn object(
        &self,
        repo: &str,
        oid: &Oid,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(None);
        };
        self.inner
            .store
            .read_object(Namespace(ns), oid)
            .await
            .map_err(|e| self.read_failed(e))
    }

    async fn objects(
        &self,
        repo: &str,
        oids: &[Oid],
        bytes_max: u64,
    ) -> Result<Vec<Option<(ObjectKind, Vec<u8>)>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        self.inner
            .store
            .read_objects(Namespace(ns), oids, bytes_max)
            .await
            .map_err(|e| self.read_failed(e))
    }

    async fn commits(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<CommitHeader>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        self.inner
            .commits
            .headers(ns, oids)
            .await
            .map_err(|e| match e {
                commits::HeaderError::Read(e) => self.read_failed(e),
                e @ commits::HeaderError::Malformed(..) => BackendError(e.to_string()),
            })
    }

    async fn raws(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<StoredObject<Self::Chunk>>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        let read = self
            .inner
            .store
            .read_raws(Namespace(ns), oids)
            .await
            .map_err(|e| self.read_failed(e))?;
        Ok(read)
    }

    async fn raw_heads(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<ObjectHead>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        let read = self
            .inner
            .store
            .read_heads(Namespace(ns), oids)
            .await
            .map_err(|e| self.read_failed(e))?;
        Ok(read
            .into_iter()
            .map(|h| {
                h.map(|h| ObjectHead {
                    oid: h.oid,
                    kind: h.kind,
                    object_size: h.object_size,
                    entry_size: h.entry_size,
                    base: h.base,
                })
            })
            .collect())
    }

    fn has_many(&self, repo: &str, oids: &[Oid]) -> Vec<bool> {
        match self.ns_of(repo) {
            Some(ns) => self.inner.store.contains_many(Namespace(ns), oids),
            None => vec![false; oids.len()],
        }
    }

    fn stored_objects(&self, repo: &str) -> Vec<(Oid, u64)> {
        match self.ns_of(repo) {
            Some(ns) => self
                .inner
                .store
                .objects_in_place_order(Namespace(ns))
                .into_iter()
                .map(|(oid, loc)| (oid, u64::from(loc.len)))
                .collect(),
            None => Vec::new(),
        }
    }
}

impl<D: Dir> Pushes for NodeBackend<D> {
    fn remember(&self, repo: &str, objects: Vec<(Oid, ObjectKind, Vec<u8>)>) {
        if let Some(ns) = self.ns_of(repo) {
            self.inner.store.remember(Namespace(ns), objects);
        }
    }

    async fn store(
        &self,
        repo: &str,
        objects: Vec<StoredObject>,
        aside: Option<u64>,
        progress: &mut dyn FnMut(String),
    ) -> Result<(), BackendError> {
        self.replicate(repo, objects, aside, progress).await
    }

    async fn store_aside(
        &self,
        repo: &str,
        aside: u64,
        objects: Vec<StoredObject>,
    ) -> Result<(), BackendError> {
        let Some(repo_ns) = self.ns_of(repo) else {
            return Err(err("repository was deleted"));
        };
        let failed = |e: repospanner_storage::Error| err(format!("storing objects: {e}"));
        let (ns, opened) = self
            .aside_ns(&self.inner.asides, aside)
            .await
            .map_err(failed)?;
        if opened {
            info!(
                repo,
                aside, "writing a push's objects aside while it arrives"
            );
            self.open_stream(repo_ns, aside);
        }
        let oids: Vec<Oid> = objects.iter().map(|o| o.oid).collect();
        self.stream_batch(aside, &objects, &oids);
        // Dropped meanwhile (the push failed): what this wrote went with it.
        self.write_aside(&self.inner.asides, aside, ns, objects)
            .await
            .map_err(failed)?;
        Ok(())
    }

    fn drop_aside(&self, aside: u64) {
        let out = self.inner.out_streams.borrow_mut().remove(&aside);
        if let Some(out) = out {
            self.drop_stream(out);
        }
        let Some(a) = self.inner.asides.borrow_mut().remove(&aside) else {
            return;
        };
        let store = self.inner.store.clone();
        glommio::spawn_local(async move {
            if let Err(e) = store.append(drop_aside_writes(a.ns)).await {
                warn!(error = %e, "dropping a failed push's objects (they go at the next start)");
            }
        })
        .detach();
    }

    async fn update_refs(
        &self,
        repo: &str,
        updates: &[RefUpdate],
        atomic: bool,
        objects: &[Oid],
    ) -> Result<Vec<Result<(), String>>, BackendError> {
        let id = self
            .ns_of(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        let n = self.inner.pushes.get() + 1;
        self.inner.pushes.set(n);
        let push = format!("{:x}-{:x}", self.inner.identity.id, random_u64());
        let cmd = Command::UpdateRefs {
            push: push.clone(),
            repo: repo.to_owned(),
            id,
            changes: updates
                .iter()
                .map(|u| RefChange {
                    name: u.name.clone(),
                    old: u.old.map(|o| hex(&o)),
                    new: u.new.map(|o| hex(&o)),
                })
                .collect(),
            atomic,
            objects: ObjectIds(objects.to_vec()),
            forward: updates.iter().all(|u| u.forward),
        };
        info!(repo, push = %push, refs = updates.len(), objects = objects.len(), "proposing a push");
        match self.propose(cmd).await {
            Ok(Response::Refs(v)) if v.len() == updates.len() => {
                info!(repo, push = %push, "push committed");
                Ok(v)
            }
            Ok(Response::Refused(e)) => Ok(updates.iter().map(|_| Err(e.clone())).collect()),
            Ok(other) => Err(err(format!("push {push}: unexpected answer {other:?}"))),
            Err(ProposeError::Failed(e)) => {
                warn!(repo, push = %push, reason = %e, "push not proposed");
                Err(err(format!("push {push}: {e}")))
            }
            Err(ProposeError::Unknown(e)) => {
                warn!(repo, push = %push, reason = %e, "push outcome unknown");
                Err(err(format!(
                    "push {push}: {e}; fetch to see whether the refs moved (the node logs show push {push} if it was applied)"
                )))
            }
        }
    }
}

impl<D: Dir> Backend for NodeBackend<D> {
    async fn repo(&self, name: &str) -> Result<Option<RepoState>, BackendError> {
        Ok(self
            .inner
            .sm
            .with_state(|s| s.repos.get(name).map(repo_state)))
    }

    async fn linearize(&self) -> Result<(), BackendError> {
        self.read_barrier().await
    }

    async fn node_rpc(&self, op: Op, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        self.serve(op, body).await
    }

    async fn create_repo(&self, name: &str, public: bool) -> Result<(), BackendError> {
        if self.repo(name).await?.is_some() {
            return Err(err(format!("Repo {name} already exists")));
        }
        self.admin_propose(Command::CreateRepo {
            name: name.to_owned(),
            id: random_u64(),
            public,
            head: self.inner.default_head.clone(),
            // git's default (receive.denyNonFastForwards is off) and the Go
            // original's; `admin repo edit --allow-non-fast-forward=false` refuses them.
            allow_non_fast_forward: true,
        })
        .await
    }

    async fn delete_repo(&self, name: &str) -> Result<(), BackendError> {
        self.linearize().await?;
        let id = self
            .ns_of(name)
            .ok_or_else(|| err(format!("Repo {name} does not exist")))?;
        self.admin_propose(Command::DeleteRepo {
            name: name.to_owned(),
            id,
        })
        .await
    }

    async fn edit_repo(
        &self,
        name: &str,
        public: Option<bool>,
        allow_non_fast_forward: Option<bool>,
        symrefs: &[(String, Option<String>)],
        hooks: &[(String, Option<HookScript>)],
    ) -> Result<(), BackendError> {
        let mut set = Vec::new();
        for (name, script) in hooks {
            let kind = HookKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| err(format!("unknown hook {name:?}")))?;
            let script = script.as_ref().map(|s| Script {
                id: s.id.clone(),
                content: s.content.clone(),
            });
            set.push((kind, script));
        }
        self.admin_propose(Command::EditRepo {
            name: name.to_owned(),
            public,
            allow_non_fast_forward,
            symrefs: symrefs.to_vec(),
            hooks: set,
        })
        .await
    }

    fn hook_script(&self, id: &str) -> Option<Vec<u8>> {
        self.inner
            .sm
            .with_state(|s| s.scripts.get(id).map(|sc| sc.content.clone()))
    }

    async fn mark_reachable(
        &self,
        repo: &str,
        refs: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let id = self
            .ns_of(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        self.admin_propose(Command::MarkReachable {
            repo: repo.to_owned(),
            id,
            refs: repospanner_raft::types::refs_digest(refs),
        })
        .await
    }

    async fn list_repos(&self) -> Result<BTreeMap<String, RepoState>, BackendError> {
        Ok(self.inner.sm.with_state(|s| {
            s.repos
                .iter()
                .map(|(n, r)| (n.clone(), repo_state(r)))
                .collect()
        }))
    }

    fn node_status(&self) -> serde_json::Value {
        self.status()
    }

    fn metrics(&self) -> Vec<repospanner_net::metrics::Sample> {
        self.samples()
    }

    async fn remove_node(&self, id: u64) -> Result<(), BackendError> {
        self.remove_member(RemoveRequest { id })
            .await
            .map_err(|e| BackendError(format!("shard {}: {e}", self.inner.shard)))
    }

    async fn scrub(&self, repo: Option<&str>) -> Result<serde_json::Value, BackendError> {
        let summary = NodeBackend::scrub(self, repo, 0)
            .await
            .map_err(|e| BackendError(format!("scrub: {e}")))?;
        serde_json::to_value(summary).map_err(|e| BackendError(e.to_string()))
    }
}
