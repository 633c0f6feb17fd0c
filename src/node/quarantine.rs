//! Quarantine (git's word for objects received but not yet accepted): the aside
//! namespaces a push's verified objects are written to while it arrives, here and on
//! the members it streams to, published by adoption once it is verified, dropped when
//! it fails or the node restarts.

use super::*;

/// Objects of one push written aside (this node's push, or a peer's it streamed here):
/// the namespace, the ids written there, and when it was last written.
pub(super) struct Aside {
    pub(super) ns: Namespace,
    pub(super) written: foldhash::HashSet<Oid>,
    pub(super) touched: Instant,
}

/// Either map of [`Aside`]s: keyed by this shard's push ids, or by a peer's streams.
pub(super) type Asides<K> = RefCell<HashMap<K, Aside>>;

/// The store's opaque stream that lists the namespaces holding objects written aside
/// (see `Backend::store_aside`), one key each, for as long as they exist: whatever it
/// lists at start-up is dropped. Such a namespace is random, as repository ids are, and
/// is known for what it is only by this list: nothing else may ever drop a namespace.
pub(super) const ASIDE_STREAM: u8 = 18;

/// The writes that drop aside namespace `ns` and its entry in [`ASIDE_STREAM`].
pub(super) fn drop_aside_writes(ns: Namespace) -> Vec<Write> {
    vec![
        Write::DropNamespace(ns),
        Write::DeleteRange {
            stream: ASIDE_STREAM,
            keys: ns.0..ns.0 + 1,
        },
    ]
}

impl<D: Dir> NodeBackend<D> {
    /// Stores a push's objects in namespace `ns`: those written aside while it arrived
    /// are adopted from there (one small record), the rest written now; then what is
    /// left aside (objects the push does not keep) is dropped, in the same append.
    pub(super) async fn store_here(
        &self,
        ns: u64,
        objects: Vec<StoredObject>,
        aside: Option<Aside>,
    ) -> Result<(), repospanner_storage::Error> {
        let Some(aside) = aside else {
            return store_objects(&self.inner.store, ns, objects).await;
        };
        let (adopted, rest): (Vec<StoredObject>, Vec<StoredObject>) = objects
            .into_iter()
            .partition(|o| aside.written.contains(&o.oid));
        let written = store_objects(&self.inner.store, ns, rest).await;
        let mut publish = drop_aside_writes(aside.ns);
        if written.is_ok() {
            publish.insert(
                0,
                Write::Adopt {
                    from: aside.ns,
                    to: Namespace(ns),
                    oids: adopted.iter().map(|o| o.oid).collect(),
                },
            );
        }
        self.inner.store.append(publish).await?;
        written
    }

    /// The namespace of aside entry `key` in `map`, opened if new (second: whether it
    /// was): a random namespace, listed in [`ASIDE_STREAM`] before anything is written
    /// there, so a restart drops it (u64::MAX is not a key: the list is read as the
    /// range 0..u64::MAX). Two writes that open the same entry at once (a push keeps
    /// two in flight) end up in one namespace: the later opener drops its own.
    pub(super) async fn aside_ns<K: std::hash::Hash + Eq + Copy>(
        &self,
        map: &Asides<K>,
        key: K,
    ) -> Result<(Namespace, bool), repospanner_storage::Error> {
        if let Some(a) = map.borrow().get(&key) {
            return Ok((a.ns, false));
        }
        let ns = Namespace(random_u64().min(u64::MAX - 1));
        self.inner
            .store
            .append(vec![Write::Opaque {
                stream: ASIDE_STREAM,
                key: ns.0,
                data: vec![1],
            }])
            .await?;
        let raced = match map.borrow_mut().entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.get().ns),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Aside {
                    ns,
                    written: foldhash::HashSet::default(),
                    touched: Instant::now(),
                });
                None
            }
        };
        match raced {
            Some(theirs) => {
                self.inner.store.append(drop_aside_writes(ns)).await?;
                Ok((theirs, false))
            }
            None => Ok((ns, true)),
        }
    }

    /// Writes `objects` into aside entry `key` of `map` (see [`NodeBackend::aside_ns`])
    /// and records their ids there, but only in the entry of the namespace they went
    /// to: an adoption trusts `written`. If the entry was dropped meanwhile, what this
    /// wrote is dropped too and the answer is `Ok(false)`.
    pub(super) async fn write_aside<K: std::hash::Hash + Eq + Copy>(
        &self,
        map: &Asides<K>,
        key: K,
        ns: Namespace,
        objects: Vec<StoredObject>,
    ) -> Result<bool, repospanner_storage::Error> {
        let oids: Vec<Oid> = objects.iter().map(|o| o.oid).collect();
        store_objects(&self.inner.store, ns.0, objects).await?;
        let kept = match map.borrow_mut().get_mut(&key) {
            Some(a) if a.ns == ns => {
                a.written.extend(oids);
                a.touched = Instant::now();
                true
            }
            _ => false,
        };
        if !kept {
            self.inner.store.append(drop_aside_writes(ns)).await?;
        }
        Ok(kept)
    }

    /// A member's part of the stream of a peer's push: writes `objs` aside under
    /// `key`. Also drops what other streams left here for longer than
    /// [`PEER_ASIDE_IDLE`].
    pub(super) async fn write_peer_aside(
        &self,
        key: StreamKey,
        objs: Vec<StoredObject>,
    ) -> Result<(), RpcError> {
        if !self.inner.peer_asides.borrow().contains_key(&key) {
            let stale: Vec<Namespace> = {
                let mut asides = self.inner.peer_asides.borrow_mut();
                let old: Vec<StreamKey> = asides
                    .iter()
                    .filter(|(_, a)| a.touched.elapsed() > PEER_ASIDE_IDLE)
                    .map(|(k, _)| *k)
                    .collect();
                old.iter()
                    .filter_map(|k| asides.remove(k))
                    .map(|a| a.ns)
                    .collect()
            };
            for old in stale {
                warn!(
                    shard = self.inner.shard,
                    "dropping objects a peer's push left here aside and never finished"
                );
                self.inner
                    .store
                    .append(drop_aside_writes(old))
                    .await
                    .map_err(failed)?;
            }
        }
        let (ns, _) = self
            .aside_ns(&self.inner.peer_asides, key)
            .await
            .map_err(failed)?;
        self.inner.activity.touch(key.ns);
        let kept = self
            .write_aside(&self.inner.peer_asides, key, ns, objs)
            .await
            .map_err(failed)?;
        self.inner.activity.touch(key.ns);
        if !kept {
            return Err(RpcError::Gone(
                "the push's objects here were dropped meanwhile".into(),
            ));
        }
        Ok(())
    }

    /// A member adopts objects a peer's push streamed here into the repository, and
    /// drops the rest of them, in one append. Refused (and nothing adopted) if any of
    /// `oids` is not held: the sender then sends them whole.
    pub(super) async fn adopt_peer_aside(
        &self,
        key: StreamKey,
        oids: Vec<Oid>,
    ) -> Result<(), RpcError> {
        let Some(a) = self.inner.peer_asides.borrow_mut().remove(&key) else {
            return Err(RpcError::Gone(
                "no objects of this push are held here aside (restarted or dropped)".into(),
            ));
        };
        let missing = oids.iter().filter(|o| !a.written.contains(*o)).count();
        let mut writes = Vec::new();
        if missing == 0 {
            writes.push(Write::Adopt {
                from: a.ns,
                to: Namespace(key.ns),
                oids,
            });
        }
        writes.extend(drop_aside_writes(a.ns));
        self.inner.activity.touch(key.ns);
        self.inner.store.append(writes).await.map_err(failed)?;
        self.inner.activity.touch(key.ns);
        if missing > 0 {
            return Err(RpcError::Gone(format!(
                "{missing} of the objects to adopt are not held here aside"
            )));
        }
        Ok(())
    }

    pub(super) async fn drop_peer_aside(&self, key: StreamKey) -> Result<(), RpcError> {
        let a = self.inner.peer_asides.borrow_mut().remove(&key);
        if let Some(a) = a {
            info!(
                shard = self.inner.shard,
                from = key.from,
                "dropping objects a failed push of a peer wrote here aside"
            );
            self.inner
                .store
                .append(drop_aside_writes(a.ns))
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Drops what pushes that never finished (the node stopped) wrote aside.
    pub async fn drop_leftover_asides(&self) -> Result<(), BackendError> {
        let keys = self.inner.store.opaque_keys(ASIDE_STREAM, 0..u64::MAX);
        if keys.is_empty() {
            return Ok(());
        }
        info!(
            shard = self.inner.shard,
            pushes = keys.len(),
            "dropping objects unfinished pushes wrote aside"
        );
        let left: Vec<Write> = keys
            .into_iter()
            .flat_map(|k| drop_aside_writes(Namespace(k)))
            .collect();
        self.inner
            .store
            .append(left)
            .await
            .map(|_| ())
            .map_err(|e| err(format!("dropping unfinished pushes' objects: {e}")))
    }
}
