//! Node-to-node plumbing of a shard's raft group: the raft network over HTTPS
//! ([`Network`]), the wire format of object sync ([`encode_objects`]), and the hooks
//! that make an entry's objects present before it applies ([`ObjectSync`]).
//!
//! Every RPC of shard k is an operation of [`repospanner_net::rpc::Op`], sent to
//! `https://<peer>/rpc/shard/<k>/<op>` on the peer's `listen.rpc` (node certificates
//! of the same cluster and region only); the peer's accepting shard passes it to its
//! shard k. Object ids received from a peer are
//! trusted, not re-hashed: the sender is an authenticated node that verified every
//! object (inflate, resolve, SHA-1 with collision detection) when the client pushed
//! it, and TLS protects the bytes on the way.

use std::cell::OnceCell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use repospanner_net::client::{ClientError, Transport};
use repospanner_net::git::parse_hex;
use repospanner_raft::openraft::alias::{SnapshotOf, VoteOf};
use repospanner_raft::openraft::async_runtime::watch::WatchReceiver;
use repospanner_raft::openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable,
};
use repospanner_raft::openraft::network::{RPCOption, RaftNetworkFactory};
use repospanner_raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use repospanner_raft::openraft::{self, BasicNode, OptionalSend, Raft, RaftNetworkV2};
use repospanner_raft::{Command, Hooks, State, StateMachine, TypeConfig as C};
use repospanner_storage::io::Dir;
use repospanner_storage::{Namespace, ObjectHead, ObjectKind, Oid, Store, StoredObject, Write};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A shard's raft handle.
pub type ShardRaft<D> = Raft<C, StateMachine<D>>;

/// The raft settings of every group. Heartbeats keep an idle region quiet (two small
/// requests a second per peer and group); an election follows 1.5-3 s of silence. A
/// snapshot every `snapshot_entries` entries; a quarter of that is kept after it for
/// members that lag a little.
pub fn raft_config(snapshot_entries: u64) -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "repospanner".into(),
            heartbeat_interval: 500,
            election_timeout_min: 1500,
            election_timeout_max: 3000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: snapshot_entries / 4,
            ..Default::default()
        }
        .validate()
        .unwrap_or_default(),
    )
}

use std::sync::Arc;

use repospanner_net::piece::SharedChain;
use repospanner_net::rpc::Op;

// ---------------------------------------------------------------------------
// Object sync wire format: a sequence of
//   oid[20] kind[1] object_size[u64 LE] entry_size[u64 LE] has_base[1] (base[20])
//   len[u32 LE] deflated[len]

/// Encodes objects for object sync after `prefix` (a sync body starts with its
/// namespace), into one buffer of exactly the right size (for answers, which leave
/// the shard; a push's requests to its members go as [`encode_objects_shared`]).
pub fn encode_objects<B: AsRef<[u8]>>(prefix: &[u8], objects: &[StoredObject<B>]) -> Vec<u8> {
    let len = prefix.len()
        + objects
            .iter()
            .map(|o| OBJECT_HEAD_MAX_BYTES + o.deflated.as_ref().len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(prefix);
    for o in objects {
        put_object_head(&mut out, o);
        out.extend_from_slice(o.deflated.as_ref());
    }
    debug_assert!(out.len() <= len);
    out
}

/// Deflated entries shorter than this are copied in with the framing around them; the
/// others are referred to.
const COPY_BELOW: usize = 2048;

/// [`encode_objects`] as a chain of the objects' own bytes (slices of the pack they
/// arrived in) and the few bytes of framing between them: a push's objects go to every
/// member, and copying them into one body first cost the receiving node a pass over
/// the whole pack and a page fault per 4 KiB of it.
pub fn encode_objects_shared(prefix: &[u8], objects: &[StoredObject]) -> SharedChain {
    let mut chain = SharedChain::new();
    let mut framing = prefix.to_vec();
    for o in objects {
        put_object_head(&mut framing, o);
        if o.deflated.len() < COPY_BELOW {
            framing.extend_from_slice(&o.deflated);
        } else {
            chain.push(Bytes::from(std::mem::take(&mut framing)));
            chain.push(o.deflated.clone());
        }
    }
    chain.push(Bytes::from(framing));
    chain
}

/// The longest [`put_object_head`].
const OBJECT_HEAD_MAX_BYTES: usize = HEAD_MAX_BYTES + 4;

/// An object's head and the length of its deflated bytes, which follow it.
fn put_object_head<B: AsRef<[u8]>>(out: &mut Vec<u8>, o: &StoredObject<B>) {
    put_head(out, &o.head());
    out.extend_from_slice(&(o.deflated.as_ref().len() as u32).to_le_bytes());
}

/// The object-sync bodies of one push, cut into pieces of about `chunk_bytes`. Each
/// is made when a sender takes it, as a chain over the objects' bytes
/// ([`encode_objects_shared`]): however far apart the senders to different members
/// are, the node holds no copy of the push's objects beside the pack.
#[derive(Debug)]
pub struct SyncBodies {
    prefix: Vec<u8>,
    objects: Vec<StoredObject>,
    pieces: Vec<std::ops::Range<usize>>,
}

impl SyncBodies {
    /// Bodies starting with `prefix`.
    pub fn new(prefix: Vec<u8>, objects: Vec<StoredObject>, chunk_bytes: usize) -> SyncBodies {
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < objects.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < objects.len() && (end == start || bytes < chunk_bytes) {
                bytes += objects[end].deflated.len() + 64;
                end += 1;
            }
            pieces.push(start..end);
            start = end;
        }
        SyncBodies {
            prefix,
            objects,
            pieces,
        }
    }

    /// How many pieces there are.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Piece `i`.
    pub fn take(&self, i: usize) -> SharedChain {
        encode_objects_shared(&self.prefix, &self.objects[self.pieces[i].clone()])
    }
}

/// What describes a stored object besides its bytes (object sync and streams share
/// its encoding, [`put_head`]): the store's own [`ObjectHead`].
pub type Head = ObjectHead;

/// The longest encoding of a [`Head`].
const HEAD_MAX_BYTES: usize = 20 + 1 + 8 + 8 + 1 + 20;

/// oid[20] kind[1] object_size[u64 LE] entry_size[u64 LE] has_base[1] (base[20])
pub fn put_head(out: &mut Vec<u8>, h: &Head) {
    out.extend_from_slice(&h.oid);
    out.push(h.kind as u8);
    out.extend_from_slice(&h.object_size.to_le_bytes());
    out.extend_from_slice(&h.entry_size.to_le_bytes());
    match &h.base {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

/// Why an object sync body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed object sync body at byte {at}: {what}")]
pub struct WireError {
    pub at: usize,
    pub what: &'static str,
}

/// Reads the node-to-node binary formats.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }
    pub fn done(&self) -> bool {
        self.at >= self.b.len()
    }
    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.b[self.at.min(self.b.len())..]
    }
    /// Reads what [`put_head`] wrote.
    pub fn head(&mut self) -> Result<Head, WireError> {
        let oid = self.oid("object id")?;
        let at = self.at;
        let kind = ObjectKind::from_u8(self.take(1, "kind")?[0]).ok_or(WireError {
            at,
            what: "unknown object kind",
        })?;
        let object_size = self.u64("object size")?;
        let entry_size = self.u64("entry size")?;
        let base = match self.take(1, "base flag")?[0] {
            0 => None,
            1 => Some(self.oid("base id")?),
            _ => {
                return Err(WireError {
                    at: self.at - 1,
                    what: "bad base flag",
                })
            }
        };
        Ok(Head {
            oid,
            kind,
            object_size,
            entry_size,
            base,
        })
    }
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(WireError { at: self.at, what })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn oid(&mut self, what: &'static str) -> Result<Oid, WireError> {
        let mut o = [0u8; 20];
        o.copy_from_slice(self.take(20, what)?);
        Ok(o)
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(v))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let mut v = [0u8; 4];
        v.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(v))
    }
}

/// Decodes an object sync body; the objects' bytes are slices of `b`, not copies.
pub fn decode_objects(b: &Bytes) -> Result<Vec<StoredObject>, WireError> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while !r.done() {
        let head = r.head()?;
        let len = r.u32("length")? as usize;
        let at = r.at;
        r.take(len, "object data")?;
        out.push(head.with_bytes(b.slice(at..at + len)));
    }
    Ok(out)
}

/// Encodes a namespace and object ids (fetch requests, inventories).
pub fn encode_ids(ns: u64, oids: &[Oid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 20 * oids.len());
    out.extend_from_slice(&ns.to_le_bytes());
    for o in oids {
        out.extend_from_slice(o);
    }
    out
}

/// Decodes [`encode_ids`].
pub fn decode_ids(b: &[u8]) -> Result<(u64, Vec<Oid>), WireError> {
    let mut r = Reader::new(b);
    let ns = r.u64("namespace")?;
    if !(b.len() - 8).is_multiple_of(20) {
        return Err(WireError {
            at: 8,
            what: "object ids are not a multiple of 20 bytes",
        });
    }
    let mut oids = Vec::with_capacity((b.len() - 8) / 20);
    while !r.done() {
        oids.push(r.oid("object id")?);
    }
    Ok((ns, oids))
}

/// Largest answer to one `fetch` (the asker asks again for what is still missing).
pub const FETCH_REPLY_BYTES: usize = 32 << 20;

/// The store's opaque stream of repositories deleted here, one key (the repository's
/// namespace) each, kept for good: raft entries before a deletion are applied again
/// at every start (the state machine is rebuilt from the log and snapshot), and the
/// objects they name must not then be waited for. Namespaces are random and never
/// reused, so the list only grows by one small record per deleted repository.
pub const DELETED_STREAM: u8 = 19;

/// The record that marks the repository of namespace `ns` deleted.
fn deleted_mark(ns: u64) -> Write {
    Write::Opaque {
        stream: DELETED_STREAM,
        key: ns,
        data: Vec::new(),
    }
}

/// Whether the repository of namespace `ns` was deleted on this node.
pub fn repo_deleted<D: Dir>(store: &Store<D>, ns: u64) -> bool {
    !store
        .opaque_keys(DELETED_STREAM, ns..ns.saturating_add(1))
        .is_empty()
}

/// Largest single append when storing objects (unless one object is larger): one
/// O_DSYNC write each. Measured on this project's machines: direct synchronous writes
/// of 8-16 MiB run at the device's speed (4 MiB at a quarter of it); larger ones only
/// cost memory. Just under 8 MiB, so that the frame fits the store's
/// `batch_bytes_max` and a block of the executor's I/O memory.
const APPEND_BYTES: usize = (8 << 20) - (128 << 10);

/// Stores objects durably in namespace `ns`: appends of about [`APPEND_BYTES`], two
/// queued at a time, so the store's writer goes from one to the next without waiting
/// while the raft log's small appends never queue behind more than two of them.
pub async fn store_objects<D: Dir>(
    store: &Store<D>,
    ns: u64,
    objects: Vec<StoredObject>,
) -> Result<(), repospanner_storage::Error> {
    use futures_util::StreamExt;
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for o in objects {
        // A record's framing and head are under 128 bytes.
        let size = o.deflated.len() + 128;
        if !batch.is_empty() && bytes + size > APPEND_BYTES {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(Write::Object(Namespace(ns), o));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let mut appends = futures_util::stream::iter(batches)
        .map(|b| store.append(b))
        .buffered(2);
    while let Some(r) = appends.next().await {
        r?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The raft network.

/// Opens connections to the members of shard `shard`'s group.
#[derive(Debug)]
pub struct Network {
    pub client: Rc<dyn Transport>,
    pub shard: usize,
}

impl RaftNetworkFactory<C> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            addr: node.addr.clone(),
            shard: self.shard,
            target,
        }
    }
}

/// One member of the group, as seen by the raft core.
#[derive(Debug)]
pub struct Peer {
    client: Rc<dyn Transport>,
    addr: String,
    shard: usize,
    target: u64,
}

/// What a node-to-node operation answers: its result, the peer's error as text, or
/// that the peer is not the group's leader (the caller asks again, elsewhere).
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply<T> {
    Ok(T),
    Err(String),
    NotLeader,
}

/// Posts the join operation `op` (`join`, `rejoin`) of shard `shard` to the node at
/// `addr` and reads its answer (the joining node's loop and a member forwarding to
/// the leader).
pub async fn post_join(
    client: &dyn Transport,
    addr: &str,
    shard: usize,
    op: Op,
    body: Bytes,
) -> Result<(), String> {
    let b = client
        .post(addr, &op.path(shard), body.into(), Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    match serde_json::from_slice::<RpcReply<()>>(&b) {
        Ok(RpcReply::Ok(())) => Ok(()),
        Ok(RpcReply::Err(e)) => Err(e),
        Ok(RpcReply::NotLeader) => Err("the leader moved; ask again".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Remote(String);

/// Why a raft RPC failed: the peer was not reached, or something else went wrong.
enum Failure {
    Unreachable(ClientError),
    Network(String),
}

impl Failure {
    fn rpc(self) -> RPCError<C> {
        match self {
            Failure::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Failure::Network(e) => RPCError::Network(NetworkError::new(&Remote(e))),
        }
    }
    fn streaming(self) -> StreamingError<C> {
        match self {
            Failure::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            Failure::Network(e) => StreamingError::Network(NetworkError::new(&Remote(e))),
        }
    }
}

impl Peer {
    /// POSTs `body` to operation `op` of the peer and reads its [`RpcReply`].
    async fn exchange<Resp: serde::de::DeserializeOwned>(
        &self,
        op: Op,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        let reply = self
            .client
            .post(
                &self.addr,
                &op.path(self.shard),
                Bytes::from(body).into(),
                timeout,
            )
            .await;
        match reply {
            Ok(b) => match serde_json::from_slice::<RpcReply<Resp>>(&b) {
                Ok(RpcReply::Ok(r)) => Ok(r),
                Ok(RpcReply::Err(e)) => Err(Failure::Network(format!("node {}: {e}", self.target))),
                Ok(RpcReply::NotLeader) => Err(Failure::Network(format!(
                    "node {} is not the leader",
                    self.target
                ))),
                Err(e) => Err(Failure::Network(format!(
                    "node {}: unreadable answer: {e}",
                    self.target
                ))),
            },
            Err(e @ ClientError::Unreachable { .. }) => Err(Failure::Unreachable(e)),
            Err(e) => Err(Failure::Network(e.to_string())),
        }
    }

    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        op: Op,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<C>> {
        let body = serde_json::to_vec(req).map_err(|e| Failure::Network(e.to_string()).rpc())?;
        self.exchange(op, body, timeout).await.map_err(Failure::rpc)
    }
}

/// The header of a snapshot transfer (the state follows it in the body).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: VoteOf<C>,
    pub meta: openraft::alias::SnapshotMetaOf<C>,
}

impl RaftNetworkV2<C> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(Op::Append, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(Op::Vote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let header = serde_json::to_vec(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
        })
        .map_err(|e| Failure::Network(e.to_string()).streaming())?;
        let mut body = Vec::with_capacity(4 + header.len() + snapshot.snapshot.len());
        body.extend_from_slice(&(header.len() as u32).to_le_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(&snapshot.snapshot);
        // Installing waits for the receiver to fetch the objects the snapshot's refs
        // need, which can take a while.
        self.exchange(Op::Snapshot, body, Duration::from_secs(600))
            .await
            .map_err(Failure::streaming)
    }
}

/// Splits a snapshot transfer body into its header and state.
pub fn decode_snapshot_body(b: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), String> {
    let len = b
        .get(..4)
        .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or("snapshot body too short")?;
    let end = 4usize.checked_add(len).filter(|e| *e <= b.len());
    let end = end.ok_or("snapshot header truncated")?;
    let h = serde_json::from_slice(&b[4..end]).map_err(|e| e.to_string())?;
    Ok((h, b[end..].to_vec()))
}

// ---------------------------------------------------------------------------
// Object presence before apply.

/// Makes an entry's objects present on this node before the entry applies: what is
/// missing (this node was down or slow when the push happened) is fetched from the
/// group's other members, retried until it arrives or the node stops.
pub struct ObjectSync<D: Dir> {
    /// Warmed with the history each push's new tips reach, once its objects are here.
    pub(crate) commits: crate::node::Commits<D>,
    pub store: Store<D>,
    pub client: Rc<dyn Transport>,
    pub shard: usize,
    pub self_id: u64,
    /// Set once the group's raft handle exists (it is created with these hooks).
    pub raft: Rc<OnceCell<ShardRaft<D>>>,
    /// When object sync into each namespace last made progress (see [`SyncActivity`]).
    pub activity: SyncActivity,
}

/// When a peer's object sync into a namespace last started or stored a body. An entry
/// that commits while its objects are still arriving (this node was not among the
/// first majority) waits for them instead of fetching them a second time.
#[derive(Debug, Clone, Default)]
pub struct SyncActivity(Rc<std::cell::RefCell<std::collections::HashMap<u64, std::time::Instant>>>);

/// How long after the last sync activity a namespace counts as still receiving.
const SYNC_QUIET: Duration = Duration::from_secs(2);

impl SyncActivity {
    pub fn touch(&self, ns: u64) {
        self.0.borrow_mut().insert(ns, std::time::Instant::now());
    }
    fn receiving(&self, ns: u64) -> bool {
        self.0
            .borrow()
            .get(&ns)
            .is_some_and(|t| t.elapsed() < SYNC_QUIET)
    }
}

impl<D: Dir> std::fmt::Debug for ObjectSync<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSync")
            .field("shard", &self.shard)
            .finish()
    }
}

impl<D: Dir> Clone for ObjectSync<D> {
    fn clone(&self) -> Self {
        ObjectSync {
            commits: self.commits.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            shard: self.shard,
            self_id: self.self_id,
            raft: self.raft.clone(),
            activity: self.activity.clone(),
        }
    }
}

/// Reads a group's current metrics without copying them (they hold the membership and
/// per-member progress; the hot paths only need a field or two).
pub fn with_metrics<D: Dir, T>(
    raft: &ShardRaft<D>,
    f: impl FnOnce(&openraft::RaftMetrics<C>) -> T,
) -> T {
    let rx = raft.metrics();
    let m = rx.borrow_watched();
    f(&m)
}

/// The other members of a group (id, address), leader first if known.
pub fn peers_of<D: Dir>(raft: &ShardRaft<D>, self_id: u64) -> Vec<(u64, String)> {
    with_metrics(raft, |m| members_but(m, self_id))
}

pub fn members_but(m: &openraft::RaftMetrics<C>, self_id: u64) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = m
        .membership_config
        .nodes()
        .filter(|(id, _)| **id != self_id)
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    if let Some(l) = m.current_leader {
        v.sort_by_key(|(id, _)| *id != l);
    }
    v
}

impl<D: Dir> ObjectSync<D> {
    /// The members to ask: those the state machine knows (`known`) and those the
    /// raft core knows now, without this node.
    fn peers(&self, known: &[(u64, String)]) -> Vec<(u64, String)> {
        let mut v = match self.raft.get() {
            Some(r) => peers_of(r, self.self_id),
            None => Vec::new(),
        };
        for (id, addr) in known {
            if *id != self.self_id && !v.iter().any(|(i, _)| i == id) {
                v.push((*id, addr.clone()));
            }
        }
        v
    }

    /// Drops from `oids` what `ns` holds.
    fn keep_missing(&self, ns: u64, oids: &mut Vec<Oid>) {
        let have = self.store.contains_many(Namespace(ns), oids);
        let mut have = have.into_iter();
        oids.retain(|_| !have.next().unwrap_or(false));
    }

    /// Fetches the objects of `oids` missing in `ns` from peers until all are here.
    pub async fn fetch_missing(
        &self,
        ns: u64,
        oids: Vec<Oid>,
        known: &[(u64, String)],
    ) -> Result<(), io::Error> {
        let mut missing: Vec<Oid> = oids;
        let mut round = 0u32;
        loop {
            if self.deleted(ns) {
                // Entries before the deletion, applied again (at start-up, or by a
                // member that lags): what they named is gone for good.
                return Ok(());
            }
            self.keep_missing(ns, &mut missing);
            if missing.is_empty() {
                return Ok(());
            }
            if crate::stop::stop_requested() {
                return Err(io::Error::other("stopping"));
            }
            if self.activity.receiving(ns) {
                // A peer is still sending them.
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
            for (id, addr) in self.peers(known) {
                // Ask this peer until it has nothing more of what is missing (each
                // answer is bounded, see `FETCH_REPLY_BYTES`).
                loop {
                    self.keep_missing(ns, &mut missing);
                    if missing.is_empty() {
                        return Ok(());
                    }
                    let ask = &missing[..missing.len().min(10_000)];
                    let body = Bytes::from(encode_ids(ns, ask));
                    let reply = self
                        .client
                        .post(
                            &addr,
                            &Op::Fetch.path(self.shard),
                            body.into(),
                            Duration::from_secs(300),
                        )
                        .await;
                    let objs = match reply.map(|b| decode_objects(&b)) {
                        Ok(Ok(objs)) if !objs.is_empty() => objs,
                        Err(ClientError::Status { status: 409, .. }) => {
                            // The peer applied the repository's deletion; this node
                            // will too.
                            info!(
                                shard = self.shard,
                                peer = id,
                                "a repository deleted in the region; its objects are not fetched"
                            );
                            self.mark_deleted(ns).await?;
                            return Ok(());
                        }
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            warn!(shard = self.shard, peer = id, error = %e, "object fetch");
                            break;
                        }
                        Err(e) => {
                            warn!(shard = self.shard, peer = id, error = %e, "object fetch");
                            break;
                        }
                    };
                    info!(
                        shard = self.shard,
                        from = id,
                        objects = objs.len(),
                        "fetched missing objects from a peer"
                    );
                    store_objects(&self.store, ns, objs)
                        .await
                        .map_err(io::Error::other)?;
                }
            }
            round += 1;
            if round % 20 == 1 {
                warn!(
                    shard = self.shard,
                    missing = missing.len(),
                    "waiting for objects of a committed push; no reachable peer has them yet"
                );
            }
            glommio::timer::sleep(Duration::from_millis(500)).await;
        }
    }

    fn deleted(&self, ns: u64) -> bool {
        repo_deleted(&self.store, ns)
    }

    /// Records that the region deleted the repository of `ns` (a peer said so).
    async fn mark_deleted(&self, ns: u64) -> Result<(), io::Error> {
        self.store
            .append(vec![deleted_mark(ns)])
            .await
            .map(|_| ())
            .map_err(io::Error::other)
    }

    /// Fetches every object a peer has in `ns` and this node lacks.
    async fn sync_namespace(&self, ns: u64, known: &[(u64, String)]) -> Result<(), io::Error> {
        loop {
            for (_, addr) in &self.peers(known) {
                let body = Bytes::from(encode_ids(ns, &[]));
                let inv = self
                    .client
                    .post(
                        addr,
                        &Op::Inventory.path(self.shard),
                        body.into(),
                        Duration::from_secs(60),
                    )
                    .await;
                if let Ok(b) = inv {
                    if let Ok((_, oids)) = decode_ids(&b) {
                        return self.fetch_missing(ns, oids, known).await;
                    }
                }
            }
            if crate::stop::stop_requested() {
                return Err(io::Error::other("stopping"));
            }
            glommio::timer::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl<D: Dir> Hooks for ObjectSync<D> {
    fn before_apply(
        &self,
        cmd: &Command,
        members: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>> {
        let this = self.clone();
        match cmd {
            Command::UpdateRefs {
                id,
                objects,
                changes,
                ..
            } => {
                let ns = *id;
                let oids = objects.0.clone();
                let tips: Vec<Oid> = changes
                    .iter()
                    .filter_map(|c| c.new.as_deref().and_then(|h| parse_hex(h.as_bytes())))
                    .collect();
                Box::pin(async move {
                    this.fetch_missing(ns, oids, &members).await?;
                    this.commits.warm(ns, tips);
                    Ok(())
                })
            }
            Command::DeleteRepo { id, .. } => {
                let ns = *id;
                Box::pin(async move {
                    this.store
                        .append(vec![Write::DropNamespace(Namespace(ns)), deleted_mark(ns)])
                        .await
                        .map(|_| ())
                        .map_err(io::Error::other)
                })
            }
            _ => Box::pin(async { Ok(()) }),
        }
    }

    fn before_install(
        &self,
        state: &State,
        members: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>> {
        let this = self.clone();
        let namespaces: Vec<u64> = state
            .repos
            .values()
            .filter(|r| !r.refs.is_empty())
            .map(|r| r.id)
            .collect();
        Box::pin(async move {
            for ns in namespaces {
                this.sync_namespace(ns, &members).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n: usize, size: usize) -> Vec<StoredObject> {
        (0..n)
            .map(|i| StoredObject {
                oid: [i as u8; 20],
                kind: ObjectKind::Blob,
                object_size: size as u64,
                entry_size: size as u64,
                base: None,
                deflated: vec![i as u8; size].into(),
            })
            .collect()
    }

    #[test]
    fn sync_bodies_carry_every_object_once_in_pieces_that_refer_to_large_ones() {
        let mut objs = blobs(10, 1000);
        objs.extend(blobs(3, 5000));
        let bodies = SyncBodies::new(7u64.to_le_bytes().to_vec(), objs.clone(), 2500);
        assert!(
            bodies.len() > 1 && bodies.len() < objs.len(),
            "{} pieces",
            bodies.len()
        );
        let mut got = Vec::new();
        for i in 0..bodies.len() {
            let b = bodies.take(i);
            // The same bytes as the buffer encoding, and the same each time taken.
            let whole = Bytes::from(b.to_vec());
            assert_eq!(whole, Bytes::from(bodies.take(i).to_vec()));
            assert_eq!(whole[..8], 7u64.to_le_bytes());
            let range = bodies.pieces[i].clone();
            assert_eq!(
                &whole[..],
                &encode_objects(&7u64.to_le_bytes(), &objs[range])[..]
            );
            got.extend(decode_objects(&whole.slice(8..)).expect("decodes"));
        }
        assert_eq!(got, objs);
        // Entries of COPY_BELOW or more are the objects' own bytes, not copies.
        let last = bodies.take(bodies.len() - 1);
        let big = objs.last().expect("objects");
        assert!(last
            .parts()
            .any(|p| p.as_ptr() == big.deflated.as_ptr() && p.len() == big.deflated.len()));
    }

    #[test]
    fn object_sync_bodies_round_trip_and_reject_damage() {
        let objs = vec![
            StoredObject {
                oid: [1; 20],
                kind: ObjectKind::Blob,
                object_size: 5,
                entry_size: 5,
                base: None,
                deflated: vec![9, 9, 9].into(),
            },
            StoredObject {
                oid: [2; 20],
                kind: ObjectKind::Tree,
                object_size: 50,
                entry_size: 7,
                base: Some([1; 20]),
                deflated: Bytes::new(),
            },
        ];
        let b = encode_objects(&[], &objs);
        let b = Bytes::from(b);
        assert_eq!(decode_objects(&b).expect("decodes"), objs);
        let first = encode_objects(&[], &objs[..1]).len();
        for cut in (1..b.len()).filter(|c| *c != first) {
            assert!(decode_objects(&b.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = b.to_vec();
        bad[20] = 9;
        assert!(decode_objects(&Bytes::from(bad)).is_err());
        assert!(decode_objects(&Bytes::new()).expect("empty").is_empty());
    }

    #[test]
    fn id_lists_round_trip() {
        let b = encode_ids(7, &[[3; 20], [4; 20]]);
        assert_eq!(
            decode_ids(&b).expect("decodes"),
            (7, vec![[3; 20], [4; 20]])
        );
        assert!(decode_ids(&b[..b.len() - 1]).is_err());
        assert!(decode_ids(&b[..4]).is_err());
    }

    #[test]
    fn snapshot_bodies_reject_truncation() {
        assert!(decode_snapshot_body(&[1, 0]).is_err());
        assert!(decode_snapshot_body(&[200, 0, 0, 0, b'{']).is_err());
    }
}
