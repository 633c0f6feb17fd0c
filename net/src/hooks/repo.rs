//! The git directory a hook sees. git's hooks run `git log old..new` and the like, so
//! they need a git repository; the node stores objects in its own log, so it keeps, for
//! each repository with hooks, a bare git repository of its refs and objects
//! (`<hooks dir>/repos/<instance>.git`), brought up to date before a hook runs with a
//! pack of what it lacks (planned and written as a fetch's). The push's own objects go
//! into a quarantine beside it (`run/<push>/objects`, git's `GIT_QUARANTINE_PATH`),
//! reached through git's object directory variables; they join the repository only
//! once the push is accepted, so a refused push leaves nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};

use crate::backend::{Backend, RepoState};
use crate::git::upload::{self, FetchRequest};
use crate::git::{hex, Oid};

/// The files under a node's hooks directory.
#[derive(Debug, Clone)]
pub struct HookDirs {
    pub root: PathBuf,
}

impl HookDirs {
    /// A hook script, written once (executable) by its id.
    pub fn script(&self, id: &str) -> PathBuf {
        self.root.join("scripts").join(id)
    }

    /// A script uploaded through the admin API, waiting to be named by an edit.
    pub fn upload(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// The git repository kept for the hooks of instance `id` of a repository.
    pub fn repo(&self, id: u64) -> PathBuf {
        self.root.join("repos").join(format!("{id:016x}.git"))
    }

    fn run(&self, push: &str) -> PathBuf {
        self.root.join("run").join(push)
    }

    /// Makes the script `id` executable on disk, unless a file there already holds
    /// exactly `content` (one a crash cut short, or damage, is written again).
    pub fn install_script(&self, id: &str, content: &[u8]) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.script(id);
        if std::fs::read(&path).is_ok_and(|have| have == content) {
            return Ok(path);
        }
        let dir = self.root.join("scripts");
        std::fs::create_dir_all(&dir)?;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{id}.{}.{n}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, content)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(path)
    }

    /// Removes what runs left behind (a node that stopped during one) and uploads no
    /// edit named within a day.
    pub fn tidy(&self) {
        let _ = std::fs::remove_dir_all(self.root.join("run"));
        let day = std::time::Duration::from_secs(86_400);
        if let Ok(entries) = std::fs::read_dir(self.root.join("uploads")) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

thread_local! {
    /// One update at a time of each repository kept for hooks (a repository belongs
    /// to one shard, so to one thread).
    static UPDATING: RefCell<HashMap<u64, Rc<glommio::sync::Semaphore>>> =
        RefCell::new(HashMap::new());
    /// The refs of each repository kept for hooks as this thread last set them, so a
    /// push whose repository has not changed since runs no git to find out.
    static KEPT_REFS: RefCell<HashMap<u64, BTreeMap<String, String>>> =
        RefCell::new(HashMap::new());
    /// Pushes accepted into each kept repository (see [`GC_EVERY`]).
    static ACCEPTED: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
}

/// A push's objects, in a quarantine beside the repository kept for hooks. Removed
/// when dropped.
#[derive(Debug)]
pub struct Quarantine {
    /// The repository kept for hooks, and its instance.
    pub repo: PathBuf,
    id: u64,
    /// `run/<push>`: holds `objects/` and `work/`.
    pub dir: PathBuf,
}

impl Quarantine {
    pub fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// The hook's working directory (and `HOME`), writable.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// git's variables that make the quarantined objects and the repository's visible.
    pub fn env(&self) -> Vec<(String, String)> {
        let q = self.objects().display().to_string();
        vec![
            ("GIT_DIR".into(), self.repo.display().to_string()),
            ("GIT_OBJECT_DIRECTORY".into(), q.clone()),
            (
                "GIT_ALTERNATE_OBJECT_DIRECTORIES".into(),
                self.repo.join("objects").display().to_string(),
            ),
            ("GIT_QUARANTINE_PATH".into(), q),
        ]
    }

    /// The push was accepted: its objects join the repository kept for hooks and its
    /// refs move there as they did in the region, so the next hook needs no update.
    pub async fn accept(self, moved: Vec<(String, Option<Oid>)>) -> Result<(), String> {
        let lock = lock_of(self.id);
        let _one = lock
            .acquire_permit(1)
            .await
            .map_err(|e| format!("waiting for the repository kept for hooks: {e}"))?;
        let from = self.objects().join("pack");
        let to = self.repo.join("objects").join("pack");
        // The index last: git finds a pack by it.
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort_by_key(|p| p.extension().is_some_and(|x| x == "idx"));
        for f in files {
            let name = f.file_name().unwrap_or_default().to_owned();
            std::fs::rename(&f, to.join(name)).map_err(|e| e.to_string())?;
        }
        let mut input = String::new();
        for (name, new) in &moved {
            match new {
                Some(o) => input.push_str(&format!("update {name} {}\n", hex(o))),
                None => input.push_str(&format!("delete {name}\n")),
            }
        }
        let updated = git(
            &self.repo,
            &["update-ref", "--stdin"],
            &[],
            Input::Bytes(input.into()),
        )
        .await;
        KEPT_REFS.with(|k| {
            let mut k = k.borrow_mut();
            match (&updated, k.get_mut(&self.id)) {
                (Ok(_), Some(refs)) => {
                    for (name, new) in moved {
                        match new {
                            Some(o) => refs.insert(name, hex(&o)),
                            None => refs.remove(&name),
                        };
                    }
                }
                _ => {
                    k.remove(&self.id);
                }
            }
        });
        updated?;
        // A pack per push piles up: git repacks when there are many.
        let n = ACCEPTED.with(|a| {
            let mut a = a.borrow_mut();
            let n = a.entry(self.id).or_insert(0);
            *n += 1;
            *n
        });
        if n.is_multiple_of(GC_EVERY) {
            git(&self.repo, &["gc", "--auto", "--quiet"], &[], Input::None).await?;
        }
        Ok(())
    }
}

/// Pushes accepted into a kept repository between two `git gc --auto`.
const GC_EVERY: u64 = 32;

fn lock_of(id: u64) -> Rc<glommio::sync::Semaphore> {
    UPDATING.with(|u| {
        u.borrow_mut()
            .entry(id)
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    })
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Brings the repository kept for the hooks of `repo` up to date with `state` and
/// quarantines `pack`, the push's pack, beside it.
pub async fn prepare<B: Backend>(
    b: &B,
    dirs: &HookDirs,
    repo: &str,
    state: &RepoState,
    push: &str,
    pack: bytes::Bytes,
) -> Result<Quarantine, String> {
    let kept = dirs.repo(state.id);
    let lock = lock_of(state.id);
    {
        let _one = lock
            .acquire_permit(1)
            .await
            .map_err(|e| format!("waiting for the repository kept for hooks: {e}"))?;
        let updated = update(b, &kept, repo, state).await;
        KEPT_REFS.with(|k| {
            let mut k = k.borrow_mut();
            match updated {
                Ok(()) => k.insert(state.id, state.refs.clone()),
                Err(_) => k.remove(&state.id),
            }
        });
        updated?;
    }
    let q = Quarantine {
        id: state.id,
        repo: kept,
        dir: dirs.run(push),
    };
    for d in [q.objects().join("pack"), q.objects().join("info"), q.work()] {
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    if !pack.is_empty() {
        // Thin packs are completed from the repository (its objects are alternates).
        let env = q.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        git(
            &q.repo,
            &["index-pack", "--stdin", "--fix-thin"],
            &env,
            Input::Bytes(pack),
        )
        .await
        .map_err(|e| {
            // Perhaps the kept repository is not what this thread believes: look again
            // next time.
            KEPT_REFS.with(|k| k.borrow_mut().remove(&state.id));
            format!("quarantining the push's objects: {e}")
        })?;
    }
    Ok(q)
}

/// Makes the repository at `kept` hold `state`'s refs and every object they reach.
async fn update<B: Backend>(
    b: &B,
    kept: &Path,
    repo: &str,
    state: &RepoState,
) -> Result<(), String> {
    if !kept.exists() {
        let parent = kept.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = kept.with_extension("new");
        let _ = std::fs::remove_dir_all(&tmp);
        let t = tmp.display().to_string();
        git(parent, &["init", "--bare", "-q", &t], &[], Input::None).await?;
        std::fs::rename(&tmp, kept).map_err(|e| format!("{}: {e}", kept.display()))?;
    }
    let cached = KEPT_REFS.with(|k| k.borrow().get(&state.id).cloned());
    let has = match cached {
        Some(refs) => refs,
        None => {
            let listed = git(
                kept,
                &["for-each-ref", "--format=%(objectname) %(refname)"],
                &[],
                Input::None,
            )
            .await?;
            let mut has: BTreeMap<String, String> = BTreeMap::new();
            for line in String::from_utf8_lossy(&listed).lines() {
                if let Some((oid, name)) = line.split_once(' ') {
                    has.insert(name.to_owned(), oid.to_owned());
                }
            }
            has
        }
    };
    if let Some(head) = state.symrefs.get("HEAD") {
        let now = std::fs::read_to_string(kept.join("HEAD")).unwrap_or_default();
        if now.trim_end() != format!("ref: {head}") {
            git(kept, &["symbolic-ref", "HEAD", head], &[], Input::None).await?;
        }
    }
    if has == state.refs {
        return Ok(());
    }
    let parse = |h: &String| crate::git::parse_hex(h.as_bytes());
    let known: std::collections::HashSet<&String> = has.values().collect();
    let mut wants: Vec<Oid> = state
        .refs
        .values()
        .filter(|o| !known.contains(o))
        .filter_map(parse)
        .collect();
    wants.sort_unstable();
    wants.dedup();
    if !wants.is_empty() {
        let mut haves: Vec<Oid> = has.values().filter_map(parse).collect();
        haves.sort_unstable();
        haves.dedup();
        fetch(b, kept, repo, state, wants, &haves).await?;
    }
    let mut input = String::new();
    for (name, oid) in &state.refs {
        if has.get(name) != Some(oid) {
            input.push_str(&format!("update {name} {oid}\n"));
        }
    }
    for name in has.keys().filter(|n| !state.refs.contains_key(*n)) {
        input.push_str(&format!("delete {name}\n"));
    }
    git(
        kept,
        &["update-ref", "--stdin"],
        &[],
        Input::Bytes(input.into()),
    )
    .await?;
    Ok(())
}

/// Writes into the repository at `kept` a pack of what `wants` reach and `haves` do
/// not, planned and read as a fetch's, indexed by git as it is written.
async fn fetch<B: Backend>(
    b: &B,
    kept: &Path,
    repo: &str,
    state: &RepoState,
    wants: Vec<Oid>,
    haves: &[Oid],
) -> Result<(), String> {
    let common = upload::common(b, repo, haves);
    let req = FetchRequest {
        wants,
        haves: common.clone(),
        done: true,
        caps: ["ofs-delta", "thin-pack"]
            .into_iter()
            .map(String::from)
            .collect(),
        ..FetchRequest::default()
    };
    let refs = upload::refs_of(b, repo, state)
        .await
        .map_err(|e| e.to_string())?;
    let plan = upload::plan(b, repo, state, &refs, &req, &common, &mut |_| {})
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, rx) = futures_channel::mpsc::channel::<Vec<u8>>(4);
    let indexing = git(
        kept,
        &["index-pack", "--stdin", "--fix-thin"],
        &[],
        Input::Stream(rx),
    );
    let writing = async move {
        let mut header = Vec::new();
        let mut pack = upload::PackOut::new(&plan, &mut |h| header.extend_from_slice(h));
        tx.send(header).await.map_err(|e| e.to_string())?;
        let mut start = 0;
        while start < plan.objects.len() {
            let end = upload::batch_end(&plan, start);
            let batch = upload::read_batch(b, repo, &plan.objects[start..end])
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            pack.write(batch, &mut Copy(&mut out));
            tx.send(out).await.map_err(|e| e.to_string())?;
            start = end;
        }
        let mut tail = Vec::new();
        pack.finish(&mut |t| tail.extend_from_slice(t));
        tx.send(tail).await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    };
    let (written, indexed) = futures_util::future::join(writing, indexing).await;
    indexed.map_err(|e| format!("indexing {}: {e}", kept.display()))?;
    written
}

/// A [`upload::PackSink`] that copies entries into a buffer.
struct Copy<'a>(&'a mut Vec<u8>);

impl<C: AsRef<[u8]>> upload::PackSink<C> for Copy<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn stored(&mut self, deflated: C) {
        self.0.extend_from_slice(deflated.as_ref());
    }
}

/// What a git command reads.
enum Input {
    None,
    Bytes(bytes::Bytes),
    Stream(futures_channel::mpsc::Receiver<Vec<u8>>),
}

/// Runs `git args` in `dir` on a thread of its own; its stdout, or its stderr as the
/// error.
async fn git(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: Input,
) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if matches!(input, Input::None) {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("git {}", args.join(" "));
    let (done_tx, done_rx) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name("hook-git".into())
        .spawn(move || {
            crate::service::unpin_this_thread();
            let r = (|| {
                let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
                let stdin = child.stdin.take();
                let feeding = std::thread::spawn(move || {
                    let Some(mut w) = stdin else { return };
                    match input {
                        Input::None => {}
                        Input::Bytes(b) => {
                            let _ = std::io::Write::write_all(&mut w, &b);
                        }
                        Input::Stream(mut rx) => {
                            while let Some(chunk) = futures_lite::future::block_on(rx.next()) {
                                if std::io::Write::write_all(&mut w, &chunk).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                let out = child
                    .wait_with_output()
                    .map_err(|e| format!("{what}: {e}"))?;
                let _ = feeding.join();
                if out.status.success() {
                    Ok(out.stdout)
                } else {
                    Err(format!(
                        "{what}: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            })();
            let _ = done_tx.send(r);
        })
        .map_err(|e| format!("no thread for git: {e}"))?;
    done_rx
        .await
        .unwrap_or_else(|_| Err("git's thread went away".into()))
}
