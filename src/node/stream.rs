//! A push's stream to the other members while it arrives (see `crate::aside`): one
//! sender per member, batches in order, then what a member did not acknowledge sent
//! whole, and adoption.

use super::*;

/// The end of a push for a member it streamed to: once the stream's last batch is
/// answered, sends the objects the member did not acknowledge, then asks it to adopt
/// the rest; what it cannot adopt is sent whole. Ok once the member holds every
/// object of the push durably in the repository.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_after_stream(
    client: &dyn Transport,
    shard: usize,
    addr: &str,
    key: StreamKey,
    task: Option<glommio::task::JoinHandle<()>>,
    state: &StreamState,
    objects: Vec<StoredObject>,
    deadline: Instant,
) -> Result<(), String> {
    if let Some(t) = task {
        within(deadline.saturating_duration_since(Instant::now()), t).await;
    }
    let acked = std::mem::take(&mut *state.acked.borrow_mut());
    let (held, rest) = split_acked(objects, |o| o.oid, &acked);
    let path = Op::Objects.path(shard);
    let prefix = key.ns.to_le_bytes().to_vec();
    let sent = send_bodies(
        client,
        addr,
        &path,
        &SyncBodies::new(prefix.clone(), rest, SYNC_CHUNK_BYTES),
        deadline,
    )
    .await;
    if let Err(e) = sent {
        if state.sent.get() {
            let left = deadline.saturating_duration_since(Instant::now());
            let drop_path = Op::DropAside.path(shard);
            let _ = client
                .post(addr, &drop_path, Bytes::from(key.encode()).into(), left)
                .await;
        }
        return Err(e);
    }
    if held.is_empty() {
        return Ok(());
    }
    let oids: Vec<Oid> = held.iter().map(|o| o.oid).collect();
    let left = deadline.saturating_duration_since(Instant::now());
    let adopt = Bytes::from(encode_adopt(&key, &oids));
    match client
        .post(addr, &Op::Adopt.path(shard), adopt.into(), left)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            info!(peer = addr, error = %e, "a member could not adopt what a push streamed to it; sending those objects whole");
            send_bodies(
                client,
                addr,
                &path,
                &SyncBodies::new(prefix, held, SYNC_CHUNK_BYTES),
                deadline,
            )
            .await
        }
    }
}

impl<D: Dir> NodeBackend<D> {
    /// Starts streaming push `aside` (of repository namespace `ns`) to the other
    /// members: one sender task each, which posts the batches in order and records
    /// what the member acknowledged. Nothing if this node is alone.
    pub(super) fn open_stream(&self, ns: u64, aside: u64) {
        let me = self.inner.identity.id;
        let peers = with_metrics(self.raft(), |m| members_but(m, me));
        if peers.is_empty() {
            return;
        }
        let key = StreamKey {
            ns,
            from: me,
            stream: random_u64(),
        };
        let members = peers
            .into_iter()
            .map(|(id, addr)| {
                let (tx, mut rx) = futures_channel::mpsc::unbounded::<Batch>();
                let state = Rc::new(StreamState::default());
                let (st, client, to) = (state.clone(), self.inner.client.clone(), addr.clone());
                let path = Op::Aside.path(self.inner.shard);
                let timeout = self.inner.timeout;
                let task = glommio::spawn_local(async move {
                    while let Some(b) = rx.next().await {
                        if !st.failed.get() {
                            st.sent.set(true);
                            match client.post(&to, &path, b.body, timeout).await {
                                Ok(_) => st.acked.borrow_mut().extend(b.oids),
                                Err(e) => {
                                    st.failed.set(true);
                                    info!(peer = id, error = %e, "streaming a push's objects to a member failed; it gets them after verification");
                                }
                            }
                        }
                        st.queued.set(st.queued.get().saturating_sub(b.bytes));
                    }
                })
                .detach();
                MemberStream {
                    id,
                    addr,
                    tx: RefCell::new(Some(tx)),
                    state,
                    task: RefCell::new(Some(task)),
                }
            })
            .collect();
        self.inner
            .out_streams
            .borrow_mut()
            .insert(aside, Rc::new(OutStream { key, members }));
    }

    /// Queues a batch written aside for every member that keeps up with the stream
    /// (encoded once for all of them).
    pub(super) fn stream_batch(&self, aside: u64, objects: &[StoredObject], oids: &[Oid]) {
        let Some(out) = self.inner.out_streams.borrow().get(&aside).cloned() else {
            return;
        };
        let bytes: usize = objects.iter().map(|o| o.deflated.len()).sum();
        let mut body: Option<SharedChain> = None;
        for m in &out.members {
            let Some(tx) = m.tx.borrow().clone() else {
                continue;
            };
            if !m.state.takes(bytes) {
                continue;
            }
            let body = body
                .get_or_insert_with(|| encode_objects_shared(&out.key.encode(), objects))
                .clone();
            m.state.queued.set(m.state.queued.get() + bytes);
            let batch = Batch {
                body,
                oids: oids.to_vec(),
                bytes,
            };
            if tx.unbounded_send(batch).is_err() {
                m.state
                    .queued
                    .set(m.state.queued.get().saturating_sub(bytes));
            }
        }
    }

    /// A failed push's stream: ends it, and tells the members that received any of it
    /// to drop what they hold (best effort: they also drop it when they restart, or
    /// after [`PEER_ASIDE_IDLE`]).
    pub(super) fn drop_stream(&self, out: Rc<OutStream>) {
        out.close();
        let client = self.inner.client.clone();
        let path = Op::DropAside.path(self.inner.shard);
        let timeout = self.inner.timeout;
        glommio::spawn_local(async move {
            for m in &out.members {
                let task = m.task.borrow_mut().take();
                if let Some(t) = task {
                    within(timeout, t).await;
                }
                if m.state.sent.get() {
                    let body = Bytes::from(out.key.encode());
                    if let Err(e) = client.post(&m.addr, &path, body.into(), timeout).await {
                        info!(peer = m.id, error = %e, "a member could not be told to drop a failed push's objects (it drops them later)");
                    }
                }
            }
        })
        .detach();
    }
}
