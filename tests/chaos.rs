//! Seeded chaos on a real 3-node region: two pushers (each on its own branch) and a
//! reader work against random nodes while a random node is SIGKILLed and restarted,
//! again and again. Afterwards a checker verifies that every push a client saw
//! acknowledged is on every node, and that no ref the reader saw ever went backwards.
//! The seed is printed; `CHAOS_SEED=<n>` replays the schedule of kills and targets,
//! `CHAOS_SECONDS=<n>` sets the duration (default 45).
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::region::{GitClient, Region};

struct Rng(u64);
impl Rng {
    /// Seeds through splitmix64, so nearby seeds give unrelated schedules.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// A pusher's history: every commit it made, in order, and which were acknowledged.
#[derive(Default)]
struct History {
    made: Vec<String>,
    acked: Vec<String>,
}

fn pusher(
    git: GitClient,
    urls: Vec<String>,
    dir: &Path,
    branch: &str,
    seed: u64,
    stop: &AtomicBool,
    history: &Mutex<History>,
) {
    git.ok(dir, &["init", "-q", "-b", branch, "."]);
    let mut rng = Rng::new(seed);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        std::fs::write(dir.join(format!("f{}", n % 5)), format!("{branch} {n}\n")).expect("write");
        git.ok(dir, &["add", "-A"]);
        git.ok(dir, &["commit", "-qm", &format!("{branch} {n}")]);
        let tip = git.ok(dir, &["rev-parse", "HEAD"]).trim().to_owned();
        history.lock().expect("lock").made.push(tip.clone());
        let url = &urls[rng.below(urls.len() as u64) as usize];
        let out = git.run(
            dir,
            &["push", "-q", url, &format!("HEAD:refs/heads/{branch}")],
        );
        if out.status.success() {
            history.lock().expect("lock").acked.push(tip);
        }
    }
}

#[test]
fn acknowledged_pushes_survive_random_kills() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    println!("CHAOS_SEED={seed} CHAOS_SECONDS={seconds}");
    let mut region = Region::start_n(3, "limits:\n  replication_timeout_seconds: 8\n");
    let git = region.git_client(Some("admin"));
    let urls: Vec<String> = (1..=3).map(|k| region.repo_url_of(k, "test")).collect();
    let stop = AtomicBool::new(false);
    let histories = [
        Mutex::new(History::default()),
        Mutex::new(History::default()),
    ];
    let observed: Arc<Mutex<Vec<(usize, String, String)>>> = Arc::default();
    let dirs = [region.dir.path().join("p0"), region.dir.path().join("p1")];
    for d in &dirs {
        std::fs::create_dir_all(d).expect("dir");
    }
    let reader_dir = region.dir.path().to_owned();
    std::thread::scope(|s| {
        for (i, h) in histories.iter().enumerate() {
            let (git, urls, stop, dir) = (git.clone(), urls.clone(), &stop, &dirs[i]);
            s.spawn(move || {
                pusher(
                    git,
                    urls,
                    dir,
                    &format!("b{i}"),
                    seed + i as u64 + 1,
                    stop,
                    h,
                )
            });
        }
        // The reader: ls-remote against random nodes, recording what it saw.
        {
            let (git, urls, stop, observed) = (git.clone(), urls.clone(), &stop, observed.clone());
            let reader_dir = reader_dir.clone();
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ 0x5555);
                while !stop.load(Ordering::SeqCst) {
                    let k = rng.below(3) as usize;
                    let out = git.run(&reader_dir, &["ls-remote", &urls[k]]);
                    if out.status.success() {
                        for line in String::from_utf8_lossy(&out.stdout).lines() {
                            if let Some((sha, name)) = line.split_once('\t') {
                                if let Some(b) = name.strip_prefix("refs/heads/") {
                                    observed.lock().expect("lock").push((
                                        k + 1,
                                        b.to_owned(),
                                        sha.to_owned(),
                                    ));
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        // Chaos: kill a random node, let the others work, restart it.
        let mut rng = Rng::new(seed);
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            let victim = 1 + rng.below(3) as usize;
            println!("chaos: SIGKILL node {victim}");
            region.stop_at(victim, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(1000 + rng.below(4000)));
            println!("chaos: restart node {victim}");
            region.start_node_at(victim);
            std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
        }
        stop.store(true, Ordering::SeqCst);
    });

    // Healed: every acknowledged push is on every node.
    let check = region.dir.path().join("check");
    for (i, h) in histories.iter().enumerate() {
        let h = h.lock().expect("lock");
        println!(
            "pusher {i}: {} commits, {} acknowledged",
            h.made.len(),
            h.acked.len()
        );
        assert!(
            !h.acked.is_empty(),
            "seed {seed}: pusher {i} never succeeded"
        );
    }
    for k in 1..=3 {
        let dest = check.join(format!("n{k}"));
        git.ok(
            region.dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &urls[k - 1],
                dest.to_str().expect("path"),
            ],
        );
        git.ok(&dest, &["fsck", "--full", "--strict"]);
        for (i, h) in histories.iter().enumerate() {
            let h = h.lock().expect("lock");
            let log = git.ok(&dest, &["log", "--format=%H", &format!("b{i}")]);
            for a in &h.acked {
                assert!(
                    log.contains(a.as_str()),
                    "seed {seed}: acknowledged push {a} of b{i} missing on node {k}"
                );
            }
        }
    }
    // No ref the reader saw went backwards (positions in each pusher's history).
    let observed = observed.lock().expect("lock");
    for (i, h) in histories.iter().enumerate() {
        let h = h.lock().expect("lock");
        let pos = |sha: &str| h.made.iter().position(|m| m == sha);
        let mut last = 0;
        for (node, b, sha) in observed.iter().filter(|(_, b, _)| *b == format!("b{i}")) {
            let p = pos(sha).unwrap_or_else(|| {
                panic!("seed {seed}: node {node} showed {b} at {sha}, which was never pushed")
            });
            assert!(
                p >= last,
                "seed {seed}: node {node} showed {b} going back from #{last} to #{p}"
            );
            last = p;
        }
    }
    println!("seed {seed}: {} observations checked", observed.len());
}
