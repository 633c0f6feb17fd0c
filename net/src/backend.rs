//! What the network layer needs from a node: repositories, their refs and objects.
//! The root package implements it over the storage engine and raft. Single-threaded: called from one shard's executor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::git::objects::CommitHeader;
use crate::git::{ObjectKind, Oid};

/// A repository as readers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// This instance of the repository (a deleted and recreated one has another).
    #[serde(default)]
    pub id: u64,
    pub public: bool,
    /// Non-fast-forward updates (force pushes) are accepted.
    pub allow_non_fast_forward: bool,
    /// ref name → object id (hex in JSON).
    pub refs: BTreeMap<String, String>,
    /// symbolic ref → target ref (`HEAD` → `refs/heads/master`).
    pub symrefs: BTreeMap<String, String>,
    /// Every object the repository stores is reachable from its refs (no ref was ever
    /// deleted or rewound, no push's change refused), so a full clone may send them all
    /// without walking the history.
    #[serde(default)]
    pub only_reachable: bool,
    /// Hook (git's name) → the id of its script ([`Backend::hook_script`]).
    #[serde(default)]
    pub hooks: BTreeMap<String, String>,
}

/// A hook's script, named by its git blob id ([`crate::hooks::script_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookScript {
    pub id: String,
    pub content: Vec<u8>,
}

/// A stored pack entry (what a fetch copies out) and its head: the object crate's,
/// shared with the store. Its bytes are `Bytes` where the entry travels (a push's
/// objects, handed between shards), and the backend's own [`Backend::Chunk`] where a
/// fetch copies them straight from the read buffer.
pub use repospanner_object::{ObjectHead, StoredObject};

/// One ref update of a push, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub name: String,
    /// `None`: the ref must not exist.
    pub old: Option<Oid>,
    /// `None`: delete the ref.
    pub new: Option<Oid>,
    /// `new` creates the ref or descends from `old` (a deletion is not forward), and
    /// the push stores nothing its accepted new tips do not reach: it leaves no
    /// object unreachable.
    pub forward: bool,
}

/// A backend failure (storage, replication): reported to the client, logged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What the git protocol reads of a repository's objects (`git::upload` plans and
/// writes packs from these alone).
#[allow(async_fn_in_trait)]
pub trait Objects {
    /// The bytes of a stored entry as the store read them (a view of its read
    /// buffer; it need not leave the shard).
    type Chunk: AsRef<[u8]> + 'static;
    /// The content of an object of the repository.
    async fn object(
        &self,
        repo: &str,
        oid: &Oid,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>, BackendError>;
    /// The contents of many objects of the repository, read together (their delta
    /// chains a level at a time): `None` for each it lacks and for each past
    /// `bytes_max` of contents in the order asked, which the caller reads alone.
    async fn objects(
        &self,
        repo: &str,
        oids: &[Oid],
        bytes_max: u64,
    ) -> Result<Vec<Option<(ObjectKind, Vec<u8>)>>, BackendError>;
    /// The headers of commits of the repository (`None` for each it lacks or that is
    /// not a commit), from what the node keeps of them or read together: a fetch's
    /// commit walk reads these, not the commits.
    async fn commits(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<CommitHeader>>, BackendError>;
    /// The stored pack entries of objects of the repository (`None` for each it
    /// lacks), read together: neighbouring entries come in one device read.
    async fn raws(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<StoredObject<Self::Chunk>>>, BackendError>;
    /// The heads of the stored pack entries of objects (see [`ObjectHead`]), read
    /// together like [`Objects::raws`].
    async fn raw_heads(
        &self,
        repo: &str,
        oids: &[Oid],
    ) -> Result<Vec<Option<ObjectHead>>, BackendError>;
    /// Which of `oids` the repository has.
    fn has_many(&self, repo: &str, oids: &[Oid]) -> Vec<bool>;
    /// Every object the repository stores, in the order their records lie on the
    /// disk, each with its record's size (which bounds its entry's).
    fn stored_objects(&self, repo: &str) -> Vec<(Oid, u64)>;
}

/// What a push writes (`git::receive` needs these and the reads).
#[allow(async_fn_in_trait)]
pub trait Pushes: Objects {
    /// Contents a push verified (trees, commits, tags) of objects the repository now
    /// holds, for the node to keep in memory: the next clone plans from them without
    /// reading them from the disk again. Keeping none is correct.
    fn remember(&self, repo: &str, objects: Vec<(Oid, ObjectKind, Vec<u8>)>);
    /// Stores verified objects durably (not yet referenced by any ref): on this node
    /// and, in a region, on a majority of its nodes. `progress` gets lines for the
    /// client.
    async fn store(
        &self,
        repo: &str,
        objects: Vec<StoredObject>,
        aside: Option<u64>,
        progress: &mut dyn FnMut(String),
    ) -> Result<(), BackendError>;
    /// Writes verified objects of a push that is still arriving, aside: durable, but
    /// where no reader of the repository looks. `aside` names the push (an id unique on
    /// this shard); `store(.., Some(aside), ..)` publishes those of them the push keeps,
    /// `drop_aside` forgets them (a push that failed; a no-op after `store`).
    async fn store_aside(
        &self,
        repo: &str,
        aside: u64,
        objects: Vec<StoredObject>,
    ) -> Result<(), BackendError>;
    fn drop_aside(&self, aside: u64);
    /// Applies ref updates, each a compare-and-swap on its old value; with `atomic`,
    /// all or none. `objects`: what the push stored for them. Returns one result per
    /// update.
    async fn update_refs(
        &self,
        repo: &str,
        updates: &[RefUpdate],
        atomic: bool,
        objects: &[Oid],
    ) -> Result<Vec<Result<(), String>>, BackendError>;
}

/// Everything the HTTP services ask of the node: the repositories' state, proof that
/// this node is current, the node-to-node operations and administration, besides
/// objects and pushes.
#[allow(async_fn_in_trait)]
pub trait Backend: Pushes {
    /// The repository's state; `None` if it does not exist.
    async fn repo(&self, name: &str) -> Result<Option<RepoState>, BackendError>;
    /// Tells the region that every object the repository stores is reachable from
    /// `refs` (a full clone's walk found them all), so that later full clones skip the
    /// walk ([`RepoState::only_reachable`]); refused if the refs changed meanwhile.
    async fn mark_reachable(
        &self,
        repo: &str,
        refs: &BTreeMap<String, String>,
    ) -> Result<(), BackendError>;
    /// Waits until this node has applied everything committed before the call (so a
    /// read that follows sees every acknowledged write), or fails if it cannot prove it.
    async fn linearize(&self) -> Result<(), BackendError>;
    /// Serves node-to-node operation `op` (`/rpc/shard/<k>/<op>`) of this shard.
    async fn node_rpc(
        &self,
        op: crate::rpc::Op,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, crate::rpc::RpcError>;
    async fn create_repo(&self, name: &str, public: bool) -> Result<(), BackendError>;
    async fn delete_repo(&self, name: &str) -> Result<(), BackendError>;
    async fn edit_repo(
        &self,
        name: &str,
        public: Option<bool>,
        allow_non_fast_forward: Option<bool>,
        symrefs: &[(String, Option<String>)],
        hooks: &[(String, Option<HookScript>)],
    ) -> Result<(), BackendError>;
    /// The content of hook script `id` if the shard's state holds it.
    fn hook_script(&self, id: &str) -> Option<Vec<u8>>;
    async fn list_repos(&self) -> Result<BTreeMap<String, RepoState>, BackendError>;
    /// Node status for `admin nodestatus`.
    fn node_status(&self) -> serde_json::Value;
    /// This shard's samples for `GET /metrics` (raft, storage, scrub), each labelled
    /// with the shard where it is the shard's own.
    fn metrics(&self) -> Vec<crate::metrics::Sample>;
    /// `admin scrub`: reads and checks this shard's records (or `repo`'s objects) and
    /// repairs damaged objects from the members; what it found and did.
    async fn scrub(&self, repo: Option<&str>) -> Result<serde_json::Value, BackendError>;
    /// `admin node remove`: node `id` leaves this shard's group.
    async fn remove_node(&self, id: u64) -> Result<(), BackendError>;
}
