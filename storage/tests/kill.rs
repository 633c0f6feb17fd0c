//! A real process appends to a store on real O_DIRECT files and compacts it all the
//! while, writing each acknowledgement to a pipe; it is SIGKILLed at a random moment;
//! the store is reopened and every acknowledged record must be there, byte for byte,
//! and every acknowledged deletion must hold.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{noise, run, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use repospanner_storage::{DmaDir, Options, Store, Write};

fn opts() -> Options {
    Options {
        segment_bytes_max: 1 << 20,
        checkpoint_interval_bytes: 2 << 20,
        ..Options::default()
    }
}

/// The child: appends forever from 16 concurrent tasks, printing `ack <key> <len>` after
/// each durable append and `del <key>` after each durable deletion of a scratch record
/// (dead space for compaction), and compacts from another task, printing `compacted`.
/// Only runs when the parent starts it.
#[test]
#[ignore = "run by sigkill_during_appends as a child process"]
fn child_appender() {
    let Ok(dir) = std::env::var("STORAGE_KILL_DIR") else {
        return;
    };
    let generation: u64 = std::env::var("STORAGE_KILL_GEN")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    run(move || async move {
        let d = DmaDir::open(std::path::Path::new(&dir))
            .await
            .expect("open dir");
        let (store, _) = Store::open(d, opts()).await.expect("open store");
        let mut tasks = Vec::new();
        for task in 0..16u64 {
            let store = store.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0.. {
                    let key = generation << 48 | task << 32 | n;
                    let len = ((key * 7919) % 9000) as usize;
                    store
                        .append(vec![Write::Opaque {
                            stream: 1,
                            key,
                            data: noise(key, len),
                        }])
                        .await
                        .expect("append");
                    say(&format!("ack {key} {len}"));
                    let scratch = [
                        Write::Opaque {
                            stream: 2,
                            key,
                            data: noise(!key, len),
                        },
                        Write::DeleteRange {
                            stream: 2,
                            keys: key..key + 1,
                        },
                    ];
                    for w in scratch {
                        store.append(vec![w]).await.expect("append");
                    }
                    say(&format!("del {key}"));
                }
            }));
        }
        let compactor = store.clone();
        tasks.push(glommio::spawn_local(async move {
            loop {
                let c = compactor
                    .compaction_candidates(0.9, 1)
                    .await
                    .expect("space");
                match c.first() {
                    Some(c) => {
                        compactor
                            .compact_segment(c.segment, 0)
                            .await
                            .expect("compact");
                        say("compacted");
                    }
                    None => glommio::timer::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
        for t in tasks {
            t.await;
        }
    });
}

fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("pipe");
    out.flush().expect("pipe");
}

#[test]
fn sigkill_during_appends_and_compaction_loses_no_acknowledged_record() {
    let s = seed("sigkill_during_appends");
    let mut rng = StdRng::seed_from_u64(s);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: Vec<(u64, usize)> = Vec::new();
    let mut deleted: Vec<u64> = Vec::new();
    let mut compactions = 0;
    for generation in 1..=3u64 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "child_appender",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STORAGE_KILL_DIR", dir.path())
            .env("STORAGE_KILL_GEN", generation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let kill_after = Duration::from_millis(rng.gen_range(300..1500));
        let pid = child.id() as libc::pid_t;
        let killer = std::thread::spawn(move || {
            let start = Instant::now();
            std::thread::sleep(kill_after);
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            start.elapsed()
        });
        let mut got = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut f = line.split_whitespace();
            match f.next() {
                Some("ack") => {}
                Some("del") => {
                    deleted.push(f.next().and_then(|k| k.parse().ok()).expect("key"));
                    continue;
                }
                Some("compacted") => {
                    compactions += 1;
                    continue;
                }
                _ => continue,
            }
            let key: u64 = f.next().and_then(|k| k.parse().ok()).expect("key");
            let len: usize = f.next().and_then(|k| k.parse().ok()).expect("len");
            acked.push((key, len));
            got += 1;
        }
        killer.join().expect("killer");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the child was killed");
        eprintln!("generation {generation}: {got} appends acknowledged before SIGKILL");
        assert!(
            got > 0,
            "the child acknowledged nothing: is the store too slow to start?"
        );

        let acked_now = acked.clone();
        let deleted_now = deleted.clone();
        let path = dir.path().to_owned();
        run(move || async move {
            let d = DmaDir::open(&path).await.expect("open dir");
            let (mut store, report) = Store::open(d, opts()).await.expect("reopen after SIGKILL");
            assert!(report.corruptions.is_empty(), "seed {s}: {report:?}");
            if generation == 3 {
                // The last time, from the log alone.
                drop(store);
                std::fs::remove_file(path.join("index.ckpt")).expect("remove checkpoint");
                let d = DmaDir::open(&path).await.expect("open dir");
                let (again, report) = Store::open(d, opts()).await.expect("full scan");
                assert!(!report.from_checkpoint && report.corruptions.is_empty());
                store = again;
            }
            for (key, len) in acked_now {
                let got = store.get_opaque(1, key).await.expect("read");
                assert_eq!(
                    got,
                    Some(noise(key, len)),
                    "seed {s}: acknowledged record {key:x} lost"
                );
            }
            for key in deleted_now {
                let got = store.get_opaque(2, key).await.expect("read");
                assert_eq!(got, None, "seed {s}: deleted record {key:x} is back");
            }
        });
    }
    eprintln!("{compactions} segments compacted in all");
    assert!(
        compactions > 0,
        "the child never compacted: the test saw nothing"
    );
}
