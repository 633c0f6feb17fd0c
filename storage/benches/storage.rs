//! `cargo bench -p repospanner-storage`: numbers for people, each next to a baseline
//! measured in the same run. Sections (pass a name to run one): `append`, `reads`,
//! `startup`, `delta`, `compact`. `BENCH_OBJECTS=N` changes the size of the
//! read/startup store (default 1,000,000); `BENCH_SPACE_ROUNDS=N` the length of the
//! space-over-time workload (default 60), whose `space` lines
//! `benches/space_plot.py` draws.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use repospanner_storage::{
    object, DmaDir, Namespace, ObjectKind, Options, Store, StoredObject, Write,
};

const NS: Namespace = Namespace(1);

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn fake_object(seed: u64, len: usize) -> StoredObject {
    // A real SHA-1 (random-looking, as git's ids are) so index sizes and checkpoint
    // compressibility are realistic.
    StoredObject {
        oid: object::object_id(ObjectKind::Blob, &seed.to_le_bytes()).expect("no collision"),
        kind: ObjectKind::Blob,
        object_size: len as u64,
        entry_size: len as u64,
        base: None,
        deflated: noise(seed, len).into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn bench_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("storage-bench-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

/// The limit: the same bytes in the same number of batches, written sequentially with
/// plain std::fs and one fdatasync per batch.
fn baseline(dir: &Path, total: u64, batches: u64) -> Duration {
    let path = dir.join("baseline.dat");
    let mut f = std::fs::File::create(&path).expect("baseline file");
    let per = (total / batches.max(1)).max(1) as usize;
    let buf = noise(1, per);
    let start = Instant::now();
    for _ in 0..batches {
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
    }
    let t = start.elapsed();
    let _ = std::fs::remove_file(path);
    t
}

async fn append_case(appenders: usize, record: usize, total_appends: usize) {
    let dir = bench_dir(&format!("append-{appenders}-{record}"));
    let d = DmaDir::open(&dir).await.expect("dir");
    let (store, _) = Store::open(d, Options::default()).await.expect("open");
    let per_task = total_appends.div_ceil(appenders);
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(total_appends)));
    // Data is made before the clock starts: only the store is timed.
    let data: Vec<Vec<StoredObject>> = (0..appenders)
        .map(|t| {
            (0..per_task)
                .map(|i| fake_object((t * 1_000_000 + i) as u64, record))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for objects in data {
        let store = store.clone();
        let latencies = latencies.clone();
        tasks.push(glommio::spawn_local(async move {
            for o in objects {
                let s = Instant::now();
                store
                    .append(vec![Write::Object(NS, o)])
                    .await
                    .expect("append");
                latencies.borrow_mut().push(s.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let elapsed = start.elapsed();
    let stats = store.stats();
    let base = baseline(&dir, stats.bytes_written, stats.batches);
    let mut lat = latencies.borrow().clone();
    lat.sort_unstable();
    let n = lat.len() as f64;
    let mib = stats.bytes_written as f64 / (1 << 20) as f64;
    println!(
        "append {appenders:>3} x {record:>6} B: {:>8.0} appends/s {:>7.1} MiB/s | p50 {:>6.2} ms p99 {:>6.2} ms | {:>5.2} syncs/append | limit {:>7.1} MiB/s | ratio {:.2}",
        n / elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        stats.syncs as f64 / n,
        mib / base.as_secs_f64(),
        base.as_secs_f64() / elapsed.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn bench_append() {
    println!("## append: store vs std::fs write+fdatasync of the same bytes in the same batches (ratio = limit time / store time)");
    for (appenders, total) in [(1, 300), (8, 1600), (64, 6400), (256, 12800)] {
        append_case(appenders, 200, total).await;
    }
    for (appenders, total) in [(1, 200), (8, 800), (64, 1280), (256, 2560)] {
        append_case(appenders, 64 << 10, total).await;
    }
}

fn objects_count() -> u64 {
    std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

async fn build_big_store(dir: &Path, n: u64) {
    let d = DmaDir::open(dir).await.expect("dir");
    let (store, _) = Store::open(d, Options::default()).await.expect("open");
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Write> = (i..(i + 2000).min(n))
            .map(|k| Write::Object(NS, fake_object(k, 150 + (k % 200) as usize)))
            .collect();
        i += batch.len() as u64;
        store.append(batch).await.expect("append");
    }
    store.clone().close().await.expect("close");
    println!(
        "built a store of {n} objects in {:.1} s ({} MiB of log)",
        start.elapsed().as_secs_f64(),
        store.stats().bytes_written >> 20
    );
}

async fn bench_reads(dir: &Path, n: u64) {
    let d = DmaDir::open(dir).await.expect("dir");
    let (store, _) = Store::open(d, Options::default()).await.expect("open");
    println!("## reads by id on a store of {n} objects (read_raw: index lookup + one O_DIRECT read + CRC check)");
    for (label, ids) in [
        (
            "hot (1000 ids, repeated)",
            (0..20_000u64)
                .map(|i| (i % 1000) * (n / 1000))
                .collect::<Vec<_>>(),
        ),
        (
            "cold (random over all)",
            (0..20_000u64)
                .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % n)
                .collect(),
        ),
    ] {
        let mut lat = Vec::with_capacity(ids.len());
        let start = Instant::now();
        for k in &ids {
            let oid = fake_object(*k, 0).oid;
            let s = Instant::now();
            let o = store.read_raw(NS, &oid).await.expect("read");
            lat.push(s.elapsed());
            assert!(o.is_some());
        }
        let elapsed = start.elapsed();
        lat.sort_unstable();
        println!(
            "read_raw {label}: {:.0} reads/s, p50 {:.1} us, p99 {:.1} us",
            ids.len() as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 0.5).as_secs_f64() * 1e6,
            percentile(&lat, 0.99).as_secs_f64() * 1e6
        );
    }
    let oids: Vec<_> = (0..100_000u64)
        .map(|k| fake_object(k * 7 % n, 0).oid)
        .collect();
    let start = Instant::now();
    let found = store.contains_many(NS, &oids);
    println!(
        "contains_many of 100000 ids: {:.1} ms ({} present)",
        start.elapsed().as_secs_f64() * 1e3,
        found.iter().filter(|f| **f).count()
    );
}

async fn bench_startup(dir: &Path, n: u64) {
    println!("## start-up of a store of {n} objects");
    let start = Instant::now();
    let d = DmaDir::open(dir).await.expect("dir");
    let (store, report) = Store::open(d, Options::default()).await.expect("open");
    let from_ckpt = start.elapsed();
    assert!(report.from_checkpoint);
    assert_eq!(store.object_count() as u64, n);
    drop(store);
    let ckpt = dir.join("index.ckpt");
    let size = std::fs::metadata(&ckpt).map(|m| m.len()).unwrap_or(0);
    let raw = std::fs::read(&ckpt).expect("checkpoint");
    let z = zstd::bulk::compress(&raw, 3).expect("zstd");
    std::fs::rename(&ckpt, dir.join("index.ckpt.saved")).expect("move checkpoint");
    let start = Instant::now();
    let d = DmaDir::open(dir).await.expect("dir");
    let (store, report) = Store::open(d, Options::default()).await.expect("open");
    let scan = start.elapsed();
    assert!(!report.from_checkpoint);
    assert_eq!(store.object_count() as u64, n);
    drop(store);
    std::fs::rename(dir.join("index.ckpt.saved"), &ckpt).expect("restore checkpoint");
    println!(
        "from checkpoint: {:.3} s | full scan: {:.3} s | ratio {:.1}x | checkpoint {} MiB (zstd -3 would make it {} MiB: {:.0}%)",
        from_ckpt.as_secs_f64(),
        scan.as_secs_f64(),
        scan.as_secs_f64() / from_ckpt.as_secs_f64(),
        size >> 20,
        z.len() >> 20,
        z.len() as f64 * 100.0 / raw.len() as f64
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses the entry header at `off`: (type, inflated entry size, header length).
fn entry_header(pack: &[u8], off: usize) -> (u8, u64, usize) {
    let mut c = pack[off];
    let kind = (c >> 4) & 7;
    let mut size = u64::from(c & 15);
    let mut shift = 4;
    let mut i = 1;
    while c & 0x80 != 0 {
        c = pack[off + i];
        size |= u64::from(c & 0x7f) << shift;
        shift += 7;
        i += 1;
    }
    if kind == 6 {
        loop {
            let b = pack[off + i];
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    } else if kind == 7 {
        i += 20;
    }
    (kind, size, i)
}

fn unhex(s: &str) -> [u8; 20] {
    let mut o = [0u8; 20];
    for (i, b) in o.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    o
}

async fn bench_delta() {
    println!("## inflated content through delta chains: store.read_object vs `git cat-file --batch` on the same packed objects");
    let dir = bench_dir("delta");
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    git(&repo, &["init", "-q"]);
    let mut lines: Vec<String> = (0..3000)
        .map(|i| format!("line {i} {}", "x".repeat(i % 50)))
        .collect();
    for c in 0..400 {
        for f in 0..5 {
            let k = (c * 31 + f * 7) % lines.len();
            lines[k] = format!("line {k} changed in commit {c}");
            std::fs::write(
                repo.join(format!("file{f}.txt")),
                lines[f * 100..].join("\n"),
            )
            .expect("write");
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", &format!("c{c}")]);
    }
    git(&repo, &["gc", "-q", "--aggressive"]);
    let pack_dir = repo.join(".git/objects/pack");
    let idx = std::fs::read_dir(&pack_dir)
        .expect("pack dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("a pack index");
    let pack = std::fs::read(idx.with_extension("pack")).expect("pack");
    let listing = git(&repo, &["verify-pack", "-v", idx.to_str().expect("path")]);
    let sizes = git(
        &repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname) %(objectsize)",
        ],
    );
    let sizes: std::collections::HashMap<&str, u64> = sizes
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(o, s)| (o, s.parse().expect("size")))
        .collect();

    let d = DmaDir::open(&dir.join("store")).await.expect("dir");
    let (store, _) = Store::open(d, Options::default()).await.expect("open");
    let mut blobs = Vec::new();
    let mut writes = Vec::new();
    let mut deltas = 0;
    let mut max_depth = 0;
    for l in listing.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || f[0].len() != 40 {
            continue;
        }
        let kind = match f[1] {
            "commit" => ObjectKind::Commit,
            "tree" => ObjectKind::Tree,
            "blob" => ObjectKind::Blob,
            "tag" => ObjectKind::Tag,
            _ => continue,
        };
        let in_pack: usize = f[3].parse().expect("size in pack");
        let off: usize = f[4].parse().expect("offset");
        let (_, entry_size, hl) = entry_header(&pack, off);
        let base = f.get(6).map(|b| unhex(b));
        if let Some(depth) = f.get(5) {
            deltas += 1;
            max_depth = max_depth.max(depth.parse::<u32>().unwrap_or(0));
        }
        if kind == ObjectKind::Blob {
            blobs.push(f[0].to_string());
        }
        writes.push(Write::Object(
            NS,
            StoredObject {
                oid: unhex(f[0]),
                kind,
                object_size: sizes[f[0]],
                entry_size,
                base,
                deflated: pack[off + hl..off + in_pack].to_vec().into(),
            },
        ));
    }
    let total = writes.len();
    store.append(writes).await.expect("import");

    // Ours: every blob's content, in the order git lists them.
    let start = Instant::now();
    let mut bytes = 0usize;
    for b in &blobs {
        let (_, c) = store
            .read_object(NS, &unhex(b))
            .await
            .expect("read")
            .expect("present");
        debug_assert_eq!(
            object::hex(&object::object_id(ObjectKind::Blob, &c).expect("no collision")),
            *b
        );
        bytes += c.len();
    }
    let ours = start.elapsed();

    // git's: cat-file --batch over the same ids (process start included, ~1 ms).
    let input: String = blobs.iter().map(|b| format!("{b}\n")).collect();
    let start = Instant::now();
    let mut child = Command::new("git")
        .args(["cat-file", "--batch"])
        .current_dir(&repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("cat-file output");
    let _ = writer.join();
    let theirs = start.elapsed();
    println!(
        "{total} objects ({deltas} deltas, max depth {max_depth}), {} blobs, {} MiB inflated: store {:.1} MiB/s, git cat-file --batch {:.1} MiB/s | ratio {:.2} (git time / store time)",
        blobs.len(),
        bytes >> 20,
        bytes as f64 / (1 << 20) as f64 / ours.as_secs_f64(),
        (out.stdout.len() as f64) / (1 << 20) as f64 / theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A store with `mib` MiB of `record`-byte objects in two namespaces, one of them
/// dropped: half of every sealed segment dead.
async fn half_dead_store(dir: &Path, mib: u64, record: usize) -> Store<DmaDir> {
    let d = DmaDir::open(dir).await.expect("dir");
    let opts = Options {
        segment_bytes_max: 64 << 20,
        ..Options::default()
    };
    let (store, _) = Store::open(d, opts).await.expect("open");
    let n = (mib << 20) / record as u64;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(Write::Object(Namespace(1 + i % 2), fake_object(i, record)));
        if batch.len() * record >= 4 << 20 {
            store
                .append(std::mem::take(&mut batch))
                .await
                .expect("append");
        }
    }
    batch.push(Write::DropNamespace(Namespace(2)));
    store.append(batch).await.expect("append");
    store
}

async fn bench_compact() {
    println!("## compact: live data copied per second, against the device's limit for the same bytes in the same batches (std::fs write+fdatasync; ratio = limit time / compaction time)");
    for record in [64 << 10, 2 << 10] {
        let dir = bench_dir("compact");
        let store = half_dead_store(&dir, 512, record).await;
        let before = store.stats();
        let start = Instant::now();
        let mut moved = 0u64;
        let mut freed = 0u64;
        for c in store.compaction_candidates(0.9, 1).await.expect("space") {
            let r = store.compact_segment(c.segment, 0).await.expect("compact");
            moved += r.bytes_moved;
            freed += r.freed;
        }
        let t = start.elapsed();
        let after = store.stats();
        let base = baseline(
            &dir,
            after.bytes_written - before.bytes_written,
            after.batches - before.batches,
        );
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "compact {:>6} B objects: {:>7.1} MiB live moved in {:.2} s = {:>6.1} MiB/s | {:>7.1} MiB freed | limit {:>6.1} MiB/s | ratio {:.2}",
            record,
            mib(moved),
            t.as_secs_f64(),
            mib(moved) / t.as_secs_f64(),
            mib(freed),
            mib(after.bytes_written - before.bytes_written) / base.as_secs_f64(),
            base.as_secs_f64() / t.as_secs_f64(),
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    println!("## compact beside appends: one appender of 200 B objects (a small push's record), without and with compaction at the default rate (32 MiB/s) in the same store");
    let dir = bench_dir("compact-beside");
    let store = half_dead_store(&dir, 512, 64 << 10).await;
    let mut p99 = Vec::new();
    for with in [false, true] {
        let running = Rc::new(std::cell::Cell::new(true));
        let compactor = with.then(|| {
            let (store, running) = (store.clone(), running.clone());
            glommio::spawn_local(async move {
                for c in store.compaction_candidates(0.9, 1).await.expect("space") {
                    if !running.get() {
                        break;
                    }
                    store
                        .compact_segment(c.segment, 32 << 20)
                        .await
                        .expect("compact");
                }
            })
        });
        let mut lat = Vec::new();
        for i in 0..2000u64 {
            let o = fake_object(10_000_000 + u64::from(with) * 1_000_000 + i, 200);
            let s = Instant::now();
            store
                .append(vec![Write::Object(NS, o)])
                .await
                .expect("append");
            lat.push(s.elapsed());
        }
        running.set(false);
        if let Some(c) = compactor {
            c.await;
        }
        lat.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "appends {} compaction: p50 {:.2} ms p99 {:.2} ms",
            if with { "with   " } else { "without" },
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        p99.push(percentile(&lat, 0.99));
    }
    println!(
        "p99 with compaction / without: {:.2}",
        p99[1].as_secs_f64() / p99[0].as_secs_f64()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);

    bench_space().await;
}

/// Space over time for a node-shaped workload with compaction at its defaults: each
/// round, pushes written aside and adopted, refused pushes dropped, and every fifth a
/// repository deleted. Prints a `space` line per round.
async fn bench_space() {
    let rounds: u64 = std::env::var("BENCH_SPACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!("## space over time: {rounds} rounds of 20 pushes of 256 KiB each (4 objects; 16 pushes adopted, 4 refused) into 8 repositories, one repository deleted every fifth round; 16 MiB segments, compaction at live share 0.5, 2 MiB dead, 32 MiB/s");
    println!("space round disk_mib live_mib");
    let dir = bench_dir("space");
    let d = DmaDir::open(&dir).await.expect("dir");
    let opts = Options {
        segment_bytes_max: 16 << 20,
        ..Options::default()
    };
    let (store, _) = Store::open(d, opts).await.expect("open");
    let compactor = {
        let store = store.clone();
        glommio::spawn_local(async move {
            loop {
                let c = store
                    .compaction_candidates(0.5, 2 << 20)
                    .await
                    .expect("space");
                match c.first() {
                    Some(c) => {
                        store
                            .compact_segment(c.segment, 32 << 20)
                            .await
                            .expect("compact");
                    }
                    None => glommio::timer::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    let mut repos: Vec<u64> = (100..108).collect();
    let mut next_ns = 1000u64;
    let mut seed = 0u64;
    for round in 0..rounds {
        for p in 0..20u64 {
            next_ns += 1;
            let aside = Namespace(next_ns);
            let objects: Vec<StoredObject> = (0..4)
                .map(|_| {
                    seed += 1;
                    fake_object(seed, 64 << 10)
                })
                .collect();
            let oids: Vec<_> = objects.iter().map(|o| o.oid).collect();
            let writes = objects
                .into_iter()
                .map(|o| Write::Object(aside, o))
                .collect();
            store.append(writes).await.expect("append");
            let mut publish = Vec::new();
            if p % 5 != 4 {
                let to = Namespace(repos[(p % 8) as usize]);
                publish.push(Write::Adopt {
                    from: aside,
                    to,
                    oids,
                });
            }
            publish.push(Write::DropNamespace(aside));
            store.append(publish).await.expect("append");
        }
        if round % 5 == 4 {
            let i = (round / 5) as usize % repos.len();
            store
                .append(vec![Write::DropNamespace(Namespace(repos[i]))])
                .await
                .expect("append");
            next_ns += 1;
            repos[i] = next_ns;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let space = store.space().await.expect("space");
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "space {round} {:.1} {:.1}",
            mib(space.iter().map(|s| s.bytes).sum()),
            mib(space.iter().map(|s| s.live).sum())
        );
    }
    drop(compactor);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let (a, r, s, d, c) = (
        want("append"),
        want("reads"),
        want("startup"),
        want("delta"),
        want("compact"),
    );
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            if a {
                bench_append().await;
            }
            if r || s {
                let n = objects_count();
                let dir = bench_dir("big");
                build_big_store(&dir, n).await;
                if r {
                    bench_reads(&dir, n).await;
                }
                if s {
                    bench_startup(&dir, n).await;
                }
                let _ = std::fs::remove_dir_all(dir);
            }
            if d {
                bench_delta().await;
            }
            if c {
                bench_compact().await;
            }
        })
        .expect("executor")
        .join()
        .expect("bench");
}
