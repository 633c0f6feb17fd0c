//! SIGKILL a real node while pushes stream in: every push git saw acknowledged is
//! there after the restart, and the repository is intact.

mod common;

use common::region::Region;

/// The region's directory and a new git work tree `w` in it (branch master).
fn work_tree(region: &Region) -> (std::path::PathBuf, std::path::PathBuf) {
    let t = region.dir.path().to_owned();
    let w = t.join("w");
    region.git_ok(
        &t,
        &["init", "-q", "-b", "master", w.to_str().expect("path")],
    );
    (t, w)
}

#[test]
fn no_acknowledged_push_is_lost_when_the_node_is_killed() {
    let mut region = Region::start();
    let (t, w) = work_tree(&region);
    let url = region.repo_url("test");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("seed {seed}");
    let mut acked: Vec<String> = Vec::new();
    for round in 0..3u64 {
        // Push commits one after another while another thread SIGKILLs the node at
        // a random moment, usually in the middle of a push.
        let delay = std::time::Duration::from_millis(100 + seed.wrapping_mul(round + 7) % 700);
        // At least one push per round is acknowledged before the killer starts, so the
        // test always has something it could lose.
        std::fs::write(w.join("first"), format!("round {round}\n")).expect("write");
        region.git_ok(&w, &["add", "-A"]);
        region.git_ok(&w, &["commit", "-qm", &format!("round {round} first")]);
        region.git_ok(&w, &["push", "-q", &url, "master"]);
        acked.push(region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned());
        let pid = region.pid().expect("node running");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: signalling the node process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let mut failures = 0;
        for i in 0..40usize {
            let blob: Vec<u8> = (0..20_000u32)
                .map(|b| (b.wrapping_mul(i as u32 + 1) ^ round as u32) as u8)
                .collect();
            std::fs::write(w.join(format!("f{}", i % 3)), &blob).expect("write");
            region.git_ok(&w, &["add", "-A"]);
            region.git_ok(&w, &["commit", "-qm", &format!("round {round} commit {i}")]);
            let out = region.git(Some("admin"), &w, &["push", "-q", &url, "master"]);
            if out.status.success() {
                acked.push(region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned());
            } else {
                failures += 1;
                if failures >= 2 {
                    break;
                }
            }
        }
        killer.join().expect("killer");
        eprintln!(
            "round {round}: killed after {delay:?}; {} pushes acknowledged so far",
            acked.len()
        );
        region.stop(libc::SIGKILL);
        region.start_node();
        // The ref is at the newest acknowledged commit or later, never behind.
        let remote = region.git_ok(&t, &["ls-remote", &url, "refs/heads/master"]);
        let tip = remote
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("round {round}: master is gone after acknowledged pushes"));
        let last = acked.last().expect("a push per round is acknowledged");
        let ancestry = region.git(
            Some("admin"),
            &w,
            &["merge-base", "--is-ancestor", last, &tip],
        );
        assert!(
            ancestry.status.success(),
            "round {round}: remote master {tip} is behind acknowledged {last}"
        );
        // Resynchronise the work tree with what the node has.
        region.git_ok(&w, &["fetch", "-q", &url, "master"]);
        region.git_ok(&w, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    }
    let c = t.join("clone");
    region.git_ok(
        &t,
        &["clone", "-q", "--mirror", &url, c.to_str().expect("path")],
    );
    region.git_ok(&c, &["fsck", "--full", "--strict"]);
    assert!(acked.len() >= 3, "every round acknowledged a push");
    for a in &acked {
        let out = region.git(
            Some("admin"),
            &c,
            &["cat-file", "-e", &format!("{a}^{{commit}}")],
        );
        assert!(
            out.status.success(),
            "acknowledged commit {a} is missing after the crashes"
        );
    }
}

#[test]
fn a_second_serve_on_the_same_state_is_refused() {
    let region = Region::start();
    let out = region.repospanner(&["serve"]);
    assert!(
        !out.status.success(),
        "a second process served the same state"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // A join run against the serving node's state is refused too, and leaves nothing
    // that would keep the node from starting again.
    let out = region.repospanner(&["serve", "--joinnode", &region.rpc_url()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert!(!region.qs().join("node1/state/joining").exists());
    // The first one is unharmed.
    region.git_ok(region.dir.path(), &["ls-remote", &region.repo_url("test")]);
}

#[test]
fn a_node_without_state_refuses_to_serve_and_says_how_to_make_it() {
    let region = Region::write(1, "");
    let out = region.repospanner(&["serve"]);
    assert!(!out.status.success(), "a node without state started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No state found") && err.contains("serve --spawn"),
        "{err}"
    );
    // The refusal made nothing that would stand in the way of initialising it.
    let out = region.repospanner(&["serve", "--spawn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_shard_that_cannot_start_stops_the_whole_node() {
    let region = Region::write(1, "");
    // Three shards, so a failing shard 0 is not the last one joined.
    let config = region.config();
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen("storage:\n", "storage:\n  shards: 3\n", 1),
    )
    .expect("config");
    let out = region.repospanner(&["serve", "--spawn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shard 0's log directory becomes a file: that shard cannot open its store.
    let shard0 = region.qs().join("node1/git/shard-0");
    std::fs::remove_dir_all(&shard0).expect("remove shard 0");
    std::fs::write(&shard0, b"not a directory").expect("file");
    let mut serve = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("the node kept running without shard 0");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!status.success(), "{err}");
    assert!(err.contains("shard-0"), "{err}");
}

/// Large pushes (their objects written aside while they arrive, then published) survive
/// restarts, a clean one and a SIGKILL in the middle of another large push; what the
/// killed push wrote aside is dropped at the next start.
#[test]
fn large_pushes_survive_restarts_and_a_push_killed_midway_leaves_nothing() {
    let mut region = Region::start();
    let t = region.dir.path().to_owned();
    for r in ["big1", "big2"] {
        region.repospanner(&["admin", "repo", "create", r]);
    }
    let w = work_tree(&region).1;
    for i in 0..6u64 {
        std::fs::write(w.join(format!("b{i}.bin")), common::noise(i + 5, 6 << 20)).expect("write");
        std::fs::write(w.join("text.txt"), format!("version {i}\n").repeat(2000)).expect("write");
        region.git_ok(&w, &["add", "-A"]);
        region.git_ok(&w, &["commit", "-qm", &format!("c{i}")]);
    }
    for r in ["test", "big1"] {
        region.git_ok(&w, &["push", "-q", &region.repo_url(r), "master"]);
    }
    let want = region.git_ok(&w, &["rev-parse", "HEAD"]);
    let check = |region: &Region, repo: &str, n: usize| {
        let c = t.join(format!("clone-{repo}-{n}"));
        region.git_ok(
            &t,
            &[
                "clone",
                "-q",
                "--mirror",
                &region.repo_url(repo),
                c.to_str().expect("path"),
            ],
        );
        region.git_ok(&c, &["fsck", "--full", "--strict"]);
        assert_eq!(region.git_ok(&c, &["rev-parse", "master"]), want, "{repo}");
    };
    region.stop(libc::SIGTERM);
    region.start_node();
    check(&region, "test", 1);
    check(&region, "big1", 1);
    // A push killed while it arrives.
    let pid = region.pid().expect("running");
    let log = region.log_path();
    let killer = std::thread::spawn(move || {
        // As soon as the push has written objects aside.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline
            && std::fs::read_to_string(&log)
                .map(|l| l.matches("objects aside while it arrives").count() < 3)
                .unwrap_or(true)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: signalling the node process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let _ = region.git(
        Some("admin"),
        &w,
        &["push", "-q", &region.repo_url("big2"), "master"],
    );
    killer.join().expect("killer");
    region.stop(libc::SIGKILL);
    region.start_node();
    assert!(
        region
            .log()
            .contains("dropping objects unfinished pushes wrote aside"),
        "{}",
        region.log()
    );
    check(&region, "test", 2);
    check(&region, "big1", 2);
    // The killed push either landed whole or not at all; pushing again completes it.
    region.git_ok(&w, &["push", "-q", &region.repo_url("big2"), "master"]);
    check(&region, "big2", 2);
}

/// A stored object damaged on disk under a running node: a clone that reaches it
/// fails with the reason on git's error channel, and a fetch without side-band (no
/// channel to say why) gets a broken transfer, never a clean 200 with half a pack.
#[test]
fn a_pack_cut_short_by_damage_on_disk_is_never_sent_as_complete() {
    let region = Region::start();
    let (t, w) = work_tree(&region);
    let url = region.repo_url("test");
    std::fs::write(w.join("small"), "small\n").expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "small"]);
    // Incompressible, so its record is most of the segment it lands in.
    std::fs::write(w.join("big"), common::noise(9, 24 << 20)).expect("write");
    region.git_ok(&w, &["add", "-A"]);
    region.git_ok(&w, &["commit", "-qm", "big"]);
    region.git_ok(&w, &["push", "-q", &url, "master"]);
    let tip = region.git_ok(&w, &["rev-parse", "HEAD"]).trim().to_owned();

    // Flip a byte in the middle of the largest segment file: inside the big blob.
    let mut segments = Vec::new();
    let mut dirs = vec![region.qs().join("node1")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
            {
                segments.push((e.metadata().expect("metadata").len(), p));
            }
        }
    }
    let (len, victim) = segments.into_iter().max().expect("a segment file");
    assert!(len > 20 << 20, "{victim:?} is {len} bytes");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&victim)
            .expect("open segment");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, len / 2).expect("read");
        b[0] ^= 0x20;
        f.write_all_at(&b, len / 2).expect("write");
        f.sync_all().expect("sync");
    }

    // git, with side-band: the clone fails and says why.
    let out = region.git(Some("admin"), &t, &["clone", "-q", "--bare", &url, "c"]);
    assert!(
        !out.status.success(),
        "the clone of a damaged object succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("record check failed"), "{err}");
    assert!(region.log().contains("fetch failed while sending the pack"));

    // The same fetch without side-band: the transfer breaks.
    let mut body = Vec::new();
    let want = format!("want {tip} ofs-delta\n");
    body.extend_from_slice(format!("{:04x}{want}", want.len() + 4).as_bytes());
    body.extend_from_slice(b"00000009done\n");
    let r = region.try_http_to(
        &region.url(),
        Some("admin"),
        "POST",
        "/repo/test.git/git-upload-pack",
        &[("content-type", "application/x-git-upload-pack-request")],
        Some(&body),
    );
    match r {
        Err(e) => eprintln!("broken transfer, as it should be: {e:#}"),
        Ok(r) => panic!(
            "a pack cut short came back as a complete response: status {}, {} bytes",
            r.status,
            r.body.len()
        ),
    }
    // The node is still serving.
    region.git_ok(&t, &["ls-remote", &url]);
}
