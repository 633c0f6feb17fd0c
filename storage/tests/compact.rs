//! Compaction against a model: a seeded workload shaped as a node uses the store
//! (pushes written aside and adopted or refused, repository state rewritten, a raft log
//! appended, purged and truncated, repositories deleted) runs with compaction beside
//! it, and what the store serves must equal the model: live objects and values
//! readable, dropped namespaces and deleted keys gone, after compaction, after a
//! checkpointed reopen, after a full scan, and after a crash at any moment.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use common::{delta, full, noise, run, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use repospanner_storage::io::{yield_now, Dir};
use repospanner_storage::{MemDir, Namespace, ObjectKind, Oid, Options, Store, Write};

const ASIDE: u8 = 18;
const STATE: u8 = 1;
const LOG: u8 = 2;

fn opts() -> Options {
    Options {
        segment_bytes_max: 64 << 10,
        batch_bytes_max: 32 << 10,
        checkpoint_interval_bytes: 256 << 10,
        ..Options::default()
    }
}

/// What the store must serve.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    objects: BTreeMap<u64, BTreeMap<Oid, Vec<u8>>>,
    opaque: BTreeMap<(u8, u64), Vec<u8>>,
}

impl Model {
    fn apply(&mut self, writes: &[Write], contents: &HashMap<Oid, Vec<u8>>) {
        for w in writes {
            match w {
                Write::Object(ns, o) => {
                    self.objects
                        .entry(ns.0)
                        .or_default()
                        .entry(o.oid)
                        .or_insert_with(|| contents[&o.oid].clone());
                }
                Write::Opaque { stream, key, data } => {
                    self.opaque.insert((*stream, *key), data.clone());
                }
                Write::DeleteRange { stream, keys } => {
                    self.opaque
                        .retain(|(s, k), _| *s != *stream || !keys.contains(k));
                }
                Write::DropNamespace(ns) => {
                    self.objects.remove(&ns.0);
                }
                Write::Adopt { from, to, oids } => {
                    let adopted: Vec<(Oid, Vec<u8>)> = oids
                        .iter()
                        .filter_map(|o| Some((*o, self.objects.get(&from.0)?.get(o)?.clone())))
                        .collect();
                    let dest = self.objects.entry(to.0).or_default();
                    for (o, c) in adopted {
                        dest.entry(o).or_insert(c);
                    }
                }
            }
        }
        self.objects.retain(|_, m| !m.is_empty());
    }
}

/// Whether `store` serves exactly `model`.
async fn matches(store: &Store<MemDir>, model: &Model) -> Result<(), String> {
    let mut namespaces: Vec<u64> = store.namespaces().iter().map(|n| n.0).collect();
    namespaces.sort_unstable();
    let want: Vec<u64> = model.objects.keys().copied().collect();
    if namespaces != want {
        return Err(format!("namespaces {namespaces:x?}, want {want:x?}"));
    }
    for (ns, objects) in &model.objects {
        if store.oids_in(Namespace(*ns)).len() != objects.len() {
            return Err(format!("namespace {ns:x}: object count"));
        }
        for (oid, content) in objects {
            match store.read_object(Namespace(*ns), oid).await {
                Ok(Some((_, c))) if c == *content => {}
                other => {
                    return Err(format!(
                        "namespace {ns:x}: object {}: {:?}",
                        repospanner_storage::object::hex(oid),
                        other.map(|o| o.map(|(_, c)| c.len()))
                    ))
                }
            }
        }
    }
    for stream in [STATE, LOG, ASIDE] {
        let keys = store.opaque_keys(stream, 0..u64::MAX);
        let want: Vec<u64> = model
            .opaque
            .range((stream, 0)..(stream, u64::MAX))
            .map(|((_, k), _)| *k)
            .collect();
        if keys != want {
            return Err(format!("stream {stream}: keys {keys:?}, want {want:?}"));
        }
        for k in keys {
            let got = store
                .get_opaque(stream, k)
                .await
                .map_err(|e| e.to_string())?;
            if got.as_ref() != model.opaque.get(&(stream, k)) {
                return Err(format!("stream {stream} key {k}: wrong value"));
            }
        }
    }
    let v = store.verify().await.map_err(|e| e.to_string())?;
    if !v.corruptions.is_empty() || !v.bad_objects.is_empty() {
        return Err(format!("verify: {v:?}"));
    }
    Ok(())
}

/// A node-shaped workload: each call appends once or a few times and applies each
/// acknowledged append to the model.
struct Workload {
    rng: StdRng,
    repos: Vec<u64>,
    log_next: u64,
    log_first: u64,
    contents: HashMap<Oid, Vec<u8>>,
    /// What was acknowledged, and what it becomes if the append in flight is: shared,
    /// so a crash can be compared while the workload waits on the store.
    models: Rc<RefCell<(Model, Option<Model>)>>,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let repos = (0..3).map(|_| rng.gen::<u64>() >> 1).collect();
        Workload {
            rng,
            repos,
            log_next: 1,
            log_first: 1,
            contents: HashMap::new(),
            models: Rc::default(),
        }
    }

    fn model(&self) -> Model {
        self.models.borrow().0.clone()
    }

    async fn append(&mut self, store: &Store<MemDir>, writes: Vec<Write>) -> bool {
        let mut next = self.model();
        next.apply(&writes, &self.contents);
        self.models.borrow_mut().1 = Some(next);
        let ok = store.append(writes).await.is_ok();
        if ok {
            let mut m = self.models.borrow_mut();
            m.0 = m.1.take().expect("the model of the append in flight");
        }
        ok
    }

    fn objects(&mut self, ns: Namespace) -> (Vec<Write>, Vec<Oid>) {
        let mut writes = Vec::new();
        let mut oids = Vec::new();
        let mut last: Option<(repospanner_storage::StoredObject, Vec<u8>)> = None;
        for _ in 0..self.rng.gen_range(1..8) {
            let o = match &last {
                Some((base, c)) if self.rng.gen_bool(0.3) && c.len() < 60_000 => {
                    let (o, content) = delta(ObjectKind::Blob, base, c, b"more");
                    self.contents.insert(o.oid, content.clone());
                    last = Some((o.clone(), content));
                    o
                }
                _ => {
                    let len = self.rng.gen_range(50..3000);
                    let content = noise(self.rng.gen(), len);
                    let o = full(ObjectKind::Blob, &content);
                    self.contents.insert(o.oid, content.clone());
                    last = Some((o.clone(), content));
                    o
                }
            };
            oids.push(o.oid);
            writes.push(Write::Object(ns, o));
        }
        (writes, oids)
    }

    /// A push: written aside, then adopted into `repo` (or refused and dropped).
    async fn push(&mut self, store: &Store<MemDir>, repo: Namespace) -> bool {
        let q = Namespace(self.rng.gen::<u64>() >> 1);
        let mark = Write::Opaque {
            stream: ASIDE,
            key: q.0,
            data: vec![1],
        };
        if !self.append(store, vec![mark]).await {
            return false;
        }
        let mut adopted = Vec::new();
        for _ in 0..self.rng.gen_range(1..3) {
            let (writes, oids) = self.objects(q);
            if !self.append(store, writes).await {
                return false;
            }
            adopted.extend(oids);
            yield_now().await;
        }
        let mut publish = Vec::new();
        if self.rng.gen_bool(0.6) {
            publish.push(Write::Adopt {
                from: q,
                to: repo,
                oids: adopted,
            });
        }
        publish.push(Write::DropNamespace(q));
        publish.push(Write::DeleteRange {
            stream: ASIDE,
            keys: q.0..q.0 + 1,
        });
        self.append(store, publish).await
    }

    /// One operation; false if an append failed.
    async fn step(&mut self, store: &Store<MemDir>) -> bool {
        let repo = Namespace(self.repos[self.rng.gen_range(0..self.repos.len())]);
        match self.rng.gen_range(0..100) {
            0..=39 => self.push(store, repo).await,
            // Objects written straight into a repository.
            40..=49 => {
                let (writes, _) = self.objects(repo);
                self.append(store, writes).await
            }
            // A repository's state rewritten (compressible: zstd).
            50..=64 => {
                let len = self.rng.gen_range(100..4000);
                let data = vec![self.rng.gen::<u8>(); len];
                let w = Write::Opaque {
                    stream: STATE,
                    key: repo.0,
                    data,
                };
                self.append(store, vec![w]).await
            }
            // Raft log entries appended.
            65..=84 => {
                let mut writes = Vec::new();
                for _ in 0..self.rng.gen_range(1..4) {
                    let len = self.rng.gen_range(10..2000);
                    writes.push(Write::Opaque {
                        stream: LOG,
                        key: self.log_next,
                        data: noise(self.rng.gen(), len),
                    });
                    self.log_next += 1;
                }
                self.append(store, writes).await
            }
            // The log purged behind a snapshot.
            85..=89 => {
                let to = self.rng.gen_range(self.log_first..=self.log_next);
                self.log_first = to;
                let w = Write::DeleteRange {
                    stream: LOG,
                    keys: 0..to,
                };
                self.append(store, vec![w]).await
            }
            // The log truncated and written again from a point (keys reused).
            90..=95 => {
                let from = self.rng.gen_range(self.log_first..=self.log_next);
                let mut writes = vec![Write::DeleteRange {
                    stream: LOG,
                    keys: from..u64::MAX,
                }];
                self.log_next = from;
                for _ in 0..self.rng.gen_range(0..3) {
                    writes.push(Write::Opaque {
                        stream: LOG,
                        key: self.log_next,
                        data: noise(self.rng.gen(), 300),
                    });
                    self.log_next += 1;
                }
                self.append(store, writes).await
            }
            // A repository deleted; a new one takes its place.
            _ => {
                let i = self.rng.gen_range(0..self.repos.len());
                let gone = Namespace(self.repos[i]);
                self.repos[i] = self.rng.gen::<u64>() >> 1;
                let writes = vec![
                    Write::DropNamespace(gone),
                    Write::DeleteRange {
                        stream: STATE,
                        keys: gone.0..gone.0 + 1,
                    },
                ];
                self.append(store, writes).await
            }
        }
    }
}

async fn first_candidate(
    store: &Store<MemDir>,
    live_share_max: f64,
) -> Option<repospanner_storage::SegmentSpace> {
    let c = store.compaction_candidates(live_share_max, 1).await;
    c.expect("candidates").first().copied()
}

/// Compacts every sealed segment with dead bytes, most dead first.
async fn compact_all(store: &Store<MemDir>) -> u64 {
    let mut freed = 0;
    while let Some(c) = first_candidate(store, 0.9).await {
        let r = store.compact_segment(c.segment, 0).await.expect("compact");
        freed += r.freed;
    }
    freed
}

/// Compacts a random half of the sealed segments, so dead records stay behind in the
/// others (which a replay from the start would meet).
async fn compact_some(store: &Store<MemDir>, rng: &mut StdRng) {
    for s in store.space().await.expect("space") {
        if !s.open && rng.gen_bool(0.5) {
            store.compact_segment(s.segment, 0).await.expect("compact");
        }
    }
}

async fn total(store: &Store<MemDir>) -> (u64, u64) {
    let s = store.space().await.expect("space");
    (
        s.iter().map(|s| s.bytes).sum(),
        s.iter().map(|s| s.live).sum(),
    )
}

#[test]
fn compaction_keeps_every_live_record_and_frees_the_rest() {
    let base = seed("compaction_keeps_every_live_record");
    run(move || async move {
        for round in 0..12u64 {
            let s = base.wrapping_add(round);
            let mem = MemDir::new(s);
            let (store, _) = Store::open(mem.clone(), opts()).await.expect("open");
            let mut w = Workload::new(s);
            let mut rng = StdRng::seed_from_u64(s ^ 1);
            for phase in 0..3 {
                for _ in 0..250 {
                    assert!(w.step(&store).await, "seed {s}: append failed");
                }
                compact_some(&store, &mut rng).await;
                if let Err(e) = matches(&store, &w.model()).await {
                    panic!("seed {s} phase {phase}: after compacting some: {e}");
                }
                let snapshot = mem.crash_image(rng.gen());
                snapshot.remove("index.ckpt").await.ok();
                let (scanned, _) = Store::open(snapshot, opts()).await.expect("full scan");
                if let Err(e) = matches(&scanned, &w.model()).await {
                    panic!("seed {s} phase {phase}: a full scan after compacting some: {e}");
                }
                let (before, live) = total(&store).await;
                let freed = compact_all(&store).await;
                let (after, _) = total(&store).await;
                if let Err(e) = matches(&store, &w.model()).await {
                    panic!("seed {s} phase {phase}: after compaction: {e}");
                }
                assert!(
                    freed > 0 && after < before,
                    "seed {s}: nothing freed ({before} -> {after} bytes, {live} live)"
                );
                // What is left is live data, carried deletions and the open segment.
                assert!(
                    after <= live * 2 + (2 * opts().segment_bytes_max),
                    "seed {s} phase {phase}: {after} bytes left for {live} live"
                );
            }
            store.close().await.expect("close");
            let (store, report) = Store::open(mem.clone(), opts()).await.expect("reopen");
            assert!(report.from_checkpoint && report.corruptions.is_empty());
            if let Err(e) = matches(&store, &w.model()).await {
                panic!("seed {s}: from the checkpoint: {e}");
            }
            drop(store);
            // Without the checkpoint, the log alone must give the same: nothing a
            // carried deletion covers comes back, nothing live is lost.
            mem.remove("index.ckpt").await.expect("remove checkpoint");
            let (store, report) = Store::open(mem, opts()).await.expect("full scan");
            assert!(!report.from_checkpoint && report.corruptions.is_empty());
            if let Err(e) = matches(&store, &w.model()).await {
                panic!("seed {s}: from a full scan: {e}");
            }
        }
    });
}

#[test]
fn compaction_runs_beside_writes_and_reads() {
    let s = seed("compaction_beside_writes");
    run(move || async move {
        let mem = MemDir::new(s);
        let (store, _) = Store::open(mem.clone(), opts()).await.expect("open");
        let mut w = Workload::new(s);
        // A namespace no operation touches, read all along.
        let stable = Namespace(7);
        let mut kept = Vec::new();
        for n in 0..40u64 {
            let content = noise(n, 500);
            let o = full(ObjectKind::Blob, &content);
            kept.push((o.oid, content));
            store
                .append(vec![Write::Object(stable, o)])
                .await
                .expect("append");
        }
        let done = Rc::new(std::cell::Cell::new(false));
        let writer = {
            let (store, done) = (store.clone(), done.clone());
            glommio::spawn_local(async move {
                for _ in 0..1500 {
                    assert!(w.step(&store).await);
                }
                done.set(true);
                w
            })
        };
        let reader = {
            let (store, done, kept) = (store.clone(), done.clone(), kept.clone());
            glommio::spawn_local(async move {
                let mut reads = 0u64;
                while !done.get() {
                    for (oid, content) in &kept {
                        let got = store.read_object(stable, oid).await.expect("read");
                        assert_eq!(got.map(|g| g.1).as_ref(), Some(content));
                        reads += 1;
                    }
                    yield_now().await;
                }
                reads
            })
        };
        let mut compactions = 0;
        while !done.get() {
            if let Some(c) = first_candidate(&store, 0.8).await {
                store.compact_segment(c.segment, 0).await.expect("compact");
                compactions += 1;
            }
            yield_now().await;
        }
        let w = writer.await;
        let reads = reader.await;
        compact_all(&store).await;
        let mut model = w.model();
        model.objects.insert(stable.0, kept.into_iter().collect());
        matches(&store, &model).await.expect("after the run");
        assert!(
            compactions > 0 && reads > 0,
            "{compactions} compactions, {reads} reads"
        );
        drop(store);
        mem.remove("index.ckpt").await.expect("remove checkpoint");
        let (store, _) = Store::open(mem, opts()).await.expect("full scan");
        matches(&store, &model).await.expect("full scan");
    });
}

#[test]
fn a_crash_at_any_moment_of_compaction_loses_nothing_and_revives_nothing() {
    let base = seed("crash_during_compaction");
    run(move || async move {
        for round in 0..30u64 {
            let s = base.wrapping_add(round);
            let mut rng = StdRng::seed_from_u64(s);
            let mem = MemDir::new(s);
            let (store, _) = Store::open(mem.clone(), opts()).await.expect("open");
            let mut w = Workload::new(s);
            let models = w.models.clone();
            for _ in 0..rng.gen_range(100..400) {
                assert!(w.step(&store).await);
            }
            let writer = {
                let store = store.clone();
                glommio::spawn_local(async move {
                    for _ in 0..300 {
                        if !w.step(&store).await {
                            break;
                        }
                    }
                })
            };
            let compactor = {
                let store = store.clone();
                glommio::spawn_local(async move {
                    while let Some(c) = first_candidate(&store, 0.9).await {
                        if store.compact_segment(c.segment, 0).await.is_err() {
                            break;
                        }
                    }
                })
            };
            for _ in 0..rng.gen_range(0..4000) {
                yield_now().await;
            }
            let image = mem.crash_image(rng.gen());
            // The models the image may hold: before and after the append in flight
            // (read without waiting: the writer holds the workload).
            let (acked, in_flight) = models.borrow().clone();
            writer.await;
            compactor.await;
            drop(store);
            let scan = image.crash_image(rng.gen());
            scan.remove("index.ckpt").await.ok();
            for (how, dir) in [("reopened", image), ("fully scanned", scan)] {
                let (store, report) = Store::open(dir, opts()).await.expect("open image");
                assert!(report.corruptions.is_empty(), "seed {s}: {report:?}");
                if let Err(first) = matches(&store, &acked).await {
                    let second = match &in_flight {
                        Some(m) => matches(&store, m).await,
                        None => Err(first.clone()),
                    };
                    if let Err(e) = second {
                        panic!("seed {s}: {how} after a crash: {first}; {e}");
                    }
                }
            }
        }
    });
}
