//! A generated repository shaped like a mature project's, for measuring what a server
//! pays per object: many small files in nested directories edited a few lines at a
//! time (so git's repack finds long delta chains), topic branches merged back, and
//! annotated release tags; written with `git fast-import` and repacked by git with its
//! default window and depth.
//!
//! The shape (`BENCH_COMMITS`, `BENCH_FILES`, `BENCH_TAGS`) scales it: the defaults
//! (50,000 commits over 5,000 files, 1,000 tags) give about half a million objects.
//! A generated corpus is kept under `target/bench-corpus/` and reused.
#![allow(clippy::too_many_lines)] // a test or benchmark reads as one scenario

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How big a corpus to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub commits: usize,
    pub files: usize,
    pub tags: usize,
}

impl Shape {
    fn name(&self) -> String {
        format!("c{}-f{}-t{}", self.commits, self.files, self.tags)
    }
}

/// xorshift64*: deterministic, so a shape always gives the same repository.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const WORDS: [&str; 16] = [
    "index", "buffer", "length", "offset", "result", "config", "client", "record", "stream",
    "header", "window", "commit", "branch", "object", "reader", "writer",
];

fn line(rng: &mut Rng) -> String {
    let (a, b, c) = (rng.below(16), rng.below(16), rng.below(1000));
    format!(
        "    let {}_{} = {}.{}({c});\n",
        WORDS[a],
        c % 97,
        WORDS[b],
        WORDS[(a + b) % 16]
    )
}

/// Where file `i` lives: `src/m<a>/s<b>/p<c>/file<i>.rs`, ten files a directory.
fn path_of(i: usize) -> String {
    let leaf = i / 10;
    format!(
        "src/m{}/s{}/p{}/file{i}.rs",
        leaf % 10,
        (leaf / 10) % 10,
        leaf / 100
    )
}

/// Writes file `i` with lines `f` as a fast-import file change.
fn write_file(w: &mut dyn Write, i: usize, f: &[String]) {
    let body: String = f.concat();
    write!(
        w,
        "M 100644 inline {}\ndata {}\n{body}\n",
        path_of(i),
        body.len()
    )
    .expect("fast-import");
}

/// The bare repository of `shape` under `cache`, generated on first use.
pub fn corpus(cache: &Path, shape: Shape) -> PathBuf {
    let repo = cache.join(format!("{}.git", shape.name()));
    if repo.join("corpus-complete").exists() {
        return repo;
    }
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(cache).expect("corpus cache");
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.args(args)
            .env("GIT_DIR", &repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", cache);
        c
    };
    let ok = |c: &mut Command| {
        let out = c.output().expect("git");
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "master"])
        .arg(&repo));
    let mut fi = git(&["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("fast-import");
    let mut w = std::io::BufWriter::new(fi.stdin.take().expect("stdin"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut files: Vec<Vec<String>> = (0..shape.files)
        .map(|_| (0..20 + rng.below(100)).map(|_| line(&mut rng)).collect())
        .collect();
    let mut mark = 0usize;
    let mut master: Option<usize> = None;
    let mut time = 1_500_000_000u64;
    let tag_every = (shape.commits / shape.tags.max(1)).max(1);
    let mut tags = 0;
    // Edits `k` files and writes them as `M` lines.
    let edit = |w: &mut dyn Write, rng: &mut Rng, files: &mut Vec<Vec<String>>, k: usize| {
        for _ in 0..k {
            let i = rng.below(files.len());
            let f = &mut files[i];
            let at = rng.below(f.len());
            match rng.below(3) {
                0 if f.len() > 20 => {
                    f.remove(at);
                }
                1 if f.len() < 200 => f.insert(at, line(rng)),
                _ => f[at] = line(rng),
            }
            write_file(w, i, f);
        }
    };
    let commit = |w: &mut dyn Write,
                  mark: usize,
                  branch: &str,
                  from: Option<usize>,
                  merge: Option<usize>,
                  time: u64,
                  msg: &str| {
        write!(
            w,
            "commit {branch}\nmark :{mark}\n\
             author A U Thor <author@example.com> {time} +0000\n\
             committer C O Mitter <committer@example.com> {time} +0000\n\
             data {}\n{msg}\n",
            msg.len()
        )
        .expect("fast-import");
        if let Some(f) = from {
            writeln!(w, "from :{f}").expect("fast-import");
        }
        if let Some(m) = merge {
            writeln!(w, "merge :{m}").expect("fast-import");
        }
    };
    let mut c = 0;
    while c < shape.commits {
        time += 600 + rng.below(3000) as u64;
        mark += 1;
        if c > 0 && c % 40 == 0 && c + 3 < shape.commits {
            // A topic branch of two commits from master, merged back.
            let topic = format!("refs/heads/topic/t{}", (c / 40) % 50);
            let base = master;
            mark += 1;
            commit(&mut w, mark, &topic, base, None, time, "topic: first step");
            edit(&mut w, &mut rng, &mut files, 2);
            let first = mark;
            mark += 1;
            commit(
                &mut w,
                mark,
                &topic,
                Some(first),
                None,
                time + 60,
                "topic: second step",
            );
            edit(&mut w, &mut rng, &mut files, 1);
            let tip = mark;
            mark += 1;
            commit(
                &mut w,
                mark,
                "refs/heads/master",
                master,
                Some(tip),
                time + 120,
                "Merge the topic",
            );
            edit(&mut w, &mut rng, &mut files, 1);
            c += 3;
        } else {
            commit(
                &mut w,
                mark,
                "refs/heads/master",
                master,
                None,
                time,
                &format!("change {c}"),
            );
            if master.is_none() {
                // The first commit holds every file.
                for (i, f) in files.iter().enumerate() {
                    write_file(&mut w, i, f);
                }
            } else {
                let k = 1 + rng.below(3);
                edit(&mut w, &mut rng, &mut files, k);
            }
            c += 1;
        }
        master = Some(mark);
        if c / tag_every > tags && tags < shape.tags {
            tags += 1;
            let msg = format!("release {tags}");
            write!(
                w,
                "tag v{tags}\nfrom :{mark}\ntagger R E Leaser <release@example.com> {time} +0000\ndata {}\n{msg}\n",
                msg.len()
            )
            .expect("fast-import");
        }
    }
    drop(w);
    assert!(
        fi.wait().expect("fast-import").success(),
        "fast-import failed"
    );
    // git's own packing: default window (10) and depth (50), deltas recomputed.
    ok(&mut git(&["repack", "-a", "-d", "-f", "-q"]));
    ok(&mut git(&["pack-refs", "--all"]));
    std::fs::write(repo.join("corpus-complete"), shape.name()).expect("mark");
    repo
}

/// Objects reachable from `repo`'s heads and tags: what a push of them carries (a
/// real repository's other refs, such as pull requests, and its unreachable objects
/// are not pushed).
pub fn objects(repo: &Path) -> u64 {
    let out = Command::new("git")
        .args(["rev-list", "--objects", "--branches", "--tags"])
        .env("GIT_DIR", repo)
        .output()
        .expect("rev-list");
    out.stdout.iter().filter(|b| **b == b'\n').count() as u64
}
