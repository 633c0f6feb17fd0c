//! The raft groups and the repository state machine under a faulty in-memory network:
//! messages are dropped, delayed and their replies lost; random minorities are cut
//! off and healed; clients write through whichever node they reach. A checker then
//! verifies that every acknowledged ref update is in the final state of every node
//! and that no node's ref ever went backwards. Seeded: the seed is printed, and
//! `SIM_SEED=<n>` replays a schedule (timing still varies with the machine).
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::TypeConfigExt;
use openraft::{BasicNode, Config, OptionalSend, Raft, RaftNetworkV2};
use repospanner_raft::{Command, LogStore, RefChange, Response, StateMachine, TypeConfig as C};
use repospanner_storage::{MemDir, Options, Store};

type Node = Raft<C, StateMachine<MemDir>>;

/// xorshift64*: the schedule's randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct World {
    nodes: BTreeMap<u64, Node>,
    sms: BTreeMap<u64, StateMachine<MemDir>>,
    isolated: BTreeSet<u64>,
    rng: Rng,
    drop_pct: u64,
    max_delay_ms: u64,
}

#[derive(Clone)]
struct Net {
    me: u64,
    world: Rc<RefCell<World>>,
}

struct SimPeer {
    from: u64,
    to: u64,
    world: Rc<RefCell<World>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SimError(&'static str);

impl RaftNetworkFactory<C> for Net {
    type Network = SimPeer;
    async fn new_client(&mut self, target: u64, _: &BasicNode) -> SimPeer {
        SimPeer {
            from: self.me,
            to: target,
            world: self.world.clone(),
        }
    }
}

impl SimPeer {
    /// Decides a message's fate: `None` if it is lost, else its delay and whether the
    /// reply is lost.
    fn fate(&self) -> Option<(Duration, bool)> {
        let mut w = self.world.borrow_mut();
        if w.isolated.contains(&self.from) || w.isolated.contains(&self.to) {
            return None;
        }
        let drop = w.drop_pct;
        if w.rng.below(100) < drop {
            return None;
        }
        let max = w.max_delay_ms;
        let delay = Duration::from_millis(w.rng.below(max + 1));
        let lose_reply = w.rng.below(100) < drop;
        Some((delay, lose_reply))
    }

    fn target(&self) -> Option<Node> {
        self.world.borrow().nodes.get(&self.to).cloned()
    }
}

fn lost() -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&SimError("message lost")))
}

impl RaftNetworkV2<C> for SimPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let (delay, lose_reply) = self.fate().ok_or_else(lost)?;
        glommio::timer::sleep(delay).await;
        let t = self.target().ok_or_else(lost)?;
        let r = t
            .append_entries(rpc)
            .await
            .map_err(|_| RPCError::Network(NetworkError::new(&SimError("remote error"))))?;
        if lose_reply {
            return Err(lost());
        }
        Ok(r)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let (delay, lose_reply) = self.fate().ok_or_else(lost)?;
        glommio::timer::sleep(delay).await;
        let t = self.target().ok_or_else(lost)?;
        let r = t
            .vote(rpc)
            .await
            .map_err(|_| RPCError::Network(NetworkError::new(&SimError("remote error"))))?;
        if lose_reply {
            return Err(lost());
        }
        Ok(r)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        _: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let unreachable =
            || StreamingError::Unreachable(Unreachable::new(&SimError("message lost")));
        let (delay, _) = self.fate().ok_or_else(unreachable)?;
        glommio::timer::sleep(delay).await;
        let t = self.target().ok_or_else(unreachable)?;
        t.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|_| StreamingError::Network(NetworkError::new(&SimError("remote error"))))
    }
}

fn config() -> Arc<Config> {
    Arc::new(
        Config {
            heartbeat_interval: 30,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshots and purges happen during the run, so followers that were cut
            // off catch up from snapshots too.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 5,
            ..Default::default()
        }
        .validate()
        .expect("valid config"),
    )
}

fn update(old: &str, new: &str) -> Command {
    Command::UpdateRefs {
        push: new.rsplit(',').next().unwrap_or("").to_owned(),
        repo: "r".into(),
        id: 1,
        changes: vec![RefChange {
            name: "refs/heads/main".into(),
            old: (!old.is_empty()).then(|| old.to_owned()),
            new: Some(new.to_owned()),
        }],
        atomic: false,
        objects: repospanner_raft::ObjectIds::default(),
        forward: true,
    }
}

fn value(sm: &StateMachine<MemDir>) -> String {
    sm.with_state(|s| {
        s.repos
            .get("r")
            .and_then(|r| r.refs.get("refs/heads/main"))
            .cloned()
            .unwrap_or_default()
    })
}

/// Writes through `node`, following the leader once; `None` if no answer in time.
async fn write(world: &Rc<RefCell<World>>, node: u64, cmd: Command) -> Option<Response> {
    let mut target = node;
    for _ in 0..2 {
        let raft = world.borrow().nodes.get(&target).cloned()?;
        let w = raft.client_write(cmd.clone());
        let r = futures_lite_or(w, Duration::from_millis(1500)).await?;
        match r {
            Ok(resp) => return Some(resp.data),
            Err(e) => {
                let fwd = e.forward_to_leader().and_then(|f| f.leader_id)?;
                target = fwd;
            }
        }
    }
    None
}

async fn futures_lite_or<T>(f: impl Future<Output = T>, d: Duration) -> Option<T> {
    let f = async { Some(f.await) };
    let t = async {
        glommio::timer::sleep(d).await;
        None
    };
    futures_util::future::select(Box::pin(f), Box::pin(t))
        .await
        .factor_first()
        .0
}

#[test]
fn raft_and_the_state_machine_survive_drops_delays_and_partitions() {
    let seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("SIM_SEED={seed}");
    C::run(async move {
        let world = Rc::new(RefCell::new(World {
            nodes: BTreeMap::new(),
            sms: BTreeMap::new(),
            isolated: BTreeSet::new(),
            rng: Rng(seed),
            drop_pct: 5,
            max_delay_ms: 20,
        }));
        let ids = [1u64, 2, 3, 4, 5];
        for id in ids {
            let (store, _) = Store::open(MemDir::new(id), Options::default())
                .await
                .expect("store");
            let sm = StateMachine::in_memory();
            let raft = Raft::new(
                id,
                config(),
                Net {
                    me: id,
                    world: world.clone(),
                },
                LogStore::new(store),
                sm.clone(),
            )
            .await
            .expect("raft");
            world.borrow_mut().nodes.insert(id, raft);
            world.borrow_mut().sms.insert(id, sm);
        }
        let first = world.borrow().nodes[&1].clone();
        first
            .initialize(
                ids.iter()
                    .map(|i| (*i, BasicNode::new(format!("sim:{i}"))))
                    .collect::<BTreeMap<_, _>>(),
            )
            .await
            .expect("initialize");
        let created = loop {
            if let Some(r) = write(
                &world,
                1,
                Command::CreateRepo {
                    name: "r".into(),
                    id: 1,
                    public: false,
                    head: "main".into(),
                    allow_non_fast_forward: true,
                },
            )
            .await
            {
                break r;
            }
        };
        assert_eq!(created, Response::Done);

        let mut acked: Vec<String> = Vec::new();
        let mut seen: BTreeMap<u64, String> = BTreeMap::new();
        let mut current = String::new();
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut n = 0u64;
        while Instant::now() < deadline {
            n += 1;
            // Faults: now and then cut off a random minority (up to 2 of 5), or heal.
            let roll = world.borrow_mut().rng.below(10);
            if roll == 0 {
                let mut w = world.borrow_mut();
                w.isolated.clear();
                let k = 1 + w.rng.below(2);
                for _ in 0..k {
                    let victim = 1 + w.rng.below(5);
                    w.isolated.insert(victim);
                }
            } else if roll == 1 {
                world.borrow_mut().isolated.clear();
            }
            let via = 1 + world.borrow_mut().rng.below(5);
            let new = if current.is_empty() {
                format!("{n}")
            } else {
                format!("{current},{n}")
            };
            match write(&world, via, update(&current, &new)).await {
                Some(Response::Refs(v)) if v == vec![Ok(())] => {
                    acked.push(n.to_string());
                    current = new;
                }
                // Refused (someone else's ambiguous write won) or no answer: learn the
                // current value from the group before the next write.
                _ => {
                    let one = world.borrow().nodes[&1].clone();
                    let leader = one.current_leader().await;
                    if let Some(l) = leader {
                        let raft = world.borrow().nodes.get(&l).cloned();
                        if let Some(raft) = raft {
                            let read =
                                raft.ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
                            if futures_lite_or(read, Duration::from_millis(1500))
                                .await
                                .is_some_and(|r| r.is_ok())
                            {
                                current = value(&world.borrow().sms[&l]);
                            }
                        }
                    }
                }
            }
            // No node's ref goes backwards: each value extends what it showed before.
            for id in ids {
                let v = value(&world.borrow().sms[&id]);
                let before = seen.entry(id).or_default();
                assert!(
                    v.starts_with(before.as_str()),
                    "seed {seed}: node {id} went from {before:?} back to {v:?}"
                );
                *before = v;
            }
        }
        // Heal and let everyone catch up.
        {
            let mut w = world.borrow_mut();
            w.isolated.clear();
            w.drop_pct = 0;
        }
        // One more committed entry (refused by its compare-and-swap) flushes the
        // commit index to everyone.
        while !matches!(
            write(&world, 1, update("x", "y")).await,
            Some(Response::Refs(_))
        ) {}
        let settle = Instant::now() + Duration::from_secs(20);
        let final_value = loop {
            let values: BTreeSet<String> = ids
                .iter()
                .map(|id| value(&world.borrow().sms[id]))
                .collect();
            if values.len() == 1 {
                break values.into_iter().next().unwrap_or_default();
            }
            assert!(
                Instant::now() < settle,
                "seed {seed}: nodes disagree: {values:?}"
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        };
        let parts: Vec<&str> = final_value.split(',').collect();
        for a in &acked {
            assert!(
                parts.contains(&a.as_str()),
                "seed {seed}: acknowledged write {a} lost; final {final_value}"
            );
        }
        assert!(
            acked.len() > 10,
            "seed {seed}: too few writes succeeded: {}",
            acked.len()
        );
        println!(
            "seed {seed}: {} writes acknowledged of {n}; final chain has {} entries",
            acked.len(),
            parts.len()
        );
        let nodes: Vec<Node> = world.borrow().nodes.values().cloned().collect();
        for r in nodes {
            let _ = r.shutdown().await;
        }
    });
}
