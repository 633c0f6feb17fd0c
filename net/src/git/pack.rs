//! Packfiles (git `Documentation/technical/pack-format.txt`), pure: reading a pushed
//! pack into entries, resolving deltas and verifying every object id, and writing an
//! outgoing pack from stored entries without re-deflating.
//!
//! Reading keeps each entry's deflated bytes exactly as sent (the store keeps them, so
//! a later fetch can copy them out). Limits are checked before any allocation that a
//! hostile pack could make large: an object's declared size above
//! [`Limits::object_bytes_max`] is rejected from its header alone.

use std::collections::HashMap;

use super::checksum::Sha1;
use super::{ObjectKind, Oid};

/// What a pushed pack may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub object_bytes_max: u64,
    pub objects_max: u32,
    pub delta_depth_max: usize,
    /// Most bytes reading a pack may inflate and produce by applying deltas, counted
    /// separately by the reader ([`PackStream`]) and by [`resolve`]: a pack of a few
    /// MiB can otherwise ask for terabytes (a large base, many small deltas on it).
    pub inflated_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            object_bytes_max: 1 << 30,
            objects_max: 10_000_000,
            delta_depth_max: 10_000,
            inflated_bytes_max: 64 << 30,
        }
    }
}

/// Why a pack is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("not a pack: {0}")]
    Header(&'static str),
    #[error("pack is truncated")]
    Truncated,
    #[error("pack checksum does not match its content")]
    BadTrailer,
    #[error("pack declares {declared} objects but holds {found}")]
    WrongCount { declared: u32, found: u32 },
    #[error("pack declares {0} objects, more than the limit")]
    TooManyObjects(u32),
    #[error("object at offset {offset}: invalid type {kind}")]
    BadType { offset: usize, kind: u8 },
    #[error(
        "object at offset {offset}: declared size {size} is larger than the limit of {max} bytes"
    )]
    TooLarge { offset: usize, size: u64, max: u64 },
    #[error("object at offset {offset}: OFS_DELTA base is outside the pack or not an object")]
    BadOfsBase { offset: usize },
    #[error(
        "object at offset {offset}: zlib stream is invalid or does not match its declared size"
    )]
    BadZlib { offset: usize },
    #[error("object at offset {offset}: delta does not apply: {reason}")]
    BadDelta { offset: usize, reason: &'static str },
    #[error("delta base {0} is neither in the pack nor in the repository")]
    MissingBase(String),
    #[error("deltas form a cycle or a chain deeper than the limit")]
    DeltaCycle,
    #[error("the pack inflates to more than {0} bytes (limits.push_inflated_bytes_max)")]
    InflatesTooMuch(u64),
    #[error("object {0} is a SHA-1 collision attack")]
    Collision(String),
    /// Reading the pack hit a bug of ours: contained (see `crate::contain`).
    #[error("{0}")]
    Panicked(#[from] crate::contain::Panicked),
}

/// How an entry is stored in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Full(ObjectKind),
    OfsDelta { base_offset: usize },
    RefDelta { base: Oid },
}

/// One entry of a pack as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: usize,
    pub kind: EntryKind,
    /// Inflated size of the entry's data (the delta's size for a delta).
    pub size: u64,
    /// Range of the zlib stream in the pack.
    pub data: std::ops::Range<usize>,
    /// For whole objects: the id, computed while the entry was first inflated.
    pub oid: Option<Oid>,
    /// An OFS_DELTA resolved while the pack arrived (its id is then in `oid`).
    pub delta: Option<EarlyDelta>,
}

impl Entry {
    /// The object, if its id is known already (a whole object, or a delta resolved
    /// while the pack arrived).
    pub fn resolved(&self) -> Option<Resolved> {
        let oid = self.oid?;
        let (kind, object_size, base) = match (self.kind, self.delta) {
            (EntryKind::Full(k), _) => (k, self.size, None),
            (_, Some(d)) => (d.kind, d.object_size, Some(d.base)),
            _ => return None,
        };
        Some(Resolved {
            oid,
            kind,
            object_size,
            entry_size: self.size,
            base,
            data: self.data.clone(),
        })
    }
}

/// What resolving a delta while its pack arrived found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyDelta {
    pub kind: ObjectKind,
    pub object_size: u64,
    /// The base's id.
    pub base: Oid,
}

/// Whole objects up to this size stay in memory after they are read, as bases for the
/// deltas that follow them ([`PackStream`]); larger bases are inflated again (their
/// whole chain). Blobs past the first size are rarely bases; trees are, in chains (a
/// directory of 10,000 entries is a tree of 400 KB).
const BASE_CACHE_OBJECT_MAX: u64 = 256 << 10;
const BASE_CACHE_TREE_MAX: u64 = 4 << 20;
/// Most levels of a chain a delta resolved while the pack arrives inflates again when
/// its bases are no longer cached (each level is a call: deeper chains, which a
/// hostile pack can make 10,000 deep, would overflow the thread's stack); deeper ones
/// are left to [`resolve`], which walks without recursion.
const EARLY_CHAIN_MAX: usize = 64;

/// Whether an object of `kind` and `size` is kept as a base.
fn cached_as_base(kind: ObjectKind, size: u64) -> bool {
    size <= match kind {
        ObjectKind::Blob => BASE_CACHE_OBJECT_MAX,
        _ => BASE_CACHE_TREE_MAX,
    }
}
/// Most bytes of such bases held at once (the oldest go first).
const BASE_CACHE_BYTES_MAX: usize = 32 << 20;

/// An object of the pack after resolution: what the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub oid: Oid,
    pub kind: ObjectKind,
    pub object_size: u64,
    pub entry_size: u64,
    /// For deltas: the base's id (in the pack or already stored).
    pub base: Option<Oid>,
    /// Range of the deflated entry data in the pack.
    pub data: std::ops::Range<usize>,
}

/// Sees each commit, tree and tag of a pack once, as its content comes out of the
/// pack (read whole, or a delta resolved), with its id. Readers keep no content past
/// that: a push holds a few dozen bytes per object, not its trees (git.git's history
/// inflates to 2.6 GB of trees).
pub trait Inspect {
    fn inspect(&mut self, oid: &Oid, kind: ObjectKind, content: &[u8]);
}

/// Reading without looking at contents.
impl Inspect for () {
    fn inspect(&mut self, _: &Oid, _: ObjectKind, _: &[u8]) {}
}

/// Inflates the zlib stream at the start of `input`, which must produce exactly `size`
/// bytes. Returns the content and the number of compressed bytes consumed.
pub fn inflate_prefix(input: &[u8], size: u64) -> Option<(Vec<u8>, usize)> {
    let size = usize::try_from(size).ok()?;
    let mut z = flate2::Decompress::new(true);
    let mut out = Vec::with_capacity(size.min(64 << 20));
    loop {
        if out.len() == out.capacity() {
            // One spare byte to notice a stream longer than declared.
            out.reserve((size + 1 - out.len()).clamp(1, 64 << 20));
        }
        let before_in = z.total_in();
        let before_out = z.total_out();
        let status = z
            .decompress_vec(
                &input[z.total_in() as usize..],
                &mut out,
                flate2::FlushDecompress::None,
            )
            .ok()?;
        if out.len() > size {
            return None;
        }
        match status {
            flate2::Status::StreamEnd => {
                return (out.len() == size).then_some((out, z.total_in() as usize));
            }
            _ if z.total_in() == before_in && z.total_out() == before_out => return None,
            _ => {}
        }
    }
}

fn hash(kind: ObjectKind, content: &[u8]) -> Result<Oid, PackError> {
    repospanner_object::object_id(kind, content).map_err(|c| PackError::Collision(c.0))
}

/// The object id of `content` as git computes it, with SHA-1 collision detection.
pub fn object_id(kind: ObjectKind, content: &[u8]) -> Result<Oid, PackError> {
    hash(kind, content)
}

/// Reads every entry header of `pack` and checks its framing and trailer; `inspect`
/// sees the commits, trees and tags it reads whole or resolves on the way.
pub fn read_entries(
    pack: &[u8],
    limits: &Limits,
    inspect: &mut dyn Inspect,
) -> Result<Vec<Entry>, PackError> {
    let mut s = PackStream::new(*limits);
    s.advance(pack, inspect)?;
    s.finish(pack, inspect)
}

/// The entry being inflated while its bytes arrive.
struct Inflating {
    offset: usize,
    kind: EntryKind,
    size: u64,
    data_start: usize,
    z: flate2::Decompress,
    /// The content, while it is inflated: of whole objects small enough to be kept as
    /// bases, commits, trees and tags (inspected), and OFS_DELTAs (resolved at once).
    kept: Option<Vec<u8>>,
    /// The object id being computed, for whole objects.
    oid: Hashing,
}

/// How a whole object's id is being computed.
enum Hashing {
    None,
    Inline(Box<sha1dc::Hasher>),
}

/// The id a collision-detecting hasher computed, or the collision it found
/// ([`repospanner_object::finish`]).
fn finalize(h: sha1dc::Hasher) -> Result<Oid, PackError> {
    repospanner_object::finish(h).map_err(|c| PackError::Collision(c.0))
}

/// The pack's trailer, a SHA-1 of everything before it, computed as the pack arrives.
#[derive(Debug, Clone)]
pub struct Trailer {
    hasher: Sha1,
    hashed: usize,
    /// What [`Trailer::push`] was given after the hashed part (at most 20 bytes).
    held: Vec<u8>,
}

impl Default for Trailer {
    fn default() -> Self {
        Trailer::new()
    }
}

impl Trailer {
    pub fn new() -> Trailer {
        Trailer {
            hasher: Sha1::new(),
            hashed: 0,
            held: Vec::new(),
        }
    }

    /// Hashes the next `piece` of the pack as it arrives, holding back the last 20
    /// bytes given so far, which may be the trailer: the pieces are hashed while hot in
    /// the cache, where reading them back from a spool file's mapping right behind its
    /// writer took a page fault every few pages. Not to be mixed with
    /// [`Trailer::feed`].
    pub fn push(&mut self, piece: &[u8]) {
        let total = self.held.len() + piece.len();
        if total <= 20 {
            self.held.extend_from_slice(piece);
            return;
        }
        let now = total - 20;
        let from_held = now.min(self.held.len());
        self.hasher.update(&self.held[..from_held]);
        let from_piece = now - from_held;
        self.hasher.update(&piece[..from_piece]);
        self.hashed += now;
        self.held.drain(..from_held);
        self.held.extend_from_slice(&piece[from_piece..]);
    }

    /// Hashes what arrived of the pack (`buf`, which only grows), but for its last 20
    /// bytes, which may be the trailer.
    pub fn feed(&mut self, buf: &[u8]) {
        self.hash_upto(buf, buf.len().saturating_sub(20));
    }

    fn hash_upto(&mut self, buf: &[u8], end: usize) {
        if end > self.hashed {
            self.hasher.update(&buf[self.hashed..end]);
            self.hashed = end;
        }
    }

    /// `buf` is the whole pack (of which what was fed or pushed is the start): its last
    /// 20 bytes must be the SHA-1 of the rest.
    pub fn check(mut self, buf: &[u8]) -> Result<(), PackError> {
        if buf.len() < 12 + 20 {
            return Err(PackError::Truncated);
        }
        let body_end = buf.len() - 20;
        self.hash_upto(buf, body_end);
        if self.hashed != body_end || self.hasher.finalize()[..] != buf[body_end..] {
            return Err(PackError::BadTrailer);
        }
        Ok(())
    }
}

/// Reads a pack while it arrives: [`PackStream::advance`] is called with the bytes
/// received so far (a buffer that only grows) and parses, inflates and hashes every
/// entry it can, so the work overlaps with the transfer; [`PackStream::finish`] checks
/// the trailer and the count once everything is there. The last 20 bytes seen are
/// always held back, since they may be the trailer.
pub struct PackStream {
    limits: Limits,
    count: Option<u32>,
    pos: usize,
    entries: Vec<Entry>,
    /// Entry index by offset: where entries start (an OFS_DELTA's base must be one).
    by_offset: HashMap<usize, usize>,
    /// Contents of recent whole objects and resolved deltas, by entry index.
    bases: HashMap<usize, Content>,
    bases_order: std::collections::VecDeque<usize>,
    bases_bytes: usize,
    current: Option<Inflating>,
    /// The inflater of the last entry, reset for the next (a new one per entry cost an
    /// allocation of its state and window each).
    spare_z: Option<flate2::Decompress>,
    /// Bytes inflated and produced so far ([`Limits::inflated_bytes_max`]); a cell, as
    /// inflating a base again happens in a `&self` method.
    inflated: std::cell::Cell<u64>,
    /// `None`: the caller checks the trailer ([`PackStream::without_trailer`]).
    trailer: Option<Trailer>,
    scratch: Vec<u8>,
    /// Ids and inspection left to the caller ([`PackStream::defer`]): the contents
    /// to hash and inspect, their bytes, and the entries whose ids are still out.
    deferred: bool,
    jobs: Vec<Job>,
    jobs_bytes: usize,
    outstanding: std::collections::VecDeque<usize>,
}

/// An object whose id a deferring [`PackStream`] leaves to its caller: hash
/// `content` as `kind` ([`object_id`]), inspect it unless it is a blob, and give the
/// id back with [`PackStream::set_ids`].
#[derive(Debug, Clone)]
pub struct Job {
    pub index: usize,
    pub kind: ObjectKind,
    pub content: Content,
}

/// A content the reader shares between its base cache and a [`Job`]: the vector it
/// was inflated or resolved into, never copied again.
pub type Content = std::sync::Arc<Vec<u8>>;

/// Most bytes of jobs a deferring reader holds for its caller before it stops reading
/// and lets the caller take them ([`PackStream::stalled`]; checked between entries, so
/// one large object may pass it).
const JOBS_BYTES_MAX: usize = 4 << 20;

/// What a [`Job`] costs besides its content (a pack of empty blobs is many jobs of
/// nothing).
pub const JOB_BYTES: usize = 64;

/// Placeholder for an early delta's base id while the base's id is out with the
/// caller; [`PackStream::set_ids`] fills it in with the delta's own.
const PENDING: Oid = [0; 20];

impl std::fmt::Debug for PackStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackStream")
            .field("pos", &self.pos)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Parses an entry header at `at`; `Ok(None)` when `buf` ends first.
fn entry_header_at(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    starts: &HashMap<usize, usize>,
) -> Result<Option<(EntryKind, u64, usize)>, PackError> {
    let offset = at;
    let mut i = at;
    let mut next = || -> Option<u8> {
        let b = buf.get(i).copied();
        i += 1;
        b
    };
    let Some(mut c) = next() else { return Ok(None) };
    let type_bits = (c >> 4) & 7;
    let mut size = u64::from(c & 15);
    let mut shift = 4u32;
    while c & 0x80 != 0 {
        let Some(b) = next() else { return Ok(None) };
        c = b;
        if shift > 57 {
            return Err(PackError::TooLarge {
                offset,
                size: u64::MAX,
                max: limits.object_bytes_max,
            });
        }
        size |= u64::from(c & 0x7f) << shift;
        shift += 7;
    }
    if size > limits.object_bytes_max {
        return Err(PackError::TooLarge {
            offset,
            size,
            max: limits.object_bytes_max,
        });
    }
    let kind = match type_bits {
        6 => {
            let Some(mut c) = next() else { return Ok(None) };
            let mut rel = u64::from(c & 0x7f);
            while c & 0x80 != 0 {
                let Some(b) = next() else { return Ok(None) };
                c = b;
                rel = rel
                    .checked_add(1)
                    .and_then(|r| r.checked_mul(128))
                    .map(|r| r | u64::from(c & 0x7f))
                    .ok_or(PackError::BadOfsBase { offset })?;
            }
            let base_offset = (offset as u64)
                .checked_sub(rel)
                .filter(|b| *b >= 12 && rel > 0)
                .ok_or(PackError::BadOfsBase { offset })? as usize;
            if !starts.contains_key(&base_offset) {
                return Err(PackError::BadOfsBase { offset });
            }
            EntryKind::OfsDelta { base_offset }
        }
        7 => {
            let from = i;
            let Some(id) = buf.get(from..from + 20) else {
                return Ok(None);
            };
            let mut base = [0u8; 20];
            base.copy_from_slice(id);
            i += 20;
            EntryKind::RefDelta { base }
        }
        t => EntryKind::Full(ObjectKind::from_u8(t).ok_or(PackError::BadType { offset, kind: t })?),
    };
    Ok(Some((kind, size, i - at)))
}

impl PackStream {
    pub fn new(limits: Limits) -> PackStream {
        PackStream {
            limits,
            count: None,
            pos: 0,
            entries: Vec::new(),
            by_offset: HashMap::new(),
            bases: HashMap::new(),
            bases_order: Default::default(),
            bases_bytes: 0,
            current: None,
            spare_z: None,
            inflated: std::cell::Cell::new(0),
            trailer: Some(Trailer::new()),
            scratch: vec![0; 64 << 10],
            deferred: false,
            jobs: Vec::new(),
            jobs_bytes: 0,
            outstanding: Default::default(),
        }
    }

    /// Entries read so far.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The objects among entries `from..verified_upto()` whose ids are known (whole
    /// objects, and deltas resolved while the pack arrived).
    pub fn resolved_since(&self, from: usize) -> Vec<Resolved> {
        self.entries
            .get(from..self.verified_upto().max(from))
            .unwrap_or_default()
            .iter()
            .filter_map(Entry::resolved)
            .collect()
    }

    /// Entries before this one have every id they will have while the pack arrives
    /// (in a deferring reader, the first whose id is still out with the caller).
    pub fn verified_upto(&self) -> usize {
        self.outstanding
            .front()
            .copied()
            .unwrap_or(self.entries.len())
    }

    /// From now on, the ids (and inspection) of the objects whose contents the reader
    /// holds anyway are left to the caller, who can compute them beside the reader:
    /// [`PackStream::take_jobs`] gives them, [`PackStream::set_ids`] takes the ids
    /// back, in the order given. Whole objects too large to keep are still hashed
    /// while they are inflated.
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    /// The objects to hash and inspect since the last call (a deferring reader).
    pub fn take_jobs(&mut self) -> Vec<Job> {
        self.jobs_bytes = 0;
        std::mem::take(&mut self.jobs)
    }

    /// Whether a deferring reader stopped because it holds as much for its caller as
    /// it may: take its jobs and advance it again over the same bytes.
    pub fn stalled(&self) -> bool {
        self.jobs_bytes >= JOBS_BYTES_MAX
    }

    /// The ids the caller computed for jobs it took, in the order it took them. An
    /// early delta's base id is filled in with its own (its base came first).
    pub fn set_ids(&mut self, ids: &[(usize, Oid)]) -> Result<(), PackError> {
        for &(index, oid) in ids {
            if self.outstanding.pop_front() != Some(index) {
                return Err(PackError::Header("ids given back out of order (a bug)"));
            }
            let base = match self.entries[index].kind {
                EntryKind::OfsDelta { base_offset } => self
                    .by_offset
                    .get(&base_offset)
                    .and_then(|b| self.entries[*b].oid),
                _ => None,
            };
            let e = &mut self.entries[index];
            if let Some(d) = e.delta.as_mut() {
                d.base = base.ok_or(PackError::Header("a delta's base has no id (a bug)"))?;
            }
            e.oid = Some(oid);
        }
        Ok(())
    }

    /// Leaves `content` of entry `index` to the caller to hash and inspect.
    fn push_job(&mut self, index: usize, kind: ObjectKind, content: Content) {
        self.jobs_bytes += content.len() + JOB_BYTES;
        self.outstanding.push_back(index);
        self.jobs.push(Job {
            index,
            kind,
            content,
        });
    }

    /// A reader that leaves the trailer to its caller, who hashes the bytes where it
    /// has them anyway ([`Trailer`]): the pack reader's thread is a push's bottleneck
    /// while it arrives (SHA-1 with collision detection of every object), the trailer's
    /// plain SHA-1 is not.
    pub fn without_trailer(limits: Limits) -> PackStream {
        PackStream {
            trailer: None,
            ..PackStream::new(limits)
        }
    }

    /// Parses what `buf` (all pack bytes received so far) allows.
    pub fn advance(&mut self, buf: &[u8], inspect: &mut dyn Inspect) -> Result<(), PackError> {
        let avail = buf.len().saturating_sub(20);
        self.step(buf, avail, inspect)?;
        if let Some(t) = self.trailer.as_mut() {
            t.hash_upto(buf, self.pos);
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)] // the reader's state machine for one entry: header, inflate, hash, early resolution share its fields
    fn step(
        &mut self,
        buf: &[u8],
        avail: usize,
        inspect: &mut dyn Inspect,
    ) -> Result<(), PackError> {
        if self.count.is_none() {
            if avail < 12 {
                return Ok(());
            }
            if &buf[..4] != b"PACK" {
                return Err(PackError::Header("missing PACK signature"));
            }
            let version = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if version != 2 && version != 3 {
                return Err(PackError::Header("unsupported pack version"));
            }
            let count = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if count > self.limits.objects_max {
                return Err(PackError::TooManyObjects(count));
            }
            self.count = Some(count);
            self.pos = 12;
        }
        let count = self.count.unwrap_or(0);
        loop {
            if self.current.is_none() {
                if self.entries.len() as u32 == count || self.pos >= avail || self.stalled() {
                    return Ok(());
                }
                let Some((kind, size, header_len)) =
                    entry_header_at(&buf[..avail], self.pos, &self.limits, &self.by_offset)?
                else {
                    return Ok(());
                };
                if !self.charge(size) {
                    return Err(PackError::InflatesTooMuch(self.limits.inflated_bytes_max));
                }
                // Commits, trees and tags to inspect; small blobs as bases of deltas
                // to come; OFS_DELTAs to resolve them at once.
                let keep = match kind {
                    EntryKind::Full(ObjectKind::Blob) => size <= BASE_CACHE_OBJECT_MAX,
                    EntryKind::Full(_) | EntryKind::OfsDelta { .. } => true,
                    EntryKind::RefDelta { .. } => false,
                };
                let oid = match kind {
                    // Kept whole: a deferring reader leaves its id to the caller.
                    EntryKind::Full(_) if keep && self.deferred => Hashing::None,
                    EntryKind::Full(k) => {
                        let mut h = sha1dc::Hasher::new();
                        h.update(format!("{} {}\0", k.name(), size).as_bytes());
                        Hashing::Inline(Box::new(h))
                    }
                    _ => Hashing::None,
                };
                self.current = Some(Inflating {
                    offset: self.pos,
                    kind,
                    size,
                    data_start: self.pos + header_len,
                    z: match self.spare_z.take() {
                        Some(mut z) => {
                            z.reset(true);
                            z
                        }
                        None => flate2::Decompress::new(true),
                    },
                    kept: keep.then(|| {
                        Vec::with_capacity((size as usize).saturating_add(1).min(1 << 20))
                    }),
                    oid,
                });
            }
            let cur = self.current.as_mut().expect("set above");
            let offset = cur.offset;
            loop {
                let consumed = cur.data_start + cur.z.total_in() as usize;
                if consumed > avail {
                    return Err(PackError::BadZlib { offset });
                }
                let before = (cur.z.total_in(), cur.z.total_out());
                let input = &buf[consumed..avail];
                let none = flate2::FlushDecompress::None;
                // A content kept is inflated where it stays; the rest through the
                // scratch buffer, for its hash only.
                let (status, out) = match cur.kept.as_mut() {
                    Some(k) => {
                        if k.len() == k.capacity() {
                            // Doubling, up to the declared size and one spare byte to
                            // notice a stream longer than declared.
                            let to = (k.capacity() * 2)
                                .max(1 << 20)
                                .min((cur.size as usize).saturating_add(1));
                            k.reserve_exact(to.saturating_sub(k.len()).max(1));
                        }
                        let start = k.len();
                        let status = cur.z.decompress_vec(input, k, none);
                        (status, &k[start..])
                    }
                    None => {
                        let status = cur.z.decompress(input, &mut self.scratch, none);
                        let produced = (cur.z.total_out() - before.1) as usize;
                        (status, &self.scratch[..produced])
                    }
                };
                let status = status.map_err(|_| PackError::BadZlib { offset })?;
                if cur.z.total_out() > cur.size {
                    return Err(PackError::BadZlib { offset });
                }
                if let Hashing::Inline(h) = &mut cur.oid {
                    h.update(out);
                }
                if status == flate2::Status::StreamEnd {
                    break;
                }
                if (cur.z.total_in(), cur.z.total_out()) == before {
                    // Needs more input than has arrived.
                    return Ok(());
                }
            }
            let cur = self.current.take().expect("inflating");
            if cur.z.total_out() != cur.size {
                return Err(PackError::BadZlib { offset: cur.offset });
            }
            let end = cur.data_start + cur.z.total_in() as usize;
            self.spare_z = Some(cur.z);
            let index = self.entries.len();
            let oid = match cur.oid {
                Hashing::Inline(h) => Some(finalize(*h)?),
                Hashing::None => None,
            };
            let mut entry = Entry {
                offset: cur.offset,
                kind: cur.kind,
                size: cur.size,
                data: cur.data_start..end,
                oid,
                delta: None,
            };
            let kept = cur.kept;
            // An entry begun before the reader deferred, hashed as it was inflated, is
            // still the caller's to inspect.
            if self.deferred && kept.is_some() {
                entry.oid = None;
            }
            // The content made: a whole object kept, or an OFS_DELTA resolved at once.
            let made = match (entry.kind, kept) {
                (EntryKind::Full(kind), Some(content)) => Some((kind, entry.size, content)),
                (EntryKind::OfsDelta { base_offset }, Some(delta)) => self
                    .resolve_early(buf, base_offset, &delta)?
                    .map(|(d, content)| {
                        entry.delta = Some(d);
                        (d.kind, d.object_size, content)
                    }),
                _ => None,
            };
            if let Some((kind, size, content)) = made {
                if !self.deferred {
                    let oid = match entry.oid {
                        Some(oid) => oid,
                        None => hash(kind, &content)?,
                    };
                    entry.oid = Some(oid);
                    if kind != ObjectKind::Blob {
                        inspect.inspect(&oid, kind, &content);
                    }
                }
                let base = cached_as_base(kind, size);
                if base || self.deferred {
                    let content = Content::new(content);
                    if base {
                        self.keep_base(index, content.clone());
                    }
                    if self.deferred {
                        self.push_job(index, kind, content);
                    }
                }
            }
            self.entries.push(entry);
            self.by_offset.insert(cur.offset, index);
            self.pos = end;
        }
    }

    /// Counts `bytes` more inflated or produced; false past the limit.
    fn charge(&self, bytes: u64) -> bool {
        let total = self.inflated.get().saturating_add(bytes);
        self.inflated.set(total);
        total <= self.limits.inflated_bytes_max
    }

    fn keep_base(&mut self, index: usize, content: Content) {
        self.bases_bytes += content.len();
        self.bases.insert(index, content);
        self.bases_order.push_back(index);
        while self.bases_bytes > BASE_CACHE_BYTES_MAX {
            let Some(old) = self.bases_order.pop_front() else {
                break;
            };
            if let Some(c) = self.bases.remove(&old) {
                self.bases_bytes -= c.len();
            }
        }
    }

    /// The kind, id and content of entry `index`, if it is a whole object or a delta
    /// resolved early (from the base cache, or inflated again from `buf`).
    fn content_of(&self, buf: &[u8], index: usize, depth: usize) -> Option<(ObjectKind, Content)> {
        if depth > self.limits.delta_depth_max.min(EARLY_CHAIN_MAX) {
            return None;
        }
        let e = self.entries.get(index)?;
        let (kind, size) = match (e.kind, e.delta) {
            (EntryKind::Full(k), _) => (k, e.size),
            (EntryKind::OfsDelta { .. }, Some(d)) => (d.kind, d.object_size),
            _ => return None,
        };
        if let Some(c) = self.bases.get(&index) {
            return Some((kind, c.clone()));
        }
        // Not cached: inflated again (with its chain) only while that stays cheap; a
        // large base would be inflated again for every delta on it. Left to `resolve`,
        // which inflates each base once.
        if size > BASE_CACHE_TREE_MAX {
            return None;
        }
        if !self.charge(e.size) {
            return None;
        }
        let data = inflate_prefix(buf.get(e.data.clone())?, e.size)?.0;
        let content = match e.kind {
            EntryKind::OfsDelta { base_offset } => {
                let (_, base) =
                    self.content_of(buf, *self.by_offset.get(&base_offset)?, depth + 1)?;
                if !self.charge(size) {
                    return None;
                }
                apply_delta(&base, &data, self.limits.object_bytes_max).ok()?
            }
            _ => data,
        };
        Some((kind, Content::new(content)))
    }

    /// Resolves an OFS_DELTA whose base came earlier, as soon as it is read, so that
    /// little is left to resolve once the pack has arrived. `None` when its base is
    /// not resolved yet (a REF_DELTA chain) or the delta is bad: [`resolve`] then
    /// deals with it (and reports what is wrong with it).
    fn resolve_early(
        &mut self,
        buf: &[u8],
        base_offset: usize,
        delta: &[u8],
    ) -> Result<Option<(EarlyDelta, Vec<u8>)>, PackError> {
        let Some(&base_index) = self.by_offset.get(&base_offset) else {
            return Ok(None);
        };
        let Some((kind, content)) = self.content_of(buf, base_index, 1) else {
            return Ok(None);
        };
        // A base whose id is out with the caller gets it with the delta's own.
        let base = match self.entries[base_index].oid {
            Some(b) => b,
            None if self.deferred => PENDING,
            None => return Ok(None),
        };
        let Ok(out) = apply_delta(&content, delta, self.limits.object_bytes_max) else {
            return Ok(None);
        };
        if !self.charge(out.len() as u64) {
            return Err(PackError::InflatesTooMuch(self.limits.inflated_bytes_max));
        }
        Ok(Some((
            EarlyDelta {
                kind,
                object_size: out.len() as u64,
                base,
            },
            out,
        )))
    }

    /// Everything has arrived in `buf`: parses the rest, then checks the count and the
    /// trailer.
    pub fn finish(
        mut self,
        buf: &[u8],
        inspect: &mut dyn Inspect,
    ) -> Result<Vec<Entry>, PackError> {
        if buf.len() < 12 + 20 {
            return Err(PackError::Truncated);
        }
        let body_end = buf.len() - 20;
        self.step(buf, body_end, inspect)?;
        if !self.jobs.is_empty() || !self.outstanding.is_empty() {
            return Err(PackError::Header("ids still out with the caller (a bug)"));
        }
        let count = self.count.unwrap_or(0);
        if self.current.is_some() {
            return Err(PackError::BadZlib {
                offset: self.current.as_ref().map_or(0, |c| c.offset),
            });
        }
        if let Some(t) = self.trailer.take() {
            t.check(buf)?;
        }
        if self.pos < body_end {
            return Err(if self.entries.len() as u32 == count {
                PackError::WrongCount {
                    declared: count,
                    found: count + 1,
                }
            } else {
                PackError::Truncated
            });
        }
        if self.entries.len() as u32 != count {
            return Err(PackError::WrongCount {
                declared: count,
                found: self.entries.len() as u32,
            });
        }
        Ok(self.entries)
    }
}

/// Resolves every delta and computes every object id. `external(oid)` gives the
/// content of an object the repository already has (bases of a thin pack). `inspect`
/// sees the commits, trees and tags whose ids were not known yet (the reader showed it
/// the others). Objects the pack carries twice are kept once.
#[allow(clippy::too_many_lines)] // one depth-first walk over the delta trees; its closures share the walk's state
pub fn resolve(
    pack: &[u8],
    entries: Vec<Entry>,
    limits: &Limits,
    mut external: impl FnMut(&Oid) -> Option<(ObjectKind, Vec<u8>)>,
    inspect: &mut dyn Inspect,
) -> Result<Vec<Resolved>, PackError> {
    // Every delta resolved while the pack arrived (the usual case): nothing to do.
    if entries
        .iter()
        .all(|e| e.oid.is_some() && (matches!(e.kind, EntryKind::Full(_)) || e.delta.is_some()))
    {
        // Sized once: collecting through a filter would double the vector's size as it
        // grows (for a pack of half a million objects, 100 MiB more at the peak).
        let mut seen: foldhash::HashSet<Oid> = foldhash::HashSetExt::with_capacity(entries.len());
        let mut out = Vec::with_capacity(entries.len());
        for r in entries.iter().filter_map(Entry::resolved) {
            if seen.insert(r.oid) {
                out.push(r);
            }
        }
        return Ok(out);
    }
    let by_offset: HashMap<usize, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.offset, i))
        .collect();
    // Children of each base: by base entry index (OFS) or by base id (REF).
    let mut ofs_children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut ref_children: HashMap<Oid, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match e.kind {
            EntryKind::Full(_) => roots.push(i),
            EntryKind::OfsDelta { base_offset } => {
                let b = by_offset[&base_offset];
                ofs_children.entry(b).or_default().push(i);
            }
            EntryKind::RefDelta { base } => ref_children.entry(base).or_default().push(i),
        }
    }
    // Each resolved entry, and how many deltas lie between it and a whole object.
    let mut resolved: Vec<Option<(Resolved, usize)>> = vec![None; entries.len()];
    // Bytes inflated and produced ([`Limits::inflated_bytes_max`]).
    let produced = std::cell::Cell::new(0u64);
    let charge = |bytes: u64| {
        let total = produced.get().saturating_add(bytes);
        produced.set(total);
        if total > limits.inflated_bytes_max {
            Err(PackError::InflatesTooMuch(limits.inflated_bytes_max))
        } else {
            Ok(())
        }
    };

    // Depth-first from each resolved object through its children, keeping only the
    // current chain's contents in memory: a child's content is made when it is
    // visited, from its base's, which its pending siblings share.
    let walk = |start: usize,
                content: Vec<u8>,
                kind: ObjectKind,
                base: Option<Oid>,
                start_depth: usize,
                resolved: &mut Vec<Option<(Resolved, usize)>>,
                ref_children: &mut HashMap<Oid, Vec<usize>>,
                inspect: &mut dyn Inspect|
     -> Result<(), PackError> {
        enum Made {
            Content(Vec<u8>),
            Delta(std::rc::Rc<Vec<u8>>),
        }
        let mut stack = vec![(start, Made::Content(content), base, start_depth)];
        while let Some((i, made, base, depth)) = stack.pop() {
            if depth > limits.delta_depth_max {
                return Err(PackError::DeltaCycle);
            }
            let e = &entries[i];
            let content = match made {
                Made::Content(c) => c,
                Made::Delta(base_content) => {
                    charge(e.size)?;
                    let delta = inflate_prefix(&pack[e.data.clone()], e.size)
                        .ok_or(PackError::BadZlib { offset: e.offset })?
                        .0;
                    let out = apply_delta(&base_content, &delta, limits.object_bytes_max).map_err(
                        |reason| PackError::BadDelta {
                            offset: e.offset,
                            reason,
                        },
                    )?;
                    charge(out.len() as u64)?;
                    out
                }
            };
            let oid = hash(kind, &content)?;
            if kind != ObjectKind::Blob && e.oid.is_none() {
                inspect.inspect(&oid, kind, &content);
            }
            let object_size = content.len() as u64;
            let mut kids: Vec<usize> = ofs_children.get(&i).cloned().unwrap_or_default();
            kids.extend(ref_children.remove(&oid).unwrap_or_default());
            if !kids.is_empty() {
                let shared = std::rc::Rc::new(content);
                for k in kids {
                    stack.push((k, Made::Delta(shared.clone()), Some(oid), depth + 1));
                }
            }
            resolved[i] = Some((
                Resolved {
                    oid,
                    kind,
                    object_size,
                    entry_size: e.size,
                    base,
                    data: e.data.clone(),
                },
                depth,
            ));
        }
        Ok(())
    };

    for &i in &roots {
        let e = &entries[i];
        let EntryKind::Full(kind) = e.kind else {
            continue;
        };
        let is_base =
            ofs_children.contains_key(&i) || e.oid.is_some_and(|o| ref_children.contains_key(&o));
        if let (Some(oid), false) = (e.oid, is_base) {
            // Hashed while reading, and no delta needs its content.
            resolved[i] = Some((
                Resolved {
                    oid,
                    kind,
                    object_size: e.size,
                    entry_size: e.size,
                    base: None,
                    data: e.data.clone(),
                },
                0,
            ));
            continue;
        }
        charge(e.size)?;
        let content = inflate_prefix(&pack[e.data.clone()], e.size)
            .ok_or(PackError::BadZlib { offset: e.offset })?
            .0;
        walk(
            i,
            content,
            kind,
            None,
            0,
            &mut resolved,
            &mut ref_children,
            inspect,
        )?;
    }
    // REF_DELTA bases outside the pack (thin pack) or never resolved.
    while let Some(base) = ref_children.keys().next().copied() {
        let Some((kind, content)) = external(&base) else {
            return Err(PackError::MissingBase(super::hex(&base)));
        };
        let kids = ref_children.remove(&base).unwrap_or_default();
        for k in kids {
            let ke = &entries[k];
            charge(ke.size)?;
            let delta = inflate_prefix(&pack[ke.data.clone()], ke.size)
                .ok_or(PackError::BadZlib { offset: ke.offset })?
                .0;
            let out = apply_delta(&content, &delta, limits.object_bytes_max).map_err(|reason| {
                PackError::BadDelta {
                    offset: ke.offset,
                    reason,
                }
            })?;
            charge(out.len() as u64)?;
            walk(
                k,
                out,
                kind,
                Some(base),
                1,
                &mut resolved,
                &mut ref_children,
                inspect,
            )?;
        }
    }
    if resolved.iter().any(Option::is_none) {
        return Err(PackError::DeltaCycle);
    }
    // An object the pack carries more than once is kept as its copy nearest a whole
    // object: each kept delta's base is then kept nearer still, so no kept object is a
    // delta of itself or of its own descendants (a hostile pack can send X as a delta
    // of a later copy of X; kept first, X would be stored unreadable).
    let mut best: HashMap<Oid, usize> = HashMap::new();
    for (i, (r, depth)) in resolved.iter().flatten().enumerate() {
        match best.entry(r.oid) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if resolved[*o.get()].as_ref().is_some_and(|(_, d)| depth < d) {
                    o.insert(i);
                }
            }
        }
    }
    Ok(resolved
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(i, (r, _))| best.get(&r.oid) == Some(i))
        .map(|(_, (r, _))| r)
        .collect())
}

/// The content of object `oid` of a resolved pack (blob contents are not kept once
/// resolved): its delta chain inflated and applied, bases from the pack or from
/// `external`. `None` if neither holds it.
pub fn content_of(
    pack: &[u8],
    resolved: &[Resolved],
    index: &std::collections::HashMap<Oid, usize>,
    oid: &Oid,
    limits: &Limits,
    external: &mut dyn FnMut(&Oid) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, PackError> {
    let inflated = |r: &Resolved| {
        pack.get(r.data.clone())
            .and_then(|d| inflate_prefix(d, r.entry_size))
            .map(|(v, _)| v)
            .ok_or(PackError::BadZlib {
                offset: r.data.start,
            })
    };
    let mut chain: Vec<&Resolved> = Vec::new();
    let mut cur = *oid;
    let mut content = loop {
        let Some(r) = index.get(&cur).and_then(|&i| resolved.get(i)) else {
            match external(&cur) {
                Some(c) if !chain.is_empty() => break c,
                _ => return Ok(None),
            }
        };
        match r.base {
            None => break inflated(r)?,
            Some(base) => {
                if chain.len() >= limits.delta_depth_max {
                    return Err(PackError::DeltaCycle);
                }
                chain.push(r);
                cur = base;
            }
        }
    };
    while let Some(r) = chain.pop() {
        let delta = inflated(r)?;
        content = apply_delta(&content, &delta, limits.object_bytes_max).map_err(|reason| {
            PackError::BadDelta {
                offset: r.data.start,
                reason,
            }
        })?;
    }
    Ok(Some(content))
}

/// Applies a git delta to `base`; the result may not exceed `max` bytes
/// ([`repospanner_object::delta::apply`]).
pub fn apply_delta(base: &[u8], delta: &[u8], max: u64) -> Result<Vec<u8>, &'static str> {
    repospanner_object::delta::apply(base, delta, max).map_err(|e| e.0)
}

/// One entry to write into an outgoing pack.
#[derive(Debug, Clone)]
pub enum OutEntry<'a> {
    /// A whole object: its kind, inflated size and deflated bytes.
    Full {
        kind: ObjectKind,
        size: u64,
        deflated: &'a [u8],
    },
    /// A delta against an entry written earlier in this pack (by its index).
    OfsDelta {
        base_index: usize,
        size: u64,
        deflated: &'a [u8],
    },
    /// A delta against an object outside the pack (thin pack).
    RefDelta {
        base: Oid,
        size: u64,
        deflated: &'a [u8],
    },
}

impl<'a> OutEntry<'a> {
    /// The entry's deflated bytes, which follow its header as they are.
    pub fn deflated(&self) -> &'a [u8] {
        match self {
            OutEntry::Full { deflated, .. }
            | OutEntry::OfsDelta { deflated, .. }
            | OutEntry::RefDelta { deflated, .. } => deflated,
        }
    }
}

/// Writes packs from stored entries, copying their deflated bytes.
#[derive(Debug)]
pub struct PackWriter {
    /// The trailer checksum (plain SHA-1: it names no object).
    hasher: Sha1,
    offsets: Vec<u64>,
    written: u64,
}

fn entry_header(out: &mut Vec<u8>, type_bits: u8, size: u64) {
    let mut c = (type_bits << 4) | (size & 15) as u8;
    let mut rest = size >> 4;
    while rest != 0 {
        out.push(c | 0x80);
        c = (rest & 0x7f) as u8;
        rest >>= 7;
    }
    out.push(c);
}

impl PackWriter {
    /// Starts a pack of `count` objects; returns the writer and the header bytes.
    pub fn new(count: u32) -> (PackWriter, Vec<u8>) {
        let mut h = Vec::with_capacity(12);
        h.extend_from_slice(b"PACK");
        h.extend_from_slice(&2u32.to_be_bytes());
        h.extend_from_slice(&count.to_be_bytes());
        let mut w = PackWriter {
            hasher: Sha1::new(),
            offsets: Vec::new(),
            written: 0,
        };
        w.feed(&h);
        (w, h)
    }

    fn feed(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.written += b.len() as u64;
    }

    /// Encodes one entry; returns its bytes.
    pub fn entry(&mut self, e: &OutEntry<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        self.entry_to(e, &mut |b| out.extend_from_slice(b));
        out
    }

    /// Encodes one entry into `sink`: its header, then its deflated bytes as they are
    /// (never copied here).
    pub fn entry_to(&mut self, e: &OutEntry<'_>, sink: &mut dyn FnMut(&[u8])) {
        let head = self.entry_head(e);
        sink(&head);
        sink(e.deflated());
    }

    /// Counts one entry into the pack (its offset, the trailer's hash) and returns its
    /// header: the entry is the header, then its deflated bytes as they are.
    pub fn entry_head(&mut self, e: &OutEntry<'_>) -> Vec<u8> {
        let offset = self.written;
        let mut head = Vec::with_capacity(32);
        let deflated = match e {
            OutEntry::Full {
                kind,
                size,
                deflated,
            } => {
                entry_header(&mut head, *kind as u8, *size);
                deflated
            }
            OutEntry::OfsDelta {
                base_index,
                size,
                deflated,
            } => {
                entry_header(&mut head, 6, *size);
                let mut rel = offset - self.offsets[*base_index];
                let mut bytes = vec![(rel & 0x7f) as u8];
                rel >>= 7;
                while rel != 0 {
                    rel -= 1;
                    bytes.push(0x80 | (rel & 0x7f) as u8);
                    rel >>= 7;
                }
                bytes.reverse();
                head.extend_from_slice(&bytes);
                deflated
            }
            OutEntry::RefDelta {
                base,
                size,
                deflated,
            } => {
                entry_header(&mut head, 7, *size);
                head.extend_from_slice(base);
                deflated
            }
        };
        self.offsets.push(offset);
        self.feed(&head);
        self.feed(deflated);
        head
    }

    /// The trailer: SHA-1 of everything written.
    pub fn finish(self) -> Vec<u8> {
        self.hasher.finalize().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).expect("deflate");
        z.finish().expect("deflate")
    }

    fn pack_of(entries: &[OutEntry<'_>]) -> Vec<u8> {
        let (mut w, mut out) = PackWriter::new(entries.len() as u32);
        for e in entries {
            out.extend(w.entry(e));
        }
        out.extend(w.finish());
        out
    }

    /// A whole object's entry of `size` inflated bytes.
    fn full(kind: ObjectKind, size: usize, deflated: &[u8]) -> OutEntry<'_> {
        OutEntry::Full {
            kind,
            size: size as u64,
            deflated,
        }
    }

    /// An OFS_DELTA entry on entry `base_index`, its delta `size` bytes inflated.
    fn ofs(base_index: usize, size: usize, deflated: &[u8]) -> OutEntry<'_> {
        OutEntry::OfsDelta {
            base_index,
            size: size as u64,
            deflated,
        }
    }

    /// delta: copy the whole base, then insert `suffix`.
    fn delta_append(base: &[u8], suffix: &[u8]) -> Vec<u8> {
        let mut d = vec![base.len() as u8, (base.len() + suffix.len()) as u8];
        d.extend_from_slice(&[0x90, base.len() as u8, suffix.len() as u8]);
        d.extend_from_slice(suffix);
        d
    }

    #[test]
    fn round_trip_with_ofs_and_ref_deltas_including_a_base_carried_later() {
        let a = b"hello world".to_vec();
        let da = delta_append(&a, b"!");
        let db = delta_append(b"hello world!", b"?");
        let dz = deflate(&a);
        let dda = deflate(&da);
        let ddb = deflate(&db);
        let a_id = object_id(ObjectKind::Blob, &a).expect("id");
        let b_id = object_id(ObjectKind::Blob, b"hello world!").expect("id");
        // REF_DELTA to b (carried *later* in the pack), then a, then b as OFS of a.
        let pack = pack_of(&[
            OutEntry::RefDelta {
                base: b_id,
                size: db.len() as u64,
                deflated: &ddb,
            },
            full(ObjectKind::Blob, a.len(), &dz),
            ofs(1, da.len(), &dda),
        ]);
        let limits = Limits::default();
        let entries = read_entries(&pack, &limits, &mut ()).expect("entries");
        assert_eq!(entries.len(), 3);
        let r = resolve(&pack, entries.clone(), &limits, |_| None, &mut ()).expect("resolves");
        let ids: Vec<_> = r.iter().map(|r| r.oid).collect();
        assert!(ids.contains(&a_id) && ids.contains(&b_id));
        let c = r.iter().find(|r| r.base == Some(b_id)).expect("c");
        assert_eq!(
            c.oid,
            object_id(ObjectKind::Blob, b"hello world!?").expect("id")
        );
        assert_eq!(c.kind, ObjectKind::Blob);
    }

    /// What an [`Inspect`] was shown, in order.
    #[derive(Default)]
    struct Seen(Vec<(Oid, ObjectKind, Vec<u8>)>);

    impl Inspect for Seen {
        fn inspect(&mut self, oid: &Oid, kind: ObjectKind, content: &[u8]) {
            self.0.push((*oid, kind, content.to_vec()));
        }
    }

    /// The same pack resolved with what was resolved while it arrived forgotten: the
    /// slow path, the oracle for the early one.
    fn resolve_late(pack: &[u8], entries: &[Entry], limits: &Limits) -> Vec<Resolved> {
        let forgotten: Vec<Entry> = entries
            .iter()
            .cloned()
            .map(|mut e| {
                if e.delta.take().is_some() {
                    e.oid = None;
                }
                e
            })
            .collect();
        resolve(pack, forgotten, limits, |_| None, &mut ()).expect("resolves late")
    }

    /// A git delta from a base of `base_len` bytes: its first `copy` bytes, then
    /// `insert` (at most 127 bytes).
    fn delta(base_len: usize, copy: usize, insert: &[u8]) -> Vec<u8> {
        let varint = |mut n: usize, out: &mut Vec<u8>| loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        let mut d = Vec::new();
        varint(base_len, &mut d);
        varint(copy + insert.len(), &mut d);
        if copy > 0 {
            d.extend_from_slice(&[0xb0, copy as u8, (copy >> 8) as u8]);
        }
        if !insert.is_empty() {
            d.push(insert.len() as u8);
            d.extend_from_slice(insert);
        }
        d
    }

    #[test]
    fn an_object_sent_as_a_delta_of_itself_is_kept_from_its_whole_copy() {
        let x = b"content that a delta copies whole".to_vec();
        let y = [x.as_slice(), b"!"].concat();
        let id = |c: &[u8]| object_id(ObjectKind::Blob, c).expect("id");
        let (x_id, y_id) = (id(&x), id(&y));
        let x_of_x = deflate(&delta(x.len(), x.len(), b""));
        let x_of_y = deflate(&delta(y.len(), x.len(), b""));
        let y_of_x = deflate(&delta(x.len(), x.len(), b"!"));
        let (dx, dy) = (deflate(&x), deflate(&y));
        let reference = |base, d: &[u8], deflated| OutEntry::RefDelta {
            base,
            size: d.len() as u64,
            deflated,
        };
        let limits = Limits::default();
        for (name, pack) in [
            // X as a delta of itself, before X whole.
            (
                "self",
                pack_of(&[
                    reference(x_id, &delta(x.len(), x.len(), b""), &x_of_x),
                    full(ObjectKind::Blob, x.len(), &dx),
                ]),
            ),
            // X and Y as deltas of each other, before both whole.
            (
                "pair",
                pack_of(&[
                    reference(y_id, &delta(y.len(), x.len(), b""), &x_of_y),
                    reference(x_id, &delta(x.len(), x.len(), b"!"), &y_of_x),
                    full(ObjectKind::Blob, x.len(), &dx),
                    full(ObjectKind::Blob, y.len(), &dy),
                ]),
            ),
            // X as a delta of Y, Y as a delta of X, X whole: Y stays a delta of X.
            (
                "chain",
                pack_of(&[
                    reference(y_id, &delta(y.len(), x.len(), b""), &x_of_y),
                    full(ObjectKind::Blob, x.len(), &dx),
                    reference(x_id, &delta(x.len(), x.len(), b"!"), &y_of_x),
                ]),
            ),
        ] {
            let entries = read_entries(&pack, &limits, &mut ()).expect("entries");
            let r = resolve(&pack, entries, &limits, |_| None, &mut ()).expect("resolves");
            let by_id: HashMap<Oid, &Resolved> = r.iter().map(|r| (r.oid, r)).collect();
            assert_eq!(by_id.len(), r.len(), "{name}: each object once");
            assert_eq!(by_id[&x_id].base, None, "{name}: X kept whole");
            // Every kept delta's base chain ends at a whole object.
            for o in &r {
                let mut at = o;
                for _ in 0..r.len() {
                    match at.base {
                        None => break,
                        Some(b) => at = by_id[&b],
                    }
                }
                assert_eq!(
                    at.base,
                    None,
                    "{name}: a cycle through {}",
                    super::super::hex(&o.oid)
                );
            }
        }
    }

    #[test]
    fn an_entry_inflating_to_more_or_less_than_it_declares_is_refused() {
        // A tree (kept, inflated where it stays), a small blob (kept as a base) and a
        // large blob (hashed through the scratch buffer), each declared one byte short
        // and one byte long, read whole and as it arrives 7 bytes at a time.
        let tree = b"100644 f\0aaaaaaaaaaaaaaaaaaaa".repeat(40);
        let small = b"small blob ".repeat(100);
        let large: Vec<u8> = (0..(BASE_CACHE_OBJECT_MAX as u32 + 1000))
            .map(|i| (i * 7) as u8)
            .collect();
        for (kind, content) in [
            (ObjectKind::Tree, tree),
            (ObjectKind::Blob, small),
            (ObjectKind::Blob, large),
        ] {
            let d = deflate(&content);
            for size in [content.len() - 1, content.len() + 1] {
                let pack = pack_of(&[full(kind, size, &d)]);
                let limits = Limits::default();
                let whole = read_entries(&pack, &limits, &mut ());
                assert!(
                    matches!(whole, Err(PackError::BadZlib { .. })),
                    "{kind:?} {size}: {whole:?}"
                );
                for defer in [false, true] {
                    let mut s = PackStream::new(limits);
                    if defer {
                        s.defer();
                    }
                    let mut got = Vec::new();
                    let mut r = Ok(());
                    for piece in pack.chunks(7) {
                        got.extend_from_slice(piece);
                        r = s.advance(&got, &mut ());
                        let _ = s.take_jobs();
                        if r.is_err() {
                            break;
                        }
                    }
                    let r = r.and_then(|()| s.finish(&pack, &mut ()).map(|_| ()));
                    assert!(
                        matches!(r, Err(PackError::BadZlib { .. })),
                        "{kind:?} {size} {defer}: {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn what_a_pack_inflates_to_is_bounded() {
        // A 1 MiB blob and 64 deltas on it that copy 64 KiB of it each: 5 MiB produced
        // from a pack of a few KiB.
        let base = vec![7u8; 1 << 20];
        let dbase = deflate(&base);
        let deltas: Vec<(Vec<u8>, Vec<u8>)> = (0..64u8)
            .map(|i| {
                let d = delta(base.len(), 0xffff, &[i]);
                let z = deflate(&d);
                (d, z)
            })
            .collect();
        let base_id = object_id(ObjectKind::Blob, &base).expect("id");
        let mut out = vec![full(ObjectKind::Blob, base.len(), &dbase)];
        for (d, z) in &deltas {
            // REF_DELTAs: left to resolve (the reader resolves OFS_DELTAs only).
            out.push(OutEntry::RefDelta {
                base: base_id,
                size: d.len() as u64,
                deflated: z,
            });
        }
        let pack = pack_of(&out);
        let roomy = Limits::default();
        let entries = read_entries(&pack, &roomy, &mut ()).expect("entries");
        assert_eq!(
            resolve(&pack, entries.clone(), &roomy, |_| None, &mut ()).map(|r| r.len()),
            Ok(65)
        );
        let tight = Limits {
            inflated_bytes_max: 2 << 20,
            ..Limits::default()
        };
        assert_eq!(
            resolve(&pack, entries, &tight, |_| None, &mut ()),
            Err(PackError::InflatesTooMuch(2 << 20))
        );
        // The reader counts what entries declare they inflate to, from their headers.
        let tiny = Limits {
            inflated_bytes_max: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(
            read_entries(&pack, &tiny, &mut ()),
            Err(PackError::InflatesTooMuch(1 << 20))
        );
    }

    #[test]
    fn a_delta_on_a_deep_chain_no_longer_cached_is_resolved_without_deep_recursion() {
        // A chain of 5,000 OFS deltas, each a byte longer than its base, then enough
        // cacheable blobs to push the whole chain out of the reader's base cache, then
        // one more delta on the chain's end: inflating its chain again, one call per
        // level, would overflow the stack.
        const DEPTH: usize = 5_000;
        let mut deflated = vec![deflate(b"r")];
        let mut sizes = vec![1usize];
        let mut content = b"r".to_vec();
        for _ in 0..DEPTH {
            let d = delta(content.len(), content.len(), b"+");
            content.push(b'+');
            sizes.push(d.len());
            deflated.push(deflate(&d));
        }
        let zeros = vec![0u8; BASE_CACHE_OBJECT_MAX as usize];
        let fillers: Vec<Vec<u8>> = (0..BASE_CACHE_BYTES_MAX / zeros.len() + 1)
            .map(|i| {
                let mut z = zeros.clone();
                z[0] = i as u8;
                deflate(&z)
            })
            .collect();
        let last = delta(content.len(), content.len(), b"!");
        let last_z = deflate(&last);
        let mut out: Vec<OutEntry<'_>> = vec![full(ObjectKind::Blob, 1, &deflated[0])];
        for k in 1..=DEPTH {
            out.push(ofs(k - 1, sizes[k], &deflated[k]));
        }
        for f in &fillers {
            out.push(full(ObjectKind::Blob, zeros.len(), f));
        }
        out.push(ofs(DEPTH, last.len(), &last_z));
        let pack = pack_of(&out);
        let limits = Limits::default();
        let entries = read_entries(&pack, &limits, &mut ()).expect("entries");
        let r = resolve(&pack, entries, &limits, |_| None, &mut ()).expect("resolves");
        content.push(b'!');
        let want = object_id(ObjectKind::Blob, &content).expect("id");
        assert!(r.iter().any(|o| o.oid == want));
    }

    #[test]
    fn ofs_deltas_are_resolved_while_the_pack_arrives_as_the_slow_path_would() {
        // A chain a -> b -> c of blobs, a big blob (past the base cache) with a delta on
        // it, and a tree delta (its content is kept for connectivity).
        let a = b"base text of some length".to_vec();
        let b = [a.as_slice(), b" one"].concat();
        let c = [b.as_slice(), b" two"].concat();
        let big: Vec<u8> = (0..BASE_CACHE_OBJECT_MAX as usize + 10)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut big_delta = Vec::new();
        for mut n in [big.len(), big.len() + 3] {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    big_delta.push(byte);
                    break;
                }
                big_delta.push(byte | 0x80);
            }
        }
        // Copy 65536-byte pieces of the base (size 0 means 0x10000), then the rest.
        let mut at = 0usize;
        while at < big.len() {
            let n = (big.len() - at).min(0x10000);
            big_delta.push(0x80 | 0x0f | 0x30);
            big_delta.extend_from_slice(&(at as u32).to_le_bytes());
            big_delta.extend_from_slice(&((n & 0xffff) as u16).to_le_bytes());
            at += n;
        }
        big_delta.extend_from_slice(&[3, b'x', b'y', b'z']);
        let tree = b"100644 f\0aaaaaaaaaaaaaaaaaaaa".to_vec();
        let deltas = [
            delta_append(&a, b" one"),
            delta_append(&b, b" two"),
            delta_append(&tree, b"-"),
        ];
        let (da, dbig, dtree) = (deflate(&a), deflate(&big), deflate(&tree));
        let dd: Vec<Vec<u8>> = deltas.iter().map(|d| deflate(d)).collect();
        let dbd = deflate(&big_delta);
        let pack = pack_of(&[
            full(ObjectKind::Blob, a.len(), &da),
            ofs(0, deltas[0].len(), &dd[0]),
            full(ObjectKind::Blob, big.len(), &dbig),
            ofs(1, deltas[1].len(), &dd[1]),
            ofs(2, big_delta.len(), &dbd),
            full(ObjectKind::Tree, tree.len(), &dtree),
            ofs(5, deltas[2].len(), &dd[2]),
        ]);
        let limits = Limits::default();
        // Fed a few bytes at a time, as it arrives.
        let mut seen = Seen::default();
        let mut st = PackStream::new(limits);
        for end in (0..pack.len()).step_by(7) {
            st.advance(&pack[..end], &mut seen).expect("advance");
        }
        let entries = st.finish(&pack, &mut seen).expect("entries");
        assert!(
            entries
                .iter()
                .all(|e| matches!(e.kind, EntryKind::Full(_)) || e.delta.is_some()),
            "every OFS_DELTA resolved early: {entries:?}"
        );
        let early =
            resolve(&pack, entries.clone(), &limits, |_| None, &mut seen).expect("resolves");
        assert_eq!(early, resolve_late(&pack, &entries, &limits));
        let id = |k, c: &[u8]| object_id(k, c).expect("id");
        let c_id = id(ObjectKind::Blob, &c);
        let got = early.iter().find(|r| r.oid == c_id).expect("c resolved");
        assert_eq!(got.base, Some(id(ObjectKind::Blob, &b)));
        let big2 = [big.as_slice(), b"xyz"].concat();
        assert!(early.iter().any(|r| r.oid == id(ObjectKind::Blob, &big2)));
        let tree2 = [tree.as_slice(), b"-"].concat();
        let t = early
            .iter()
            .find(|r| r.oid == id(ObjectKind::Tree, &tree2))
            .expect("tree delta");
        // The trees, each shown once, with its content; no blob.
        assert_eq!(
            seen.0,
            vec![
                (id(ObjectKind::Tree, &tree), ObjectKind::Tree, tree.clone()),
                (t.oid, ObjectKind::Tree, tree2.clone())
            ]
        );
    }

    #[test]
    fn a_deferring_reader_whose_caller_hashes_reads_as_one_that_hashes_itself() {
        // A chain a -> b -> c of blobs, a tree with a delta on it, and enough blobs
        // to stall the reader for its caller more than once.
        let a = b"base text of some length".to_vec();
        let b = [a.as_slice(), b" one"].concat();
        let tree = b"100644 f\0aaaaaaaaaaaaaaaaaaaa".to_vec();
        let fill: Vec<Vec<u8>> = (0..24u32)
            .map(|i| (0..200_000u32).map(|b| (b * 31 + i) as u8).collect())
            .collect();
        let deltas = [
            delta_append(&a, b" one"),
            delta_append(&b, b" two"),
            delta_append(&tree, b"-"),
        ];
        let (da, dtree) = (deflate(&a), deflate(&tree));
        let dd: Vec<Vec<u8>> = deltas.iter().map(|d| deflate(d)).collect();
        let df: Vec<Vec<u8>> = fill.iter().map(|f| deflate(f)).collect();
        let mut out = vec![
            full(ObjectKind::Blob, a.len(), &da),
            ofs(0, deltas[0].len(), &dd[0]),
            ofs(1, deltas[1].len(), &dd[1]),
            full(ObjectKind::Tree, tree.len(), &dtree),
            ofs(3, deltas[2].len(), &dd[2]),
        ];
        for (f, d) in fill.iter().zip(&df) {
            out.push(full(ObjectKind::Blob, f.len(), d));
        }
        let pack = pack_of(&out);
        let limits = Limits::default();
        let mut seen = Seen::default();
        let whole = read_entries(&pack, &limits, &mut seen).expect("whole");
        // Deferring from the start, or from a point inside an entry (the reader
        // inspected what came before itself, as a push's executor does before its
        // reader thread takes over).
        // Inside the tree's zlib stream, once the 20 bytes a reader holds back arrived.
        let in_tree = whole[3].data.start + 20 + 8;
        assert!(
            whole[3].data.end > in_tree - 20 + 7,
            "the cut is inside the tree"
        );
        for (chunk, lag, defer_from) in [
            (7usize, false, 0),
            (7, true, in_tree),
            (4096, true, 0),
            (1 << 20, true, 0),
        ] {
            let mut s = PackStream::new(limits);
            let mut by_caller = Seen::default();
            let mut late: Vec<(usize, Oid)> = Vec::new();
            let mut got = Vec::new();
            let mut stalls = 0;
            for piece in pack.chunks(chunk) {
                got.extend_from_slice(piece);
                if got.len() <= defer_from {
                    s.advance(&got, &mut by_caller).expect("advance");
                    continue;
                }
                s.defer();
                loop {
                    s.advance(&got, &mut ()).expect("advance");
                    let again = s.stalled();
                    stalls += usize::from(again);
                    // The caller's ids come back a step late when it lags.
                    s.set_ids(&std::mem::take(&mut late)).expect("ids");
                    for j in s.take_jobs() {
                        let oid = object_id(j.kind, &j.content).expect("id");
                        if j.kind != ObjectKind::Blob {
                            by_caller.inspect(&oid, j.kind, &j.content);
                        }
                        late.push((j.index, oid));
                    }
                    if !lag {
                        s.set_ids(&std::mem::take(&mut late)).expect("ids");
                    }
                    assert!(s.resolved_since(0).len() <= s.verified_upto());
                    if !again {
                        break;
                    }
                }
            }
            s.set_ids(&late).expect("ids");
            assert!(
                stalls > 0 || chunk < 1 << 20,
                "chunks of {chunk}: never stalled"
            );
            assert_eq!(
                s.finish(&got, &mut ()).expect("finish"),
                whole,
                "chunks of {chunk}"
            );
            assert_eq!(by_caller.0, seen.0, "chunks of {chunk}");
        }
        // Ids left out: finishing is refused, not wrong.
        let mut s = PackStream::new(limits);
        s.defer();
        s.advance(&pack, &mut ()).expect("advance");
        assert!(s.finish(&pack, &mut ()).is_err());
    }

    #[test]
    fn the_trailer_checked_beside_the_reader_agrees_with_the_reader() {
        let a = b"some blob".to_vec();
        let da = deflate(&a);
        let good = pack_of(&[full(ObjectKind::Blob, a.len(), &da)]);
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let limits = Limits::default();
        for (pack, ok) in [(&good, true), (&bad, false)] {
            let mut st = PackStream::without_trailer(limits);
            let mut t = Trailer::new();
            for end in (0..pack.len()).step_by(5) {
                st.advance(&pack[..end], &mut ()).expect("advance");
                t.feed(&pack[..end]);
            }
            let entries = st
                .finish(pack, &mut ())
                .expect("entries, trailer unchecked");
            assert_eq!(t.check(pack).is_ok(), ok);
            assert_eq!(read_entries(pack, &limits, &mut ()).is_ok(), ok);
            if ok {
                assert_eq!(Ok(entries), read_entries(pack, &limits, &mut ()));
            }
        }
        assert_eq!(Trailer::new().check(&good[..20]), Err(PackError::Truncated));
    }

    #[test]
    fn a_trailer_pushed_in_pieces_of_any_size_checks_as_one_fed_whole() {
        let a = vec![7u8; 3000];
        let da = deflate(&a);
        let good = pack_of(&[full(ObjectKind::Blob, a.len(), &da)]);
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 21] ^= 1;
        let mut short = good.clone();
        short[n - 1] ^= 1;
        for (pack, ok) in [(&good, true), (&bad, false), (&short, false)] {
            for step in [1, 3, 19, 20, 21, 64, 1000, pack.len()] {
                let mut t = Trailer::new();
                for piece in pack.chunks(step) {
                    t.push(piece);
                }
                assert_eq!(t.check(pack).is_ok(), ok, "pieces of {step}");
            }
            // What was pushed may stop short of the pack: check hashes the rest.
            let mut t = Trailer::new();
            t.push(&pack[..pack.len() / 2]);
            assert_eq!(t.check(pack).is_ok(), ok);
        }
    }

    #[test]
    fn a_bad_delta_is_left_to_resolve_which_reports_it() {
        let a = b"hello".to_vec();
        // Claims a base of 99 bytes.
        let bad = vec![99u8, 6, 0x90, 5, 1, b'!'];
        let (da, dbad) = (deflate(&a), deflate(&bad));
        let pack = pack_of(&[
            full(ObjectKind::Blob, a.len(), &da),
            ofs(0, bad.len(), &dbad),
        ]);
        let limits = Limits::default();
        let entries = read_entries(&pack, &limits, &mut ()).expect("entries");
        assert!(entries[1].delta.is_none());
        assert!(matches!(
            resolve(&pack, entries.clone(), &limits, |_| None, &mut ()),
            Err(PackError::BadDelta { .. })
        ));
    }

    #[test]
    fn thin_pack_bases_come_from_the_repository_or_the_pack_is_refused() {
        let base = b"stored base".to_vec();
        let base_id = object_id(ObjectKind::Blob, &base).expect("id");
        let d = delta_append(&base, b"+");
        let dd = deflate(&d);
        let pack = pack_of(&[OutEntry::RefDelta {
            base: base_id,
            size: d.len() as u64,
            deflated: &dd,
        }]);
        let limits = Limits::default();
        let entries = read_entries(&pack, &limits, &mut ()).expect("entries");
        let r = resolve(
            &pack,
            entries.clone(),
            &limits,
            |o| (o == &base_id).then(|| (ObjectKind::Blob, base.clone())),
            &mut (),
        )
        .expect("thin");
        assert_eq!(r.len(), 1);
        assert!(matches!(
            resolve(&pack, entries.clone(), &limits, |_| None, &mut ()),
            Err(PackError::MissingBase(_))
        ));
    }

    #[test]
    fn hostile_packs_are_refused() {
        let limits = Limits::default();
        let a = deflate(b"x");
        let good = pack_of(&[OutEntry::Full {
            kind: ObjectKind::Blob,
            size: 1,
            deflated: &a,
        }]);
        // bad trailer
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            read_entries(&bad, &limits, &mut ()),
            Err(PackError::BadTrailer)
        );
        // wrong count (header says 2); recompute the trailer so only the count is wrong
        let mut bad = good[..good.len() - 20].to_vec();
        bad[11] = 2;
        let t = sha1dc::digest(&bad)
            .expect("no collision")
            .as_ref()
            .to_vec();
        bad.extend(t);
        assert!(matches!(
            read_entries(&bad, &limits, &mut ()),
            Err(PackError::WrongCount { .. })
        ));
        // truncated
        assert!(read_entries(&good[..20], &limits, &mut ()).is_err());
        assert!(read_entries(b"JUNK00000000000000000000000000000000", &limits, &mut ()).is_err());
        // a declared 4 GiB object is refused from its header
        let mut big = Vec::new();
        big.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01");
        entry_header(&mut big, 3, 4 << 30);
        big.extend_from_slice(&a);
        let t = sha1dc::digest(&big)
            .expect("no collision")
            .as_ref()
            .to_vec();
        big.extend(t);
        assert!(matches!(
            read_entries(&big, &limits, &mut ()),
            Err(PackError::TooLarge { .. })
        ));
        // OFS_DELTA pointing before the pack start
        let mut ofs = Vec::new();
        ofs.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01");
        entry_header(&mut ofs, 6, 1);
        ofs.push(100); // 12 - 100 < 0
        ofs.extend_from_slice(&a);
        let t = sha1dc::digest(&ofs)
            .expect("no collision")
            .as_ref()
            .to_vec();
        ofs.extend(t);
        assert!(matches!(
            read_entries(&ofs, &limits, &mut ()),
            Err(PackError::BadOfsBase { .. })
        ));
    }

    #[test]
    fn reading_while_the_pack_arrives_gives_the_same_entries() {
        let blobs: Vec<Vec<u8>> = (0..20u32)
            .map(|i| (0..(i * 997) % 70_000).map(|b| (b ^ i) as u8).collect())
            .collect();
        let deflated: Vec<Vec<u8>> = blobs.iter().map(|b| deflate(b)).collect();
        let delta = delta_append(b"hello world", b"!");
        let dd = deflate(&delta);
        let base = deflate(b"hello world");
        let mut entries: Vec<OutEntry<'_>> = blobs
            .iter()
            .zip(&deflated)
            .map(|(b, d)| full(ObjectKind::Blob, b.len(), d))
            .collect();
        entries.push(OutEntry::Full {
            kind: ObjectKind::Blob,
            size: 11,
            deflated: &base,
        });
        entries.push(ofs(20, delta.len(), &dd));
        let pack = pack_of(&entries);
        let limits = Limits::default();
        let whole = read_entries(&pack, &limits, &mut ()).expect("whole");
        for chunk in [1usize, 7, 100, 4096, 65536] {
            let mut s = PackStream::new(limits);
            let mut got = Vec::new();
            for piece in pack.chunks(chunk) {
                got.extend_from_slice(piece);
                s.advance(&got, &mut ()).expect("advance");
            }
            assert_eq!(
                s.finish(&got, &mut ()).expect("finish"),
                whole,
                "chunks of {chunk}"
            );
        }
        // Cut short anywhere: an error at finish, never a panic.
        for cut in [
            0,
            5,
            12,
            40,
            pack.len() / 2,
            pack.len() - 21,
            pack.len() - 1,
        ] {
            let mut s = PackStream::new(limits);
            let _ = s.advance(&pack[..cut], &mut ());
            assert!(s.finish(&pack[..cut], &mut ()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_ref_delta_cycle_is_refused() {
        let x = object_id(ObjectKind::Blob, b"x").expect("id");
        let y = object_id(ObjectKind::Blob, b"y").expect("id");
        let d = deflate(&[1, 1, 0x90, 1, 0]);
        let pack = pack_of(&[
            OutEntry::RefDelta {
                base: y,
                size: 5,
                deflated: &d,
            },
            OutEntry::RefDelta {
                base: x,
                size: 5,
                deflated: &d,
            },
        ]);
        let limits = Limits::default();
        let entries = read_entries(&pack, &limits, &mut ()).expect("framing is fine");
        assert!(resolve(&pack, entries.clone(), &limits, |_| None, &mut ()).is_err());
    }

    #[test]
    fn inflate_prefix_finds_the_stream_end_and_checks_size() {
        let mut d = deflate(b"abc");
        let n = d.len();
        d.extend_from_slice(b"trailing");
        assert_eq!(inflate_prefix(&d, 3), Some((b"abc".to_vec(), n)));
        assert_eq!(inflate_prefix(&d, 2), None);
        assert_eq!(inflate_prefix(&d, 4), None);
        assert_eq!(inflate_prefix(&d[..n - 2], 3), None);
    }

    /// The two SHAttered prefixes (see testdata/shattered.hex).
    fn shattered() -> [Vec<u8>; 2] {
        let text = include_str!("testdata/shattered.hex");
        let mut lines = text.lines().filter(|l| !l.starts_with('#'));
        let mut one = || {
            let l = lines.next().expect("a line");
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect::<Vec<u8>>()
        };
        [one(), one()]
    }

    #[test]
    fn the_shattered_collision_is_detected_and_git_objects_of_it_are_not_one() {
        let [a, b] = shattered();
        assert_ne!(a, b);
        // Hashed as they are, both are caught as the attack they are (their plain
        // SHA-1, f92d74e3..., is the same).
        for x in [&a, &b] {
            let mut h = sha1dc::Hasher::new();
            h.update(x);
            assert!(matches!(finalize(h), Err(PackError::Collision(_))));
        }
        // As blobs, git's header moves the blocks off the attacked state: two distinct
        // ids, as git computes them (`git hash-object`), and no attack to detect.
        let ida = object_id(ObjectKind::Blob, &a).expect("not an attack as a blob");
        let idb = object_id(ObjectKind::Blob, &b).expect("not an attack as a blob");
        assert_eq!(
            super::super::hex(&ida),
            "6e98aef8bba6ff517f5b164d7418c5e2a6cf90c9"
        );
        assert_eq!(
            super::super::hex(&idb),
            "ef380704685cc8e54de9bc13556d1ff7026ec0cc"
        );
    }

    #[test]
    fn a_delta_declaring_more_than_the_limit_is_refused_from_its_header() {
        // Base of 3 bytes; result declared as 2^40 bytes; one insert.
        let delta = [3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 1, b'x'];
        assert_eq!(
            apply_delta(b"abc", &delta, 1 << 30),
            Err("result larger than the object size limit")
        );
        // Declared within the limit but never produced: refused, having taken little.
        let delta = [3, 0x80, 0x80, 0x80, 0x02, 1, b'x'];
        assert_eq!(
            apply_delta(b"abc", &delta, 1 << 30),
            Err("result size does not match")
        );
    }
}
