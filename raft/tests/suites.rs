//! openraft's own conformance suites on our runtime and our log store, and a
//! single-member group on real O_DIRECT files that keeps its log across a restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ReadPolicy, SnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{BasicNode, Config, OptionalSend, Raft, RaftNetworkV2, StorageError};
use repospanner_raft::{
    Command, GlommioRuntime, LogStore, NoHooks, RefChange, Response, StateMachine, TypeConfig as C,
};
use repospanner_storage::{DmaDir, MemDir, Options, Store};

#[test]
fn runtime_conformance_suite() {
    openraft::testing::runtime::Suite::<GlommioRuntime>::test_all();
}

struct Builder;

impl StoreBuilder<C, LogStore<MemDir>, StateMachine<MemDir>, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore<MemDir>, StateMachine<MemDir>), StorageError<C>> {
        let (store, _) = Store::open(MemDir::new(7), Options::default())
            .await
            .expect("open an in-memory store");
        Ok(((), LogStore::new(store), StateMachine::in_memory()))
    }
}

#[test]
fn storage_suite_on_the_storage_engine() {
    C::run(async {
        Suite::test_all(Builder)
            .await
            .expect("openraft storage suite");
    });
}

/// No peers: a single-member group never sends anything.
struct NoNetwork;
struct NoPeer;

fn unreachable() -> Unreachable<C> {
    Unreachable::new(&std::io::Error::other("single-member group"))
}

impl RaftNetworkFactory<C> for NoNetwork {
    type Network = NoPeer;
    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer
    }
}

impl RaftNetworkV2<C> for NoPeer {
    type SnapshotData = Vec<u8>;
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<C>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn vote(
        &mut self,
        _: VoteRequest<C>,
        _: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn full_snapshot(
        &mut self,
        _: VoteOf<C>,
        _: SnapshotOf<C, Vec<u8>>,
        _: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

fn config() -> Arc<Config> {
    Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        }
        .validate()
        .expect("valid config"),
    )
}

#[test]
fn a_single_member_group_commits_on_real_files_and_keeps_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let last = C::run({
        let path = path.clone();
        async move {
            let (store, _) =
                Store::open(DmaDir::open(&path).await.expect("dir"), Options::default())
                    .await
                    .expect("store");
            let sm = StateMachine::open(store.clone(), std::rc::Rc::new(NoHooks))
                .await
                .expect("state machine");
            let raft: Raft<C, StateMachine<DmaDir>> = Raft::new(
                1,
                config(),
                NoNetwork,
                LogStore::new(store.clone()),
                sm.clone(),
            )
            .await
            .expect("raft");
            raft.initialize(BTreeMap::from([(1u64, BasicNode::new("127.0.0.1:1"))]))
                .await
                .expect("initialize");
            raft.wait(Some(Duration::from_secs(10)))
                .current_leader(1, "elects itself")
                .await
                .expect("leader");
            let created = raft
                .client_write(Command::CreateRepo {
                    name: "r".into(),
                    id: 7,
                    public: false,
                    head: "main".into(),
                    allow_non_fast_forward: true,
                })
                .await
                .expect("write");
            assert_eq!(created.response(), &Response::Done);
            let mut tip: Option<String> = None;
            for i in 0..20u8 {
                let new = format!("{i:040x}");
                let r = raft
                    .client_write(Command::UpdateRefs {
                        push: format!("p{i}"),
                        repo: "r".into(),
                        id: 7,
                        changes: vec![RefChange {
                            name: "refs/heads/main".into(),
                            old: tip.clone(),
                            new: Some(new.clone()),
                        }],
                        atomic: false,
                        objects: repospanner_raft::ObjectIds::default(),
                        forward: true,
                    })
                    .await
                    .expect("write");
                assert_eq!(r.response(), &Response::Refs(vec![Ok(())]));
                tip = Some(new);
            }
            raft.ensure_linearizable(ReadPolicy::ReadIndex)
                .await
                .expect("read index");
            assert_eq!(
                sm.state().repos["r"].refs["refs/heads/main"],
                format!("{:040x}", 19)
            );
            let last = LogStore::new(store.clone())
                .get_log_state()
                .await
                .expect("state")
                .last_log_id;
            raft.shutdown().await.expect("shutdown");
            store.close().await.expect("close");
            last
        }
    });
    // Reopen: the log and the vote are still there.
    C::run(async move {
        let (store, _) = Store::open(DmaDir::open(&path).await.expect("dir"), Options::default())
            .await
            .expect("store");
        let mut log = LogStore::new(store);
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, last);
        assert!(openraft::RaftLogReader::read_vote(&mut log)
            .await
            .expect("vote")
            .is_some());
    });
}
