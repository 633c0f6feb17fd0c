//! A shard of a node: its repositories, replicated by the shard's raft group, served
//! as the network layer's [`Backend`].
//!
//! * Objects live in the shard's store under the repository's namespace (its random
//!   id, fixed at creation by the proposer).
//! * Repository state (refs, symrefs, settings) lives in the group's state machine; it
//!   changes only by committed raft entries.
//! * A push: the verified objects are stored here and sent to every other member (a
//!   large push's while it arrives, written aside there and adopted after
//!   verification: [`crate::aside`]); once a majority (counting this node) holds them
//!   durably in the repository, one entry with the ref transaction is proposed
//!   (forwarded to the leader if this node is not it). The client hears "ok" only
//!   after that entry committed and applied.
//! * A read first proves this node is current ([`Backend::linearize`]): the leader
//!   confirms its leadership with a quorum (read index); a follower asks the leader
//!   for its read index and waits until it has applied that far.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use repospanner_net::backend::{Backend, BackendError, RawHead, RawObject, RefUpdate, RepoState};
use repospanner_net::client::{ClientError, NodeClient};
use repospanner_net::git::{hex, ObjectKind, Oid};
use repospanner_net::piece::SharedChain;
use repospanner_raft::openraft::async_runtime::watch::WatchReceiver;
use repospanner_raft::openraft::raft::ReadPolicy;
use repospanner_raft::openraft::{self, BasicNode, ChangeMembers, ServerState};
use repospanner_raft::{Command, LogStore, RefChange, Repo, Response, StateMachine};
use repospanner_storage::io::Dir;
use repospanner_storage::{Namespace, Store, StoredObject, Write};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aside::{
    decode_adopt, encode_adopt, split_acked, Batch, MemberStream, OutStream, StreamKey,
    StreamState, PEER_ASIDE_IDLE,
};
use crate::cluster::{
    decode_ids, decode_objects, decode_snapshot_body, encode_ids, encode_objects,
    encode_objects_shared, members_but, raft_config, rpc_path, store_objects, with_metrics,
    Network, ObjectSync, RpcReply, ShardRaft, SyncActivity, SyncBodies, FETCH_REPLY_BYTES,
};

/// Size of one object-sync request body to a peer.
const SYNC_CHUNK_BYTES: usize = 8 << 20;
/// Object-sync bodies in flight to one peer at once (each on its own connection).
const SYNC_IN_FLIGHT: usize = 2;

/// Who this node is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub cluster: String,
    pub region: String,
    pub name: String,
    pub id: u64,
}

struct Inner<D: Dir> {
    store: Store<D>,
    sm: StateMachine<D>,
    raft: Rc<OnceCell<ShardRaft<D>>>,
    client: Rc<NodeClient>,
    default_head: String,
    identity: Identity,
    /// Where peers reach this node.
    rpc_addr: String,
    /// Which shard of the node this is.
    shard: usize,
    started: Instant,
    /// How long a push waits for a majority, and a read for proof it is current.
    timeout: Duration,
    pushes: Cell<u64>,
    /// Whether this node answers vote requests. Not while it joins: a node whose disk
    /// was wiped has forgotten the votes it gave, and could vote twice in one term.
    votes: Cell<bool>,
    /// Whether this node takes appended entries (see [`NodeBackend::hold_appends`]).
    appends: Cell<bool>,
    activity: SyncActivity,
    /// Pushes whose objects are being written aside while they arrive: the namespace
    /// they go to and the ids written so far.
    asides: RefCell<HashMap<u64, Aside>>,
    /// Those pushes' streams to the other members (see [`crate::aside`]).
    out_streams: RefCell<HashMap<u64, Rc<OutStream>>>,
    /// Objects other members' pushes wrote here aside while they arrived.
    peer_asides: RefCell<HashMap<StreamKey, Aside>>,
}

/// Objects of one push written aside (this node's push, or a peer's it streamed here):
/// the namespace, the ids written there, and when it was last written.
struct Aside {
    ns: Namespace,
    written: HashSet<Oid>,
    touched: Instant,
}

/// Either map of [`Aside`]s: keyed by this shard's push ids, or by a peer's streams.
type Asides<K> = RefCell<HashMap<K, Aside>>;

/// The store's opaque stream that lists the namespaces holding objects written aside
/// (see `Backend::store_aside`), one key each, for as long as they exist: whatever it
/// lists at start-up is dropped. Such a namespace is random, as repository ids are, and
/// is known for what it is only by this list: nothing else may ever drop a namespace.
const ASIDE_STREAM: u8 = 18;

/// The writes that drop aside namespace `ns` and its entry in [`ASIDE_STREAM`].
fn drop_aside_writes(ns: Namespace) -> Vec<Write> {
    vec![
        Write::DropNamespace(ns),
        Write::DeleteRange {
            stream: ASIDE_STREAM,
            keys: ns.0..ns.0 + 1,
        },
    ]
}

/// A shard's repositories.
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
            .field("shard", &self.inner.shard)
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

fn raw<B>(o: StoredObject<B>) -> RawObject<B> {
    RawObject {
        oid: o.oid,
        kind: from_storage_kind(o.kind),
        object_size: o.object_size,
        entry_size: o.entry_size,
        base: o.base,
        deflated: o.deflated,
    }
}

fn stored(o: RawObject) -> StoredObject {
    StoredObject {
        oid: o.oid,
        kind: to_storage_kind(o.kind),
        object_size: o.object_size,
        entry_size: o.entry_size,
        base: o.base,
        deflated: o.deflated,
    }
}

fn repo_state(r: &Repo) -> RepoState {
    RepoState {
        public: r.public,
        allow_non_fast_forward: r.allow_non_fast_forward,
        refs: r.refs.clone(),
        symrefs: r.symrefs.clone(),
        only_reachable: r.only_reachable,
    }
}

/// A random non-zero u64 (repository ids, push ids).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = u64::from_le_bytes(b);
    if n == 8 && v != 0 {
        return v;
    }
    // getrandom cannot fail for 8 bytes on Linux >= 3.17; keep ids unique anyway.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    t | 1
}

/// How a proposal failed.
#[derive(Debug)]
enum ProposeError {
    /// Surely not applied (refused before it could be proposed).
    Failed(String),
    /// Proposed, but no answer in time: it may still commit.
    Unknown(String),
}

/// The JSON of a `join` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub addr: String,
}

/// Why the leader-only operations (propose, read index) could not answer.
#[derive(Debug)]
enum LeaderError {
    NotLeader,
    Failed(String),
}

impl std::fmt::Display for LeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaderError::NotLeader => f.write_str("not the leader"),
            LeaderError::Failed(e) => f.write_str(e),
        }
    }
}

/// Encodes a leader-only operation's outcome (`NotLeader` stays typed on the wire).
fn leader_reply<T: Serialize>(r: Result<T, LeaderError>) -> Result<Vec<u8>, (u16, String)> {
    match r {
        Err(LeaderError::NotLeader) => {
            serde_json::to_vec(&RpcReply::<T>::NotLeader).map_err(|e| (500, e.to_string()))
        }
        r => rpc_reply(r),
    }
}

fn rpc_reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Vec<u8>, (u16, String)> {
    let reply = match r {
        Ok(v) => RpcReply::Ok(v),
        Err(e) => RpcReply::Err(e.to_string()),
    };
    serde_json::to_vec(&reply).map_err(|e| (500, e.to_string()))
}

/// `fut`'s output, or `None` if it takes longer than `d` (then it is dropped).
async fn within<T>(d: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (u16, String)> {
    serde_json::from_slice(body).map_err(|e| (400, format!("malformed request: {e}")))
}

/// Sends `bodies` to `addr` in order, [`SYNC_IN_FLIGHT`] at a time (the peer stores
/// one while the next is on its way), each within `deadline`; then gives up the pieces
/// it did not take.
async fn send_bodies(
    client: &NodeClient,
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

/// The end of a push for a member it streamed to: once the stream's last batch is
/// answered, sends the objects the member did not acknowledge, then asks it to adopt
/// the rest; what it cannot adopt is sent whole. Ok once the member holds every
/// object of the push durably in the repository.
#[allow(clippy::too_many_arguments)]
async fn send_after_stream(
    client: &NodeClient,
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
    let path = rpc_path(shard, "objects");
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
            let drop_path = rpc_path(shard, "drop-aside");
            let _ = client
                .post(addr, &drop_path, Bytes::from(key.encode()), left)
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
        .post(addr, &rpc_path(shard, "adopt"), adopt, left)
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
    /// Opens shard `shard`: its state machine (from its snapshot) and its raft group,
    /// which replays the log after the snapshot.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        store: Store<D>,
        identity: Identity,
        rpc_addr: String,
        default_head: String,
        shard: usize,
        client: Rc<NodeClient>,
        timeout: Duration,
        snapshot_entries: u64,
    ) -> Result<Self, BackendError> {
        let cell = Rc::new(OnceCell::new());
        let activity = SyncActivity::default();
        let hooks = ObjectSync {
            store: store.clone(),
            client: client.clone(),
            shard,
            self_id: identity.id,
            raft: cell.clone(),
            activity: activity.clone(),
        };
        let sm = StateMachine::open(store.clone(), Rc::new(hooks))
            .await
            .map_err(|e| err(format!("shard {shard} state machine: {e}")))?;
        let raft = openraft::Raft::new(
            identity.id,
            raft_config(snapshot_entries),
            Network {
                client: client.clone(),
                shard,
            },
            LogStore::new(store.clone()),
            sm.clone(),
        )
        .await
        .map_err(|e| err(format!("shard {shard} raft: {e}")))?;
        let _ = cell.set(raft);
        Ok(NodeBackend {
            inner: Rc::new(Inner {
                store,
                sm,
                raft: cell,
                client,
                default_head,
                identity,
                rpc_addr,
                shard,
                started: Instant::now(),
                timeout,
                pushes: Cell::new(0),
                votes: Cell::new(true),
                appends: Cell::new(true),
                activity,
                asides: RefCell::new(HashMap::new()),
                out_streams: RefCell::new(HashMap::new()),
                peer_asides: RefCell::new(HashMap::new()),
            }),
        })
    }

    /// Stores a push's objects in namespace `ns`: those written aside while it arrived
    /// are adopted from there (one small record), the rest written now; then what is
    /// left aside (objects the push does not keep) is dropped, in the same append.
    async fn store_here(
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
    async fn aside_ns<K: std::hash::Hash + Eq + Copy>(
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
                    written: HashSet::new(),
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
    async fn write_aside<K: std::hash::Hash + Eq + Copy>(
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

    /// Starts streaming push `aside` (of repository namespace `ns`) to the other
    /// members: one sender task each, which posts the batches in order and records
    /// what the member acknowledged. Nothing if this node is alone.
    fn open_stream(&self, ns: u64, aside: u64) {
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
                let path = rpc_path(self.inner.shard, "aside");
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
    fn stream_batch(&self, aside: u64, objects: &[StoredObject], oids: &[Oid]) {
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
    fn drop_stream(&self, out: Rc<OutStream>) {
        out.close();
        let client = self.inner.client.clone();
        let path = rpc_path(self.inner.shard, "drop-aside");
        let timeout = self.inner.timeout;
        glommio::spawn_local(async move {
            for m in &out.members {
                let task = m.task.borrow_mut().take();
                if let Some(t) = task {
                    within(timeout, t).await;
                }
                if m.state.sent.get() {
                    let body = Bytes::from(out.key.encode());
                    if let Err(e) = client.post(&m.addr, &path, body, timeout).await {
                        info!(peer = m.id, error = %e, "a member could not be told to drop a failed push's objects (it drops them later)");
                    }
                }
            }
        })
        .detach();
    }

    /// A member's part of the stream of a peer's push: writes `objs` aside under
    /// `key`. Also drops what other streams left here for longer than
    /// [`PEER_ASIDE_IDLE`].
    async fn write_peer_aside(
        &self,
        key: StreamKey,
        objs: Vec<StoredObject>,
    ) -> Result<(), (u16, String)> {
        let failed = |e: repospanner_storage::Error| (500, e.to_string());
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
            return Err((409, "the push's objects here were dropped meanwhile".into()));
        }
        Ok(())
    }

    /// A member adopts objects a peer's push streamed here into the repository, and
    /// drops the rest of them, in one append. Refused (and nothing adopted) if any of
    /// `oids` is not held: the sender then sends them whole.
    async fn adopt_peer_aside(&self, key: StreamKey, oids: Vec<Oid>) -> Result<(), (u16, String)> {
        let Some(a) = self.inner.peer_asides.borrow_mut().remove(&key) else {
            return Err((
                409,
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
        self.inner
            .store
            .append(writes)
            .await
            .map_err(|e| (500, e.to_string()))?;
        self.inner.activity.touch(key.ns);
        if missing > 0 {
            return Err((
                409,
                format!("{missing} of the objects to adopt are not held here aside"),
            ));
        }
        Ok(())
    }

    async fn drop_peer_aside(&self, key: StreamKey) -> Result<(), (u16, String)> {
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
                .map_err(|e| (500, e.to_string()))?;
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

    fn raft(&self) -> &ShardRaft<D> {
        // Set in `open` before the backend exists.
        self.inner
            .raft
            .get()
            .expect("the raft handle is set when the backend is opened")
    }

    pub fn store(&self) -> &Store<D> {
        &self.inner.store
    }

    /// Makes this node the only member of a new group and waits until it leads.
    pub async fn initialize(&self) -> Result<(), BackendError> {
        let me = BTreeMap::from([(
            self.inner.identity.id,
            BasicNode::new(self.inner.rpc_addr.clone()),
        )]);
        self.raft().initialize(me).await.map_err(err)?;
        self.raft()
            .wait(Some(Duration::from_secs(30)))
            .current_leader(self.inner.identity.id, "the first node leads its new group")
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Stops the group's raft core (before closing the store).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft().shutdown().await {
            warn!(shard = self.inner.shard, error = ?e, "raft shutdown");
        }
    }

    /// Makes this node neither grant votes nor campaign (`false`) while it joins the
    /// region: it learns the group's current term from the leader before it votes,
    /// for another node or for itself.
    pub fn set_voting(&self, votes: bool) {
        self.inner.votes.set(votes);
        self.raft().runtime_config().elect(votes);
    }

    /// Whether this node holds nothing of the group's log (no entry, no snapshot): a
    /// node joining for the first time, or one whose disk was wiped.
    pub fn log_is_empty(&self) -> bool {
        with_metrics(self.raft(), |m| {
            m.last_log_index.is_none() && m.snapshot.is_none()
        })
    }

    /// Refuses (`false`) or takes appended entries. A node that lost its log refuses them
    /// until the leader knows (the `rejoin` operation): the leader still believes the entries
    /// the node acknowledged before are there, and openraft, told otherwise by a
    /// refusal of that log, neither goes back nor gives up, but sends the same entries
    /// again, hundreds of times a second, for as long as both run.
    pub fn hold_appends(&self, take: bool) {
        self.inner.appends.set(take);
    }

    /// Whether appended entries are taken (see [`NodeBackend::hold_appends`]).
    pub fn takes_appends(&self) -> bool {
        self.inner.appends.get()
    }

    /// Whether this node is a voter of the group.
    pub fn is_voter(&self) -> bool {
        let me = self.inner.identity.id;
        with_metrics(self.raft(), |m| {
            m.membership_config.voter_ids().any(|id| id == me)
        })
    }

    /// Whether this node has applied every entry it holds (after a join: it has the
    /// region's repositories and their objects).
    pub fn caught_up(&self) -> bool {
        with_metrics(self.raft(), |m| {
            m.last_applied.map(|l| l.index) >= m.last_log_index && m.current_leader.is_some()
        })
    }

    fn ns_of(&self, repo: &str) -> Option<u64> {
        self.inner
            .sm
            .with_state(|s| s.repos.get(repo).map(|r| r.id))
    }

    fn leader(&self) -> Option<(u64, Option<String>)> {
        with_metrics(self.raft(), |m| {
            let l = m.current_leader?;
            let addr = m.membership_config.get_node(&l).map(|n| n.addr.clone());
            Some((l, addr))
        })
    }

    /// Proposes `cmd` to the group (through the leader) and waits for its answer.
    async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut sent = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let secs = self.inner.timeout.as_secs();
                return Err(if sent {
                    ProposeError::Unknown(format!(
                        "no majority confirmed it within {secs} s; it may still be applied"
                    ))
                } else {
                    ProposeError::Failed(format!(
                        "no leader reachable within {secs} s (a majority of the region's nodes is down or unreachable); nothing was changed"
                    ))
                });
            }
            match self.leader() {
                Some((l, _)) if l == self.inner.identity.id => {
                    sent = true;
                    let r = within(left, self.raft().client_write(cmd.clone())).await;
                    match r {
                        Some(Ok(resp)) => return Ok(resp.data),
                        Some(Err(e)) if e.forward_to_leader().is_some() => {}
                        Some(Err(e)) => {
                            return Err(ProposeError::Unknown(format!("raft: {e}")));
                        }
                        None => continue,
                    }
                }
                Some((_, Some(addr))) => {
                    let body = match serde_json::to_vec(&cmd) {
                        Ok(b) => Bytes::from(b),
                        Err(e) => return Err(ProposeError::Failed(e.to_string())),
                    };
                    let r = self
                        .inner
                        .client
                        .post(&addr, &rpc_path(self.inner.shard, "propose"), body, left)
                        .await;
                    match r {
                        Ok(b) => match serde_json::from_slice::<RpcReply<Response>>(&b) {
                            Ok(RpcReply::Ok(resp)) => return Ok(resp),
                            // The leader moved before it proposed: try again.
                            Ok(RpcReply::NotLeader) => {}
                            Ok(RpcReply::Err(e)) => {
                                return Err(ProposeError::Unknown(format!("leader: {e}")))
                            }
                            Err(e) => {
                                return Err(ProposeError::Unknown(format!(
                                    "unreadable answer from the leader: {e}"
                                )))
                            }
                        },
                        // Surely not proposed: try again.
                        Err(e) if e.unreachable() => {}
                        Err(ClientError::Status { status: 503, .. }) => {}
                        // It may have been proposed; proposing it again could apply
                        // it twice, so the outcome is reported as unknown.
                        Err(e) => return Err(ProposeError::Unknown(format!("leader: {e}"))),
                    }
                }
                _ => {}
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin_propose(&self, cmd: Command) -> Result<(), BackendError> {
        match self.propose(cmd).await {
            Ok(Response::Done) => Ok(()),
            Ok(Response::Refused(e)) => Err(err(e)),
            Ok(Response::Refs(_)) => Err(err("unexpected answer")),
            Err(ProposeError::Failed(e)) => Err(err(e)),
            Err(ProposeError::Unknown(e)) => Err(err(format!("outcome unknown: {e}"))),
        }
    }

    /// The read index of the group, confirmed by a quorum (leader only).
    async fn read_index(&self) -> Result<u64, LeaderError> {
        let r = within(
            self.inner.timeout,
            self.raft().ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        match r {
            Some(Ok(id)) => Ok(id.log_id().index),
            Some(Err(e)) if e.forward_to_leader().is_some() => Err(LeaderError::NotLeader),
            Some(Err(e)) => Err(LeaderError::Failed(e.to_string())),
            None => Err(LeaderError::Failed(
                "no quorum confirmed the leadership in time".into(),
            )),
        }
    }

    /// Sends a join operation (`join`, `rejoin`) to the group's leader: any member may
    /// be asked, the leader does it.
    async fn join_at_leader(&self, op: &str, req: &JoinRequest) -> Result<(), String> {
        let Some((_, Some(addr))) = self.leader() else {
            return Err("the group has no leader right now".into());
        };
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        crate::cluster::post_join(
            &self.inner.client,
            &addr,
            self.inner.shard,
            op,
            Bytes::from(body),
        )
        .await
    }

    /// A member whose log is empty asks to rejoin (its disk was wiped, or it never had
    /// one): if the group knows it, the leader lets replication to it start over once
    /// it finds the log gone (openraft's `allow_next_revert`), where it would otherwise
    /// keep sending what the node no longer has. Entries the node had acknowledged stay
    /// committed: they are on the leader, as every committed entry is.
    async fn rejoin(&self, req: JoinRequest) -> Result<(), String> {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.inner.identity.id) {
            return self.join_at_leader("rejoin", &req).await;
        }
        if m.membership_config.get_node(&req.id).is_none() || req.id == self.inner.identity.id {
            return Ok(());
        }
        // Only where this leader counts entries as on the node is there anything to
        // reset (a retried first join has none), and nothing is left armed that could
        // later pass a real reversion over.
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&req.id))
            .cloned()
            .flatten();
        if matched.is_none() {
            return Ok(());
        }
        match raft.trigger().allow_next_revert(&req.id, true).await {
            Ok(Ok(())) => {
                info!(
                    shard = self.inner.shard,
                    node = req.id,
                    "rejoin: the node lost its log; replicating it from the start"
                );
                Ok(())
            }
            // Not replicated to by this leader yet: a new stream starts from nothing.
            Ok(Err(e)) => {
                info!(shard = self.inner.shard, node = req.id, error = %e, "rejoin: nothing to reset");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn join(&self, req: JoinRequest) -> Result<(), String> {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.inner.identity.id) {
            return self.join_at_leader("join", &req).await;
        }
        let known = m.membership_config.get_node(&req.id).is_some();
        if m.membership_config.voter_ids().any(|v| v == req.id) {
            info!(
                shard = self.inner.shard,
                node = req.id,
                "join: already a voter"
            );
            return Ok(());
        }
        if !known {
            info!(shard = self.inner.shard, node = req.id, addr = %req.addr, "join: adding a learner");
        }
        raft.add_learner(req.id, BasicNode::new(req.addr.clone()), true)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            shard = self.inner.shard,
            node = req.id,
            "join: learner caught up; making it a voter"
        );
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(|e| e.to_string())?;
        info!(shard = self.inner.shard, node = req.id, "join: voter");
        Ok(())
    }

    /// Per-shard raft status for `nodestatus`.
    fn raft_status(&self) -> serde_json::Value {
        let m = self.raft().metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let members: BTreeMap<String, serde_json::Value> = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let voter = m.membership_config.voter_ids().any(|v| v == *id);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map_or(0, |l| l.index));
                (
                    id.to_string(),
                    serde_json::json!({
                        "Address": n.addr,
                        "Voter": voter,
                        "Matched": matched,
                        "Lag": matched.map(|x| last.saturating_sub(x)),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "State": format!("{:?}", m.state),
            "Leader": m.current_leader,
            "Term": m.current_term,
            "LastLogIndex": m.last_log_index,
            "Committed": m.cluster_committed.map(|l| l.index),
            "Applied": m.last_applied.map(|l| l.index),
            "Snapshot": m.snapshot.map(|l| l.index),
            "Members": members,
        })
    }
}

impl<D: Dir> Backend for NodeBackend<D> {
    type Chunk = repospanner_storage::Chunk;

    async fn repo(&self, name: &str) -> Result<Option<RepoState>, BackendError> {
        Ok(self
            .inner
            .sm
            .with_state(|s| s.repos.get(name).map(repo_state)))
    }

    async fn object(
        &self,
        repo: &str,
        oid: &Oid,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(None);
        };
        Ok(self
            .inner
            .store
            .read_object(Namespace(ns), oid)
            .await
            .map_err(err)?
            .map(|(k, c)| (from_storage_kind(k), c)))
    }

    async fn raws(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<RawObject<Self::Chunk>>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        let read = self
            .inner
            .store
            .read_raws(Namespace(ns), oids)
            .await
            .map_err(err)?;
        Ok(read.into_iter().map(|o| o.map(raw)).collect())
    }

    async fn raw_heads(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<RawHead>>, BackendError> {
        let Some(ns) = self.ns_of(repo) else {
            return Ok(vec![None; oids.len()]);
        };
        let read = self
            .inner
            .store
            .read_heads(Namespace(ns), oids)
            .await
            .map_err(err)?;
        Ok(read
            .into_iter()
            .map(|h| {
                h.map(|h| RawHead {
                    oid: h.oid,
                    kind: from_storage_kind(h.kind),
                    object_size: h.object_size,
                    entry_size: h.entry_size,
                    base: h.base,
                })
            })
            .collect())
    }

    fn remember(&self, repo: &str, objects: Vec<(Oid, ObjectKind, Vec<u8>)>) {
        if let Some(ns) = self.ns_of(repo) {
            self.inner.store.remember(
                Namespace(ns),
                objects
                    .into_iter()
                    .map(|(oid, kind, content)| (oid, to_storage_kind(kind), content)),
            );
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

    fn has_many(&self, repo: &str, oids: &[Oid]) -> Vec<bool> {
        match self.ns_of(repo) {
            Some(ns) => self.inner.store.contains_many(Namespace(ns), oids),
            None => vec![false; oids.len()],
        }
    }

    async fn store_aside(
        &self,
        repo: &str,
        aside: u64,
        objects: Vec<RawObject>,
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
        let objects: Vec<StoredObject> = objects.into_iter().map(stored).collect();
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

    async fn store(
        &self,
        repo: &str,
        objects: Vec<RawObject>,
        aside: Option<u64>,
        progress: &mut dyn FnMut(String),
    ) -> Result<(), BackendError> {
        let ns = self
            .ns_of(repo)
            .ok_or_else(|| err("repository was deleted"))?;
        let objects: Vec<StoredObject> = objects.into_iter().map(stored).collect();
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
                let path = rpc_path(self.inner.shard, "objects");
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
            objects: objects.iter().map(hex).collect(),
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

    async fn linearize(&self) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let unavailable = |why: &str| {
                err(format!(
                    "this node cannot prove it is current ({why}); a majority of the region's nodes may be down"
                ))
            };
            if left.is_zero() {
                return Err(unavailable("timed out"));
            }
            let index = match self.leader() {
                Some((l, _)) if l == self.inner.identity.id => match self.read_index().await {
                    Ok(_) => return Ok(()),
                    Err(LeaderError::NotLeader) => None,
                    Err(LeaderError::Failed(e)) => return Err(unavailable(&e)),
                },
                Some((_, Some(addr))) => {
                    let r = self
                        .inner
                        .client
                        .post(
                            &addr,
                            &rpc_path(self.inner.shard, "readindex"),
                            Bytes::new(),
                            left,
                        )
                        .await;
                    match r.map(|b| serde_json::from_slice::<RpcReply<u64>>(&b)) {
                        Ok(Ok(RpcReply::Ok(i))) => Some(i),
                        Ok(Ok(RpcReply::NotLeader)) => None,
                        Ok(Ok(RpcReply::Err(e))) => return Err(unavailable(&e)),
                        Ok(Err(e)) => return Err(unavailable(&e.to_string())),
                        Err(e) if e.unreachable() => None,
                        Err(e) => return Err(unavailable(&e.to_string())),
                    }
                }
                _ => None,
            };
            if let Some(i) = index {
                let left = deadline.saturating_duration_since(Instant::now());
                return self
                    .raft()
                    .wait(Some(left))
                    .applied_index_at_least(Some(i), "read index")
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable(&e.to_string()));
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn node_rpc(&self, op: &str, body: Vec<u8>) -> Result<Vec<u8>, (u16, String)> {
        let raft = self.raft();
        match op {
            "append" if !self.inner.appends.get() => Err((
                503,
                "this node lost its log and waits for the leader to replicate it from the start"
                    .into(),
            )),
            "append" => rpc_reply(raft.append_entries(parse(&body)?).await),
            "vote" if !self.inner.votes.get() => Err((
                503,
                "this node is joining the region and does not vote until the join is done".into(),
            )),
            "vote" => rpc_reply(raft.vote(parse(&body)?).await),
            "snapshot" => {
                let (h, data) = decode_snapshot_body(&body).map_err(|e| (400, e))?;
                let snap = openraft::Snapshot {
                    meta: h.meta,
                    snapshot: data,
                };
                rpc_reply(raft.install_full_snapshot(h.vote, snap).await)
            }
            "objects" => {
                let (ns, _) =
                    decode_ids(body.get(..8).unwrap_or(&[])).map_err(|e| (400, e.to_string()))?;
                // decode_ids checked that the body holds at least 8 bytes.
                let objs = decode_objects(&Bytes::from(body).slice(8..))
                    .map_err(|e| (400, e.to_string()))?;
                self.inner.activity.touch(ns);
                store_objects(&self.inner.store, ns, objs)
                    .await
                    .map_err(|e| (500, e.to_string()))?;
                self.inner.activity.touch(ns);
                Ok(b"ok".to_vec())
            }
            "aside" => {
                let (key, _) = StreamKey::decode(&body).map_err(|e| (400, e.to_string()))?;
                // StreamKey::decode checked that the body holds at least its 24 bytes.
                let objs = decode_objects(&Bytes::from(body).slice(24..))
                    .map_err(|e| (400, e.to_string()))?;
                self.write_peer_aside(key, objs).await?;
                Ok(b"ok".to_vec())
            }
            "adopt" => {
                let (key, oids) = decode_adopt(&body).map_err(|e| (400, e.to_string()))?;
                let n = oids.len();
                self.adopt_peer_aside(key, oids).await?;
                info!(
                    shard = self.inner.shard,
                    from = key.from,
                    objects = n,
                    "adopted the objects a peer's push streamed here while it arrived"
                );
                Ok(b"ok".to_vec())
            }
            "drop-aside" => {
                let (key, _) = StreamKey::decode(&body).map_err(|e| (400, e.to_string()))?;
                self.drop_peer_aside(key).await?;
                Ok(b"ok".to_vec())
            }
            "fetch" => {
                let (ns, oids) = decode_ids(&body).map_err(|e| (400, e.to_string()))?;
                let mut found = Vec::new();
                let mut bytes = 0;
                for o in oids {
                    if bytes >= FETCH_REPLY_BYTES {
                        break;
                    }
                    if let Some(obj) = self
                        .inner
                        .store
                        .read_raw(Namespace(ns), &o)
                        .await
                        .map_err(|e| (500, e.to_string()))?
                    {
                        bytes += obj.deflated.len() + 64;
                        found.push(obj);
                    }
                }
                Ok(encode_objects(&[], &found))
            }
            "inventory" => {
                let (ns, _) = decode_ids(&body).map_err(|e| (400, e.to_string()))?;
                Ok(encode_ids(ns, &self.inner.store.oids_in(Namespace(ns))))
            }
            "propose" => {
                let cmd: Command = parse(&body)?;
                let r = raft.client_write(cmd).await;
                leader_reply(match r {
                    Ok(resp) => Ok(resp.data),
                    Err(e) if e.forward_to_leader().is_some() => Err(LeaderError::NotLeader),
                    Err(e) => Err(LeaderError::Failed(e.to_string())),
                })
            }
            "readindex" => leader_reply(self.read_index().await),
            "join" => {
                let req: JoinRequest = parse(&body)?;
                rpc_reply(self.join(req).await)
            }
            "rejoin" => {
                let req: JoinRequest = parse(&body)?;
                rpc_reply(self.rejoin(req).await)
            }
            _ => Err((404, format!("unknown node operation {op:?}"))),
        }
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
    ) -> Result<(), BackendError> {
        self.admin_propose(Command::EditRepo {
            name: name.to_owned(),
            public,
            allow_non_fast_forward,
            symrefs: symrefs.to_vec(),
        })
        .await
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
        let id = &self.inner.identity;
        let s = self.inner.store.stats();
        let m = self.raft().metrics().borrow_watched().clone();
        let voters = m.membership_config.voter_ids().count();
        let quorum_age = m.last_quorum_acked.as_ref().map(|i| i.elapsed());
        let status = if m.running_state.is_err() {
            "failed"
        } else if m.current_leader.is_none() {
            "no leader"
        } else if m.state == ServerState::Leader
            && voters > 1
            && quorum_age.is_none_or(|a| a > Duration::from_secs(3))
        {
            "leader without a quorum"
        } else {
            "ok"
        };
        serde_json::json!({
            "NodeID": id.id,
            "NodeName": id.name,
            "RegionName": id.region,
            "ClusterName": id.cluster,
            "Version": env!("CARGO_PKG_VERSION"),
            "Status": status,
            "UptimeSeconds": self.inner.started.elapsed().as_secs(),
            "Shard": self.inner.shard,
            "Leader": m.state == ServerState::Leader,
            "Raft": self.raft_status(),
            "Repositories": self.inner.sm.with_state(|s| s.repos.len()),
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
