//! A push's pack read while it arrives: on the executor while the body is small, then
//! on a `pack-reader` thread of its own (any CPU), with `pack-verifier` threads beside
//! it (one per CPU, at most two) that hash what the reader inflated and inspect each
//! commit, tree and tag (`git::receive::Inspected`).

use super::*;

/// Reads a push's pack while it arrives: on the executor while the body is small; once
/// it is spooled, on a thread of its own (at most [`READERS_MAX`] in a process; past
/// that, on the executor), so inflating and hashing overlap the transfer instead of
/// holding up the executor's reading of the socket.
pub(super) enum PackReading {
    Here {
        stream: Option<Box<(crate::git::pack::PackStream, Inspected)>>,
        /// A bad pack is reported once the whole request has arrived.
        error: Option<crate::git::pack::PackError>,
    },
    Away {
        /// How much of the body is written (the reader reads up to it).
        tx: std::sync::mpsc::Sender<usize>,
        /// The length last sent on `tx` (see [`NOTIFY_BYTES`]).
        told: usize,
        /// Set when the push failed: the reader stops at once.
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
        /// Objects whose ids the reader knows, as it learns them.
        ready: std::sync::mpsc::Receiver<Vec<crate::git::pack::Resolved>>,
        result: std::pin::Pin<Box<dyn std::future::Future<Output = PackRead>>>,
    },
}

/// The CPUs pack reader threads may run on: all the process may use. Threads inherit
/// the pinning of the shard that starts them, so a reader would share its shard's core
/// with that shard's executor (receiving, raft, every other request of the shard) while
/// another core may be idle. (On the 2-core test machine, where the git client takes the
/// other core, pinned and unpinned measured the same.)
pub(super) static READER_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Sets the CPUs pack readers run on (once, before the shards are pinned).
pub fn set_reader_cpus(cpus: Vec<usize>) {
    let _ = READER_CPUS.set(cpus);
}

/// Lets this thread (and what it starts) run on every CPU the process may use.
pub(crate) fn unpin_this_thread() {
    let Some(cpus) = READER_CPUS.get().filter(|c| !c.is_empty()) else {
        return;
    };
    // SAFETY: a cpu_set_t we own, filled with CPU_SET and passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!("pack reader keeps its shard's CPU");
        }
    }
}

/// How far a pack reader reads before it reports what it verified.
pub(super) const READ_STEP_BYTES: usize = 8 << 20;

/// How much more of a body must have arrived before its reader is told. A body comes
/// in pieces of 16-64 KiB; telling the reader of each woke it for each (a futex wake
/// and two context switches: 10% of a 3-node leader's CPU for a 102 MiB push, by perf),
/// though it had caught up and could only read that piece. The rest is told at the end.
pub(super) const NOTIFY_BYTES: usize = 1 << 20;

/// Pack reader threads running in this process (each with its verifiers), and their most.
pub(super) static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub(super) const READERS_MAX: usize = 16;

/// A pack reader's place in [`READERS`], given back on drop.
pub(super) struct ReaderSlot;

impl ReaderSlot {
    pub(super) fn take() -> Option<ReaderSlot> {
        use std::sync::atomic::Ordering;
        if READERS.fetch_add(1, Ordering::AcqRel) < READERS_MAX {
            Some(ReaderSlot)
        } else {
            READERS.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        READERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Ids and inspection of a push's objects on `pack-verifier` threads beside its pack
/// reader ([`crate::git::pack::PackStream::defer`]): SHA-1 with collision detection
/// and git's fsck were two thirds of a push's reading of a real history's pack, the
/// inflating and delta application left on the reader one third. The reader hands
/// over batches of contents it holds anyway (at most [`VERIFIER_BYTES_MAX`] of them
/// unverified, [`InFlight`]), dealt to the threads in turn, and takes the ids back in
/// the order it gave them.
pub(super) struct Verifier {
    workers: Vec<VerifierThread>,
    /// Batches handed over and batches whose ids came back: batch `n` is worker
    /// `n % workers.len()`'s.
    sent: usize,
    received: usize,
    in_flight: std::sync::Arc<InFlight>,
    /// What the reader inspected itself before it deferred.
    before: Inspected,
}

type Ids = Result<Vec<(usize, crate::git::Oid)>, crate::git::pack::PackError>;

/// One verifier thread: its batches in, their ids out, and at its end what it
/// inspected and the first object it refused (its index in the pack).
struct VerifierThread {
    jobs: Option<std::sync::mpsc::Sender<Vec<crate::git::pack::Job>>>,
    ids: std::sync::mpsc::Receiver<Ids>,
    thread: Option<std::thread::JoinHandle<Result<Verified, crate::contain::Panicked>>>,
}

/// What a verifier thread inspected, and the index of the first object it refused.
type Verified = (Inspected, Option<usize>);

/// Most verifier threads of one push: a third of the work stays on the reader, so a
/// third verifier would wait for it. (On the 2-core bench machine, two verifiers beside
/// the reader took a 419k-object pack's reading from about 15 s to 12 s.)
const VERIFIERS_MAX: usize = 2;

/// How many verifier threads a push gets: one per CPU pack readers may use, at most
/// [`VERIFIERS_MAX`].
fn verifiers() -> usize {
    READER_CPUS
        .get()
        .map_or(1, Vec::len)
        .clamp(1, VERIFIERS_MAX)
}

/// Most bytes of contents a pack reader may have handed to its verifiers unverified
/// (a batch larger than that, one large object, goes alone).
const VERIFIER_BYTES_MAX: usize = 16 << 20;

/// What a batch of jobs counts against [`VERIFIER_BYTES_MAX`].
fn batch_bytes(jobs: &[crate::git::pack::Job]) -> usize {
    jobs.iter()
        .map(|j| j.content.len() + crate::git::pack::JOB_BYTES)
        .sum()
}

/// Bytes handed to the verifiers and not verified yet, and whether one is gone (the
/// push then fails): the reader waits while too much is out.
#[derive(Default)]
pub(super) struct InFlight {
    state: std::sync::Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `bytes` more may be out (any amount while none is); false once the
    /// verifier is gone.
    fn take(&self, bytes: usize) -> bool {
        let mut s = self.lock();
        loop {
            if s.1 {
                return false;
            }
            if s.0 == 0 || s.0 + bytes <= VERIFIER_BYTES_MAX {
                s.0 += bytes;
                return true;
            }
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn give_back(&self, bytes: usize) {
        let mut s = self.lock();
        s.0 = s.0.saturating_sub(bytes);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// Closes an [`InFlight`] when a verifier ends, however it ends.
struct Closing(std::sync::Arc<InFlight>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl VerifierThread {
    fn start(mut inspected: Inspected, in_flight: &std::sync::Arc<InFlight>) -> VerifierThread {
        use crate::git::pack::Inspect;
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Vec<crate::git::pack::Job>>();
        let (ids_tx, ids) = std::sync::mpsc::channel();
        let closing = Closing(in_flight.clone());
        let thread = std::thread::Builder::new()
            .name("pack-verifier".into())
            .spawn(move || {
                crate::contain::run(move || {
                    let closing = closing;
                    unpin_this_thread();
                    let mut refused_at = None;
                    while let Ok(jobs) = jobs_rx.recv() {
                        let bytes = batch_bytes(&jobs);
                        let mut done = Vec::with_capacity(jobs.len());
                        for j in jobs {
                            match crate::git::pack::object_id(j.kind, &j.content) {
                                Ok(oid) => {
                                    if j.kind != crate::git::ObjectKind::Blob
                                        && refused_at.is_none()
                                    {
                                        inspected.inspect(&oid, j.kind, &j.content);
                                        if inspected.refused() {
                                            refused_at = Some(j.index);
                                        }
                                    }
                                    done.push((j.index, oid));
                                }
                                Err(e) => {
                                    let _ = ids_tx.send(Err(e));
                                    return (inspected, refused_at);
                                }
                            }
                        }
                        closing.0.give_back(bytes);
                        if ids_tx.send(Ok(done)).is_err() {
                            break;
                        }
                    }
                    (inspected, refused_at)
                })
            });
        match thread {
            Ok(t) => VerifierThread {
                jobs: Some(jobs_tx),
                ids,
                thread: Some(t),
            },
            Err(e) => {
                warn!(error = %e, "no thread for verifying a pack: the push fails");
                in_flight.close();
                VerifierThread {
                    jobs: None,
                    ids,
                    thread: None,
                }
            }
        }
    }
}

impl Verifier {
    /// Starts `threads` verifiers. `before` is what the reader inspected itself
    /// before it deferred; [`Verifier::finish`] gives it back with what they inspected.
    pub(super) fn start(before: Inspected, threads: usize) -> Verifier {
        let in_flight = std::sync::Arc::new(InFlight::default());
        let workers = (0..threads.max(1))
            .map(|_| VerifierThread::start(before.fresh(), &in_flight))
            .collect();
        Verifier {
            workers,
            sent: 0,
            received: 0,
            in_flight,
            before,
        }
    }

    /// Reads what `pack` (all that arrived) allows, handing contents over as the
    /// reader stops for them, and takes back the ids ready.
    pub(super) fn advance(
        &mut self,
        stream: &mut crate::git::pack::PackStream,
        pack: &[u8],
    ) -> Result<(), crate::git::pack::PackError> {
        loop {
            stream.advance(pack, &mut ())?;
            let again = stream.stalled();
            if let Err(e) = self.hand_over(stream) {
                // Why a verifier stopped (a collision), if it said.
                return Err(self.cause().unwrap_or(e));
            }
            self.take_ids(stream, false)?;
            if !again {
                return Ok(());
            }
        }
    }

    fn hand_over(
        &mut self,
        stream: &mut crate::git::pack::PackStream,
    ) -> Result<(), crate::git::pack::PackError> {
        let jobs = stream.take_jobs();
        if jobs.is_empty() {
            return Ok(());
        }
        let stopped = crate::git::pack::PackError::Header("the pack verifier stopped");
        let worker = &self.workers[self.sent % self.workers.len()];
        let tx = worker.jobs.as_ref().ok_or(stopped.clone())?;
        if !self.in_flight.take(batch_bytes(&jobs)) {
            return Err(stopped);
        }
        tx.send(jobs).map_err(|_| stopped)?;
        self.sent += 1;
        Ok(())
    }

    /// Gives `stream` the ids of the batches that came back, in the order they were
    /// handed over; with `wait`, of every batch (a verifier gone is reported by
    /// [`Verifier::finish`]).
    fn take_ids(
        &mut self,
        stream: &mut crate::git::pack::PackStream,
        wait: bool,
    ) -> Result<(), crate::git::pack::PackError> {
        while self.received < self.sent {
            let worker = &self.workers[self.received % self.workers.len()];
            let ids = if wait {
                worker.ids.recv().ok()
            } else {
                worker.ids.try_recv().ok()
            };
            let Some(ids) = ids else {
                return Ok(());
            };
            stream.set_ids(&ids?)?;
            self.received += 1;
        }
        Ok(())
    }

    /// The error a verifier stopped on, if one did.
    fn cause(&self) -> Option<crate::git::pack::PackError> {
        self.workers
            .iter()
            .flat_map(|w| w.ids.try_iter())
            .find_map(Result::err)
    }

    /// Everything has arrived in `pack`: reads the rest, waits for every id, and
    /// finishes the stream with the inspection back (the verifiers' merged in pack
    /// order of what they refused, so the refusal reported is the first object's).
    pub(super) fn finish(
        mut self,
        mut stream: crate::git::pack::PackStream,
        pack: &[u8],
    ) -> PackRead {
        use crate::git::pack::PackError;
        self.advance(&mut stream, pack)?;
        for w in &mut self.workers {
            w.jobs = None;
        }
        self.take_ids(&mut stream, true)?;
        let mut seen = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            let thread = w
                .thread
                .take()
                .ok_or(PackError::Header("no thread to verify the pack"))?;
            seen.push(thread.join().map_err(|_| {
                PackError::Header("the pack verifier failed (a bug, logged by the node)")
            })??);
        }
        seen.sort_by_key(|(_, refused_at)| refused_at.unwrap_or(usize::MAX));
        let mut inspected = self.before;
        for (i, _) in seen {
            inspected.merge(i);
        }
        stream.finish(pack, &mut inspected).map(|e| (e, inspected))
    }
}

impl PackReading {
    /// Reads what arrived of the pack that starts at `at` in `body`.
    pub(super) fn advance(&mut self, body: &spool::Body, at: usize) {
        match self {
            PackReading::Here {
                stream,
                error: None,
            } => {
                if let spool::Body::File(f) = body {
                    if stream.is_some() {
                        if let Some(slot) = ReaderSlot::take() {
                            if let Some(st) = stream.take() {
                                *self = PackReading::away(*st, f.view(), at, slot);
                                return;
                            }
                        }
                    }
                }
                let pack = body.as_slice().get(at..).unwrap_or_default();
                let r = match stream.as_mut() {
                    Some(st) => {
                        let (st, inspected) = &mut **st;
                        crate::contain::run(|| st.advance(pack, inspected))
                            .unwrap_or_else(|p| Err(p.into()))
                    }
                    None => Ok(()),
                };
                if let Err(e) = r {
                    *self = PackReading::Here {
                        stream: None,
                        error: Some(e),
                    };
                }
            }
            PackReading::Here { .. } => {}
            PackReading::Away { tx, told, .. } => {
                if body.len() - *told >= NOTIFY_BYTES {
                    // The reader is gone only if it panicked; finish() reports that.
                    let _ = tx.send(body.len());
                    *told = body.len();
                }
            }
        }
    }

    /// Moves reading to a thread of its own. Not the shard's blocking pool: a push that
    /// arrives slowly would hold it for as long, and other pushes verify there.
    pub(super) fn away(
        (mut stream, inspected): (crate::git::pack::PackStream, Inspected),
        view: spool::SpoolView,
        at: usize,
        slot: ReaderSlot,
    ) -> PackReading {
        use crate::git::pack::PackError;
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let told = view.len();
        let _ = tx.send(told);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        // What the executor's reading found already is ready too.
        let mut reported = 0;
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        let (done_tx, done_rx) = futures_channel::oneshot::channel::<PackRead>();
        let started = std::thread::Builder::new()
            .name("pack-reader".into())
            .spawn(move || {
                // A bug here costs this push only: dropping `done_tx` fails it.
                let _contained = crate::contain::run(move || {
                    let _slot = slot;
                    unpin_this_thread();
                    let mut verifier = Verifier::start(inspected, verifiers());
                    stream.defer();
                    let mut last = at;
                    let mut error = None;
                    while let Ok(mut len) = rx.recv() {
                        // Whatever arrived meanwhile, at once.
                        while let Ok(l) = rx.try_recv() {
                            len = l;
                        }
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        // In steps, so what it verifies is reported as it goes (written
                        // aside meanwhile) also when it has fallen behind the arrival.
                        let mut upto = last;
                        last = len;
                        while error.is_none() && upto < len {
                            let from = upto;
                            upto = (upto + READ_STEP_BYTES).min(len);
                            view.populate(from..upto);
                            let r = match view.get(at..upto) {
                                Some(b) => verifier.advance(&mut stream, b),
                                None => Err(PackError::Truncated),
                            };
                            error = r.err();
                            let found = stream.resolved_since(reported);
                            reported = stream.verified_upto();
                            if !found.is_empty() {
                                let _ = ready_tx.send(found);
                            }
                            if stop.load(Ordering::Acquire) {
                                return;
                            }
                        }
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let r = match (error, view.get(at..last)) {
                        (Some(e), _) => Err(e),
                        (None, Some(b)) => verifier.finish(stream, b),
                        (None, None) => Err(PackError::Truncated),
                    };
                    let _ = done_tx.send(r);
                });
            });
        match started {
            Ok(_) => PackReading::Away {
                tx,
                told,
                cancel,
                ready,
                result: Box::pin(async move {
                    done_rx.await.unwrap_or(Err(PackError::Header(
                        "the pack reader failed (a bug, logged by the node)",
                    )))
                }),
            },
            Err(e) => {
                warn!(error = %e, "no thread for reading a pack: the push fails");
                PackReading::Here {
                    stream: None,
                    error: Some(PackError::Header("no thread to read the pack")),
                }
            }
        }
    }

    /// The pack's entries, once `body` (the whole request) has arrived.
    pub(super) async fn finish(self, body: &[u8], at: usize) -> PackRead {
        match self {
            PackReading::Here { error: Some(e), .. } => Err(e),
            PackReading::Here {
                stream: Some(st), ..
            } => {
                let (st, mut inspected) = *st;
                crate::contain::run(move || {
                    st.finish(body.get(at..).unwrap_or_default(), &mut inspected)
                        .map(|e| (e, inspected))
                })
                .unwrap_or_else(|p| Err(p.into()))
            }
            PackReading::Here { .. } => Err(crate::git::pack::PackError::Truncated),
            PackReading::Away { tx, result, .. } => {
                let _ = tx.send(body.len());
                drop(tx);
                result.await
            }
        }
    }

    /// Objects whose ids the reader learnt since the last call (only a reader away
    /// reports them: the pack is spooled).
    pub(super) fn take_ready(&mut self) -> Vec<crate::git::pack::Resolved> {
        let mut all = Vec::new();
        if let PackReading::Away { ready, .. } = self {
            while let Ok(v) = ready.try_recv() {
                all.extend(v);
            }
        }
        all
    }

    /// Like [`PackReading::finish`], writing aside what a reader away verifies while
    /// it catches up.
    pub(super) async fn finish_writing<B: Backend + 'static>(
        self,
        body: &[u8],
        at: usize,
        aside: &mut AsideWriter<'_, B>,
        view: Option<&spool::SpoolView>,
    ) -> Result<PackRead, Refusal> {
        match (self, view) {
            (
                PackReading::Away {
                    tx,
                    mut result,
                    ready,
                    ..
                },
                Some(view),
            ) => {
                let _ = tx.send(body.len());
                drop(tx);
                loop {
                    let poll = std::time::Duration::from_millis(5);
                    if let Ok(r) =
                        glommio::timer::timeout(poll, async { Ok((&mut result).await) }).await
                    {
                        return Ok(r);
                    }
                    let mut found = Vec::new();
                    while let Ok(v) = ready.try_recv() {
                        found.extend(v);
                    }
                    aside.add(view, at, found).await?;
                }
            }
            (reading, _) => Ok(reading.finish(body, at).await),
        }
    }

    /// Stops reading: a reader away stops before its next piece.
    pub(super) fn abandon(self) {
        if let PackReading::Away { cancel, .. } = self {
            cancel.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::pack::{object_id, OutEntry, PackStream, PackWriter};
    use crate::git::{ObjectKind, Oid};

    fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(data).expect("deflate");
        z.finish().expect("deflate")
    }

    /// A pack of blobs, trees naming them and a chain of commits on the trees; the
    /// trees at `bad` name one file twice (git's `duplicateEntries`, an error).
    fn history(bad: &[usize]) -> (Vec<u8>, Vec<Oid>) {
        let mut objects: Vec<(ObjectKind, Vec<u8>)> = Vec::new();
        let mut trees = Vec::new();
        for t in 0..40usize {
            let mut tree = Vec::new();
            for f in 0..3usize {
                let blob = format!("file {f} of tree {t}\n")
                    .repeat(200 + t)
                    .into_bytes();
                let oid = object_id(ObjectKind::Blob, &blob).expect("id");
                objects.push((ObjectKind::Blob, blob));
                let name = if bad.contains(&t) { 0 } else { f };
                tree.extend_from_slice(format!("100644 f{name}\0").as_bytes());
                tree.extend_from_slice(&oid);
            }
            trees.push(object_id(ObjectKind::Tree, &tree).expect("id"));
            objects.push((ObjectKind::Tree, tree));
        }
        let mut parent: Option<Oid> = None;
        for tree in &trees {
            let mut c = format!("tree {}\n", crate::git::hex(tree));
            if let Some(p) = parent {
                c.push_str(&format!("parent {}\n", crate::git::hex(&p)));
            }
            c.push_str(
                "author A <a@example.com> 1 +0000\ncommitter A <a@example.com> 1 +0000\n\nc\n",
            );
            parent = Some(object_id(ObjectKind::Commit, c.as_bytes()).expect("id"));
            objects.push((ObjectKind::Commit, c.into_bytes()));
        }
        let (mut w, mut pack) = PackWriter::new(objects.len() as u32);
        let mut ids = Vec::new();
        for (kind, content) in &objects {
            ids.push(object_id(*kind, content).expect("id"));
            let deflated = deflate(content);
            pack.extend(w.entry(&OutEntry::Full {
                kind: *kind,
                size: content.len() as u64,
                deflated: &deflated,
            }));
        }
        pack.extend(w.finish());
        (pack, ids)
    }

    /// Reads `pack` as a spooled push does, `chunk` bytes arriving at a time, with
    /// `threads` verifiers.
    fn verify(pack: &[u8], chunk: usize, threads: usize) -> PackRead {
        let limits = crate::git::pack::Limits::default();
        let opts = std::sync::Arc::new(crate::git::fsck::Options::default());
        let mut stream = PackStream::new(limits);
        stream.defer();
        let mut verifier = Verifier::start(Inspected::new(opts), threads);
        let mut upto = 0;
        while upto < pack.len() {
            upto = (upto + chunk).min(pack.len());
            verifier.advance(&mut stream, &pack[..upto])?;
        }
        assert!(verifier.sent > threads * 4, "batches went to every thread");
        verifier.finish(stream, pack)
    }

    #[test]
    fn verifier_threads_find_what_one_reader_finds_and_report_the_first_refusal() {
        let limits = crate::git::pack::Limits::default();
        let opts = std::sync::Arc::new(crate::git::fsck::Options::default());
        for bad in [&[][..], &[7, 23, 31][..]] {
            let (pack, ids) = history(bad);
            let mut alone = Inspected::new(opts.clone());
            let entries = crate::git::pack::read_entries(&pack, &limits, &mut alone).expect("read");
            assert_eq!(alone.refused(), !bad.is_empty());
            for threads in [1, 2, 3] {
                let (got, inspected) = verify(&pack, 256, threads).expect("read");
                assert_eq!(got, entries, "{threads} threads");
                let got_ids: Vec<Oid> = got.iter().filter_map(|e| e.oid).collect();
                assert_eq!(got_ids, ids);
                // After a refusal what else was seen does not matter: the push fails
                // with the first object's reason.
                let seen = |i: &Inspected| {
                    let s = i.summary();
                    if i.refused() {
                        s.lines().next().unwrap_or_default().to_owned()
                    } else {
                        s
                    }
                };
                assert_eq!(seen(&inspected), seen(&alone), "{threads} threads");
            }
        }
    }

    #[test]
    fn a_reader_waits_while_too_much_is_out_and_never_once_its_verifier_is_gone() {
        let f = std::sync::Arc::new(InFlight::default());
        assert!(f.take(VERIFIER_BYTES_MAX * 3), "one large batch goes alone");
        let waiting = {
            let f = f.clone();
            std::thread::spawn(move || f.take(10))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "it waits while too much is out");
        f.give_back(VERIFIER_BYTES_MAX * 3);
        assert!(
            waiting.join().expect("thread"),
            "and goes on once it is back"
        );
        assert!(f.take(VERIFIER_BYTES_MAX - 10), "up to the bound");
        let waiting = {
            let f = f.clone();
            std::thread::spawn(move || f.take(100))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(Closing(f.clone()));
        assert!(
            !waiting.join().expect("thread"),
            "a verifier gone never blocks it"
        );
        assert!(!f.take(1));
    }
}
