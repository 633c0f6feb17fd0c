//! The store: recovery, group commit, reads, checkpoints, verification.
//!
//! One `Store` per shard, used from that shard's glommio executor only (it is `!Send`).
//! Appends queue up; one writer task takes everything queued (up to
//! [`Options::batch_bytes_max`]), writes it as one frame with one aligned write, calls
//! `fdatasync` once, updates the index, and only then resolves the appenders' futures.
//! While it waits on the disk, new appends queue for the next batch: batching grows
//! with load and costs nothing when idle (no timers).
//!
//! The tail block: O_DIRECT writes must cover whole blocks, so each batch rewrites the
//! partly filled last block of the previous one together with its new bytes. The old
//! bytes of that block are rewritten identically, so a torn write can only damage the
//! new bytes, which their frame's CRC then rejects.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use futures_channel::oneshot;
use tracing::{info, warn};

use crate::index::{self, Covered, Index, Loc};
use crate::io::{Chunk, Dir, SegmentFile};
use crate::object::{self, ContentError, Namespace, ObjectHead, ObjectKind, Oid, StoredObject};
use crate::record::{
    self, FrameHeader, Out, RecordKind, SegmentHeader, FLAG_ZSTD, FRAME_HEADER_LEN,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::{Error, Lsn, Result};

mod compact;
mod scrub;
pub use compact::{CompactReport, SegmentSpace};
pub use scrub::{Damaged, ScrubReport};

/// A mutable borrow of the store's state, inside a fail-stop section for as long as it
/// lives ([`crate::failstop`]): a panic while the state is half changed stops the node,
/// even under a request handler that contains its own panics.
struct StateMut<'a, T> {
    inner: std::cell::RefMut<'a, T>,
    _section: crate::failstop::Section,
}

impl<T> std::ops::Deref for StateMut<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for StateMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

fn state<T>(cell: &std::cell::RefCell<T>) -> StateMut<'_, T> {
    StateMut {
        _section: crate::failstop::enter(),
        inner: cell.borrow_mut(),
    }
}

/// Named limits and tunables of a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// A new segment starts when the next frame would take a segment past this.
    pub segment_bytes_max: u64,
    /// Most bytes in one group-commit batch (a single larger append is its own batch).
    pub batch_bytes_max: usize,
    /// Most bytes queued for writing; appenders beyond it wait (backpressure).
    pub queued_bytes_max: usize,
    /// Largest single append.
    pub append_bytes_max: usize,
    /// A checkpoint is written after this many bytes of log since the last one.
    pub checkpoint_interval_bytes: u64,
    /// Memory the cache of resolved objects may hold (contents and bookkeeping).
    pub delta_cache_bytes_max: usize,
    /// Heads of object records kept in memory, those written or read last
    /// ([`Store::read_heads`]): in two tables of half as many, each about 100 bytes an
    /// entry at its fullest (the default, 112 Ki, is 7/8 of two tables of 64 Ki
    /// buckets, the most those hold before doubling: about 12 MiB in all).
    pub head_cache_entries_max: usize,
    /// Longest delta chain followed before giving up (also stops cycles).
    pub delta_chain_max: usize,
    /// Opaque payloads at least this large are zstd-compressed when that saves ≥ 1/8.
    pub zstd_min_bytes: usize,
    pub zstd_level: i32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_max: 1 << 30,
            // The frame's buffer then stays within an 8 MiB block of the executor's
            // I/O memory (see RUN_BYTES_MAX).
            batch_bytes_max: (8 << 20) - (64 << 10),
            queued_bytes_max: 256 << 20,
            append_bytes_max: (1 << 30) + (1 << 20),
            checkpoint_interval_bytes: 256 << 20,
            delta_cache_bytes_max: 64 << 20,
            head_cache_entries_max: 2 * (7 << 13),
            delta_chain_max: 10_000,
            zstd_min_bytes: 512,
            zstd_level: 3,
        }
    }
}

/// One thing to write. All writes of one [`Store::append`] land in the same frame, so
/// they become durable (and visible) together or not at all.
#[derive(Debug, Clone)]
pub enum Write {
    Object(Namespace, StoredObject),
    Opaque {
        stream: u8,
        key: u64,
        data: Vec<u8>,
    },
    DeleteRange {
        stream: u8,
        keys: Range<u64>,
    },
    DropNamespace(Namespace),
    /// Indexes `oids` of namespace `from` in `to` as well (same records); ids `from`
    /// does not hold are skipped. With a `DropNamespace(from)` in the same append, this
    /// publishes objects written earlier where no reader looks.
    Adopt {
        from: Namespace,
        to: Namespace,
        oids: Vec<Oid>,
    },
}

/// A damaged region found by recovery or verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What opening the store found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub from_checkpoint: bool,
    pub frames_scanned: u64,
    pub records_scanned: u64,
    /// Bytes cut from the end of the log (a write that never completed).
    pub torn_tail_bytes: u64,
    /// Damaged regions in the middle of the log (never served).
    pub corruptions: Vec<Corruption>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub frames: u64,
    pub records: u64,
    pub objects: u64,
    pub corruptions: Vec<Corruption>,
    /// Objects whose content does not hash to their id, or cannot be produced.
    pub bad_objects: Vec<(Namespace, String, String)>,
    /// Where each of `bad_objects` lies.
    pub bad_at: Vec<Loc>,
}

/// Counters for operators and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub appends: u64,
    pub batches: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub checkpoints: u64,
    pub segments_compacted: u64,
    /// Bytes of segment files compaction deleted, and of live records it copied.
    pub compaction_freed_bytes: u64,
    pub compaction_moved_bytes: u64,
    /// How long each batch took to become durable (its write and `fdatasync`, or an
    /// `O_DSYNC` write, and a new segment's directory sync), in microseconds from
    /// [`SYNC_FIRST_MICROS`].
    pub sync_micros: Doubling,
    /// Appends per batch (group commit), from 1.
    pub batch_appends: Doubling,
    /// Bytes of frames verify (and so scrub) read again and checked.
    pub verified_bytes: u64,
}

/// The first bucket's bound of [`Stats::sync_micros`].
pub const SYNC_FIRST_MICROS: u64 = 64;

/// A histogram in doubling buckets: with `first` the first bucket's bound, bucket `i`
/// counts values at most `first << i`, and the last bucket everything larger. A plain
/// value, so [`Stats`] stays one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Doubling {
    pub counts: [u64; Doubling::BUCKETS],
    pub sum: u64,
}

impl Doubling {
    pub const BUCKETS: usize = 20;

    pub fn record(&mut self, value: u64, first: u64) {
        let mut bound = first.max(1);
        let mut i = 0;
        while value > bound && i < Self::BUCKETS - 1 {
            bound = bound.saturating_mul(2);
            i += 1;
        }
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// The upper bounds of every bucket but the last.
    pub fn bounds(first: u64) -> impl Iterator<Item = u64> {
        (0..Self::BUCKETS - 1).map(move |i| first.max(1).saturating_mul(1 << i))
    }
}

struct Segment<F> {
    id: u64,
    salt: u64,
    file: Rc<F>,
}

/// The open end of the log.
struct Tail<F> {
    segment: Rc<Segment<F>>,
    /// Logical end: where the next frame goes.
    offset: u64,
    /// Bytes of the partly filled last block, `offset - align_down(offset)` long.
    block: Vec<u8>,
}

/// A record ready to be written: its payload is `head` followed by `tail` (an object's
/// deflated bytes, shared with the caller rather than copied).
struct Encoded {
    kind: RecordKind,
    flags: u8,
    head: Vec<u8>,
    tail: bytes::Bytes,
}

impl Encoded {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

struct Pending {
    writes: Vec<Encoded>,
    bytes: usize,
    /// A compaction's copies: built into `writes` by the writer, alone in their frame
    /// and only while the index still points at the originals ([`compact`]).
    copies: Option<Vec<compact::Copy>>,
    /// For each of `writes` of a copy: how publishing it moves the index.
    switches: Vec<Option<compact::Switch>>,
    done: oneshot::Sender<Result<Vec<Loc>>>,
}

struct Inner<D: Dir> {
    dir: D,
    opts: Options,
    segments: RefCell<BTreeMap<u64, Rc<Segment<D::File>>>>,
    tail: RefCell<Tail<D::File>>,
    index: RefCell<Index>,
    next_lsn: Cell<Lsn>,
    queue: RefCell<VecDeque<Pending>>,
    queued_bytes: Cell<usize>,
    space: RefCell<Vec<oneshot::Sender<()>>>,
    writer_running: Cell<bool>,
    fatal: RefCell<Option<String>>,
    since_checkpoint: Cell<u64>,
    /// Where the durable log ends (segment, offset): what a checkpoint may cover. The
    /// tail moves to a new segment before its first write is durable.
    durable: Cell<(u64, u64)>,
    /// The id the next new segment takes: above every segment file found at start-up
    /// (damaged ones kept for inspection too) and every one made since.
    next_segment: Cell<u64>,
    checkpointing: Cell<bool>,
    compacting: Cell<bool>,
    /// Bytes of records compaction carried (or wrote beside a copy) that the index does
    /// not point at but that are kept, by segment: counted live, or a segment of them
    /// would be compacted again and again (not kept across restarts).
    carried: RefCell<HashMap<u64, u64>>,
    last_space: Cell<Option<(usize, u64, u64)>>,
    cache: RefCell<DeltaCache>,
    heads: RefCell<HeadCache>,
    stats: Cell<Stats>,
    corruptions: RefCell<Vec<Corruption>>,
}

/// The append-only object and record store of one shard.
pub struct Store<D: Dir> {
    inner: Rc<Inner<D>>,
}

impl<D: Dir> Clone for Store<D> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Dir> std::fmt::Debug for Store<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_lsn", &self.inner.next_lsn.get())
            .field("stats", &self.inner.stats.get())
            .finish()
    }
}

const CHECKPOINT: &str = "index.ckpt";

fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Bytes between two wanted records that [`Store::read_raws`] reads through rather
/// than start another read.
const RAW_GAP_BYTES: u64 = 64 << 10;
/// The same for [`Store::read_heads`], which wants only the start of each record: a
/// page, so neighbouring small records share a read but large ones are skipped.
const HEAD_GAP_BYTES: u64 = 4 << 10;
/// Longest single read of [`Store::read_spans`]: with the two blocks direct I/O may
/// add around it, a read buffer of at most 4 MiB, a block of the executor's buddy
/// allocator for I/O memory (a byte more takes a block of 8; the node gives each
/// executor room for a write frame and four such reads).
const RUN_BYTES_MAX: u64 = (4 << 20) - (8 << 10);
/// Reads of [`Store::read_spans`] in flight at once.
const RUNS_IN_FLIGHT: usize = 4;

/// The error for a damaged record at `loc`.
fn corrupt_at(loc: Loc, reason: &str) -> Error {
    Error::Corrupt {
        segment: loc.segment,
        offset: loc.offset,
        reason: reason.into(),
    }
}

/// The record read at `loc`, checked: its kind, flags and payload.
fn checked_record(bytes: Chunk, loc: Loc, salt: u64) -> Result<(RecordKind, u8, Chunk)> {
    let (r, _) = record::decode_record(&bytes, salt)
        .map_err(|e| corrupt_at(loc, &format!("record check failed: {e:?}")))?;
    let (kind, flags) = (r.kind, r.flags);
    let payload = RECORD_HEADER_LEN..RECORD_HEADER_LEN + r.payload.len();
    Ok((kind, flags, bytes.slice(payload)))
}

fn io_err(op: &'static str, name: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let name = name.into();
    move |source| Error::Io { op, name, source }
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// Reads a segment sequentially through a large window, so scanning costs a few big
/// reads rather than two small ones per frame.
struct Window<'f, F> {
    file: &'f F,
    start: u64,
    buf: Chunk,
}

const WINDOW: usize = 8 << 20;

impl<'f, F: SegmentFile> Window<'f, F> {
    fn new(file: &'f F) -> Self {
        Window {
            file,
            start: 0,
            buf: Chunk::new(Vec::new()),
        }
    }

    /// `len` bytes at `pos`, or `None` if the file ends first.
    async fn get(&mut self, pos: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let end = pos + len as u64;
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            self.buf = self.file.read_at(pos, len.max(WINDOW)).await?;
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        Ok(self.buf.get(from..from + len))
    }
}

fn encode_write(w: &Write, opts: &Options) -> Encoded {
    let (kind, flags, head) = match w {
        Write::Object(ns, o) => {
            return Encoded {
                kind: RecordKind::Object,
                flags: 0,
                head: object::encode_head(*ns, o),
                tail: o.deflated.clone(),
            }
        }
        Write::Opaque { stream, key, data } => {
            let mut p = Vec::with_capacity(9 + data.len());
            p.push(*stream);
            p.extend_from_slice(&key.to_le_bytes());
            let mut flags = 0;
            if data.len() >= opts.zstd_min_bytes {
                if let Ok(z) = zstd::bulk::compress(data, opts.zstd_level) {
                    if z.len() <= data.len() - data.len() / 8 {
                        flags = FLAG_ZSTD;
                        p.extend_from_slice(&(data.len() as u64).to_le_bytes());
                        p.extend_from_slice(&z);
                    }
                }
            }
            if flags == 0 {
                p.extend_from_slice(data);
            }
            (RecordKind::Opaque, flags, p)
        }
        Write::DeleteRange { stream, keys } => (
            RecordKind::DeleteRange,
            0,
            index::encode_delete_range(*stream, keys.clone(), None),
        ),
        Write::DropNamespace(ns) => (
            RecordKind::DropNamespace,
            0,
            index::encode_drop_namespace(*ns, None),
        ),
        Write::Adopt { from, to, oids } => {
            (RecordKind::Adopt, 0, index::encode_adopt(*from, *to, oids))
        }
    };
    Encoded {
        kind,
        flags,
        head,
        tail: bytes::Bytes::new(),
    }
}

impl<D: Dir> Store<D> {
    /// Opens (or creates) the store in `dir`: loads the checkpoint if it is valid, scans
    /// the log after it, cuts a torn tail, and reports damaged regions.
    #[allow(clippy::too_many_lines)] // recovery is one sequence (checkpoint, scan, cut, report) over shared state
    pub async fn open(dir: D, opts: Options) -> Result<(Store<D>, RecoveryReport)> {
        let mut report = RecoveryReport::default();
        let mut ids: Vec<u64> = dir
            .list()
            .await
            .map_err(io_err("list", "store directory"))?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        ids.sort_unstable();

        // Open every segment and read its header.
        let mut segments = BTreeMap::new();
        let last_id = ids.last().copied();
        for &id in &ids {
            let name = segment_name(id);
            let file = dir
                .open(&name, false)
                .await
                .map_err(io_err("open", &name))?;
            let head = file
                .read_at(0, SEGMENT_HEADER_LEN)
                .await
                .map_err(io_err("read", &name))?;
            match SegmentHeader::decode(&head) {
                Some(h) if h.id == id => {
                    segments.insert(
                        id,
                        Rc::new(Segment {
                            id,
                            salt: h.salt,
                            file: Rc::new(file),
                        }),
                    );
                }
                _ if Some(id) == last_id => {
                    // The newest segment's first write never completed: nothing in it
                    // was acknowledged (acknowledgement follows the data sync).
                    let size = file.size().await.map_err(io_err("stat", &name))?;
                    warn!(segment = %name, size, "removing a segment whose header never became durable");
                    report.torn_tail_bytes += size;
                    drop(file);
                    dir.remove(&name).await.map_err(io_err("remove", &name))?;
                }
                _ => {
                    let size = file.size().await.unwrap_or(0);
                    report.corruptions.push(Corruption {
                        segment: id,
                        offset: 0,
                        len: size,
                        reason: "segment header is damaged".into(),
                    });
                }
            }
        }
        report.segments = segments.len();

        // Start from the checkpoint when it is intact and its segment still exists.
        let mut index = Index::default();
        let mut next_lsn: Lsn = 0;
        let mut resume: Option<(u64, u64)> = None;
        if let Some(blob) = dir
            .read_whole(CHECKPOINT)
            .await
            .map_err(io_err("read", CHECKPOINT))?
        {
            match index::decode_checkpoint(&blob) {
                Some((i, c)) if segments.contains_key(&c.segment) => {
                    index = i;
                    next_lsn = c.next_lsn;
                    resume = Some((c.segment, c.offset));
                    report.from_checkpoint = true;
                }
                Some(_) => warn!(
                    "checkpoint names a segment that is gone; rebuilding the index from the log"
                ),
                None => warn!("checkpoint is damaged; rebuilding the index from the log"),
            }
        }

        // Scan the log after the checkpoint.
        let mut tail: Option<(Rc<Segment<D::File>>, u64)> = None;
        let scan_ids: Vec<u64> = segments.keys().copied().collect();
        for (n, &id) in scan_ids.iter().enumerate() {
            let seg = segments[&id].clone();
            let is_last = n + 1 == scan_ids.len();
            let from = match resume {
                Some((rs, _)) if id < rs => continue,
                Some((rs, ro)) if id == rs => ro.max(SEGMENT_HEADER_LEN as u64),
                _ => SEGMENT_HEADER_LEN as u64,
            };
            let end =
                scan_segment(&seg, from, &mut index, &mut next_lsn, &mut report, is_last).await?;
            if is_last {
                tail = Some((seg, end));
            }
        }

        let (segment, offset) = match tail {
            Some(t) => t,
            None => {
                // Never reuse the id of a damaged segment kept for inspection.
                let id = ids.iter().max().map_or(1, |l| l + 1);
                let seg = create_segment(&dir, id).await?;
                segments.insert(id, seg.clone());
                (seg, 0)
            }
        };
        // Drop whatever lies past the end (a torn write) so it can never resurface.
        let name = segment_name(segment.id);
        let size = segment.file.size().await.map_err(io_err("stat", &name))?;
        let align = segment.file.alignment() as u64;
        if size > offset {
            // Zero padding after the last block is normal; anything else is a write
            // that never completed.
            let past = segment
                .file
                .read_at(offset, (size - offset) as usize)
                .await
                .map_err(io_err("read", &name))?;
            if past.iter().any(|b| *b != 0) {
                report.torn_tail_bytes += size - offset;
            }
            segment
                .file
                .truncate(offset)
                .await
                .map_err(io_err("truncate", &name))?;
        }
        let block_start = align_down(offset, align);
        let block = if offset > block_start {
            segment
                .file
                .read_at(block_start, (offset - block_start) as usize)
                .await
                .map_err(io_err("read", &name))?
                .to_vec()
        } else {
            Vec::new()
        };
        if report.torn_tail_bytes > 0 {
            info!(
                bytes = report.torn_tail_bytes,
                "cut a torn tail from the log"
            );
        }
        for c in &report.corruptions {
            warn!(segment = c.segment, offset = c.offset, len = c.len, reason = %c.reason, "damaged region in the log; it is never served");
        }
        let head_cache_entries_max = opts.head_cache_entries_max;
        let durable = (segment.id, offset);
        let next_segment = ids
            .iter()
            .copied()
            .chain([segment.id])
            .max()
            .map_or(1, |m| m + 1);
        let inner = Inner {
            dir,
            opts,
            segments: RefCell::new(segments),
            tail: RefCell::new(Tail {
                segment,
                offset,
                block,
            }),
            index: RefCell::new(index),
            next_lsn: Cell::new(next_lsn),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            space: RefCell::new(Vec::new()),
            writer_running: Cell::new(false),
            fatal: RefCell::new(None),
            since_checkpoint: Cell::new(0),
            durable: Cell::new(durable),
            next_segment: Cell::new(next_segment),
            checkpointing: Cell::new(false),
            compacting: Cell::new(false),
            carried: RefCell::new(HashMap::new()),
            last_space: Cell::new(None),
            cache: RefCell::new(DeltaCache::default()),
            heads: RefCell::new(HeadCache::new(head_cache_entries_max)),
            stats: Cell::new(Stats::default()),
            corruptions: RefCell::new(report.corruptions.clone()),
        };
        Ok((
            Store {
                inner: Rc::new(inner),
            },
            report,
        ))
    }

    /// Appends `writes` as one unit and resolves once they are durable; returns their
    /// locations. Fails without writing anything if the store has stopped after an I/O
    /// failure ([`Error::Fatal`]).
    pub async fn append(&self, writes: Vec<Write>) -> Result<Vec<Loc>> {
        let inner = &self.inner;
        if let Some(why) = inner.fatal.borrow().clone() {
            return Err(Error::Fatal(why));
        }
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let encoded: Vec<_> = writes
            .iter()
            .map(|w| encode_write(w, &inner.opts))
            .collect();
        let bytes: usize = encoded.iter().map(|e| RECORD_HEADER_LEN + e.len()).sum();
        if bytes > inner.opts.append_bytes_max {
            return Err(Error::TooLarge {
                bytes: bytes as u64,
                max: inner.opts.append_bytes_max as u64,
            });
        }
        let locs = self.enqueue(encoded, None, bytes).await?;
        let mut heads = state(&inner.heads);
        for (w, loc) in writes.iter().zip(&locs) {
            if let Write::Object(_, o) = w {
                heads.put(*loc, o.head());
            }
        }
        Ok(locs)
    }

    /// Queues writes (or a compaction's copies) of `bytes` once the queue has room
    /// (backpressure: an append larger than the whole queue limit waits for an empty
    /// queue), and waits until the writer has made them durable.
    async fn enqueue(
        &self,
        writes: Vec<Encoded>,
        copies: Option<Vec<compact::Copy>>,
        bytes: usize,
    ) -> Result<Vec<Loc>> {
        let inner = &self.inner;
        while inner.queued_bytes.get() > 0
            && inner.queued_bytes.get() + bytes > inner.opts.queued_bytes_max
        {
            let (tx, rx) = oneshot::channel();
            state(&inner.space).push(tx);
            let _ = rx.await;
        }
        if let Some(why) = inner.fatal.borrow().clone() {
            return Err(Error::Fatal(why));
        }
        let (tx, rx) = oneshot::channel();
        state(&inner.queue).push_back(Pending {
            writes,
            bytes,
            copies,
            switches: Vec::new(),
            done: tx,
        });
        inner.queued_bytes.set(inner.queued_bytes.get() + bytes);
        self.start_writer();
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(Error::Fatal("the writer stopped".into())),
        }
    }

    /// Starts the writer task unless it runs.
    fn start_writer(&self) {
        if !self.inner.writer_running.get() {
            self.inner.writer_running.set(true);
            let me = self.clone();
            glommio::spawn_local(async move { me.write_loop().await }).detach();
        }
    }

    async fn write_loop(&self) {
        let inner = &self.inner;
        loop {
            let mut batch: Vec<Pending> = {
                let mut q = state(&inner.queue);
                let mut taken = 0usize;
                let mut batch = Vec::new();
                while let Some(p) = q.front() {
                    // A compaction's copies are a frame of their own, built when every
                    // frame before it is in the index (see `compact`).
                    if !batch.is_empty()
                        && (p.copies.is_some() || taken + p.bytes > inner.opts.batch_bytes_max)
                    {
                        break;
                    }
                    taken += p.bytes;
                    let alone = p.copies.is_some();
                    batch.extend(q.pop_front());
                    if alone {
                        break;
                    }
                }
                batch
            };
            if batch.is_empty() {
                inner.writer_running.set(false);
                return;
            }
            let bytes: usize = batch.iter().map(|p| p.bytes).sum();
            if let Some(copies) = batch[0].copies.take() {
                let (writes, switches) = compact::build(copies, &inner.index.borrow());
                let p = &mut batch[0];
                p.bytes = writes.iter().map(|e| RECORD_HEADER_LEN + e.len()).sum();
                p.writes = writes;
                p.switches = switches;
            }
            let result = if batch[0].writes.is_empty() {
                Ok(Vec::new())
            } else {
                self.write_batch(&batch).await
            };
            inner.queued_bytes.set(inner.queued_bytes.get() - bytes);
            for tx in state(&inner.space).drain(..) {
                let _ = tx.send(());
            }
            match result {
                Ok(locs) => {
                    let mut locs = locs.into_iter();
                    for p in batch {
                        let mine: Vec<Loc> = locs.by_ref().take(p.writes.len()).collect();
                        let _ = p.done.send(Ok(mine));
                    }
                    if inner.since_checkpoint.get() >= inner.opts.checkpoint_interval_bytes
                        && !inner.checkpointing.get()
                    {
                        let me = self.clone();
                        glommio::spawn_local(async move {
                            if let Err(e) = me.checkpoint().await {
                                warn!(error = %e, "checkpoint failed; the next one will retry");
                            }
                        })
                        .detach();
                    }
                }
                Err(Error::NoSpace(why)) => {
                    // Nothing of the batch was acknowledged, and what part of it
                    // reached the file is cut off: the log is as before it.
                    if let Err(e) = self.cut_after_tail().await {
                        self.stop_for_good(&e.to_string(), batch);
                        return;
                    }
                    warn!(error = %why, "the store's file system is full: an append failed");
                    for p in batch {
                        let _ = p.done.send(Err(Error::NoSpace(why.clone())));
                    }
                }
                Err(e) => {
                    // An fsync (or write) failure: the kernel may have dropped the
                    // dirty pages, so nothing written since the last good sync can be
                    // trusted. Stop for good; retrying could report success for data
                    // that is not on disk.
                    self.stop_for_good(&e.to_string(), batch);
                    return;
                }
            }
        }
    }

    /// Fails `batch` and everything queued, and every append from now on.
    fn stop_for_good(&self, why: &str, batch: Vec<Pending>) {
        let inner = &self.inner;
        warn!(error = %why, "storage write failed; the store stops accepting writes");
        *state(&inner.fatal) = Some(why.to_owned());
        for p in batch {
            let _ = p.done.send(Err(Error::Fatal(why.to_owned())));
        }
        for p in state(&inner.queue).drain(..) {
            let _ = p.done.send(Err(Error::Fatal(why.to_owned())));
        }
        inner.queued_bytes.set(0);
        inner.writer_running.set(false);
    }

    /// Cuts the open segment back to where its last good write ended (the end of the
    /// block holding the log's end): a write that failed for want of room may have
    /// left part of itself, and in a sealed segment that would read as damage.
    async fn cut_after_tail(&self) -> Result<()> {
        let (segment, offset) = {
            let t = self.inner.tail.borrow();
            (t.segment.clone(), t.offset)
        };
        let align = segment.file.alignment() as u64;
        let end = offset.div_ceil(align) * align;
        let name = segment_name(segment.id);
        segment
            .file
            .truncate(end)
            .await
            .map_err(io_err("truncate", &name))
    }

    /// Writes one batch as one frame: one aligned write, one `fdatasync`.
    #[allow(clippy::too_many_lines)] // one frame: layout, CRC, the aligned write and the index update must stay together
    async fn write_batch(&self, batch: &[Pending]) -> Result<Vec<Loc>> {
        let inner = &self.inner;
        let body_len: usize = batch.iter().map(|p| p.bytes).sum();
        let frame_len = (FRAME_HEADER_LEN + body_len) as u64;

        // A new segment when this frame would not fit (unless the segment is empty).
        let rotate = {
            let t = inner.tail.borrow();
            t.offset > SEGMENT_HEADER_LEN as u64
                && t.offset + frame_len > inner.opts.segment_bytes_max
        };
        let mut new_segment = false;
        if rotate || inner.tail.borrow().offset == 0 {
            let (seg, fresh) = if rotate {
                let id = inner.next_segment.get();
                inner.next_segment.set(id + 1);
                (create_segment(&inner.dir, id).await?, true)
            } else {
                (inner.tail.borrow().segment.clone(), false)
            };
            if fresh {
                state(&inner.segments).insert(seg.id, seg.clone());
            }
            let mut t = state(&inner.tail);
            t.segment = seg;
            t.offset = 0;
            t.block.clear();
            new_segment = true;
        }

        let (segment, start, block) = {
            let t = inner.tail.borrow();
            (t.segment.clone(), t.offset, t.block.clone())
        };
        let salt = segment.salt;
        let align = segment.file.alignment();
        let first_lsn = inner.next_lsn.get();

        // The write is built in the buffer it is written from (for direct I/O: aligned
        // memory of the file's own), sized exactly: the partial block already on
        // disk, a segment header if the segment is new, the frame, zeros to the next
        // block boundary.
        let header_len = if new_segment { SEGMENT_HEADER_LEN } else { 0 };
        let logical_len = block.len() + header_len + FRAME_HEADER_LEN + body_len;
        let mut buf = segment.file.buffer(align_up(logical_len, align));
        let total = buf.as_ref().len();
        let mut locs = Vec::new();
        let mut count = 0u32;
        let (end, tail_block) = {
            let mut out = record::Fill {
                buf: buf.as_mut(),
                at: 0,
            };
            out.put(&block);
            let mut frame_at = start;
            if new_segment {
                out.put(
                    &SegmentHeader {
                        id: segment.id,
                        salt,
                    }
                    .encode(),
                );
                frame_at = SEGMENT_HEADER_LEN as u64;
            }
            // Records go straight after a placeholder frame header.
            let header_at = out.at;
            out.put(&[0u8; FRAME_HEADER_LEN]);
            let body_start = out.at;
            let body_at = frame_at + FRAME_HEADER_LEN as u64;
            let mut frame_crc = record::FrameCrc::new(salt);
            for p in batch {
                for e in &p.writes {
                    let at = out.at - body_start;
                    record::encode_record_framed(
                        &mut out,
                        &mut frame_crc,
                        e.kind,
                        e.flags,
                        &e.head,
                        &e.tail,
                    );
                    locs.push(Loc {
                        segment: segment.id,
                        offset: body_at + at as u64,
                        len: (out.at - body_start - at) as u32,
                    });
                    count += 1;
                }
            }
            // The batch's reservation and what was encoded agree, or the frame and the
            // block after it would be laid out from a wrong length.
            assert_eq!(out.at, logical_len, "a frame's encoded length");
            assert_eq!(locs.len(), count as usize, "a frame's record count");
            let header = record::encode_frame_header_crc(
                salt,
                out.at - body_start,
                frame_crc.body_crc(),
                count,
                first_lsn,
            );
            out.buf[header_at..body_start].copy_from_slice(&header);
            out.buf[logical_len..].fill(0);
            let end = align_down(start, align as u64) + logical_len as u64;
            let keep = (end - align_down(end, align as u64)) as usize;
            (end, out.buf[logical_len - keep..logical_len].to_vec())
        };

        let name = segment_name(segment.id);
        let writing = std::time::Instant::now();
        segment
            .file
            .write_at(align_down(start, align as u64), buf)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    Error::NoSpace(format!("write {name}: {e}"))
                }
                _ => io_err("write", &name)(e),
            })?;
        segment
            .file
            .sync_data()
            .await
            .map_err(io_err("fdatasync", &name))?;
        if new_segment && start == 0 && segment.id > 0 {
            // The new file's directory entry must be durable before anything in it
            // is acknowledged.
            inner
                .dir
                .sync()
                .await
                .map_err(io_err("fsync", "store directory"))?;
        }
        let synced = writing.elapsed();

        // Durable: publish. A record this store just wrote that does not apply is a
        // bug that would otherwise lose what it carries silently (a ref could then
        // name an object no reader finds): fail-stop (inside `state`).
        {
            let mut index = state(&inner.index);
            let mut l = locs.iter();
            for p in batch {
                for (n, e) in p.writes.iter().enumerate() {
                    let Some(loc) = l.next() else {
                        unreachable!("a location per record (asserted above)");
                    };
                    if !p.switches.is_empty() {
                        // A copy: the index moves to it, as far as it still points at
                        // the original (nothing else ran since the frame was built).
                        match p.switches.get(n) {
                            Some(Some(sw)) => sw.apply(&mut index, *loc),
                            _ => {
                                *state(&inner.carried).entry(loc.segment).or_default() +=
                                    u64::from(loc.len);
                            }
                        }
                        continue;
                    }
                    // The keys are in the head.
                    let applied = index.apply(e.kind, &e.head, *loc);
                    assert!(
                        applied,
                        "a record just written does not apply: {:?}",
                        e.kind
                    );
                }
            }
        }
        inner.next_lsn.set(first_lsn + u64::from(count));
        {
            let mut t = state(&inner.tail);
            t.offset = end;
            t.block = tail_block;
        }
        inner.durable.set((segment.id, end));
        inner
            .since_checkpoint
            .set(inner.since_checkpoint.get() + logical_len as u64);
        let mut s = inner.stats.get();
        s.appends += batch.len() as u64;
        s.batches += 1;
        s.syncs += 1;
        s.bytes_written += total as u64;
        s.sync_micros
            .record(synced.as_micros() as u64, SYNC_FIRST_MICROS);
        s.batch_appends.record(batch.len() as u64, 1);
        inner.stats.set(s);
        Ok(locs)
    }

    /// Writes the index checkpoint for the current durable state.
    pub async fn checkpoint(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.checkpointing.replace(true) {
            return Ok(());
        }
        // One synchronous section: the index and the position it covers match.
        let bytes = {
            let (segment, offset) = inner.durable.get();
            let covered = Covered {
                segment,
                offset: offset.max(SEGMENT_HEADER_LEN as u64),
                next_lsn: inner.next_lsn.get(),
            };
            index::encode_checkpoint(&inner.index.borrow(), covered)
        };
        inner.since_checkpoint.set(0);
        let r = inner
            .dir
            .write_atomic(CHECKPOINT, bytes)
            .await
            .map_err(io_err("write", CHECKPOINT));
        inner.checkpointing.set(false);
        if r.is_ok() {
            let mut s = inner.stats.get();
            s.checkpoints += 1;
            inner.stats.set(s);
        }
        r
    }

    /// Waits for queued appends, then writes a checkpoint so the next start is fast.
    pub async fn close(self) -> Result<()> {
        while self.inner.writer_running.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        if self.inner.fatal.borrow().is_none() {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Reads and checks the record at `loc`.
    async fn read_record(&self, loc: Loc) -> Result<(RecordKind, u8, Chunk)> {
        let seg = self.segment_of(loc)?;
        let bytes = seg
            .file
            .read_at(loc.offset, loc.len as usize)
            .await
            .map_err(io_err("read", &segment_name(seg.id)))?;
        checked_record(bytes, loc, seg.salt)
    }

    fn segment_of(&self, loc: Loc) -> Result<Rc<Segment<D::File>>> {
        self.inner
            .segments
            .borrow()
            .get(&loc.segment)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                segment: loc.segment,
                offset: loc.offset,
                reason: "segment is missing or damaged".into(),
            })
    }

    /// What the record of `oid` in `ns` says of the object (kind, sizes, delta base),
    /// read from the start of the record only: for planning a fetch before its entries
    /// are read. The record's checksum covers all of it and is not checked here; the
    /// entry read later ([`Store::read_raw`]) is checked, and callers compare the two.
    pub async fn read_head(&self, ns: Namespace, oid: &Oid) -> Result<Option<ObjectHead>> {
        Ok(self
            .read_heads(ns, std::slice::from_ref(oid))
            .await?
            .pop()
            .flatten())
    }

    /// [`Store::read_head`] of many objects, with as few device reads as their places
    /// allow (see [`Store::read_spans`]): the heads of small neighbouring records (a
    /// push's commits and trees) come in one read.
    pub async fn read_heads(&self, ns: Namespace, oids: &[Oid]) -> Result<Vec<Option<ObjectHead>>> {
        let head_len = |l: &Loc| (l.len as usize).min(RECORD_HEADER_LEN + object::HEAD_MAX);
        let locs = self.locate(ns, oids);
        // Heads the cache holds (of the very records the index names) are not read.
        let mut out: Vec<Option<ObjectHead>> = {
            let mut heads = state(&self.inner.heads);
            oids.iter()
                .zip(&locs)
                .map(|(oid, l)| {
                    l.as_ref()
                        .and_then(|l| heads.get(l))
                        .filter(|h| h.oid == *oid)
                })
                .collect()
        };
        let missing: Vec<usize> = (0..oids.len())
            .filter(|&i| out[i].is_none() && locs[i].is_some())
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let spans: Vec<(Loc, usize)> = missing
            .iter()
            .filter_map(|&i| locs[i].map(|l| (l, head_len(&l))))
            .collect();
        let read = self.read_spans(&spans, HEAD_GAP_BYTES).await?;
        let mut heads = state(&self.inner.heads);
        for ((&i, (loc, _)), (bytes, _)) in missing.iter().zip(&spans).zip(read) {
            let head = bytes
                .get(RECORD_HEADER_LEN..)
                .filter(|_| bytes.get(4) == Some(&(RecordKind::Object as u8)))
                .and_then(object::decode_head);
            match head {
                // The record may be of another namespace: an object adopted from it.
                Some((_, h, _)) if h.oid == oids[i] => {
                    heads.put(*loc, h);
                    out[i] = Some(h);
                }
                _ => {
                    return Err(corrupt_at(
                        *loc,
                        "object record head does not decode to the indexed object",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// For each of `oids`: `None` if `ns` lacks it, else `decode(oid, place, bytes)` of
    /// the first `len(place)` bytes of its record, all read by [`Store::read_spans`].
    async fn read_located<T>(
        &self,
        ns: Namespace,
        oids: &[Oid],
        len: impl Fn(&Loc) -> usize,
        gap: u64,
        decode: impl Fn(&Oid, Loc, Chunk, u64) -> Result<T>,
    ) -> Result<Vec<Option<T>>> {
        let locs = self.locate(ns, oids);
        let spans: Vec<(Loc, usize)> = locs.iter().flatten().map(|l| (*l, len(l))).collect();
        let mut read = self.read_spans(&spans, gap).await?.into_iter();
        oids.iter()
            .zip(locs)
            .map(|(oid, loc)| match loc {
                None => Ok(None),
                Some(loc) => {
                    let (bytes, salt) = read.next().unwrap_or_else(|| (Chunk::new(Vec::new()), 0));
                    decode(oid, loc, bytes, salt).map(Some)
                }
            })
            .collect()
    }

    /// Where each of `oids` is stored in `ns`.
    fn locate(&self, ns: Namespace, oids: &[Oid]) -> Vec<Option<Loc>> {
        let index = self.inner.index.borrow();
        oids.iter().map(|o| index.object(ns, o)).collect()
    }

    /// The first `len` bytes at each of `spans` (with their segment's CRC salt), in
    /// their order, with few device
    /// reads: sorted by place, spans in one segment at most `gap` bytes apart are read
    /// as one run (the bytes between read through) of at most [`RUN_BYTES_MAX`], a
    /// few runs at once. Reading a clone's objects one request each cost more in
    /// system calls and device notifications than the rest of the clone but hashing.
    async fn read_spans(&self, spans: &[(Loc, usize)], gap: u64) -> Result<Vec<(Chunk, u64)>> {
        use futures_util::StreamExt;
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_unstable_by_key(|&i| (spans[i].0.segment, spans[i].0.offset));
        // (first span's place, end of the run, the spans in it)
        let mut runs: Vec<(Loc, u64, Vec<usize>)> = Vec::new();
        for i in order {
            let (loc, len) = spans[i];
            let end = loc.offset + len as u64;
            match runs.last_mut() {
                Some((first, run_end, members))
                    if first.segment == loc.segment
                        && loc.offset <= run_end.saturating_add(gap)
                        && end.max(*run_end) - first.offset <= RUN_BYTES_MAX =>
                {
                    *run_end = end.max(*run_end);
                    members.push(i);
                }
                _ => runs.push((loc, end, vec![i])),
            }
        }
        // Each run's segment is taken now, before any wait: compaction deletes a
        // segment's file only once no read holds it.
        let runs: Vec<_> = runs
            .into_iter()
            .map(|(first, end, members)| Ok((self.segment_of(first)?, first, end, members)))
            .collect::<Result<_>>()?;
        let mut out = vec![(Chunk::new(Vec::new()), 0); spans.len()];
        let mut reads = futures_util::stream::iter(runs)
            .map(|(seg, first, end, members)| async move {
                let bytes = seg
                    .file
                    .read_at(first.offset, (end - first.offset) as usize)
                    .await
                    .map_err(io_err("read", &segment_name(seg.id)))?;
                Ok::<_, Error>((first.offset, bytes, seg.salt, members))
            })
            .buffer_unordered(RUNS_IN_FLIGHT);
        while let Some(run) = reads.next().await {
            let (start, bytes, salt, members) = run?;
            for i in members {
                let (loc, len) = spans[i];
                // A read that ends early (the file is shorter) leaves the span short;
                // its record check then fails.
                let from = ((loc.offset - start) as usize).min(bytes.len());
                let to = (from + len).min(bytes.len());
                out[i] = (bytes.slice(from..to), salt);
            }
        }
        Ok(out)
    }

    /// Whether `ns` holds `oid`.
    pub fn contains(&self, ns: Namespace, oid: &Oid) -> bool {
        self.inner.index.borrow().contains(ns, oid)
    }

    /// Existence of many objects at once.
    pub fn contains_many(&self, ns: Namespace, oids: &[Oid]) -> Vec<bool> {
        let index = self.inner.index.borrow();
        oids.iter().map(|o| index.contains(ns, o)).collect()
    }

    /// Every namespace that holds objects.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.inner.index.borrow().namespaces()
    }

    /// Every object id stored in `ns` (for catching a namespace up from a peer).
    pub fn oids_in(&self, ns: Namespace) -> Vec<Oid> {
        self.inner.index.borrow().oids_in(ns)
    }

    /// Every object of `ns` with its place, in the order the records lie in the log
    /// (segment, then offset): reading them in this order reads the log sequentially.
    pub fn objects_in_place_order(&self, ns: Namespace) -> Vec<(Oid, Loc)> {
        let mut all = self.inner.index.borrow().objects_in(ns);
        all.sort_unstable_by_key(|(_, l)| (l.segment, l.offset));
        all
    }

    /// Number of objects stored, over every namespace.
    pub fn object_count(&self) -> usize {
        self.inner.index.borrow().object_count()
    }

    /// The stored pack entry of `oid` in `ns` (for copying into an outgoing pack), its
    /// bytes a view of the read buffer.
    pub async fn read_raw(&self, ns: Namespace, oid: &Oid) -> Result<Option<StoredObject<Chunk>>> {
        Ok(self
            .read_raws(ns, std::slice::from_ref(oid))
            .await?
            .pop()
            .flatten())
    }

    /// [`Store::read_raw`] of many objects, with as few device reads as their places
    /// allow (see [`Store::read_spans`]).
    pub async fn read_raws(
        &self,
        ns: Namespace,
        oids: &[Oid],
    ) -> Result<Vec<Option<StoredObject<Chunk>>>> {
        let whole = |l: &Loc| l.len as usize;
        self.read_located(ns, oids, whole, RAW_GAP_BYTES, |oid, loc, bytes, salt| {
            let (kind, _, payload) = checked_record(bytes, loc, salt)?;
            if kind != RecordKind::Object {
                return Err(corrupt_at(
                    loc,
                    "index points at a record that is not an object",
                ));
            }
            match object::decode_chunk(&payload) {
                // The record may be of another namespace: an object adopted from it.
                Some((_, o)) if o.oid == *oid => Ok(o),
                _ => Err(corrupt_at(
                    loc,
                    "object record does not decode to the indexed object",
                )),
            }
        })
        .await
    }

    /// Keeps the contents of objects `ns` holds in the cache [`Store::read_object`]
    /// reads first (contents a push verified: its trees and commits); objects the
    /// index does not hold in `ns` are skipped.
    pub fn remember(
        &self,
        ns: Namespace,
        objects: impl IntoIterator<Item = (Oid, ObjectKind, Vec<u8>)>,
    ) {
        let max = self.inner.opts.delta_cache_bytes_max;
        let mut cache = state(&self.inner.cache);
        for (oid, kind, content) in objects {
            if self.contains(ns, &oid) {
                cache.put(ns, oid, kind, content, max);
            }
        }
    }

    /// The content of `oid` in `ns`, delta chains resolved through a bounded cache.
    pub async fn read_object(
        &self,
        ns: Namespace,
        oid: &Oid,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>> {
        Ok(self
            .read_objects(ns, std::slice::from_ref(oid), u64::MAX)
            .await?
            .pop()
            .flatten())
    }

    /// [`Store::read_object`] of many objects: `None` for each `ns` lacks and for each
    /// past `bytes_max` of contents (taken in the order asked; the caller reads those
    /// alone). Their delta chains are read a level at a time, each level in one
    /// batched read ([`Store::read_raws`]): `n` chains of depth `d` cost `d` rounds of
    /// reads, not `n * d` one after another (a fetch's haves, read cold on a node that
    /// stored them as deltas, cost milliseconds each that way). Objects the namespace
    /// holds come from the cache without a read: a clone's planning reads every tree
    /// and commit.
    pub async fn read_objects(
        &self,
        ns: Namespace,
        oids: &[Oid],
        bytes_max: u64,
    ) -> Result<Vec<Option<(ObjectKind, Vec<u8>)>>> {
        let cached = |oid: &Oid| {
            if self.contains(ns, oid) {
                state(&self.inner.cache).get(ns, oid)
            } else {
                None
            }
        };
        // The entries of every chain down to a cached content or a whole object.
        let mut raws: HashMap<Oid, StoredObject<Chunk>> = HashMap::new();
        let mut level: Vec<Oid> = oids
            .iter()
            .filter(|o| cached(o).is_none())
            .copied()
            .collect();
        level.sort_unstable();
        level.dedup();
        let mut depth = 0;
        while !level.is_empty() && depth <= self.inner.opts.delta_chain_max {
            let read = self.read_raws(ns, &level).await?;
            let mut next = Vec::new();
            for (oid, raw) in level.iter().zip(read) {
                let Some(raw) = raw else { continue };
                if let Some(base) = raw.base {
                    if !raws.contains_key(&base) && cached(&base).is_none() {
                        next.push(base);
                    }
                }
                raws.insert(*oid, raw);
            }
            next.sort_unstable();
            next.dedup();
            next.retain(|o| !raws.contains_key(o));
            level = next;
            depth += 1;
        }
        let mut out = Vec::with_capacity(oids.len());
        let mut budget = bytes_max;
        for oid in oids {
            let size = match (raws.get(oid), cached(oid)) {
                (_, Some((_, c))) => c.len() as u64,
                (Some(raw), None) => raw.object_size,
                (None, None) => 0, // absent (or read again below)
            };
            if size > budget {
                out.push(None);
                continue;
            }
            budget -= size;
            out.push(self.resolve_chain(ns, oid, &mut raws).await?);
        }
        Ok(out)
    }

    /// The content of `oid` from the cache or from its chain's entries in `raws`
    /// ([`Store::read_objects`] read them; one the cache let go since is read again),
    /// every content made on the way kept in the cache.
    async fn resolve_chain(
        &self,
        ns: Namespace,
        oid: &Oid,
        raws: &mut HashMap<Oid, StoredObject<Chunk>>,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>> {
        let max = self.inner.opts.delta_cache_bytes_max;
        let mut chain: Vec<StoredObject<Chunk>> = Vec::new();
        let mut cur = *oid;
        let (kind, mut content) = loop {
            if self.contains(ns, &cur) {
                if let Some((kind, c)) = state(&self.inner.cache).get(ns, &cur) {
                    break (kind, c);
                }
            }
            if chain.len() > self.inner.opts.delta_chain_max {
                return Err(Error::Content {
                    oid: object::hex(oid),
                    source: ContentError::Chain("delta chain too long (or a cycle)"),
                });
            }
            let raw = match raws.get(&cur) {
                Some(r) => r.clone(),
                None => match self.read_raw(ns, &cur).await? {
                    Some(r) => r,
                    None if chain.is_empty() => return Ok(None),
                    None => {
                        return Err(Error::Content {
                            oid: object::hex(&chain[chain.len() - 1].oid),
                            source: ContentError::Chain("delta base is missing"),
                        })
                    }
                },
            };
            match raw.base {
                None => {
                    let c = object::inflate(&raw.deflated, raw.entry_size).map_err(|e| {
                        Error::Content {
                            oid: object::hex(&raw.oid),
                            source: e.into(),
                        }
                    })?;
                    let c = state(&self.inner.cache).put(ns, raw.oid, raw.kind, c, max);
                    break (raw.kind, c);
                }
                Some(base) => {
                    cur = base;
                    chain.push(raw);
                }
            }
        };
        while let Some(d) = chain.pop() {
            let delta = object::inflate(&d.deflated, d.entry_size).map_err(|e| Error::Content {
                oid: object::hex(&d.oid),
                source: e.into(),
            })?;
            let made =
                repospanner_object::delta::apply(&content, &delta, u64::MAX).map_err(|e| {
                    Error::Content {
                        oid: object::hex(&d.oid),
                        source: e.into(),
                    }
                })?;
            content = state(&self.inner.cache).put(ns, d.oid, kind, made, max);
            glommio::yield_if_needed().await;
        }
        Ok(Some((kind, content.as_ref().clone())))
    }

    /// The opaque value stored under (stream, key).
    pub async fn get_opaque(&self, stream: u8, key: u64) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self
            .inner
            .index
            .borrow()
            .opaque
            .get(&(stream, key))
            .copied()
        else {
            return Ok(None);
        };
        let (kind, flags, payload) = self.read_record(loc).await?;
        let corrupt = |reason: String| Error::Corrupt {
            segment: loc.segment,
            offset: loc.offset,
            reason,
        };
        if kind != RecordKind::Opaque || payload.len() < 9 {
            return Err(corrupt(
                "index points at a record that is not an opaque value".into(),
            ));
        }
        let data = &payload[9..];
        if flags & FLAG_ZSTD != 0 {
            if data.len() < 8 {
                return Err(corrupt("compressed value has no size".into()));
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&data[..8]);
            let size =
                usize::try_from(u64::from_le_bytes(n)).map_err(|_| corrupt("size".into()))?;
            let out = zstd::bulk::decompress(&data[8..], size)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            return Ok(Some(out));
        }
        Ok(Some(data.to_vec()))
    }

    /// Keys of `stream` in `range`, ascending.
    pub fn opaque_keys(&self, stream: u8, range: Range<u64>) -> Vec<u64> {
        if range.start >= range.end {
            return Vec::new();
        }
        self.inner
            .index
            .borrow()
            .opaque
            .range((stream, range.start)..(stream, range.end))
            .map(|((_, k), _)| *k)
            .collect()
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats.get()
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.inner.next_lsn.get()
    }

    /// Damaged regions found so far.
    pub fn corruptions(&self) -> Vec<Corruption> {
        self.inner.corruptions.borrow().clone()
    }

    /// The current index (for tests comparing a checkpointed start with a full scan).
    pub fn index_snapshot(&self) -> Index {
        self.inner.index.borrow().clone()
    }

    /// Re-reads every record of every segment, checks every CRC, and recomputes every
    /// object's id from its content. Used by scrub; reads everything once.
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.verify_paced(0).await
    }

    /// [`Store::verify`], reading at most `bytes_per_second` (0: no limit).
    pub async fn verify_paced(&self, bytes_per_second: u64) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut pacer = Pacer::new(bytes_per_second);
        // Where a delta not served from its own namespace may be (adopted), once.
        let namespaces = self.namespaces();
        let segments: Vec<_> = self.inner.segments.borrow().values().cloned().collect();
        let (tail_seg, tail_off) = {
            let t = self.inner.tail.borrow();
            (t.segment.id, t.offset)
        };
        for seg in segments {
            let size = if seg.id == tail_seg {
                tail_off
            } else {
                let name = segment_name(seg.id);
                seg.file.size().await.map_err(io_err("stat", &name))?
            };
            let mut frames = Frames::new(&seg, size);
            while let Some((body_at, body)) = frames.next().await? {
                report.frames += 1;
                for r in record::records(&body, seg.salt) {
                    match r {
                        Ok((at, rec)) => {
                            report.records += 1;
                            if rec.kind == RecordKind::Object {
                                report.objects += 1;
                                let loc = Loc {
                                    segment: seg.id,
                                    offset: body_at + at as u64,
                                    len: (RECORD_HEADER_LEN + rec.payload.len()) as u32,
                                };
                                self.verify_object(rec.payload, loc, &namespaces, &mut report)
                                    .await;
                            }
                        }
                        Err(e) => report.corruptions.push(Corruption {
                            segment: seg.id,
                            offset: body_at,
                            len: body.len() as u64,
                            reason: format!("record inside a valid frame: {e:?}"),
                        }),
                    }
                }
                let read = (FRAME_HEADER_LEN + body.len()) as u64;
                let mut s = self.inner.stats.get();
                s.verified_bytes += read;
                self.inner.stats.set(s);
                pacer.spent(read).await;
            }
            report.corruptions.append(&mut frames.damage);
        }
        Ok(report)
    }

    async fn verify_object(
        &self,
        payload: &[u8],
        loc: Loc,
        namespaces: &[Namespace],
        report: &mut VerifyReport,
    ) {
        let Some((ns, o)) = object::decode(payload) else {
            report.bad_objects.push((
                Namespace(0),
                "?".into(),
                "object record does not decode".into(),
            ));
            report.bad_at.push(loc);
            return;
        };
        let hex = object::hex(&o.oid);
        let content = if o.base.is_none() {
            object::inflate(&o.deflated, o.entry_size).map_err(|e| e.to_string())
        } else {
            // A delta is checked through a namespace that serves it (its bases are
            // looked up there): its own, or one that adopted it. A record no namespace
            // indexes is dead (its namespace was dropped) and never served.
            let serving = if self.contains(ns, &o.oid) {
                Some(ns)
            } else {
                namespaces
                    .iter()
                    .copied()
                    .find(|n| self.contains(*n, &o.oid))
            };
            let Some(ns) = serving else {
                return;
            };
            match self.read_object(ns, &o.oid).await {
                Ok(Some((_, c))) => Ok(c),
                Ok(None) => Err("not in the index".into()),
                Err(e) => Err(e.to_string()),
            }
        };
        match content {
            Ok(c) if object::object_id(o.kind, &c) == Ok(o.oid) => {}
            Ok(_) => {
                report
                    .bad_objects
                    .push((ns, hex, "content does not hash to its id".into()));
                report.bad_at.push(loc);
            }
            Err(e) => {
                report.bad_objects.push((ns, hex, e));
                report.bad_at.push(loc);
            }
        }
    }
}

async fn create_segment<D: Dir>(dir: &D, id: u64) -> Result<Rc<Segment<D::File>>> {
    let name = segment_name(id);
    let file = dir
        .open(&name, true)
        .await
        .map_err(io_err("create", &name))?;
    file.truncate(0).await.map_err(io_err("truncate", &name))?;
    Ok(Rc::new(Segment {
        id,
        salt: rand::random::<u64>() | 1,
        file: Rc::new(file),
    }))
}

/// Scans one segment from `from`, applying valid frames to `index`. Returns the
/// position after the last valid frame. Damage followed by a valid frame is reported
/// as a corruption and stepped over; damage at the end of the newest segment is a torn
/// tail (the caller cuts it).
async fn scan_segment<F: SegmentFile>(
    seg: &Segment<F>,
    from: u64,
    index: &mut Index,
    next_lsn: &mut Lsn,
    report: &mut RecoveryReport,
    is_last: bool,
) -> Result<u64> {
    let name = segment_name(seg.id);
    let mut w = Window::new(&*seg.file);
    let mut pos = from;
    loop {
        let header = w
            .get(pos, FRAME_HEADER_LEN)
            .await
            .map_err(io_err("read", &name))?
            .and_then(|h| FrameHeader::decode(h, seg.salt))
            .filter(|h| h.first_lsn >= *next_lsn);
        let frame = match header {
            Some(h) => {
                let body = w
                    .get(pos + FRAME_HEADER_LEN as u64, h.body_len as usize)
                    .await
                    .map_err(io_err("read", &name))?;
                match body {
                    Some(b) if h.body_ok(b, seg.salt) => Some((h, b.to_vec())),
                    _ => None,
                }
            }
            None => None,
        };
        match frame {
            Some((h, body)) => {
                let body_at = pos + FRAME_HEADER_LEN as u64;
                for r in record::records(&body, seg.salt) {
                    match r {
                        Ok((at, rec)) => {
                            let loc = Loc {
                                segment: seg.id,
                                offset: body_at + at as u64,
                                len: (RECORD_HEADER_LEN + rec.payload.len()) as u32,
                            };
                            if !index.apply_found(rec.kind, rec.flags, rec.payload, loc) {
                                report.corruptions.push(Corruption {
                                    segment: seg.id,
                                    offset: loc.offset,
                                    len: u64::from(loc.len),
                                    reason: "record payload does not decode".into(),
                                });
                            }
                            report.records_scanned += 1;
                        }
                        Err(e) => report.corruptions.push(Corruption {
                            segment: seg.id,
                            offset: pos,
                            len: h.total_len(),
                            reason: format!("record inside a valid frame: {e:?}"),
                        }),
                    }
                }
                report.frames_scanned += 1;
                *next_lsn = h.first_lsn + u64::from(h.count);
                pos += h.total_len();
            }
            None => {
                // Damage or the end. Is there a valid frame further on?
                let size = seg.file.size().await.map_err(io_err("stat", &name))?;
                if pos >= size {
                    return Ok(pos);
                }
                let rest = seg
                    .file
                    .read_at(pos, (size - pos) as usize)
                    .await
                    .map_err(io_err("read", &name))?;
                match record::find_next_frame(&rest, 1, seg.salt, *next_lsn) {
                    Some(skip) => {
                        report.corruptions.push(Corruption {
                            segment: seg.id,
                            offset: pos,
                            len: skip as u64,
                            reason: "frame check failed; later frames are intact".into(),
                        });
                        pos += skip as u64;
                    }
                    None => {
                        if !is_last && rest.iter().any(|b| *b != 0) {
                            report.corruptions.push(Corruption {
                                segment: seg.id,
                                offset: pos,
                                len: rest.len() as u64,
                                reason: "damaged end of a sealed segment".into(),
                            });
                        }
                        return Ok(pos);
                    }
                }
            }
        }
    }
}

/// An object's kind and content, as [`DeltaCache`] keeps them.
type Cached = (ObjectKind, Rc<Vec<u8>>);

/// Heads of object records by place, for planning a clone without reading every
/// record's start again: filled as records are written and as their heads are read,
/// two generations of at most half the bound each (a hit in the older moves to the
/// newer; when the newer is full, the older is dropped). A place names one record for
/// as long as the process runs (segments only grow, and compaction writes elsewhere),
/// and the index gives the place, so an entry is never stale.
struct HeadCache {
    young: HashMap<Loc, ObjectHead>,
    old: HashMap<Loc, ObjectHead>,
    max: usize,
}

impl HeadCache {
    fn new(max: usize) -> HeadCache {
        HeadCache {
            young: HashMap::new(),
            old: HashMap::new(),
            max,
        }
    }

    fn get(&mut self, loc: &Loc) -> Option<ObjectHead> {
        if let Some(h) = self.young.get(loc) {
            return Some(*h);
        }
        let h = self.old.remove(loc)?;
        self.put(*loc, h);
        Some(h)
    }

    fn put(&mut self, loc: Loc, head: ObjectHead) {
        if self.max == 0 {
            return;
        }
        if self.young.len() >= self.max.div_ceil(2) && !self.young.contains_key(&loc) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(loc, head);
    }
}

/// Resolved objects (with their kind: a delta's is its base's), kept for delta
/// resolution and for reading trees and commits again, bounded in bytes (FIFO
/// eviction). Objects are immutable, but a key is only trusted where the index still
/// holds the object ([`Store::read_object`]).
#[derive(Default)]
struct DeltaCache {
    map: HashMap<(Namespace, Oid), Cached>,
    order: VecDeque<(Namespace, Oid)>,
    bytes: usize,
}

/// What keeping `content` costs the cache: its allocation and the bookkeeping around
/// it (the `Rc`, the map's slot, the eviction queue's), so the bound is the memory it
/// holds, not the bytes of content alone (a real history's trees average some 200
/// bytes, which the bookkeeping nearly doubles).
fn cost(content: &Rc<Vec<u8>>) -> usize {
    const ENTRY_BYTES: usize = 128;
    content.capacity() + ENTRY_BYTES
}

impl DeltaCache {
    fn get(&mut self, ns: Namespace, oid: &Oid) -> Option<Cached> {
        self.map.get(&(ns, *oid)).cloned()
    }

    fn put(
        &mut self,
        ns: Namespace,
        oid: Oid,
        kind: ObjectKind,
        content: Vec<u8>,
        max: usize,
    ) -> Rc<Vec<u8>> {
        let c = Rc::new(content);
        if c.len() > max / 4 {
            return c; // too big to be worth keeping
        }
        if self.map.insert((ns, oid), (kind, c.clone())).is_none() {
            self.bytes += cost(&c);
            self.order.push_back((ns, oid));
        }
        while self.bytes > max {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some((_, v)) = self.map.remove(&k) {
                self.bytes -= cost(&v);
            }
        }
        c
    }
}

/// The intact frames of a segment up to `size`, in order: damaged regions are stepped
/// over and listed in `damage` (the zeros after a segment's last frame are not damage).
struct Frames<'a, F> {
    seg: &'a Segment<F>,
    window: Window<'a, F>,
    pos: u64,
    size: u64,
    damage: Vec<Corruption>,
}

impl<'a, F: SegmentFile> Frames<'a, F> {
    fn new(seg: &'a Segment<F>, size: u64) -> Self {
        Frames {
            seg,
            window: Window::new(&*seg.file),
            pos: SEGMENT_HEADER_LEN as u64,
            size,
            damage: Vec::new(),
        }
    }

    /// The next frame's body and where it starts.
    async fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let name = || segment_name(self.seg.id);
        let salt = self.seg.salt;
        while self.pos < self.size {
            let header = self
                .window
                .get(self.pos, FRAME_HEADER_LEN)
                .await
                .map_err(io_err("read", name()))?
                .and_then(|h| FrameHeader::decode(h, salt));
            if let Some(h) = header {
                let body_at = self.pos + FRAME_HEADER_LEN as u64;
                let body = self
                    .window
                    .get(body_at, h.body_len as usize)
                    .await
                    .map_err(io_err("read", name()))?
                    .filter(|b| h.body_ok(b, salt))
                    .map(<[u8]>::to_vec);
                if let Some(body) = body {
                    self.pos += h.total_len();
                    return Ok(Some((body_at, body)));
                }
            }
            // Damage (or the zeros after the last frame): on to the next frame.
            let rest = self
                .seg
                .file
                .read_at(self.pos, (self.size - self.pos) as usize)
                .await
                .map_err(io_err("read", name()))?;
            let (len, end) = match record::find_next_frame(&rest, 1, salt, 0) {
                Some(skip) => (skip, false),
                None => (rest.len(), true),
            };
            if rest[..len].iter().any(|b| *b != 0) {
                self.damage.push(Corruption {
                    segment: self.seg.id,
                    offset: self.pos,
                    len: len as u64,
                    reason: "frame check failed".into(),
                });
            }
            if end {
                return Ok(None);
            }
            self.pos += len as u64;
        }
        Ok(None)
    }
}

/// Keeps copying at or under a rate: after each piece, sleeps as long as the bytes
/// copied so far are ahead of the time spent.
struct Pacer {
    rate: u64,
    start: std::time::Instant,
    bytes: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            start: std::time::Instant::now(),
            bytes: 0,
        }
    }

    async fn spent(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.rate == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            glommio::timer::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Doubling;

    #[test]
    fn doubling_buckets_take_values_up_to_their_bound_and_the_last_takes_the_rest() {
        let mut h = Doubling::default();
        for v in [0, 64, 65, 128, 129, u64::MAX] {
            h.record(v, 64);
        }
        assert_eq!(h.counts[0], 2, "0 and 64");
        assert_eq!(h.counts[1], 2, "65 and 128");
        assert_eq!(h.counts[2], 1, "129");
        assert_eq!(h.counts[Doubling::BUCKETS - 1], 1, "past every bound");
        assert_eq!(h.sum, u64::MAX, "saturates");
        let bounds: Vec<u64> = Doubling::bounds(64).collect();
        assert_eq!(bounds.len(), Doubling::BUCKETS - 1);
        assert_eq!((bounds[0], bounds[2]), (64, 256));
    }
}
