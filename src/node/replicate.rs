//! Replicating a push's objects: stored here and on the other members, in bodies of
//! bounded size, until a majority (counting this node) holds them durably.

use super::*;

/// Size of one object-sync request body to a peer.
pub(super) const SYNC_CHUNK_BYTES: usize = 8 << 20;
/// Object-sync bodies in flight to one peer at once (each on its own connection).
pub(super) const SYNC_IN_FLIGHT: usize = 2;

/// `fut`'s output, or `None` if it takes longer than `d` (then it is dropped).
pub(super) async fn within<T>(d: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

/// Sends `bodies` to `addr` in order, [`SYNC_IN_FLIGHT`] at a time (the peer stores
/// one while the next is on its way), each within `deadline`; then gives up the pieces
/// it did not take.
pub(super) async fn send_bodies(
    client: &dyn Transport,
    addr: &str,
    path: &str,
    bodies: &SyncBodies,
    deadline: Instant,
) -> Result<(), String> {
    let mut sends = futures_util::stream::iter(0..bodies.len())
        .map(|i| {
            let left = deadline.saturating_duration_since(Instant::now());
            client.post(addr, path, bodies.take(i), left)
        })
        .buffer_unordered(SYNC_IN_FLIGHT);
    let mut r = Ok(());
    while let Some(sent) = sends.next().await {
        if let Err(e) = sent {
            r = Err(e.to_string());
            break;
        }
    }
    drop(sends);
    r
}

impl<D: Dir> NodeBackend<D> {
    /// Stores a push's verified objects here and on the other members until a
    /// majority holds them durably ([`Backend::store`]).
    #[allow(clippy::too_many_lines)] // the sends to each member and the majority wait share one channel and deadline
    pub(super) async fn replicate(
        &self,
        repo: &str,
        objects: Vec<StoredObject>,
        aside: Option<u64>,
        progress: &mut dyn FnMut(String),
    ) -> Result<(), BackendError> {
        let ns = self
            .ns_of(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        let stream = aside.and_then(|id| self.inner.out_streams.borrow_mut().remove(&id));
        let aside = aside.and_then(|id| self.inner.asides.borrow_mut().remove(&id));
        let me = self.inner.identity.id;
        let (voters, peers): (BTreeSet<u64>, _) = with_metrics(self.raft(), |m| {
            (
                m.membership_config.voter_ids().collect(),
                members_but(m, me),
            )
        });
        let need = voters.len() / 2 + 1;
        let total = voters.len().max(1);
        let (tx, mut rx) = futures_channel::mpsc::unbounded::<(u64, Result<(), String>)>();
        // Members the push streamed to while it arrived: each adopts what it holds and
        // gets the rest (see crate::aside); the others get everything.
        if let Some(out) = &stream {
            out.close();
        }
        let streamed = |id: u64| {
            stream
                .as_ref()
                .and_then(|s| s.members.iter().find(|m| m.id == id))
        };
        let whole = peers
            .iter()
            .filter(|(id, _)| streamed(*id).is_none())
            .count();
        if !peers.is_empty() {
            // In bodies of about SYNC_CHUNK_BYTES: a peer stores one while the next is
            // on its way, and holds no more than SYNC_IN_FLIGHT in memory. A body refers
            // to the objects' bytes in the pack (SyncBodies), so the sender holds no
            // copy of the push either.
            let bodies = Rc::new(SyncBodies::new(
                ns.to_le_bytes().to_vec(),
                if whole > 0 {
                    objects.clone()
                } else {
                    Vec::new()
                },
                SYNC_CHUNK_BYTES,
            ));
            for (id, addr) in peers {
                let (tx, client) = (tx.clone(), self.inner.client.clone());
                let path = Op::Objects.path(self.inner.shard);
                let deadline = Instant::now() + self.inner.timeout;
                if let (Some(m), Some(out)) = (streamed(id), &stream) {
                    let task = m.task.borrow_mut().take();
                    let (state, key, objects) = (m.state.clone(), out.key, objects.clone());
                    let shard = self.inner.shard;
                    glommio::spawn_local(async move {
                        let r = send_after_stream(
                            &client, shard, &addr, key, task, &state, objects, deadline,
                        )
                        .await;
                        let _ = tx.unbounded_send((id, r));
                    })
                    .detach();
                    continue;
                }
                let bodies = bodies.clone();
                // Sends to every member; a slow one finishes in the background.
                glommio::spawn_local(async move {
                    let r = send_bodies(&client, &addr, &path, &bodies, deadline).await;
                    let _ = tx.unbounded_send((id, r));
                })
                .detach();
            }
        }
        drop(tx);
        self.store_here(ns, objects, aside)
            .await
            .map_err(|e| err(format!("storing objects: {e}")))?;
        let mut acks = usize::from(voters.contains(&me) || voters.is_empty());
        if total > 1 {
            progress(format!("replicating: {acks}/{total} nodes"));
        }
        let deadline = Instant::now() + self.inner.timeout;
        let mut failures = Vec::new();
        while acks < need {
            let left = deadline.saturating_duration_since(Instant::now());
            // `None`: time is up; `Some(None)`: every send finished.
            match within(left, rx.next()).await {
                Some(Some((id, Ok(())))) => {
                    if voters.contains(&id) {
                        acks += 1;
                        progress(format!("replicating: {acks}/{total} nodes"));
                    }
                }
                Some(Some((id, Err(e)))) => {
                    warn!(repo, peer = id, error = %e, "object replication to a peer failed");
                    failures.push(format!("node {id}: {e}"));
                }
                None | Some(None) => {
                    return Err(err(format!(
                        "only {acks} of {total} nodes hold the objects durably, {need} needed; nothing was changed ({})",
                        if failures.is_empty() {
                            "timed out".to_string()
                        } else {
                            failures.join("; ")
                        }
                    )));
                }
            }
        }
        Ok(())
    }
}
