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
//!
//! Rooms: `backend` (the [`Backend`] the network layer calls, delegating the long
//! paths), `quarantine` (aside namespaces), `stream` (a push's stream to the members),
//! `replicate` (majority object sync), `group` (proposals, read index, joins), `rpc`
//! (node-to-node operations served), `status`, `metrics`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use repospanner_net::backend::{
    Backend, BackendError, ObjectHead, RefUpdate, RepoState, StoredObject,
};
use repospanner_net::client::{ClientError, Transport};
use repospanner_net::git::{hex, ObjectKind, Oid};
use repospanner_net::piece::SharedChain;
use repospanner_net::rpc::{Op, RpcError};
use repospanner_raft::openraft::async_runtime::watch::WatchReceiver;
use repospanner_raft::openraft::raft::ReadPolicy;
use repospanner_raft::openraft::{self, BasicNode, ChangeMembers, ServerState};
use repospanner_raft::{Command, LogStore, ObjectIds, RefChange, Repo, Response, StateMachine};
use repospanner_storage::io::Dir;
use repospanner_storage::{Namespace, Store, Write};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aside::{
    decode_adopt, encode_adopt, split_acked, Batch, MemberStream, OutStream, StreamKey,
    StreamState, PEER_ASIDE_IDLE,
};
use crate::cluster::{
    decode_ids, decode_objects, decode_snapshot_body, encode_ids, encode_objects,
    encode_objects_shared, members_but, raft_config, store_objects, with_metrics, Network,
    ObjectSync, RpcReply, ShardRaft, SyncActivity, SyncBodies, FETCH_REPLY_BYTES,
};

mod backend;
pub(crate) mod commits;
mod group;
mod metrics;
mod quarantine;
mod replicate;
mod rpc;
mod scrub;
mod status;
mod stream;

pub(crate) use commits::Commits;
pub use scrub::ScrubSummary;

pub use group::JoinRequest;
use group::*;
use quarantine::*;
use replicate::*;
use rpc::*;
use stream::*;

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
    client: Rc<dyn Transport>,
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
    /// What the last scrub of this shard found and did.
    last_scrub: RefCell<Option<ScrubSummary>>,
    /// The commit headers this shard keeps (see [`commits`]).
    commits: commits::Commits<D>,
    /// Places of damaged records a read found, being repaired.
    repairing: RefCell<HashSet<(u64, u64)>>,
    /// Changes of the leader this node knows of (`metrics::count_leader_changes`).
    leader_changes: Rc<Cell<u64>>,
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

fn repo_state(r: &Repo) -> RepoState {
    RepoState {
        id: r.id,
        public: r.public,
        allow_non_fast_forward: r.allow_non_fast_forward,
        refs: r.refs.clone(),
        symrefs: r.symrefs.clone(),
        only_reachable: r.only_reachable,
        hooks: r
            .hooks
            .iter()
            .map(|(k, id)| (k.name().to_owned(), id.clone()))
            .collect(),
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
        client: Rc<dyn Transport>,
        timeout: Duration,
        snapshot_entries: u64,
    ) -> Result<Self, BackendError> {
        let cell = Rc::new(OnceCell::new());
        let activity = SyncActivity::default();
        let commits = commits::Commits::new(store.clone());
        let hooks = ObjectSync {
            commits: commits.clone(),
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
        let leader_changes = Rc::new(Cell::new(0));
        glommio::spawn_local(metrics::count_leader_changes(
            raft.clone(),
            leader_changes.clone(),
        ))
        .detach();
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
                last_scrub: RefCell::new(None),
                commits,
                repairing: RefCell::new(HashSet::new()),
                leader_changes,
            }),
        })
    }

    pub(super) fn raft(&self) -> &ShardRaft<D> {
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

    pub(super) fn ns_of(&self, repo: &str) -> Option<u64> {
        self.inner
            .sm
            .with_state(|s| s.repos.get(repo).map(|r| r.id))
    }

    pub(super) fn leader(&self) -> Option<(u64, Option<String>)> {
        with_metrics(self.raft(), |m| {
            let l = m.current_leader?;
            let addr = m.membership_config.get_node(&l).map(|n| n.addr.clone());
            Some((l, addr))
        })
    }
}
