//! Writing a push's verified objects aside while it arrives, in batches: here when
//! this shard owns the repository, else sent to the owner with the body
//! (`Backend::store_aside`; published by `Backend::store`, dropped if the push fails).

use super::*;

/// Where a push's verified objects are written while it arrives (see
/// [`Backend::store_aside`]).
pub(super) enum AsideTo<'a> {
    /// This shard owns the repository.
    Here,
    /// The owning shard, in the body's channel ([`route::BodyChunk::Aside`]).
    Owner(&'a glommio::channels::shared_channel::ConnectedSender<route::BodyChunk>),
}

/// Bytes of objects written aside at a time, and how many such writes a push keeps in
/// flight.
pub(super) const ASIDE_BATCH_BYTES: usize = 16 << 20;
pub(super) const ASIDE_IN_FLIGHT: usize = 2;

/// Ids for writing aside, unique in the process (leftovers are dropped at start).
pub(super) static NEXT_ASIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(super) fn next_aside() -> u64 {
    NEXT_ASIDE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Objects a push wrote aside; dropped unless the push stores them (then dropping is a
/// no-op).
pub(super) struct AsideGuard<B: Backend> {
    ctx: Rc<Ctx<B>>,
    pub(super) id: u64,
}

impl<B: Backend> AsideGuard<B> {
    /// The aside id of `slot`'s guard, made (with a new id) on first use.
    pub(super) fn id_in(slot: &mut Option<AsideGuard<B>>, ctx: &Rc<Ctx<B>>) -> u64 {
        slot.get_or_insert_with(|| AsideGuard {
            ctx: ctx.clone(),
            id: next_aside(),
        })
        .id
    }
}

impl<B: Backend> Drop for AsideGuard<B> {
    fn drop(&mut self) {
        self.ctx.backend.drop_aside(self.id);
    }
}

/// Gathers the objects a pack reader has verified into batches and writes them aside.
pub(super) struct AsideWriter<'a, B: Backend + 'static> {
    ctx: &'a Rc<Ctx<B>>,
    repo: String,
    to: AsideTo<'a>,
    batch: Vec<crate::backend::StoredObject>,
    batch_bytes: usize,
    guard: Option<AsideGuard<B>>,
    writes: std::collections::VecDeque<glommio::task::JoinHandle<Result<(), String>>>,
}

impl<'a, B: Backend + 'static> AsideWriter<'a, B> {
    pub(super) fn new(ctx: &'a Rc<Ctx<B>>, repo: &str, to: AsideTo<'a>) -> Self {
        AsideWriter {
            ctx,
            repo: repo.to_owned(),
            to,
            batch: Vec::new(),
            batch_bytes: 0,
            guard: None,
            writes: Default::default(),
        }
    }

    /// Adds objects the reader verified (their data at `at + range` of `view`).
    pub(super) async fn add(
        &mut self,
        view: &spool::SpoolView,
        at: usize,
        ready: Vec<crate::git::pack::Resolved>,
    ) -> Result<(), Refusal> {
        for r in ready {
            let Some(deflated) = view.bytes(at + r.data.start..at + r.data.end) else {
                continue;
            };
            self.batch_bytes += deflated.len();
            self.batch.push(crate::backend::StoredObject {
                oid: r.oid,
                kind: r.kind,
                object_size: r.object_size,
                entry_size: r.entry_size,
                base: r.base,
                deflated,
            });
        }
        if self.batch_bytes >= ASIDE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<(), Refusal> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let failed = |e: String| Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("storing objects failed: {e}"),
            git: false,
        };
        match self.to {
            AsideTo::Owner(tx) => crate::gate::gated(tx.send(route::BodyChunk::Aside(batch)))
                .await
                .map_err(|_| failed("the owning shard went away".into())),
            AsideTo::Here => {
                let id = AsideGuard::id_in(&mut self.guard, self.ctx);
                if self.writes.len() >= ASIDE_IN_FLIGHT {
                    if let Some(w) = self.writes.pop_front() {
                        w.await
                            .unwrap_or_else(|| Err("cancelled".into()))
                            .map_err(failed)?;
                    }
                }
                let (ctx, repo) = (self.ctx.clone(), self.repo.clone());
                self.writes.push_back(
                    glommio::spawn_local(async move {
                        ctx.backend
                            .store_aside(&repo, id, batch)
                            .await
                            .map_err(|e| e.0)
                    })
                    .detach(),
                );
                Ok(())
            }
        }
    }

    /// Writes what is left of the last batch and waits for every write.
    pub(super) async fn finish(&mut self) -> Result<(), Refusal> {
        self.flush().await?;
        while let Some(w) = self.writes.pop_front() {
            w.await
                .unwrap_or_else(|| Err("cancelled".into()))
                .map_err(|e| Refusal {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("storing objects failed: {e}"),
                    git: false,
                })?;
        }
        Ok(())
    }

    pub(super) fn into_guard(self) -> Option<AsideGuard<B>> {
        self.guard
    }
}
