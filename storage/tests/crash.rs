//! Crash-image tests: seeded random schedules of concurrent appends, injected write and
//! fsync failures, and crashes at random moments. After each crash the store is reopened
//! from exactly what a completed sync made durable (plus random sectors of unsynced
//! writes, torn and reordered), and every acknowledged append must be there and
//! readable, and nothing that was never written may be served.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use common::{full, noise, run, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use repospanner_storage::io::yield_now;
use repospanner_storage::{Faults, MemDir, Namespace, ObjectKind, Options, Store, Write};

const ROUNDS: u64 = 40;
const LIVES: usize = 3;
const NS: Namespace = Namespace(3);

type Key = (u8, u64);

#[derive(Default, Clone)]
struct Ledger {
    /// Every value ever attempted, by key (keys are never reused).
    attempted: HashMap<Key, Vec<u8>>,
    /// Values whose append was acknowledged.
    acked: HashMap<Key, Vec<u8>>,
    /// Objects whose append was acknowledged: id → content.
    acked_objects: HashMap<[u8; 20], Vec<u8>>,
}

fn some_faults(rng: &mut StdRng) -> Faults {
    Faults {
        write_error_per_mille: rng.gen_range(0..30),
        sync_error_per_mille: rng.gen_range(0..30),
        ..Faults::default()
    }
}

async fn crash_round(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mem = MemDir::new(seed);
    let opts = Options {
        segment_bytes_max: rng.gen_range(16 << 10..256 << 10),
        batch_bytes_max: rng.gen_range(4 << 10..64 << 10),
        checkpoint_interval_bytes: rng.gen_range(8 << 10..128 << 10),
        ..Options::default()
    };
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    for life in 0..LIVES {
        let (store, report) = Store::open(mem.clone(), opts.clone()).await.expect("open");
        assert!(
            report.corruptions.is_empty(),
            "seed {seed} life {life}: {report:?}"
        );
        let snapshot = ledger.borrow().clone();
        check(&store, &snapshot, seed, life).await;

        if rng.gen_bool(0.3) {
            mem.set_faults(some_faults(&mut rng));
        }
        let stop = Rc::new(Cell::new(false));
        let mut tasks = Vec::new();
        for t in 0..rng.gen_range(1..12u8) {
            let store = store.clone();
            let ledger = ledger.clone();
            let stop = stop.clone();
            let mut trng = StdRng::seed_from_u64(rng.gen());
            tasks.push(glommio::spawn_local(async move {
                let mut n = 0u64;
                while !stop.get() && n < 200 {
                    let mut writes = Vec::new();
                    let mut keys = Vec::new();
                    let mut objects = Vec::new();
                    for _ in 0..trng.gen_range(1..4) {
                        n += 1;
                        let key = (t, (life as u64) << 32 | n);
                        let len = match trng.gen_range(0..10) {
                            0 => trng.gen_range(8_000..40_000),
                            1..=3 => trng.gen_range(600..4000),
                            _ => trng.gen_range(0..300),
                        };
                        let data = if trng.gen_bool(0.5) {
                            noise(trng.gen(), len)
                        } else {
                            vec![trng.gen(); len]
                        };
                        if trng.gen_bool(0.2) {
                            let o = full(ObjectKind::Blob, &data);
                            objects.push((o.oid, data.clone()));
                            writes.push(Write::Object(NS, o));
                        } else {
                            ledger.borrow_mut().attempted.insert(key, data.clone());
                            keys.push((key, data.clone()));
                            writes.push(Write::Opaque {
                                stream: key.0,
                                key: key.1,
                                data,
                            });
                        }
                    }
                    match store.append(writes).await {
                        Ok(_) => {
                            let mut l = ledger.borrow_mut();
                            l.acked.extend(keys);
                            l.acked_objects.extend(objects);
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        // Crash at a random moment.
        for _ in 0..rng.gen_range(0..3000) {
            yield_now().await;
        }
        let image = mem.crash_image(rng.gen());
        let acked_at_crash = {
            let l = ledger.borrow();
            (l.acked.clone(), l.acked_objects.clone())
        };
        stop.set(true);
        for t in tasks {
            t.await;
        }
        drop(store);
        // The next life starts from the crash image: appends acknowledged after the
        // image was taken were lost with the "power", as they would be.
        {
            let mut l = ledger.borrow_mut();
            l.acked = acked_at_crash.0;
            l.acked_objects = acked_at_crash.1;
        }
        mem = image;
    }
    let (store, report) = Store::open(mem.clone(), opts).await.expect("final open");
    assert!(report.corruptions.is_empty(), "seed {seed}: {report:?}");
    let snapshot = ledger.borrow().clone();
    check(&store, &snapshot, seed, LIVES).await;
}

async fn check(store: &Store<MemDir>, ledger: &Ledger, seed: u64, life: usize) {
    for (k, v) in &ledger.acked {
        let got = store.get_opaque(k.0, k.1).await;
        assert!(
            matches!(&got, Ok(Some(g)) if g == v),
            "seed {seed} life {life}: acknowledged {k:?} lost or wrong: {:?}",
            got.map(|g| g.map(|g| g.len()))
        );
    }
    for (oid, content) in &ledger.acked_objects {
        let got = store.read_object(NS, oid).await;
        assert!(
            matches!(&got, Ok(Some((_, c))) if c == content),
            "seed {seed} life {life}: acknowledged object lost"
        );
    }
    // Nothing else is served: every key the store has holds exactly a value that
    // was written under that key.
    for stream in 0..12u8 {
        for key in store.opaque_keys(stream, 0..u64::MAX) {
            let got = store.get_opaque(stream, key).await.expect("readable");
            assert_eq!(
                got.as_ref(),
                ledger.attempted.get(&(stream, key)),
                "seed {seed} life {life}: ({stream}, {key}) serves something never written"
            );
        }
    }
    let v = store.verify().await.expect("verify");
    assert!(
        v.corruptions.is_empty() && v.bad_objects.is_empty(),
        "seed {seed} life {life}: {v:?}"
    );
}

#[test]
fn random_crash_schedules_lose_no_acknowledged_append() {
    let base = seed("random_crash_schedules");
    run(move || async move {
        for round in 0..ROUNDS {
            crash_round(base.wrapping_add(round)).await;
        }
    });
}

#[test]
fn checkpoint_then_crash_in_the_tail_matches_a_full_scan() {
    let base = seed("checkpoint_then_crash");
    run(move || async move {
        for round in 0..10u64 {
            let s = base.wrapping_add(round);
            let mut rng = StdRng::seed_from_u64(s);
            let mem = MemDir::new(s);
            let opts = Options {
                segment_bytes_max: 32 << 10,
                checkpoint_interval_bytes: u64::MAX,
                ..Options::default()
            };
            let (store, _) = Store::open(mem.clone(), opts.clone()).await.expect("open");
            let mut n = 0u64;
            for _ in 0..rng.gen_range(1..60) {
                n += 1;
                store
                    .append(vec![Write::Opaque {
                        stream: 0,
                        key: n,
                        data: noise(n, rng.gen_range(0..3000)),
                    }])
                    .await
                    .expect("append");
            }
            store.checkpoint().await.expect("checkpoint");
            for _ in 0..rng.gen_range(0..60) {
                n += 1;
                store
                    .append(vec![
                        Write::Opaque {
                            stream: 0,
                            key: n,
                            data: noise(n, rng.gen_range(0..3000)),
                        },
                        Write::DeleteRange {
                            stream: 0,
                            keys: n / 2..n / 2 + 1,
                        },
                    ])
                    .await
                    .expect("append");
            }
            // "Kill" between the checkpoint and the tail.
            let image = mem.crash_image(rng.gen());
            drop(store);
            let (from_ckpt, report) = Store::open(image.clone(), opts.clone())
                .await
                .expect("open");
            assert!(report.from_checkpoint, "seed {s}");
            let a = from_ckpt.index_snapshot();
            drop(from_ckpt);
            use repospanner_storage::io::Dir;
            image.remove("index.ckpt").await.expect("remove checkpoint");
            let (scanned, report) = Store::open(image, opts).await.expect("open");
            assert!(!report.from_checkpoint);
            assert_eq!(
                a,
                scanned.index_snapshot(),
                "seed {s}: checkpoint + tail differs from a full scan"
            );
        }
    });
}
