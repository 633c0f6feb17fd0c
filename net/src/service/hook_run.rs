//! A push's hooks, as git's receive-pack runs them: pre-receive (may refuse every
//! change) and update (once per change, may refuse it) after the pack is verified and
//! before anything is stored or proposed; post-receive after the region acknowledged
//! the changes, on this node only. Their output goes to the client on side-band 2 as
//! they write it.

use super::*;
use crate::git::receive::{Approval, Command as RefCommand, Report};
use crate::git::{hex, Oid, ZERO};
use crate::hooks::{self, Outcome, Quarantine, Run};

/// `X-Extra-<Key>` request headers, as hooks get them (`extra_<key>`, lowercased): at
/// most [`EXTRAS_MAX`], each key of letters, digits, `-` and `_`, each value at most
/// [`EXTRA_BYTES_MAX`] bytes of text; others are left out.
pub(super) fn extras(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-extra-")?;
            let ok_key = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let value = value.to_str().ok()?;
            (ok_key && value.len() <= EXTRA_BYTES_MAX).then(|| {
                (
                    format!("extra_{}", key.to_ascii_lowercase()),
                    value.to_owned(),
                )
            })
        })
        .take(EXTRAS_MAX)
        .collect()
}

pub(super) const EXTRAS_MAX: usize = 32;
pub(super) const EXTRA_BYTES_MAX: usize = 1024;

/// Names each run's directory on this node.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The hooks of one push.
pub(super) struct PushHooks<B: Backend> {
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    commands: Vec<RefCommand>,
    options: Vec<String>,
    pack: Bytes,
    extra: Vec<(String, String)>,
    sideband: Option<usize>,
    tx: http::BodySender,
    /// Where pre-receive and update saw the push's objects.
    quarantine: Option<Quarantine>,
}

impl<B: Backend> PushHooks<B> {
    #[allow(clippy::too_many_arguments)] // a push's parts, kept together for its hooks
    pub(super) fn new(
        ctx: Rc<Ctx<B>>,
        repo: &str,
        state: &RepoState,
        push: &receive::PushRequest,
        pack: Bytes,
        extra: Vec<(String, String)>,
        sideband: Option<usize>,
        tx: http::BodySender,
    ) -> Self {
        PushHooks {
            ctx,
            repo: repo.to_owned(),
            state: state.clone(),
            commands: push.commands.clone(),
            options: push.options.clone(),
            pack,
            extra,
            sideband,
            tx,
            quarantine: None,
        }
    }

    fn run_id(&self, what: &str) -> String {
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}-{what}", self.ctx.shard)
    }

    /// Runs hook `kind` if the repository has one; `None` if it has none.
    async fn run(
        &mut self,
        kind: &'static str,
        q: &Quarantine,
        args: Vec<String>,
        stdin: Vec<u8>,
    ) -> Option<Outcome> {
        let id = self.state.hooks.get(kind)?.clone();
        let Some(content) = self.ctx.backend.hook_script(&id) else {
            return Some(Outcome::Failed(format!(
                "its script {id} is not in the state"
            )));
        };
        let settings = &self.ctx.hooks;
        let script = match settings.dirs().install_script(&id, &content) {
            Ok(p) => p,
            Err(e) => return Some(Outcome::Failed(format!("installing its script: {e}"))),
        };
        let mut env = q.env();
        env.push(("HOOKTYPE".into(), kind.into()));
        env.push((
            "GIT_PUSH_OPTION_COUNT".into(),
            self.options.len().to_string(),
        ));
        for (i, o) in self.options.iter().enumerate() {
            env.push((format!("GIT_PUSH_OPTION_{i}"), o.clone()));
        }
        env.extend(self.extra.iter().cloned());
        // The script alone, not the directory of every repository's scripts.
        let read = vec![q.repo.clone(), q.objects(), script.clone()];
        let run = Run {
            kind,
            script,
            args,
            stdin,
            env,
            read,
            cwd: q.work(),
        };
        let sideband = self.sideband;
        let tx = &mut self.tx;
        // A client that stops reading gets no more output once a send has waited the
        // hook's whole time limit, so the limit still holds for the hook.
        let patience = settings.timeout;
        let mut slow = false;
        let outcome = hooks::run(settings, run, async |b: Vec<u8>| {
            let Some(max) = sideband.filter(|_| !slow) else {
                return;
            };
            let mut o = Vec::new();
            pktline::sideband(&mut o, 2, &b, max);
            let sent =
                futures_lite::future::or(async { tx.send(Bytes::from(o)).await.is_ok() }, async {
                    glommio::timer::sleep(patience).await;
                    false
                })
                .await;
            slow = !sent;
        })
        .await;
        if !outcome.succeeded() {
            warn!(repo = %self.repo, hook = kind, %outcome, "hook did not succeed");
        }
        Some(outcome)
    }

    async fn say(&mut self, msg: &str) {
        if let Some(max) = self.sideband {
            let mut o = Vec::new();
            pktline::sideband(&mut o, 2, format!("{msg}\n").as_bytes(), max);
            let _ = self.tx.send(Bytes::from(o)).await;
        }
    }

    fn has(&self, kind: &str) -> bool {
        self.state.hooks.contains_key(kind)
    }

    /// After the push's report: its accepted objects and refs join the repository kept
    /// for hooks, and post-receive runs with the changes the region applied.
    pub(super) async fn after(&mut self, report: &Report) {
        let applied: Vec<&RefCommand> = self
            .commands
            .iter()
            .zip(&report.refs)
            .filter(|(_, (_, r))| r.is_ok())
            .map(|(c, _)| c)
            .collect();
        let moved: Vec<(String, Option<Oid>)> = applied
            .iter()
            .map(|c| (c.name.clone(), (c.new != ZERO).then_some(c.new)))
            .collect();
        if let Some(q) = self.quarantine.take() {
            if !moved.is_empty() {
                if let Err(e) = q.accept(moved).await {
                    warn!(repo = %self.repo, error = %e, "the repository kept for hooks is behind");
                }
            }
        }
        if applied.is_empty() || !self.has("post-receive") {
            return;
        }
        let stdin = lines(&applied);
        // The repository as the region holds it now (this push and any since).
        let state = match self.ctx.backend.repo(&self.repo).await {
            Ok(Some(s)) => s,
            _ => return,
        };
        let dirs = self.ctx.hooks.dirs();
        let prepared = hooks::prepare(
            &self.ctx.backend,
            &dirs,
            &self.repo,
            &state,
            &self.run_id("post"),
            Bytes::new(),
        )
        .await;
        let q = match prepared {
            Ok(q) => q,
            Err(e) => {
                warn!(repo = %self.repo, error = %e, "post-receive could not run");
                self.say(&format!("post-receive could not run: {e}")).await;
                return;
            }
        };
        self.state = state;
        if let Some(o) = self.run("post-receive", &q, Vec::new(), stdin).await {
            if !o.succeeded() {
                self.say(&format!("post-receive hook {o}")).await;
            }
        }
    }
}

/// git's hook input: a line `<old> <new> <ref>` per change.
fn lines(commands: &[&RefCommand]) -> Vec<u8> {
    let mut s = String::new();
    for c in commands {
        s.push_str(&format!("{} {} {}\n", hex(&c.old), hex(&c.new), c.name));
    }
    s.into_bytes()
}

impl<B: Backend> Approval for PushHooks<B> {
    async fn approve(&mut self, open: &[usize], commands: &[RefCommand]) -> Vec<(usize, String)> {
        if !self.has("pre-receive") && !self.has("update") {
            return Vec::new();
        }
        let dirs = self.ctx.hooks.dirs();
        let prepared = hooks::prepare(
            &self.ctx.backend,
            &dirs,
            &self.repo,
            &self.state,
            &self.run_id("pre"),
            self.pack.clone(),
        )
        .await;
        let q = match prepared {
            Ok(q) => q,
            Err(e) => {
                warn!(repo = %self.repo, error = %e, "hooks could not run");
                let why = format!("hooks could not run: {e}");
                return open.iter().map(|&i| (i, why.clone())).collect();
            }
        };
        let mut refused = Vec::new();
        let changes: Vec<&RefCommand> = open.iter().filter_map(|&i| commands.get(i)).collect();
        if let Some(o) = self
            .run("pre-receive", &q, Vec::new(), lines(&changes))
            .await
        {
            if !o.succeeded() {
                let why = match o {
                    Outcome::Exited(_) => "pre-receive hook declined".to_owned(),
                    other => format!("pre-receive hook {other}"),
                };
                self.quarantine = Some(q);
                return open.iter().map(|&i| (i, why.clone())).collect();
            }
        }
        // However many refs a push changes, its hooks together get a bounded time.
        let started = std::time::Instant::now();
        let budget = self.ctx.hooks.push_timeout;
        for &i in open {
            let Some(c) = commands.get(i) else { continue };
            if self.has("update") && started.elapsed() >= budget {
                refused.push((
                    i,
                    format!(
                        "the push's hooks ran past {} s (hooks.push_timeout_seconds)",
                        budget.as_secs()
                    ),
                ));
                continue;
            }
            let args = vec![c.name.clone(), hex(&c.old), hex(&c.new)];
            if let Some(o) = self.run("update", &q, args, Vec::new()).await {
                if !o.succeeded() {
                    let why = match o {
                        Outcome::Exited(_) => "hook declined".to_owned(),
                        other => format!("update hook {other}"),
                    };
                    refused.push((i, why));
                }
            }
        }
        self.quarantine = Some(q);
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_extra_headers_are_left_out_and_bounded() {
        let mut h = hyper::HeaderMap::new();
        let add = |h: &mut hyper::HeaderMap, k: &str, v: &str| {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                hyper::header::HeaderValue::from_str(v).expect("value"),
            );
        };
        add(&mut h, "X-Extra-User", "alice");
        add(&mut h, "X-Extra-", "no key");
        add(&mut h, "X-Extra-Path.Evil", "dots are refused");
        add(&mut h, "X-Extra-Big", &"x".repeat(EXTRA_BYTES_MAX + 1));
        add(
            &mut h,
            &format!("X-Extra-{}", "k".repeat(65)),
            "key too long",
        );
        for i in 0..100 {
            add(&mut h, &format!("X-Extra-N{i}"), "many");
        }
        let e = extras(&h);
        assert_eq!(
            e.first(),
            Some(&("extra_user".to_owned(), "alice".to_owned()))
        );
        assert_eq!(e.len(), EXTRAS_MAX);
        assert!(e.iter().all(|(k, v)| k.starts_with("extra_")
            && k.len() <= 70
            && v.len() <= EXTRA_BYTES_MAX
            && !k.contains('.')));
    }
}
