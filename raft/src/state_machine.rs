//! The state machine of a shard's group: every repository of the shard (refs, symrefs,
//! settings), the last applied log id and membership, and snapshots of the whole.
//!
//! Applying is a pure function of (state, command) ([`State::apply`]); everything with
//! side effects happens in [`Hooks`] *before* an entry applies: the node makes the
//! entry's objects present locally (fetching them from peers if it was down when they
//! were pushed), so a ref never points at an object this node lacks.
//!
//! The state lives in memory. The latest snapshot is persisted in the shard's store
//! (stream [`crate::log_store::META_STREAM`], key [`SNAPSHOT`]) and loaded on open;
//! openraft re-applies the log after it on start (the log keeps every entry after the
//! snapshot, so nothing is lost).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use futures_util::future::LocalBoxFuture;
use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use repospanner_storage::io::Dir;
use repospanner_storage::{Store, Write};
use serde::{Deserialize, Serialize};

use crate::log_store::META_STREAM;
use crate::types::{Command, RefChange, Repo, Response, Script, TypeConfig as C};

/// Key of the persisted snapshot in [`META_STREAM`].
pub const SNAPSHOT: u64 = 4;

/// The replicated state of a shard: its repositories by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub repos: BTreeMap<String, Repo>,
    /// Hook scripts by id, one copy however many repositories use one (a forge sets
    /// the same hooks on all); dropped when no repository uses it any more.
    #[serde(default)]
    pub scripts: BTreeMap<String, Script>,
}

impl State {
    /// Drops the scripts no repository's hook names.
    fn drop_unused_scripts(&mut self) {
        let used: std::collections::BTreeSet<&String> =
            self.repos.values().flat_map(|r| r.hooks.values()).collect();
        self.scripts.retain(|id, _| used.contains(id));
    }

    /// Applies one command; pure.
    #[allow(clippy::too_many_lines)] // one match arm per command, each short
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::CreateRepo {
                name,
                id,
                public,
                head,
                allow_non_fast_forward,
            } => {
                if self.repos.contains_key(name) {
                    return Response::Refused(format!("Repo {name} already exists"));
                }
                let mut repo = Repo {
                    id: *id,
                    public: *public,
                    allow_non_fast_forward: *allow_non_fast_forward,
                    only_reachable: true,
                    ..Repo::default()
                };
                repo.symrefs
                    .insert("HEAD".into(), format!("refs/heads/{head}"));
                self.repos.insert(name.clone(), repo);
                Response::Done
            }
            Command::DeleteRepo { name, id } => match self.repos.get(name) {
                Some(r) if r.id == *id => {
                    self.repos.remove(name);
                    self.drop_unused_scripts();
                    Response::Done
                }
                _ => Response::Refused(format!("Repo {name} does not exist")),
            },
            Command::EditRepo {
                name,
                public,
                allow_non_fast_forward,
                symrefs,
                hooks,
            } => {
                let Some(repo) = self.repos.get_mut(name) else {
                    return Response::Refused(format!("Repo {name} does not exist"));
                };
                if symrefs.iter().any(|(s, t)| s == "HEAD" && t.is_none()) {
                    return Response::Refused(
                        "HEAD cannot be deleted; point it elsewhere with HEAD=refs/heads/<branch>"
                            .into(),
                    );
                }
                if let Some(p) = public {
                    repo.public = *p;
                }
                if let Some(f) = allow_non_fast_forward {
                    repo.allow_non_fast_forward = *f;
                }
                for (sym, target) in symrefs {
                    match target {
                        Some(t) => repo.symrefs.insert(sym.clone(), t.clone()),
                        None => repo.symrefs.remove(sym),
                    };
                }
                for (kind, script) in hooks {
                    match script {
                        Some(s) => {
                            repo.hooks.insert(*kind, s.id.clone());
                            self.scripts
                                .entry(s.id.clone())
                                .or_insert_with(|| s.clone());
                        }
                        None => {
                            repo.hooks.remove(kind);
                        }
                    }
                }
                if !hooks.is_empty() {
                    self.drop_unused_scripts();
                }
                Response::Done
            }
            Command::MarkReachable { repo, id, refs } => {
                match self.repos.get_mut(repo).filter(|r| r.id == *id) {
                    Some(r) if crate::types::refs_digest(&r.refs) == *refs => {
                        r.only_reachable = true;
                        Response::Done
                    }
                    Some(_) => Response::Refused("the refs changed meanwhile".into()),
                    None => Response::Refused(format!("Repo {repo} does not exist")),
                }
            }
            Command::UpdateRefs {
                repo,
                id,
                changes,
                atomic,
                forward,
                ..
            } => {
                let Some(r) = self.repos.get_mut(repo).filter(|r| r.id == *id) else {
                    return Response::Refs(
                        changes
                            .iter()
                            .map(|_| Err("repository was deleted".to_string()))
                            .collect(),
                    );
                };
                let results: Vec<Result<(), String>> = changes
                    .iter()
                    .map(|c| {
                        if r.refs.get(&c.name) == c.old.as_ref() {
                            Ok(())
                        } else {
                            Err("stale info: the ref changed since you fetched it".to_string())
                        }
                    })
                    .collect();
                let had_branches = r.refs.keys().any(|k| k.starts_with("refs/heads/"));
                // A refused change leaves the objects stored for it unreachable; a
                // deleted or rewound ref may leave objects unreachable.
                r.only_reachable &= *forward && results.iter().all(Result::is_ok);
                if *atomic && results.iter().any(Result::is_err) {
                    return Response::Refs(
                        results
                            .into_iter()
                            .map(|r| r.and(Err("atomic push failure".to_string())))
                            .collect(),
                    );
                }
                for (c, res) in changes.iter().zip(&results) {
                    if res.is_ok() {
                        match &c.new {
                            Some(n) => r.refs.insert(c.name.clone(), n.clone()),
                            None => r.refs.remove(&c.name),
                        };
                    }
                }
                if !had_branches {
                    point_head_at_a_branch(r, changes, &results);
                }
                Response::Refs(results)
            }
        }
    }
}

/// In a repository that had no branch, a HEAD that names a branch the push did not
/// bring is pointed at the first branch `changes` created (as GitHub and Gitea do),
/// so that the first clone checks one out. Once there are branches, HEAD moves only
/// when an operator moves it.
fn point_head_at_a_branch(r: &mut Repo, changes: &[RefChange], results: &[Result<(), String>]) {
    let dangling = r
        .symrefs
        .get("HEAD")
        .is_some_and(|t| !r.refs.contains_key(t));
    if !dangling {
        return;
    }
    let created = changes.iter().zip(results).find(|(c, res)| {
        res.is_ok() && c.old.is_none() && c.new.is_some() && c.name.starts_with("refs/heads/")
    });
    if let Some((c, _)) = created {
        r.symrefs.insert("HEAD".into(), c.name.clone());
    }
}

/// Side effects around applying, provided by the node.
pub trait Hooks {
    /// Runs before `cmd` applies (the node makes its objects present locally).
    /// `members`: the group's members (id, address) as of the entries applied so far
    /// (it is known even while openraft replays the log at start). An error is fatal
    /// for the group on this node, so wait and retry instead of failing for anything
    /// but a stop.
    fn before_apply(
        &self,
        cmd: &Command,
        members: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>>;
    /// Runs before a snapshot's state replaces the current one (the node makes every
    /// repository's objects present). `members`: the snapshot's membership.
    fn before_install(
        &self,
        state: &State,
        members: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>>;
}

/// Hooks that do nothing (tests of the replicated logic alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn before_apply(
        &self,
        _: &Command,
        _: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>> {
        Box::pin(async { Ok(()) })
    }
    fn before_install(
        &self,
        _: &State,
        _: Vec<(u64, String)>,
    ) -> LocalBoxFuture<'static, Result<(), io::Error>> {
        Box::pin(async { Ok(()) })
    }
}

fn members_of(m: &StoredMembershipOf<C>) -> Vec<(u64, String)> {
    m.membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

#[derive(Debug, Default)]
struct Inner {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    state: State,
    snapshot: Option<(SnapshotMetaOf<C>, Vec<u8>)>,
}

/// The state machine of a shard's group.
pub struct StateMachine<D: Dir> {
    inner: Rc<RefCell<Inner>>,
    store: Option<Store<D>>,
    hooks: Rc<dyn Hooks>,
}

impl<D: Dir> Clone for StateMachine<D> {
    fn clone(&self) -> Self {
        StateMachine {
            inner: self.inner.clone(),
            store: self.store.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

impl<D: Dir> std::fmt::Debug for StateMachine<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.inner.borrow().applied)
            .finish()
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The persisted form of a snapshot: meta length (u32 LE), meta JSON, state JSON.
fn encode_snapshot(meta: &SnapshotMetaOf<C>, data: &[u8]) -> Result<Vec<u8>, io::Error> {
    let m = serde_json::to_vec(meta).map_err(io_err)?;
    let len = u32::try_from(m.len()).map_err(io_err)?;
    let mut out = Vec::with_capacity(4 + m.len() + data.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_snapshot(b: &[u8]) -> Result<(SnapshotMetaOf<C>, Vec<u8>), io::Error> {
    let bad = || io_err("the persisted snapshot is damaged");
    let len = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let end = 4usize.checked_add(len as usize).ok_or_else(bad)?;
    let meta = serde_json::from_slice(b.get(4..end).ok_or_else(bad)?).map_err(io_err)?;
    Ok((meta, b[end..].to_vec()))
}

impl StateMachine<repospanner_storage::MemDir> {
    /// A state machine in memory only, without hooks (tests).
    pub fn in_memory() -> Self {
        StateMachine {
            inner: Rc::default(),
            store: None,
            hooks: Rc::new(NoHooks),
        }
    }
}

impl<D: Dir> StateMachine<D> {
    /// Opens the state machine of a shard: loads the persisted snapshot, if any.
    pub async fn open(store: Store<D>, hooks: Rc<dyn Hooks>) -> Result<Self, io::Error> {
        let mut inner = Inner::default();
        if let Some(b) = store
            .get_opaque(META_STREAM, SNAPSHOT)
            .await
            .map_err(io_err)?
        {
            let (meta, data) = decode_snapshot(&b)?;
            inner.state = serde_json::from_slice(&data).map_err(io_err)?;
            inner.applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some((meta, data));
        }
        Ok(StateMachine {
            inner: Rc::new(RefCell::new(inner)),
            store: Some(store),
            hooks,
        })
    }

    /// Reads the current state.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.borrow().state)
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        self.inner.borrow().state.clone()
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.inner.borrow().applied.as_ref().map(|l| l.index)
    }

    async fn persist(&self, meta: &SnapshotMetaOf<C>, data: &[u8]) -> Result<(), io::Error> {
        if let Some(store) = &self.store {
            store
                .append(vec![Write::Opaque {
                    stream: META_STREAM,
                    key: SNAPSHOT,
                    data: encode_snapshot(meta, data)?,
                }])
                .await
                .map_err(io_err)?;
        }
        Ok(())
    }
}

impl<D: Dir> RaftSnapshotBuilder<C> for StateMachine<D> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let (meta, data) = {
            let i = self.inner.borrow();
            let data = serde_json::to_vec(&i.state).map_err(io_err)?;
            let meta = SnapshotMetaOf::<C> {
                last_log_id: i.applied,
                last_membership: i.membership.clone(),
            };
            (meta, data)
        };
        // Durable before openraft may purge the log it covers.
        self.persist(&meta, &data).await?;
        self.inner.borrow_mut().snapshot = Some((meta.clone(), data.clone()));
        Ok(openraft::Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<D: Dir> RaftStateMachine<C> for StateMachine<D> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine<D>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let i = self.inner.borrow();
        Ok((i.applied, i.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            if let EntryPayload::Normal(cmd) = &entry.payload {
                let members = members_of(&self.inner.borrow().membership);
                self.hooks.before_apply(cmd, members).await?;
            }
            let response = {
                // Fail-stop even if a contained handler were the caller: see
                // repospanner_storage::failstop.
                let _fail_stop = repospanner_storage::failstop::enter();
                let mut i = self.inner.borrow_mut();
                // Entries apply once each, in log order: applying one twice or an
                // older one after a newer would move refs twice or from a state no
                // member had. (openraft applies each next index; its storage suite
                // also applies with gaps.)
                assert!(
                    i.applied
                        .as_ref()
                        .is_none_or(|l| entry.log_id().index() > l.index()),
                    "entry {} applied after {:?}",
                    entry.log_id().index(),
                    i.applied.as_ref().map(|l| l.index())
                );
                i.applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Normal(cmd) => i.state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        i.membership =
                            StoredMembershipOf::<C>::new(Some(entry.log_id()), m.clone());
                        Response::Done
                    }
                    EntryPayload::Blank => Response::Done,
                }
            };
            if let EntryPayload::Normal(cmd) = &entry.payload {
                // Every member logs every change it applies from its log (not those it
                // receives inside a snapshot; replayed entries again after a restart):
                // the outcome of a push whose proposer timed out (the client was given
                // its push id) is found here.
                let outcome = match &response {
                    Response::Refused(why) => format!("refused: {why}"),
                    Response::Refs(refs) => {
                        let refused = refs.iter().filter(|r| r.is_err()).count();
                        format!(
                            "applied, {} refs moved, {refused} refused",
                            refs.len() - refused
                        )
                    }
                    Response::Done => "applied".to_string(),
                };
                tracing::info!(index = entry.log_id().index(), "{cmd}: {outcome}");
            }
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let data = snapshot;
        let state: State = serde_json::from_slice(&data).map_err(io_err)?;
        self.hooks
            .before_install(&state, members_of(&meta.last_membership))
            .await?;
        self.persist(meta, &data).await?;
        let mut i = self.inner.borrow_mut();
        i.applied = meta.last_log_id;
        i.membership = meta.last_membership.clone();
        i.state = state;
        i.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        Ok(self
            .inner
            .borrow()
            .snapshot
            .clone()
            .map(|(meta, data)| openraft::Snapshot {
                meta,
                snapshot: data,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RefChange;

    fn create(name: &str, id: u64) -> Command {
        Command::CreateRepo {
            name: name.into(),
            id,
            public: false,
            head: "master".into(),
            allow_non_fast_forward: true,
        }
    }

    fn push(id: u64, changes: &[(&str, Option<&str>, Option<&str>)], atomic: bool) -> Command {
        Command::UpdateRefs {
            push: "p".into(),
            repo: "r".into(),
            id,
            changes: changes
                .iter()
                .map(|(n, o, w)| RefChange {
                    name: (*n).into(),
                    old: o.map(Into::into),
                    new: w.map(Into::into),
                })
                .collect(),
            atomic,
            objects: crate::types::ObjectIds::default(),
            forward: true,
        }
    }

    #[test]
    fn repositories_are_created_once_with_head_at_the_default_branch() {
        let mut s = State::default();
        assert_eq!(s.apply(&create("r", 1)), Response::Done);
        assert_eq!(s.repos["r"].symrefs["HEAD"], "refs/heads/master");
        assert!(matches!(s.apply(&create("r", 2)), Response::Refused(_)));
        assert_eq!(s.repos["r"].id, 1);
    }

    #[test]
    fn head_follows_the_first_branch_pushed_while_it_names_none() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        // A tag and then two branches, neither the default: HEAD takes the first branch.
        s.apply(&push(
            1,
            &[
                ("refs/tags/v1", None, Some("aa")),
                ("refs/heads/main", None, Some("aa")),
                ("refs/heads/dev", None, Some("bb")),
            ],
            false,
        ));
        assert_eq!(s.repos["r"].symrefs["HEAD"], "refs/heads/main");
        // Once it names a branch that exists, later branches leave it alone.
        s.apply(&push(1, &[("refs/heads/master", None, Some("cc"))], false));
        assert_eq!(s.repos["r"].symrefs["HEAD"], "refs/heads/main");
        // Once the repository has branches, a dangling HEAD (an operator's choice, or
        // its branch deleted) stays where it is.
        s.apply(&push(1, &[("refs/heads/main", Some("aa"), None)], false));
        s.apply(&push(1, &[("refs/heads/new", None, Some("dd"))], false));
        assert_eq!(s.repos["r"].symrefs["HEAD"], "refs/heads/main");
        // A refused creation does not move it.
        s.apply(&create("q", 2));
        s.apply(&push(2, &[("refs/heads/x", Some("00"), Some("aa"))], false));
        assert_eq!(s.repos["q"].symrefs["HEAD"], "refs/heads/master");
        // Entries written before the field existed: non-fast-forward refused.
        let old: Command = serde_json::from_str(
            r#"{"CreateRepo":{"name":"o","id":3,"public":false,"head":"master"}}"#,
        )
        .expect("old entry");
        s.apply(&old);
        assert!(!s.repos["o"].allow_non_fast_forward);
        assert!(s.repos["r"].allow_non_fast_forward);
    }

    #[test]
    fn ref_updates_are_compare_and_swap() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        let ok = Response::Refs(vec![Ok(())]);
        assert_eq!(
            s.apply(&push(1, &[("refs/heads/a", None, Some("1"))], false)),
            ok
        );
        // A second create of the same ref loses: it expected no ref.
        let r = s.apply(&push(1, &[("refs/heads/a", None, Some("2"))], false));
        assert!(matches!(&r, Response::Refs(v) if v[0].is_err()));
        assert_eq!(s.repos["r"].refs["refs/heads/a"], "1");
        assert_eq!(
            s.apply(&push(1, &[("refs/heads/a", Some("1"), None)], false)),
            ok
        );
        assert!(s.repos["r"].refs.is_empty());
    }

    #[test]
    fn an_atomic_push_is_all_or_nothing_and_a_plain_one_is_not() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        let both = [
            ("refs/heads/a", None, Some("1")),
            ("refs/heads/b", Some("9"), Some("2")),
        ];
        let r = s.apply(&push(1, &both, true));
        assert!(matches!(&r, Response::Refs(v) if v.iter().all(Result::is_err)));
        assert!(s.repos["r"].refs.is_empty());
        let r = s.apply(&push(1, &both, false));
        assert!(matches!(&r, Response::Refs(v) if v[0].is_ok() && v[1].is_err()));
        assert_eq!(s.repos["r"].refs.len(), 1);
    }

    #[test]
    fn only_reachable_holds_until_a_change_is_refused_or_not_forward() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        assert!(
            s.repos["r"].only_reachable,
            "a new repository stores nothing"
        );
        s.apply(&push(1, &[("refs/heads/a", None, Some("1"))], false));
        s.apply(&push(1, &[("refs/heads/a", Some("1"), Some("2"))], false));
        assert!(s.repos["r"].only_reachable);
        // A refused change: what was stored for it is reachable from no ref.
        s.apply(&push(1, &[("refs/heads/a", Some("1"), Some("3"))], false));
        assert!(!s.repos["r"].only_reachable);

        // A deletion or a rewind, which the proposer marks as not forward.
        for (old, new) in [(Some("1"), None), (Some("1"), Some("5"))] {
            let mut s = State::default();
            s.apply(&create("r", 1));
            s.apply(&push(1, &[("refs/heads/a", None, Some("1"))], false));
            let mut c = push(1, &[("refs/heads/a", old, new)], false);
            if let Command::UpdateRefs { forward, .. } = &mut c {
                *forward = false;
            }
            let r = s.apply(&c);
            assert_eq!(r, Response::Refs(vec![Ok(())]));
            assert!(!s.repos["r"].only_reachable);
        }

        // Entries and snapshots from before the flag existed: not known, so false.
        let mut old = serde_json::to_value(push(1, &[("refs/heads/b", None, Some("1"))], false))
            .expect("encodes");
        old["UpdateRefs"]
            .as_object_mut()
            .expect("an object")
            .remove("forward");
        let old: Command = serde_json::from_value(old).expect("decodes without the field");
        assert!(matches!(old, Command::UpdateRefs { forward: false, .. }));
        let repo: Repo = serde_json::from_str(
            r#"{"id":1,"public":false,"allow_non_fast_forward":false,"refs":{},"symrefs":{}}"#,
        )
        .expect("decodes without the field");
        assert!(!repo.only_reachable);
    }

    #[test]
    fn mark_reachable_holds_only_for_the_refs_it_was_proved_for() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        s.apply(&push(1, &[("refs/heads/a", None, Some("1"))], false));
        s.apply(&push(1, &[("refs/heads/b", None, Some("2"))], false));
        let mut delete = push(1, &[("refs/heads/b", Some("2"), None)], false);
        if let Command::UpdateRefs { forward, .. } = &mut delete {
            *forward = false;
        }
        s.apply(&delete);
        assert!(!s.repos["r"].only_reachable);
        let proved = crate::types::refs_digest(&s.repos["r"].refs);
        // The refs moved after the proof was taken: refused, nothing changes.
        s.apply(&push(1, &[("refs/heads/a", Some("1"), Some("3"))], false));
        let mark = |refs| Command::MarkReachable {
            repo: "r".into(),
            id: 1,
            refs,
        };
        assert!(matches!(s.apply(&mark(proved)), Response::Refused(_)));
        assert!(!s.repos["r"].only_reachable);
        let now = crate::types::refs_digest(&s.repos["r"].refs);
        assert_ne!(now, proved);
        assert_eq!(s.apply(&mark(now)), Response::Done);
        assert!(s.repos["r"].only_reachable);
        // Another instance of the repository is not this one.
        let other = Command::MarkReachable {
            repo: "r".into(),
            id: 2,
            refs: now,
        };
        assert!(matches!(s.apply(&other), Response::Refused(_)));
    }

    #[test]
    fn a_push_to_a_deleted_and_recreated_repository_changes_nothing() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        assert_eq!(
            s.apply(&Command::DeleteRepo {
                name: "r".into(),
                id: 1
            }),
            Response::Done
        );
        s.apply(&create("r", 2));
        let r = s.apply(&push(1, &[("refs/heads/a", None, Some("1"))], false));
        assert!(matches!(&r, Response::Refs(v) if v[0].is_err()));
        assert!(s.repos["r"].refs.is_empty());
        // A stale delete (old instance) does not remove the new one.
        assert!(matches!(
            s.apply(&Command::DeleteRepo {
                name: "r".into(),
                id: 1
            }),
            Response::Refused(_)
        ));
    }

    #[test]
    fn head_cannot_be_removed() {
        let mut s = State::default();
        s.apply(&create("r", 1));
        let r = s.apply(&Command::EditRepo {
            name: "r".into(),
            public: Some(true),
            allow_non_fast_forward: None,
            symrefs: vec![("HEAD".into(), None)],
            hooks: Vec::new(),
        });
        assert!(matches!(r, Response::Refused(_)));
        assert!(!s.repos["r"].public, "a refused edit changes nothing");
    }

    use crate::types::HookKind;

    fn set_hook(name: &str, kind: HookKind, content: Option<&[u8]>) -> Command {
        Command::EditRepo {
            name: name.into(),
            public: None,
            allow_non_fast_forward: None,
            symrefs: Vec::new(),
            hooks: vec![(
                kind,
                content.map(|c| Script {
                    id: format!("id-{}", String::from_utf8_lossy(c)),
                    content: c.to_vec(),
                }),
            )],
        }
    }

    #[test]
    fn hook_scripts_are_kept_once_while_a_repository_uses_them() {
        let mut s = State::default();
        s.apply(&create("a", 1));
        s.apply(&create("b", 2));
        s.apply(&set_hook("a", HookKind::PreReceive, Some(b"x")));
        s.apply(&set_hook("b", HookKind::Update, Some(b"x")));
        s.apply(&set_hook("b", HookKind::PostReceive, Some(b"\xff\x00y")));
        assert_eq!(s.scripts.len(), 2);
        assert_eq!(s.repos["b"].hooks[&HookKind::Update], "id-x");
        // Binary content survives a snapshot's JSON.
        let json = serde_json::to_vec(&s).expect("encode");
        assert_eq!(serde_json::from_slice::<State>(&json).expect("decode"), s);
        s.apply(&set_hook("a", HookKind::PreReceive, None));
        assert_eq!(s.scripts.len(), 2, "b still uses x");
        s.apply(&Command::DeleteRepo {
            name: "b".into(),
            id: 2,
        });
        assert!(s.scripts.is_empty());
        // State written before hooks existed.
        let old: State = serde_json::from_str(r#"{"repos":{}}"#).expect("old state");
        assert!(old.scripts.is_empty());
    }

    #[test]
    fn snapshots_round_trip() {
        let meta = SnapshotMetaOf::<C>::default();
        let b = encode_snapshot(&meta, b"{\"repos\":{}}").expect("encode");
        let (m, d) = decode_snapshot(&b).expect("decode");
        assert_eq!(m, meta);
        assert_eq!(d, b"{\"repos\":{}}");
        assert!(decode_snapshot(&b[..3]).is_err());
        assert!(decode_snapshot(&[255, 255, 255, 255, 1]).is_err());
    }
}
