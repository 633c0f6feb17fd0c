//! The store through its public API, on real O_DIRECT files (glommio) and on the
//! fault-injecting in-memory directory.

mod common;

use common::{delta, full, noise, run};
use repospanner_storage::io::Dir;
use repospanner_storage::{
    DmaDir, Error, Faults, MemDir, Namespace, ObjectKind, Options, Store, Write,
};

const NS: Namespace = Namespace(1);

fn small_segments() -> Options {
    Options {
        segment_bytes_max: 64 << 10,
        ..Options::default()
    }
}

/// Writes a mix of records and checks every read path.
async fn exercise<D: Dir>(store: &Store<D>) {
    let blob = full(ObjectKind::Blob, b"hello\n");
    let empty_tree = full(ObjectKind::Tree, b"");
    let base_content = vec![b'x'; 3000];
    let base = full(ObjectKind::Blob, &base_content);
    let (d1, c1) = delta(ObjectKind::Blob, &base, &base_content, b"-one");
    let (d2, c2) = delta(ObjectKind::Blob, &d1, &c1, b"-two");
    let (d3, c3) = delta(ObjectKind::Blob, &d2, &c2, b"-three");
    let compressible = vec![b'a'; 10_000];
    store
        .append(vec![
            Write::Object(NS, blob.clone()),
            Write::Object(NS, empty_tree.clone()),
            Write::Opaque {
                stream: 1,
                key: 1,
                data: b"small".to_vec(),
            },
            Write::Opaque {
                stream: 1,
                key: 2,
                data: compressible.clone(),
            },
        ])
        .await
        .expect("append");
    // Deltas may arrive before their base is stored: the store does not care.
    store
        .append(vec![
            Write::Object(NS, d3.clone()),
            Write::Object(NS, d2.clone()),
        ])
        .await
        .expect("append");
    store
        .append(vec![
            Write::Object(NS, d1.clone()),
            Write::Object(NS, base.clone()),
        ])
        .await
        .expect("append");
    for k in 10..20 {
        store
            .append(vec![Write::Opaque {
                stream: 2,
                key: k,
                data: vec![k as u8; 100],
            }])
            .await
            .expect("append");
    }
    store
        .append(vec![Write::DeleteRange {
            stream: 2,
            keys: 15..100,
        }])
        .await
        .expect("append");
    check(store).await;
    let _ = (c3, d3);
}

/// `Store::read_objects`: many at once, and past a budget.
async fn check_many<D: Dir>(
    store: &Store<D>,
    [blob, d1, d3]: [&repospanner_storage::StoredObject; 3],
    c1: &[u8],
    c3: &[u8],
) {
    let (c1, c3) = (c1.to_vec(), c3.to_vec());
    // Many at once (a fetch's haves): chains sharing their bases, one asked twice,
    // one absent, in the order asked.
    let many = store
        .read_objects(NS, &[d3.oid, [7u8; 20], d1.oid, blob.oid, d3.oid], u64::MAX)
        .await
        .expect("read");
    assert_eq!(
        many,
        vec![
            Some((ObjectKind::Blob, c3.clone())),
            None,
            Some((ObjectKind::Blob, c1.clone())),
            Some((ObjectKind::Blob, b"hello\n".to_vec())),
            Some((ObjectKind::Blob, c3.clone())),
        ]
    );
    // Past the budget, what is left comes back unread (the caller reads it alone).
    let budget = (c3.len() + 6) as u64;
    let some = store
        .read_objects(NS, &[d3.oid, blob.oid, d1.oid], budget)
        .await
        .expect("read");
    assert_eq!(
        some,
        vec![
            Some((ObjectKind::Blob, c3.clone())),
            Some((ObjectKind::Blob, b"hello\n".to_vec())),
            None,
        ]
    );
}

async fn check<D: Dir>(store: &Store<D>) {
    let blob = full(ObjectKind::Blob, b"hello\n");
    let base_content = vec![b'x'; 3000];
    let base = full(ObjectKind::Blob, &base_content);
    let (d1, c1) = delta(ObjectKind::Blob, &base, &base_content, b"-one");
    let (d2, c2) = delta(ObjectKind::Blob, &d1, &c1, b"-two");
    let (d3, c3) = delta(ObjectKind::Blob, &d2, &c2, b"-three");

    let raw = store
        .read_raw(NS, &blob.oid)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(raw.to_shared(), blob, "the entry comes back byte for byte");
    let raw = store
        .read_raw(NS, &d3.oid)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(
        &raw.deflated[..],
        &d3.deflated[..],
        "a delta comes back as the delta it was"
    );
    assert_eq!(raw.base, Some(d2.oid));
    // The head alone (for planning a fetch) says the same as the whole record.
    for o in [&blob, &base, &d1, &d3] {
        let h = store
            .read_head(NS, &o.oid)
            .await
            .expect("read head")
            .expect("present");
        assert_eq!(
            (h.oid, h.kind, h.object_size, h.entry_size, h.base),
            (o.oid, o.kind, o.object_size, o.entry_size, o.base)
        );
    }
    assert!(store
        .read_head(Namespace(99), &blob.oid)
        .await
        .expect("read head")
        .is_none());
    check_many(store, [&blob, &d1, &d3], &c1, &c3).await;
    let (kind, content) = store
        .read_object(NS, &d3.oid)
        .await
        .expect("read")
        .expect("present");
    assert_eq!((kind, content), (ObjectKind::Blob, c3));
    let (_, content) = store
        .read_object(NS, &blob.oid)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(content, b"hello\n");
    let missing = [7u8; 20];
    assert_eq!(
        store.contains_many(NS, &[blob.oid, missing, d1.oid]),
        vec![true, false, true]
    );
    assert!(store.read_raw(NS, &missing).await.expect("read").is_none());
    assert!(
        !store.contains(Namespace(2), &blob.oid),
        "namespaces are isolated"
    );
    assert!(store
        .read_object(Namespace(2), &blob.oid)
        .await
        .expect("read")
        .is_none());

    assert_eq!(
        store.get_opaque(1, 1).await.expect("read").as_deref(),
        Some(&b"small"[..])
    );
    assert_eq!(
        store.get_opaque(1, 2).await.expect("read"),
        Some(vec![b'a'; 10_000])
    );
    assert_eq!(
        store.opaque_keys(2, 0..u64::MAX),
        (10..15).collect::<Vec<_>>()
    );
    assert!(store.get_opaque(2, 17).await.expect("read").is_none());
}

#[test]
fn round_trip_on_direct_io_files_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    run(move || async move {
        let d = DmaDir::open(&path).await.expect("open dir");
        let (store, report) = Store::open(d, small_segments()).await.expect("open");
        assert!(!report.from_checkpoint && report.corruptions.is_empty());
        exercise(&store).await;
        let full_index = store.index_snapshot();
        let v = store.verify().await.expect("verify");
        assert!(
            v.corruptions.is_empty() && v.bad_objects.is_empty(),
            "{v:?}"
        );
        assert_eq!(v.objects, 6);
        drop(store);

        // Reopen without a checkpoint: full scan.
        let d = DmaDir::open(&path).await.expect("open dir");
        let (store, report) = Store::open(d, small_segments()).await.expect("reopen");
        assert!(!report.from_checkpoint);
        assert_eq!(report.torn_tail_bytes, 0, "{report:?}");
        assert_eq!(store.index_snapshot(), full_index);
        check(&store).await;
        store.close().await.expect("close writes a checkpoint");

        // Reopen from the checkpoint.
        let d = DmaDir::open(&path).await.expect("open dir");
        let (store, report) = Store::open(d, small_segments()).await.expect("reopen");
        assert!(report.from_checkpoint);
        assert_eq!(report.records_scanned, 0, "nothing after the checkpoint");
        assert_eq!(store.index_snapshot(), full_index);
        check(&store).await;
        // And it keeps appending where it left off.
        store
            .append(vec![Write::Opaque {
                stream: 9,
                key: 9,
                data: b"after".to_vec(),
            }])
            .await
            .expect("append after reopen");
        drop(store);
        let d = DmaDir::open(&path).await.expect("open dir");
        let (store, report) = Store::open(d, small_segments()).await.expect("reopen");
        assert!(
            report.from_checkpoint && report.records_scanned == 1,
            "{report:?}"
        );
        assert_eq!(
            store.get_opaque(9, 9).await.expect("read").as_deref(),
            Some(&b"after"[..])
        );
        check(&store).await;
    });
}

#[test]
fn segments_rotate_and_a_full_scan_matches() {
    run(|| async {
        let mem = MemDir::new(1);
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("open");
        for i in 0..200u64 {
            store
                .append(vec![Write::Opaque {
                    stream: 0,
                    key: i,
                    data: noise(i, 1500),
                }])
                .await
                .expect("append");
        }
        let segments = mem
            .list()
            .await
            .expect("list")
            .iter()
            .filter(|n| n.starts_with("seg-"))
            .count();
        assert!(segments >= 4, "expected rotation, got {segments} segments");
        let before = store.index_snapshot();
        drop(store);
        let (store, report) = Store::open(mem.clone(), small_segments())
            .await
            .expect("reopen");
        assert_eq!(report.segments, segments);
        assert!(report.corruptions.is_empty(), "{report:?}");
        assert_eq!(store.index_snapshot(), before);
        for i in 0..200u64 {
            assert_eq!(
                store.get_opaque(0, i).await.expect("read"),
                Some(noise(i, 1500))
            );
        }
    });
}

#[test]
fn group_commit_batches_concurrent_appends_and_one_appender_gets_one_sync_each() {
    run(|| async {
        // One appender: at most one fdatasync per append.
        let mem = MemDir::new(2);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("open");
        for i in 0..50u64 {
            store
                .append(vec![Write::Opaque {
                    stream: 0,
                    key: i,
                    data: vec![0; 200],
                }])
                .await
                .expect("append");
        }
        assert_eq!(store.stats().syncs, 50);
        assert_eq!(mem.counters().1, 50);

        // 64 concurrent appenders: far fewer syncs than appends.
        let mem = MemDir::new(3);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("open");
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let s = store.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..20u64 {
                    s.append(vec![Write::Opaque {
                        stream: 1,
                        key: t * 1000 + i,
                        data: vec![1; 200],
                    }])
                    .await
                    .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = store.stats();
        assert_eq!(stats.appends, 64 * 20);
        assert!(stats.syncs * 8 < stats.appends, "no batching: {stats:?}");
        assert_eq!(store.opaque_keys(1, 0..u64::MAX).len(), 64 * 20);
    });
}

#[test]
fn a_damaged_segment_kept_for_inspection_is_never_reused() {
    run(|| async {
        let mem = MemDir::new(31);
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("open");
        let mut k = 0u64;
        while mem
            .list()
            .await
            .expect("list")
            .iter()
            .filter(|n| n.starts_with("seg-"))
            .count()
            < 3
        {
            let w = Write::Opaque {
                stream: 0,
                key: k,
                data: noise(k, 5000),
            };
            store.append(vec![w]).await.expect("append");
            k += 1;
        }
        drop(store);
        let seg = |n: u64| format!("seg-{n:016x}.log");
        // Segment 2's header damaged (kept for inspection); segment 3's never written.
        mem.with_file(&seg(2), |b| b[0] ^= 0xff).expect("segment 2");
        let kept = mem.with_file(&seg(2), |b| b.clone()).expect("segment 2");
        mem.with_file(&seg(3), |b| b.clear()).expect("segment 3");
        let _ = mem.remove("index.ckpt").await;
        let (store, report) = Store::open(mem.clone(), small_segments())
            .await
            .expect("reopen");
        assert_eq!(report.corruptions.len(), 1, "{report:?}");
        // Enough appends to start new segments: none may take number 2.
        for j in 0..40u64 {
            let w = Write::Opaque {
                stream: 1,
                key: j,
                data: noise(j, 5000),
            };
            store.append(vec![w]).await.expect("append");
        }
        let now = mem
            .with_file(&seg(2), |b| b.clone())
            .expect("segment 2 is still there");
        assert!(
            now == kept,
            "the damaged segment kept for inspection was overwritten"
        );
    });
}

#[test]
fn a_checkpoint_taken_while_a_new_segment_is_written_covers_only_what_is_durable() {
    run(|| async {
        let opts = Options {
            segment_bytes_max: 64 << 10,
            checkpoint_interval_bytes: u64::MAX,
            ..Options::default()
        };
        for seed in 0..16u64 {
            let mem = MemDir::new(seed);
            let (store, _) = Store::open(mem.clone(), opts.clone()).await.expect("open");
            for k in 0..10u64 {
                let w = Write::Opaque {
                    stream: 0,
                    key: k,
                    data: noise(k, 5000),
                };
                store.append(vec![w]).await.expect("append");
            }
            // An append that does not fit starts a new segment; a checkpoint is taken
            // while its first write is under way, and the power goes.
            let s2 = store.clone();
            let big = glommio::spawn_local(async move {
                let w = Write::Opaque {
                    stream: 0,
                    key: 99,
                    data: noise(99, 20_000),
                };
                s2.append(vec![w]).await
            });
            for _ in 0..seed % 4 + 1 {
                repospanner_storage::io::yield_now().await;
            }
            store.checkpoint().await.expect("checkpoint");
            let image = mem.crash_image(seed);
            let _ = big.await;
            drop(store);
            let (store, report) = Store::open(image, opts.clone()).await.expect("reopen");
            assert!(
                report.from_checkpoint,
                "seed {seed}: the checkpoint named a segment whose start was not durable: {report:?}"
            );
            for k in 0..10u64 {
                let got = store.get_opaque(0, k).await.expect("read");
                assert_eq!(got, Some(noise(k, 5000)), "seed {seed}");
            }
        }
    });
}

#[test]
fn scrub_names_damaged_objects_and_repair_writes_them_anew() {
    run(|| async {
        let mem = MemDir::new(5);
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("open");
        // Whole objects and a delta chain, a record each.
        let mut objects = Vec::new();
        let mut locs = Vec::new();
        let base_content = noise(77, 3000);
        let base = full(ObjectKind::Blob, &base_content);
        let (d1, c1) = delta(ObjectKind::Blob, &base, &base_content, b"-one");
        objects.push((base.clone(), base_content.clone()));
        objects.push((d1, c1));
        for i in 0..8u64 {
            let c = noise(i, 2000);
            objects.push((full(ObjectKind::Blob, &c), c));
        }
        for (o, _) in &objects {
            let l = store
                .append(vec![Write::Object(NS, o.clone())])
                .await
                .expect("append");
            locs.push(l[0]);
        }
        let clean = store.scrub(0).await.expect("scrub");
        assert!(clean.damaged.is_empty() && clean.verify.corruptions.is_empty());
        store.checkpoint().await.expect("checkpoint");
        drop(store);

        // Bit rot in two records: the base (a whole object) and a plain blob.
        for victim in [locs[0], locs[5]] {
            let name = format!("seg-{:016x}.log", victim.segment);
            mem.with_file(&name, |b| b[victim.offset as usize + 100] ^= 0x40)
                .expect("segment");
        }
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("reopen");
        assert!(
            store.read_object(NS, &objects[5].0.oid).await.is_err(),
            "served"
        );
        let report = store.scrub(0).await.expect("scrub");
        let mut named: Vec<_> = report.damaged.iter().map(|d| d.oid).collect();
        named.sort_unstable();
        // The delta on the damaged base cannot be produced either.
        let mut want = vec![objects[0].0.oid, objects[1].0.oid, objects[5].0.oid];
        want.sort_unstable();
        assert_eq!(named, want, "{report:?}");
        assert_eq!(report.damaged_values, 0);
        assert!(!report.verify.corruptions.is_empty());

        // A copy that is not the object is refused; the true one is written anew.
        let mut left = report.damaged.clone();
        for _ in 0..2 {
            let mut again = Vec::new();
            for d in left {
                let mut forged = full(ObjectKind::Blob, b"not it");
                forged.oid = d.oid;
                assert!(!store.replace_damaged(d, forged).await.expect("replace"));
                let good = objects.iter().find(|(o, _)| o.oid == d.oid).expect("known");
                if !store
                    .replace_damaged(d, good.0.clone())
                    .await
                    .expect("replace")
                {
                    again.push(d); // a delta whose base is not repaired yet
                }
            }
            left = again;
        }
        assert!(left.is_empty(), "{left:?}");
        let check =
            |store: Store<MemDir>, objects: Vec<(repospanner_storage::StoredObject, Vec<u8>)>| async move {
                for (o, c) in &objects {
                    let got = store.read_object(NS, &o.oid).await.expect("read");
                    assert_eq!(got.map(|g| g.1).as_ref(), Some(c));
                }
                let again = store.scrub(0).await.expect("scrub");
                assert!(again.damaged.is_empty(), "{again:?}");
            };
        check(store.clone(), objects.clone()).await;
        drop(store);
        // From the checkpoint taken before the repair (the copies replace the damaged
        // records the checkpoint names), and by a full scan (the damaged frames are
        // stepped over).
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("reopen");
        check(store.clone(), objects.clone()).await;
        drop(store);
        mem.remove("index.ckpt").await.expect("remove checkpoint");
        let (store, _) = Store::open(mem, small_segments()).await.expect("full scan");
        check(store, objects).await;
    });
}

#[test]
fn a_flipped_byte_in_the_middle_is_detected_and_never_served() {
    run(|| async {
        let mem = MemDir::new(4);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("open");
        let mut locs = Vec::new();
        for i in 0..10u64 {
            let l = store
                .append(vec![Write::Opaque {
                    stream: 0,
                    key: i,
                    data: noise(i, 1000),
                }])
                .await
                .expect("append");
            locs.push(l[0]);
        }
        store.checkpoint().await.expect("checkpoint");
        drop(store);
        let victim = locs[4];
        let name = format!("seg-{:016x}.log", victim.segment);
        mem.with_file(&name, |b| b[victim.offset as usize + 500] ^= 0x10)
            .expect("segment");

        // From the checkpoint: the index knows the record; reading it is a typed error.
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("reopen");
        match store.get_opaque(0, 4).await {
            Err(Error::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!((segment, offset), (victim.segment, victim.offset));
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        let v = store.verify().await.expect("verify");
        assert_eq!(v.corruptions.len(), 1, "{v:?}");
        for i in (0..10u64).filter(|i| *i != 4) {
            assert!(store.get_opaque(0, i).await.expect("intact").is_some());
        }
        drop(store);

        // From a full scan: the damage is reported and stepped over; the frames
        // after it are still there.
        mem.remove("index.ckpt").await.expect("remove checkpoint");
        let (store, report) = Store::open(mem.clone(), Options::default())
            .await
            .expect("reopen");
        assert_eq!(report.corruptions.len(), 1, "{report:?}");
        assert_eq!(report.corruptions[0].segment, victim.segment);
        assert_eq!(report.torn_tail_bytes, 0, "{report:?}");
        assert!(store.get_opaque(0, 4).await.expect("read").is_none());
        for i in (0..10u64).filter(|i| *i != 4) {
            assert_eq!(
                store.get_opaque(0, i).await.expect("read"),
                Some(noise(i, 1000))
            );
        }
    });
}

#[test]
fn a_truncated_segment_is_recovered() {
    run(|| async {
        let mem = MemDir::new(5);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("open");
        let mut locs = Vec::new();
        for i in 0..10u64 {
            locs.push(
                store
                    .append(vec![Write::Opaque {
                        stream: 0,
                        key: i,
                        data: noise(i, 3000),
                    }])
                    .await
                    .expect("append")[0],
            );
        }
        drop(store);
        let last = locs[9];
        let name = format!("seg-{:016x}.log", last.segment);
        mem.with_file(&name, |b| b.truncate(last.offset as usize + 100))
            .expect("segment");
        let (store, report) = Store::open(mem.clone(), Options::default())
            .await
            .expect("reopen");
        assert!(report.corruptions.is_empty(), "{report:?}");
        assert!(report.torn_tail_bytes > 0);
        assert_eq!(store.opaque_keys(0, 0..100), (0..9).collect::<Vec<_>>());
        store
            .append(vec![Write::Opaque {
                stream: 0,
                key: 99,
                data: b"new".to_vec(),
            }])
            .await
            .expect("append after recovery");
        drop(store);
        let (store, report) = Store::open(mem.clone(), Options::default())
            .await
            .expect("reopen");
        assert!(
            report.corruptions.is_empty() && report.torn_tail_bytes == 0,
            "{report:?}"
        );
        assert_eq!(
            store.opaque_keys(0, 0..100),
            (0..9).chain([99]).collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_full_file_system_fails_appends_and_the_store_goes_on() {
    run(|| async {
        let mem = MemDir::new(11);
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("open");
        // Large records fail part-written; small ones then leave that part beyond the
        // log's end, and a large one seals the segment there.
        let value = |k: u64| match k {
            30..60 => noise(k, 30_000),
            100..103 => noise(k, 500),
            _ => noise(k, 5000),
        };
        let put = |k: u64| Write::Opaque {
            stream: 0,
            key: k,
            data: value(k),
        };
        let mut acked = Vec::new();
        for k in 0..30 {
            store.append(vec![put(k)]).await.expect("append");
            acked.push(k);
        }
        // Room for a few more records, then none: part of a write may land.
        let used: u64 = {
            let mut n = 0;
            for name in mem.list().await.expect("list") {
                n += mem
                    .read_whole(&name)
                    .await
                    .expect("read")
                    .map_or(0, |b| b.len() as u64);
            }
            n
        };
        mem.set_faults(Faults {
            space_bytes: Some(used + 50_000),
            ..Faults::default()
        });
        let mut refused = 0;
        for k in 30..60 {
            match store.append(vec![put(k)]).await {
                Ok(_) => acked.push(k),
                Err(Error::NoSpace(_)) => refused += 1,
                Err(e) => panic!("append on a full file system: {e}"),
            }
        }
        assert!(refused > 0, "the file system never filled");
        // Reads go on.
        for &k in &acked {
            assert_eq!(store.get_opaque(0, k).await.expect("read"), Some(value(k)));
        }
        // Room again: appends go on, with no restart.
        mem.set_faults(Faults::default());
        for k in 100..140 {
            store
                .append(vec![put(k)])
                .await
                .expect("append after space returned");
            acked.push(k);
        }
        let v = store.verify().await.expect("verify");
        assert!(v.corruptions.is_empty(), "{v:?}");
        drop(store);
        for image in [mem.crash_image(1), {
            let m = mem.crash_image(2);
            m.remove("index.ckpt").await.ok();
            m
        }] {
            let (store, report) = Store::open(image, small_segments()).await.expect("reopen");
            assert!(report.corruptions.is_empty(), "{report:?}");
            for &k in &acked {
                assert_eq!(store.get_opaque(0, k).await.expect("read"), Some(value(k)));
            }
        }
    });
}

#[test]
fn an_fsync_failure_stops_the_store() {
    run(|| async {
        let mem = MemDir::new(6);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("open");
        store
            .append(vec![Write::Opaque {
                stream: 0,
                key: 0,
                data: b"ok".to_vec(),
            }])
            .await
            .expect("append");
        mem.set_faults(Faults {
            sync_error_per_mille: 1000,
            ..Faults::default()
        });
        let r = store
            .append(vec![Write::Opaque {
                stream: 0,
                key: 1,
                data: b"x".to_vec(),
            }])
            .await;
        assert!(matches!(r, Err(Error::Fatal(_))), "{r:?}");
        mem.set_faults(Faults::default());
        let r = store
            .append(vec![Write::Opaque {
                stream: 0,
                key: 2,
                data: b"y".to_vec(),
            }])
            .await;
        assert!(
            matches!(r, Err(Error::Fatal(_))),
            "no retry after an fsync failure: {r:?}"
        );
        assert!(
            store.get_opaque(0, 1).await.expect("read").is_none(),
            "failed append is not visible"
        );
        // What was acknowledged survives a crash now.
        let image = mem.crash_image(1);
        let (store, _) = Store::open(image, Options::default())
            .await
            .expect("reopen");
        assert_eq!(
            store.get_opaque(0, 0).await.expect("read").as_deref(),
            Some(&b"ok"[..])
        );
    });
}

#[test]
fn limits_and_hostile_objects() {
    run(|| async {
        let mem = MemDir::new(7);
        let opts = Options {
            append_bytes_max: 10_000,
            delta_chain_max: 50,
            ..Options::default()
        };
        let (store, _) = Store::open(mem.clone(), opts).await.expect("open");
        let r = store
            .append(vec![Write::Opaque {
                stream: 0,
                key: 0,
                data: noise(0, 20_000),
            }])
            .await;
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");

        // A delta cycle (a delta of b against a, and of a against b): bounded, an error.
        let base = full(ObjectKind::Blob, b"base content");
        let (mut a, _) = delta(ObjectKind::Blob, &base, b"base content", b"-a");
        let (mut b, _) = delta(ObjectKind::Blob, &base, b"base content", b"-b");
        a.base = Some(b.oid);
        b.base = Some(a.oid);
        store
            .append(vec![
                Write::Object(NS, a.clone()),
                Write::Object(NS, b.clone()),
            ])
            .await
            .expect("append");
        let r = store.read_object(NS, &a.oid).await;
        assert!(matches!(r, Err(Error::Content { .. })), "{r:?}");

        // A delta whose base is missing.
        let (orphan, _) = delta(
            ObjectKind::Blob,
            &full(ObjectKind::Blob, b"gone"),
            b"gone",
            b"!",
        );
        store
            .append(vec![Write::Object(NS, orphan.clone())])
            .await
            .expect("append");
        assert!(matches!(
            store.read_object(NS, &orphan.oid).await,
            Err(Error::Content { .. })
        ));

        // An object whose stored id is wrong is caught by verify.
        let mut liar = full(ObjectKind::Blob, b"truth");
        liar.oid = [0xab; 20];
        store
            .append(vec![Write::Object(NS, liar)])
            .await
            .expect("append");
        let v = store.verify().await.expect("verify");
        assert!(
            v.bad_objects
                .iter()
                .any(|(_, oid, _)| oid.starts_with("abab")),
            "{v:?}"
        );

        // Dropping a namespace removes its objects, also after a rescan; one read
        // (and so cached) before is not served from the cache after.
        let kept = full(ObjectKind::Tree, b"");
        store
            .append(vec![Write::Object(NS, kept.clone())])
            .await
            .expect("append");
        for _ in 0..2 {
            let got = store.read_object(NS, &kept.oid).await.expect("read");
            assert_eq!(got, Some((ObjectKind::Tree, Vec::new())));
        }
        // Contents remembered for objects the namespace does not hold are not served.
        let absent = full(ObjectKind::Commit, b"never stored");
        store.remember(NS, [(absent.oid, ObjectKind::Commit, b"x".to_vec())]);
        assert_eq!(
            store.read_object(NS, &absent.oid).await.expect("read"),
            None
        );
        let remembered = full(ObjectKind::Commit, b"stored");
        store
            .append(vec![Write::Object(NS, remembered.clone())])
            .await
            .expect("append");
        store.remember(
            NS,
            [(remembered.oid, ObjectKind::Commit, b"stored".to_vec())],
        );
        assert_eq!(
            store.read_object(NS, &remembered.oid).await.expect("read"),
            Some((ObjectKind::Commit, b"stored".to_vec()))
        );
        store
            .append(vec![Write::DropNamespace(NS)])
            .await
            .expect("append");
        assert!(!store.contains(NS, &a.oid));
        assert_eq!(store.read_object(NS, &kept.oid).await.expect("read"), None);
        drop(store);
        let (store, _) = Store::open(mem.clone(), Options::default())
            .await
            .expect("reopen");
        assert_eq!(store.object_count(), 0);
    });
}

#[test]
fn objects_written_aside_are_published_by_adopt_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    run(move || async move {
        const STAGE: Namespace = Namespace(1 << 63);
        let d = DmaDir::open(&path).await.expect("open dir");
        let (store, _) = Store::open(d, small_segments()).await.expect("open");
        let base_content = vec![b'y'; 2000];
        let base = full(ObjectKind::Blob, &base_content);
        let (kept, kept_content) = delta(ObjectKind::Blob, &base, &base_content, b"-kept");
        let (dropped, _) = delta(ObjectKind::Blob, &base, &base_content, b"-dropped");
        // The base is in the repository already (a thin push); the push's objects are
        // written where no reader of NS looks.
        store
            .append(vec![Write::Object(NS, base.clone())])
            .await
            .expect("append");
        store
            .append(vec![
                Write::Object(STAGE, kept.clone()),
                Write::Object(STAGE, dropped.clone()),
            ])
            .await
            .expect("append aside");
        assert!(!store.contains(NS, &kept.oid), "not visible before adopt");
        store
            .append(vec![
                Write::Adopt {
                    from: STAGE,
                    to: NS,
                    oids: vec![kept.oid, [7u8; 20]],
                },
                Write::DropNamespace(STAGE),
            ])
            .await
            .expect("adopt");
        let expect = |store: &Store<DmaDir>| {
            assert!(store.contains(NS, &kept.oid));
            assert!(!store.contains(NS, &dropped.oid));
            assert!(!store.contains(NS, &[7u8; 20]));
            assert!(!store.contains(STAGE, &kept.oid));
            assert_eq!(store.namespaces(), vec![NS]);
        };
        expect(&store);
        let (_, content) = store
            .read_object(NS, &kept.oid)
            .await
            .expect("read")
            .expect("adopted");
        assert_eq!(content, kept_content);
        assert!(store.read_raw(NS, &kept.oid).await.expect("raw").is_some());
        let v = store.verify().await.expect("verify");
        assert!(
            v.corruptions.is_empty() && v.bad_objects.is_empty(),
            "{v:?}"
        );
        let index = store.index_snapshot();
        drop(store);
        // Full scan, then from a checkpoint.
        for _ in 0..2 {
            let d = DmaDir::open(&path).await.expect("open dir");
            let (store, _) = Store::open(d, small_segments()).await.expect("reopen");
            expect(&store);
            assert_eq!(store.index_snapshot(), index);
            store.close().await.expect("close");
        }
    });
}

#[test]
fn objects_read_together_match_one_at_a_time_and_damage_in_a_run_is_reported() {
    run(|| async {
        let mem = MemDir::new(4);
        let (store, _) = Store::open(mem.clone(), small_segments())
            .await
            .expect("open");
        // Objects of two namespaces interleaved, small and large, over several
        // segments and appends; the reads ask in an order of their own.
        let (mut mine, mut locs) = (Vec::new(), Vec::new());
        for i in 0..60u64 {
            let size = if i % 7 == 0 {
                70_000
            } else {
                200 + i as usize * 13
            };
            let o = full(ObjectKind::Blob, &noise(i, size));
            let other = full(ObjectKind::Blob, &noise(1000 + i, 300));
            let l = store
                .append(vec![
                    Write::Object(NS, o.clone()),
                    Write::Object(Namespace(2), other),
                ])
                .await
                .expect("append");
            mine.push(o);
            locs.push(l[0]);
        }
        let mut ask: Vec<_> = mine.iter().map(|o| o.oid).rev().collect();
        ask.insert(10, [0xee; 20]); // not stored
        ask.push(mine[3].oid); // asked twice
        let reads = mem.reads();
        let together = store.read_raws(NS, &ask).await.expect("read together");
        let heads = store.read_heads(NS, &ask).await.expect("heads together");
        // Neighbours share reads: 64 KiB segments hold a few dozen of these records.
        let segments = locs
            .iter()
            .map(|l| l.segment)
            .collect::<std::collections::BTreeSet<_>>();
        assert!(
            mem.reads() - reads <= 2 * segments.len() as u64 + 20,
            "{} reads for {} objects in {} segments",
            mem.reads() - reads,
            ask.len(),
            segments.len()
        );
        assert_eq!(together.len(), ask.len());
        for ((oid, got), head) in ask.iter().zip(&together).zip(&heads) {
            let alone = store.read_raw(NS, oid).await.expect("read alone");
            assert_eq!(got, &alone);
            assert_eq!(head, &store.read_head(NS, oid).await.expect("head alone"));
            assert_eq!(got.as_ref().map(|o| o.oid), head.as_ref().map(|h| h.oid));
        }
        assert!(together[10].is_none() && heads[10].is_none());
        assert!(store
            .read_raws(Namespace(3), &ask)
            .await
            .expect("none")
            .iter()
            .all(Option::is_none));

        // A flipped byte inside one record: reading it among its neighbours is a
        // corruption error naming it; its neighbours still read on their own.
        let (victim, loc) = (mine[20].oid, locs[20]);
        let name = format!("seg-{:016x}.log", loc.segment);
        mem.with_file(&name, |b| b[loc.offset as usize + 40] ^= 0x01)
            .expect("segment");
        let near: Vec<_> = mine[18..23].iter().map(|o| o.oid).collect();
        match store.read_raws(NS, &near).await {
            Err(Error::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!((segment, offset), (loc.segment, loc.offset))
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        for o in mine[18..23].iter().filter(|o| o.oid != victim) {
            assert_eq!(
                store
                    .read_raw(NS, &o.oid)
                    .await
                    .expect("intact")
                    .map(|r| r.to_shared())
                    .as_ref(),
                Some(o)
            );
        }
    });
}

#[test]
fn heads_written_or_read_once_come_from_memory_for_the_records_the_index_names() {
    run(|| async {
        const STAGE: Namespace = Namespace(9);
        let mem = MemDir::new(4);
        // A cache of 8 heads, for 20 objects: eviction is exercised too.
        let opts = Options {
            head_cache_entries_max: 8,
            ..small_segments()
        };
        let (store, _) = Store::open(mem.clone(), opts.clone()).await.expect("open");
        let objs: Vec<_> = (0..20u64)
            .map(|i| full(ObjectKind::Blob, &noise(i, 5000)))
            .collect();
        // Written aside, then adopted: the heads are of the same records.
        store
            .append(
                objs.iter()
                    .map(|o| Write::Object(STAGE, o.clone()))
                    .collect(),
            )
            .await
            .expect("append");
        store
            .append(vec![
                Write::Adopt {
                    from: STAGE,
                    to: NS,
                    oids: objs.iter().map(|o| o.oid).collect(),
                },
                Write::DropNamespace(STAGE),
            ])
            .await
            .expect("adopt");
        let last: Vec<_> = objs[16..].iter().map(|o| o.oid).collect();
        let reads = mem.reads();
        let heads = store.read_heads(NS, &last).await.expect("heads");
        assert_eq!(mem.reads(), reads, "the last written are held");
        for (h, o) in heads.iter().zip(&objs[16..]) {
            let h = h.as_ref().expect("present");
            assert_eq!(h.oid, o.oid);
            assert_eq!(h.entry_size, o.entry_size);
        }
        // All of them: the evicted ones are read, and agree with a fresh store's.
        let all: Vec<_> = objs.iter().map(|o| o.oid).collect();
        let first = store.read_heads(NS, &all).await.expect("heads");
        assert!(mem.reads() > reads, "evicted heads are read again");
        let none = |heads: Vec<Option<_>>| heads.iter().all(Option::is_none);
        assert!(none(store.read_heads(STAGE, &all).await.expect("dropped")));
        store.close().await.expect("close");
        let (store, _) = Store::open(mem.clone(), opts).await.expect("reopen");
        assert_eq!(store.read_heads(NS, &all).await.expect("cold"), first);
        // Dropped: a held head is not served for a namespace that lost the object.
        store
            .append(vec![Write::DropNamespace(NS)])
            .await
            .expect("drop");
        assert!(none(store.read_heads(NS, &all).await.expect("gone")));
    });
}
