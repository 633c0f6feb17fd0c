//! Compaction: a sealed segment's live records copied to the head of the log, the index
//! moved to the copies, a checkpoint, and then the old file deleted whole.
//!
//! **What is live.** The index decides: an object record is live for every namespace
//! whose entry points at it (an adopted record's own namespace may be gone), an opaque
//! record if its key points at it. Everything else in the segment is dead, except three
//! kinds of record that matter for what lies *before* them when the log is replayed from
//! its start (a checkpoint that is damaged or missing):
//!
//! * `DeleteRange` and `DropNamespace` keep older records of a key or a namespace from
//!   coming back. They are carried to the head as copies that name the place of the
//!   original and act only on what lies before it ([`index::encode_delete_range`]), so
//!   a copy never touches what was written between the original and the copy (raft
//!   rewrites keys it deleted). A copy is dropped once no segment that could hold such
//!   records is left (none numbered at or below that place's segment).
//! * `Adopt` gives a namespace entries at records of another. Its entries that still
//!   point into older segments are "rescued": those records are copied again under the
//!   adopting namespace (the adoption is never carried: its source namespace may be
//!   dropped, and a replay would then find nothing to adopt).
//!
//! **Order.** Copies are written as a frame of their own, built by the writer when
//! every earlier frame is in the index ([`build`]): a record the index no longer points
//! at (a value rewritten, a namespace dropped while the copy queued) is left out, and no
//! later write can be overtaken by a stale copy. Publishing moves only entries that
//! still point at the originals. A copied object is written under one namespace that
//! holds it, with an `Adopt` for each other.
//!
//! **Crashes.** Until the checkpoint after the copies is durable, the old segment stays:
//! a replay then sees both, and the copies win (an object copy is marked
//! [`record::FLAG_REPLACES`]; the newest opaque value wins anyway), which hold the same
//! content. After it, the old file is deleted once no read
//! holds it; if that deletion is lost in a crash, the file comes back with nothing in
//! the index pointing at it and is compacted again (to nothing). Places are never
//! reused: copies go to new segments, whose numbers only grow.

use super::*;
use crate::index::{self, Pos};
use crate::object::Oid;

/// Bytes of copies queued as one frame; the rate limit is applied between them.
const CHUNK_BYTES: usize = 4 << 20;
/// Passes over a segment before compaction gives up on it: a pass misses only records
/// that became live in it while the pass ran (an adoption of an aside namespace).
const PASSES_MAX: usize = 4;

/// A record compaction copies, built into a write by [`build`].
pub(crate) enum Copy {
    Object {
        obj: StoredObject,
        nss: Vec<Namespace>,
        from: Loc,
    },
    Opaque {
        key: (u8, u64),
        flags: u8,
        payload: Vec<u8>,
        from: Loc,
    },
    Carried {
        kind: RecordKind,
        payload: Vec<u8>,
    },
}

impl Copy {
    /// Most bytes the copy can take in a frame.
    fn bytes(&self) -> usize {
        match self {
            Copy::Object { obj, nss, .. } => {
                RECORD_HEADER_LEN
                    + object::HEAD_MAX
                    + obj.deflated.len()
                    + nss.len().saturating_sub(1) * (RECORD_HEADER_LEN + 36)
            }
            Copy::Opaque { payload, .. } | Copy::Carried { payload, .. } => {
                RECORD_HEADER_LEN + payload.len()
            }
        }
    }
}

/// How publishing a copy moves the index.
pub(crate) enum Switch {
    Object {
        oid: Oid,
        nss: Vec<Namespace>,
        from: Loc,
    },
    Opaque {
        key: (u8, u64),
        from: Loc,
    },
}

impl Switch {
    pub(crate) fn apply(&self, index: &mut Index, to: Loc) {
        match self {
            Switch::Object { oid, nss, from } => {
                for ns in nss {
                    index.switch_object(*ns, oid, *from, to);
                }
            }
            Switch::Opaque { key, from } => {
                index.switch_opaque(*key, *from, to);
            }
        }
    }
}

/// The writes of a compaction's frame, built from `copies` against the index as it is
/// now (every earlier frame applied): records it no longer points at are left out.
pub(crate) fn build(copies: Vec<Copy>, index: &Index) -> (Vec<Encoded>, Vec<Option<Switch>>) {
    let mut writes = Vec::new();
    let mut switches = Vec::new();
    for c in copies {
        match c {
            Copy::Object { obj, nss, from } => {
                let live: Vec<Namespace> = nss
                    .into_iter()
                    .filter(|ns| index.object(*ns, &obj.oid) == Some(from))
                    .collect();
                let Some(&first) = live.first() else {
                    continue;
                };
                writes.push(Encoded {
                    kind: RecordKind::Object,
                    flags: record::FLAG_REPLACES,
                    head: object::encode_head(first, &obj),
                    tail: obj.deflated.clone(),
                });
                for ns in &live[1..] {
                    writes.push(Encoded {
                        kind: RecordKind::Adopt,
                        flags: 0,
                        head: index::encode_adopt(first, *ns, &[obj.oid]),
                        tail: bytes::Bytes::new(),
                    });
                }
                switches.push(Some(Switch::Object {
                    oid: obj.oid,
                    nss: live.clone(),
                    from,
                }));
                switches.extend((1..live.len()).map(|_| None));
            }
            Copy::Opaque {
                key,
                flags,
                payload,
                from,
            } => {
                if index.opaque.get(&key) != Some(&from) {
                    continue;
                }
                writes.push(Encoded {
                    kind: RecordKind::Opaque,
                    flags,
                    head: payload,
                    tail: bytes::Bytes::new(),
                });
                switches.push(Some(Switch::Opaque { key, from }));
            }
            Copy::Carried { kind, payload } => {
                writes.push(Encoded {
                    kind,
                    flags: 0,
                    head: payload,
                    tail: bytes::Bytes::new(),
                });
                switches.push(None);
            }
        }
    }
    (writes, switches)
}

/// One segment's size and the bytes of it the index points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpace {
    pub segment: u64,
    pub bytes: u64,
    pub live: u64,
    /// The open segment, where appends go (never compacted).
    pub open: bool,
}

impl SegmentSpace {
    pub fn dead(&self) -> u64 {
        self.bytes.saturating_sub(self.live)
    }
}

/// What compacting one segment did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub segment: u64,
    /// The deleted file's size.
    pub freed: u64,
    /// Live records copied (object and opaque), and their bytes.
    pub records_moved: u64,
    pub bytes_moved: u64,
    /// Delete-range and drop-namespace records carried to the head.
    pub carried: u64,
    /// Adopted objects copied again from older segments.
    pub rescued: u64,
}

/// Clears the store's compaction flag when a compaction ends, however it ends.
struct Running<'a>(&'a Cell<bool>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn refused(segment: u64, reason: &str) -> Error {
    Error::Compaction {
        segment,
        reason: reason.into(),
    }
}

impl<D: Dir> Store<D> {
    /// Every segment's size and live bytes, oldest first.
    pub async fn space(&self) -> Result<Vec<SegmentSpace>> {
        let segments: Vec<_> = self.inner.segments.borrow().values().cloned().collect();
        let (tail_id, tail_end) = {
            let t = self.inner.tail.borrow();
            (t.segment.id, t.offset)
        };
        let mut live = self.inner.index.borrow().live_bytes();
        for (seg, bytes) in self.inner.carried.borrow().iter() {
            *live.entry(*seg).or_default() += bytes;
        }
        let mut out = Vec::with_capacity(segments.len());
        for seg in segments {
            let bytes = if seg.id == tail_id {
                tail_end
            } else {
                seg.file
                    .size()
                    .await
                    .map_err(io_err("stat", segment_name(seg.id)))?
            };
            out.push(SegmentSpace {
                segment: seg.id,
                bytes,
                live: live.get(&seg.id).copied().unwrap_or(0),
                open: seg.id == tail_id,
            });
        }
        self.inner.last_space.set(Some((
            out.len(),
            out.iter().map(|s| s.bytes).sum(),
            out.iter().map(|s| s.live).sum(),
        )));
        Ok(out)
    }

    /// The sealed segments worth compacting, most dead bytes first: those whose live
    /// share is at most `live_share_max` and whose dead bytes reach `dead_bytes_min`.
    pub async fn compaction_candidates(
        &self,
        live_share_max: f64,
        dead_bytes_min: u64,
    ) -> Result<Vec<SegmentSpace>> {
        let mut c: Vec<SegmentSpace> = self
            .space()
            .await?
            .into_iter()
            .filter(|s| {
                !s.open
                    && s.dead() >= dead_bytes_min
                    && (s.live as f64) <= live_share_max * s.bytes as f64
            })
            .collect();
        c.sort_unstable_by_key(|s| std::cmp::Reverse(s.dead()));
        Ok(c)
    }

    /// What the last [`Store::space`] measured, summed: (segments, bytes, live bytes).
    pub fn last_space(&self) -> Option<(usize, u64, u64)> {
        self.inner.last_space.get()
    }

    /// Compacts sealed segment `id` (see the module docs), copying at most
    /// `bytes_per_second` (0: no limit). Readers and writers go on meanwhile.
    pub async fn compact_segment(&self, id: u64, bytes_per_second: u64) -> Result<CompactReport> {
        let inner = &self.inner;
        if let Some(why) = inner.fatal.borrow().clone() {
            return Err(Error::Fatal(why));
        }
        if inner.compacting.replace(true) {
            return Err(refused(id, "another compaction is running"));
        }
        let _running = Running(&inner.compacting);
        let seg = inner
            .segments
            .borrow()
            .get(&id)
            .cloned()
            .ok_or_else(|| refused(id, "no such segment"))?;
        if inner.tail.borrow().segment.id == id {
            return Err(refused(id, "the open segment is not compacted"));
        }
        let name = segment_name(id);
        let size = seg.file.size().await.map_err(io_err("stat", &name))?;
        let mut report = CompactReport {
            segment: id,
            ..CompactReport::default()
        };
        let mut out = Copies {
            chunk: Vec::new(),
            bytes: 0,
            pacer: Pacer::new(bytes_per_second),
        };
        for pass in 0..PASSES_MAX {
            let live = inner.index.borrow().live_in(id);
            if pass > 0 && live.is_empty() {
                break;
            }
            self.copy_pass(&seg, size, &live, pass == 0, &mut out, &mut report)
                .await?;
        }
        if !inner.index.borrow().live_in(id).is_empty() {
            return Err(refused(id, "records became live in it faster than copied"));
        }
        // The index without the segment must be durable before the file goes.
        while inner.checkpointing.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.checkpoint().await?;
        // Reads take their segment before they wait; the file goes when the last ends
        // (the map's reference and this one remain).
        while Rc::strong_count(&seg) > 2 {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        match inner.dir.remove(&name).await {
            Ok(()) => {}
            // A removal whose directory sync failed last time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &name)(e)),
        }
        inner
            .dir
            .sync()
            .await
            .map_err(io_err("fsync", "store directory"))?;
        // Only once the removal is durable does the segment leave the map: until then
        // a crash may bring it back, and the records carried for it must stay needed.
        state(&inner.segments).remove(&id);
        state(&inner.carried).remove(&id);
        drop(seg);
        report.freed = size;
        let mut s = inner.stats.get();
        s.segments_compacted += 1;
        s.compaction_freed_bytes += size;
        s.compaction_moved_bytes += report.bytes_moved;
        inner.stats.set(s);
        info!(
            segment = id,
            freed = size,
            moved = report.bytes_moved,
            records = report.records_moved,
            carried = report.carried,
            rescued = report.rescued,
            "compacted a segment"
        );
        Ok(report)
    }

    /// One pass over `seg`: copies the records `live` names; on the first pass, also
    /// carries its delete-range and drop-namespace records and rescues its adoptions.
    async fn copy_pass(
        &self,
        seg: &Rc<Segment<D::File>>,
        size: u64,
        live: &index::LiveIn,
        first: bool,
        out: &mut Copies,
        report: &mut CompactReport,
    ) -> Result<()> {
        // Whether a carried record is still needed: another segment could hold
        // records before its place.
        let oldest_other = self
            .inner
            .segments
            .borrow()
            .keys()
            .copied()
            .find(|k| *k != seg.id);
        let sorting = Sorting {
            segment: seg.id,
            live,
            first,
            needed: &|p: Pos| oldest_other.is_some_and(|o| o <= p.0),
        };
        let mut frames = Frames::new(seg, size);
        let mut found = 0usize;
        let mut rescue: Vec<(Namespace, Oid, Loc)> = Vec::new();
        while let Some((body_at, body)) = frames.next().await? {
            for (at, rec) in record::records(&body, seg.salt).flatten() {
                let loc = Loc {
                    segment: seg.id,
                    offset: body_at + at as u64,
                    len: (RECORD_HEADER_LEN + rec.payload.len()) as u32,
                };
                let Some(copy) =
                    sorting.copy_of(&rec, loc, &self.inner.index.borrow(), &mut rescue)
                else {
                    continue;
                };
                match &copy {
                    Copy::Object { .. } | Copy::Opaque { .. } => {
                        found += 1;
                        report.records_moved += 1;
                        report.bytes_moved += u64::from(loc.len);
                    }
                    Copy::Carried { .. } => report.carried += 1,
                }
                out.push(self, copy).await?;
            }
        }
        if found < live.objects.len() + live.opaque.len() {
            // Never delete what could not be read: scrub and repair deal with it.
            return Err(refused(seg.id, "live records lie in a damaged region"));
        }
        for part in rescue.chunks(1024) {
            let spans: Vec<(Loc, usize)> =
                part.iter().map(|(_, _, l)| (*l, l.len as usize)).collect();
            let read = self.read_spans(&spans, RAW_GAP_BYTES).await?;
            for ((ns, oid, l), (bytes, salt)) in part.iter().zip(read) {
                let (kind, _, payload) = checked_record(bytes, *l, salt)?;
                let obj = (kind == RecordKind::Object)
                    .then(|| object::decode(&payload))
                    .flatten()
                    .filter(|(_, o)| o.oid == *oid)
                    .ok_or_else(|| corrupt_at(*l, "an adopted record is not the object"))?
                    .1;
                report.rescued += 1;
                report.bytes_moved += u64::from(l.len);
                let copy = Copy::Object {
                    obj,
                    nss: vec![*ns],
                    from: *l,
                };
                out.push(self, copy).await?;
            }
        }
        out.flush(self).await
    }

    /// Queues `copies` as a frame of their own and waits until it is durable and
    /// published.
    async fn write_copies(&self, copies: Vec<Copy>, bytes: usize) -> Result<()> {
        self.enqueue(Vec::new(), Some(copies), bytes).await?;
        Ok(())
    }
}

/// Copies gathered into frames of about [`CHUNK_BYTES`], written at or under a rate.
struct Copies {
    chunk: Vec<Copy>,
    bytes: usize,
    pacer: Pacer,
}

impl Copies {
    async fn push<D: Dir>(&mut self, store: &Store<D>, copy: Copy) -> Result<()> {
        self.bytes += copy.bytes();
        self.chunk.push(copy);
        if self.bytes >= CHUNK_BYTES {
            self.flush(store).await?;
        }
        Ok(())
    }

    async fn flush<D: Dir>(&mut self, store: &Store<D>) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.bytes);
        store
            .write_copies(std::mem::take(&mut self.chunk), bytes)
            .await?;
        self.pacer.spent(bytes as u64).await;
        Ok(())
    }
}

/// What a pass keeps of the records of one segment.
struct Sorting<'a> {
    segment: u64,
    live: &'a index::LiveIn,
    /// The first pass: carried records and adoptions are looked at only once.
    first: bool,
    needed: &'a dyn Fn(Pos) -> bool,
}

impl Sorting<'_> {
    /// The copy of the record at `loc`, if it is kept; adopted entries that point into
    /// older segments go to `rescue`.
    fn copy_of(
        &self,
        rec: &record::RecordRef<'_>,
        loc: Loc,
        index: &Index,
        rescue: &mut Vec<(Namespace, Oid, Loc)>,
    ) -> Option<Copy> {
        match rec.kind {
            RecordKind::Object => {
                let nss = self.live.objects.get(&loc.offset)?;
                let (_, obj) = object::decode(rec.payload)?;
                Some(Copy::Object {
                    obj,
                    nss: nss.clone(),
                    from: loc,
                })
            }
            RecordKind::Opaque => self.live.opaque.get(&loc.offset).map(|key| Copy::Opaque {
                key: *key,
                flags: rec.flags,
                payload: rec.payload.to_vec(),
                from: loc,
            }),
            RecordKind::DeleteRange if self.first => {
                let (s, a, b, before) = index::delete_range(rec.payload)?;
                let p = before.unwrap_or(loc.pos());
                (self.needed)(p).then(|| Copy::Carried {
                    kind: RecordKind::DeleteRange,
                    payload: index::encode_delete_range(s, a..b, Some(p)),
                })
            }
            RecordKind::DropNamespace if self.first => {
                let (ns, before) = index::drop_namespace(rec.payload)?;
                let p = before.unwrap_or(loc.pos());
                (self.needed)(p).then(|| Copy::Carried {
                    kind: RecordKind::DropNamespace,
                    payload: index::encode_drop_namespace(ns, Some(p)),
                })
            }
            RecordKind::Adopt if self.first => {
                let (_, to, oids) = index::decode_adopt(rec.payload)?;
                rescue.extend(oids.iter().filter_map(|oid| {
                    let l = index.object(to, oid)?;
                    (l.segment != self.segment && l.pos() < loc.pos()).then_some((to, *oid, l))
                }));
                None
            }
            _ => None,
        }
    }
}
