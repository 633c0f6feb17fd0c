//! A seeded simulation of a 3-node region in one process (#22 item 5): each node is a
//! real `NodeBackend` (raft group, replication, object sync, joins) over the storage
//! engine's in-memory twin (`MemDir`), and the nodes talk through an in-memory network
//! behind the node client's [`Transport`] trait that loses and delays messages and
//! cuts crashed nodes off. Nodes crash (reopened from what their disk durably held,
//! `MemDir::crash_image`) and restart while pushes go on through any node.
//!
//! Checked after the network heals: every acknowledged push is on every node (its ref
//! with its value, its object readable), and every node has the same refs.
//!
//! Seeds: `SIM_SEEDS=1,2,3` (the default in CI), `SIM_PUSHES` per seed (default 40).
//! The network's and the crashes' choices come from the seed; the executor's timing is
//! real time, so a seed replays the same faults but not always the same interleaving.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture};
use repospanner::node::{Identity, JoinRequest, NodeBackend};
use repospanner_net::backend::{Backend, Objects, Pushes, RefUpdate};
use repospanner_net::client::{ClientError, Transport};
use repospanner_net::git::{hex, ObjectKind, Oid};
use repospanner_net::piece::SharedChain;
use repospanner_net::rpc::{self, Op};
use repospanner_storage::{MemDir, Options, Store, StoredObject};

mod common;

/// splitmix64: the simulation's only source of choices.
#[derive(Debug)]
struct Rng(Cell<u64>);

impl Rng {
    fn next(&self) -> u64 {
        let mut z = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn per_mille(&self, p: u64) -> bool {
        self.below(1000) < p
    }
}

/// One node's place on the network: whether it runs (it sends from the moment it
/// starts), its backend once it serves, and how many times it has started (a reply
/// from an earlier life is lost with it).
#[derive(Default)]
struct Slot {
    running: bool,
    backend: Option<NodeBackend<MemDir>>,
    life: u64,
}

/// The in-memory network.
struct Net {
    nodes: RefCell<HashMap<String, Slot>>,
    rng: Rng,
    /// Chance (per mille) that a request, or its reply, is lost.
    loss: Cell<u64>,
    /// Most delay of a message, in milliseconds.
    delay_ms: Cell<u64>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").finish()
    }
}

/// A node's client on the in-memory network.
#[derive(Debug)]
struct Client {
    me: String,
    net: Rc<Net>,
}

impl Net {
    fn running(&self, addr: &str) -> bool {
        self.nodes.borrow().get(addr).is_some_and(|s| s.running)
    }

    fn up(&self, addr: &str) -> Option<(NodeBackend<MemDir>, u64)> {
        let nodes = self.nodes.borrow();
        let s = nodes.get(addr)?;
        Some((s.backend.clone()?, s.life))
    }

    async fn delay(&self) {
        let ms = self.rng.below(self.delay_ms.get() + 1);
        glommio::timer::sleep(Duration::from_millis(ms)).await;
    }

    /// Delivers one request from `from` to `to` and its reply, with the network's
    /// losses and delays.
    async fn exchange(
        &self,
        from: &str,
        to: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, ClientError> {
        let unreachable = |why: &str| ClientError::Unreachable {
            addr: to.to_owned(),
            reason: why.to_owned(),
        };
        let failed = |why: &str| ClientError::Failed {
            addr: to.to_owned(),
            reason: why.to_owned(),
        };
        self.delay().await;
        if !self.running(from) {
            return Err(unreachable("the sender is down"));
        }
        let Some((backend, life)) = self.up(to) else {
            return Err(unreachable("down"));
        };
        if self.rng.per_mille(self.loss.get()) {
            return Err(unreachable("request lost"));
        }
        let Some((_, name)) = rpc::split_path(path) else {
            return Err(ClientError::Status {
                addr: to.to_owned(),
                status: 404,
                body: "not found".into(),
            });
        };
        let Some(op) = Op::parse(name) else {
            return Err(ClientError::Status {
                addr: to.to_owned(),
                status: 404,
                body: format!("unknown node operation {name}"),
            });
        };
        let answer = backend.node_rpc(op, body).await;
        drop(backend);
        self.delay().await;
        if self.up(to).map(|(_, l)| l) != Some(life) {
            return Err(failed("the node went down before it answered"));
        }
        if self.rng.per_mille(self.loss.get()) {
            return Err(failed("reply lost"));
        }
        match answer {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) => Err(ClientError::Status {
                addr: to.to_owned(),
                status: e.status(),
                body: e.to_string(),
            }),
        }
    }
}

impl Transport for Client {
    fn post<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: SharedChain,
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        async move {
            let exchange = self.net.exchange(&self.me, addr, path, body.to_vec());
            futures_lite::future::or(exchange, async {
                glommio::timer::sleep(timeout).await;
                Err(ClientError::Timeout {
                    addr: addr.to_owned(),
                    secs: timeout.as_secs_f64(),
                })
            })
            .await
        }
        .boxed_local()
    }

    fn get<'a>(
        &'a self,
        addr: &'a str,
        _path: &'a str,
        _timeout: Duration,
    ) -> LocalBoxFuture<'a, Result<Bytes, ClientError>> {
        async move {
            Err(ClientError::Status {
                addr: addr.to_owned(),
                status: 404,
                body: "not simulated".into(),
            })
        }
        .boxed_local()
    }
}

const NODES: u64 = 3;
const REPO: &str = "sim";

fn addr(id: u64) -> String {
    format!("node{id}:8443")
}

/// One simulated run.
struct Region {
    net: Rc<Net>,
    disks: RefCell<BTreeMap<u64, MemDir>>,
    seed: u64,
}

impl Region {
    async fn open(&self, id: u64, disk: MemDir) -> NodeBackend<MemDir> {
        {
            let mut nodes = self.net.nodes.borrow_mut();
            let slot = nodes.entry(addr(id)).or_default();
            slot.life += 1;
            slot.running = true;
        }
        let (store, _) = Store::open(disk.clone(), Options::default())
            .await
            .expect("store");
        self.disks.borrow_mut().insert(id, disk);
        let client: Rc<dyn Transport> = Rc::new(Client {
            me: addr(id),
            net: self.net.clone(),
        });
        let identity = Identity {
            cluster: "sim".into(),
            region: "r".into(),
            name: format!("node{id}"),
            id,
        };
        let b = NodeBackend::open(
            store,
            identity,
            addr(id),
            "refs/heads/main".into(),
            0,
            client,
            Duration::from_secs(10),
            // Small: snapshots and log purges happen within a run.
            64,
        )
        .await
        .expect("backend");
        if let Some(slot) = self.net.nodes.borrow_mut().get_mut(&addr(id)) {
            slot.backend = Some(b.clone());
        }
        b
    }

    /// Node `id` joins through node 1, as `serve --joinnode` does.
    async fn join(&self, id: u64) {
        let b = self.open(id, MemDir::new(self.seed * 10 + id)).await;
        b.set_voting(false);
        b.hold_appends(false);
        let body =
            Bytes::from(serde_json::to_vec(&JoinRequest { id, addr: addr(id) }).expect("json"));
        let client = Client {
            me: addr(id),
            net: self.net.clone(),
        };
        for op in [Op::Rejoin, Op::Join] {
            while let Err(e) =
                repospanner::cluster::post_join(&client, &addr(1), 0, op, body.clone()).await
            {
                eprintln!("seed {}: node {id} {}: {e}", self.seed, op.name());
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            if op == Op::Rejoin {
                b.hold_appends(true);
            }
        }
        while !(b.is_voter() && b.caught_up()) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        b.set_voting(true);
    }

    /// Node `id` crashes: it is cut off, its disk keeps only what was durable, and it
    /// starts again from that.
    async fn crash_and_restart(&self, id: u64, down_for: Duration) {
        let old = {
            let mut nodes = self.net.nodes.borrow_mut();
            let slot = nodes.get_mut(&addr(id));
            slot.and_then(|s| {
                s.running = false;
                s.backend.take()
            })
        };
        let Some(old) = old else { return };
        let image = self.disks.borrow()[&id].crash_image(self.net.rng.next());
        // The old life's tasks end; what they write now goes to the old disk only.
        eprintln!("seed {}: node {id} crashes", self.seed);
        old.shutdown().await;
        drop(old);
        glommio::timer::sleep(down_for).await;
        eprintln!("seed {}: node {id} restarts", self.seed);
        self.open(id, image).await;
        eprintln!("seed {}: node {id} runs again", self.seed);
    }

    fn running(&self) -> Vec<NodeBackend<MemDir>> {
        (1..=NODES)
            .filter_map(|id| self.net.up(&addr(id)).map(|(b, _)| b))
            .collect()
    }
}

fn blob(i: u64, seed: u64) -> (Oid, StoredObject) {
    let content = format!("push {i} of seed {seed}\n").into_bytes();
    let oid = common::packs::blob_id(&content);
    let object = StoredObject {
        oid,
        kind: ObjectKind::Blob,
        object_size: content.len() as u64,
        entry_size: content.len() as u64,
        base: None,
        deflated: Bytes::from(common::packs::deflate(&content)),
    };
    (oid, object)
}

/// One push through `b`, as `git::receive` makes it: its blob stored on a majority,
/// then its own ref created.
/// `Ok` only if the region acknowledged it.
async fn push(b: &NodeBackend<MemDir>, i: u64, seed: u64) -> Result<(String, Oid), String> {
    let (oid, object) = blob(i, seed);
    // As the HTTP path does first: this node has applied what was acknowledged before.
    b.linearize().await.map_err(|e| e.0)?;
    Pushes::store(b, REPO, vec![object], None, &mut |_| {})
        .await
        .map_err(|e| e.0)?;
    let name = format!("refs/heads/p{i}");
    let update = RefUpdate {
        name: name.clone(),
        old: None,
        new: Some(oid),
        forward: true,
    };
    let results = b
        .update_refs(REPO, &[update], false, &[oid])
        .await
        .map_err(|e| e.0)?;
    match results.first() {
        Some(Ok(())) => Ok((name, oid)),
        Some(Err(e)) => Err(e.clone()),
        None => Err("no result".into()),
    }
}

/// Waits until every node has the same refs, holding every acknowledged push, and
/// checks each holds every acknowledged object; the number of refs.
async fn converged(region: &Region, seed: u64, acked: &[(String, Oid)]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let refs = loop {
        let mut all = Vec::new();
        for b in region.running() {
            if b.linearize().await.is_ok() {
                if let Ok(Some(state)) = b.repo(REPO).await {
                    all.push(state.refs);
                }
            }
        }
        let same = all.len() as u64 == NODES && all.windows(2).all(|w| w[0] == w[1]);
        let holds = all.first().is_some_and(|r| {
            acked
                .iter()
                .all(|(name, oid)| r.get(name).map(String::as_str) == Some(hex(oid).as_str()))
        });
        if same && holds {
            break all.swap_remove(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed} (rerun: SIM_SEEDS={seed}): after healing, the nodes' refs differ or lack an acknowledged push:\nacked {acked:?}\nrefs {all:#?}"
        );
        glommio::timer::sleep(Duration::from_millis(200)).await;
    };
    let oids: Vec<Oid> = acked.iter().map(|(_, o)| *o).collect();
    for (k, b) in region.running().iter().enumerate() {
        let have: HashSet<usize> = b
            .has_many(REPO, &oids)
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            have.len(),
            oids.len(),
            "seed {seed} (rerun: SIM_SEEDS={seed}): node {} lacks acknowledged objects",
            k + 1
        );
    }
    refs.len()
}

async fn run(seed: u64, pushes: u64) {
    let region = Rc::new(Region {
        net: Rc::new(Net {
            nodes: RefCell::new(HashMap::new()),
            rng: Rng(Cell::new(seed)),
            loss: Cell::new(0),
            delay_ms: Cell::new(2),
        }),
        disks: RefCell::new(BTreeMap::new()),
        seed,
    });
    let first = region.open(1, MemDir::new(seed * 10 + 1)).await;
    first.initialize().await.expect("initialize");
    for id in 2..=NODES {
        region.join(id).await;
    }
    first.create_repo(REPO, false).await.expect("create");

    // Faults while pushes go on: lost and delayed messages, one node at a time down.
    region.net.loss.set(20 + region.net.rng.below(80));
    region.net.delay_ms.set(5 + region.net.rng.below(20));
    let acked: Rc<RefCell<Vec<(String, Oid)>>> = Rc::default();
    let crashes = {
        let region = region.clone();
        let done = Rc::new(Cell::new(false));
        let stop = done.clone();
        let task = glommio::spawn_local(async move {
            let mut n = 0;
            while !stop.get() {
                glommio::timer::sleep(Duration::from_millis(200 + region.net.rng.below(800))).await;
                let id = 1 + region.net.rng.below(NODES);
                let down = Duration::from_millis(region.net.rng.below(1500));
                region.crash_and_restart(id, down).await;
                n += 1;
            }
            n
        });
        (done, task)
    };
    for i in 0..pushes {
        let running = region.running();
        if running.is_empty() {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let b = &running[region.net.rng.below(running.len() as u64) as usize];
        match push(b, i, seed).await {
            Ok(a) => acked.borrow_mut().push(a),
            Err(e) => eprintln!("seed {seed}: push {i} not acknowledged: {e}"),
        }
    }
    crashes.0.set(true);
    let crashed = crashes.1.await;

    // Heal, then every node must converge on the same refs, holding every ack.
    let loss = region.net.loss.replace(0);
    region.net.delay_ms.set(1);
    let acked = acked.borrow().clone();
    assert!(
        acked.len() as u64 >= pushes / 4,
        "seed {seed}: only {} of {pushes} pushes acknowledged",
        acked.len()
    );
    let refs = converged(&region, seed, &acked).await;
    eprintln!(
        "seed {seed}: {} of {pushes} pushes acknowledged, {} refs, {crashed} crashes, loss {} per mille",
        acked.len(),
        refs,
        loss
    );
    for b in region.running() {
        b.shutdown().await;
    }
}

#[test]
fn acknowledged_pushes_survive_loss_delay_and_crashes() {
    let seeds: Vec<u64> = std::env::var("SIM_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pushes: u64 = std::env::var("SIM_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    for seed in seeds {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { run(seed, pushes).await })
            .expect("executor")
            .join()
            .unwrap_or_else(|_| panic!("seed {seed} failed (rerun: SIM_SEEDS={seed})"));
    }
}
