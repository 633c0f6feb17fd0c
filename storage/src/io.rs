//! The narrow I/O interface the store runs on, and its two implementations:
//! [`DmaDir`] (glommio `DmaFile`, O_DIRECT on io_uring) for real use, and [`MemDir`],
//! in memory, which injects faults (failed writes, failed fsyncs, torn writes) and keeps
//! apart the bytes written and the bytes a completed sync made durable, so tests can
//! reopen a store from exactly what a crash would have left.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Whole-file contents, memory-mapped when the file is real.
#[derive(Debug)]
pub enum Blob {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Mapped(m) => m,
            Blob::Owned(v) => v,
        }
    }
}

/// Bytes read from a segment, shared without copying: a view into the read's own
/// buffer (for [`DmaDir`], glommio's DMA buffer, which the kernel filled), kept alive
/// by every view of it. Cheap to clone and to slice.
///
/// Not `Send`: the buffer belongs to the shard that read it. What must leave the
/// shard (a reply to a peer, a request handed to another shard) is copied out.
#[derive(Clone)]
pub struct Chunk {
    buf: Rc<dyn AsRef<[u8]>>,
    start: usize,
    end: usize,
}

impl Chunk {
    /// All of `buf`.
    pub fn new(buf: impl AsRef<[u8]> + 'static) -> Chunk {
        let end = buf.as_ref().len();
        Chunk {
            buf: Rc::new(buf),
            start: 0,
            end,
        }
    }

    /// The bytes at `range` of this chunk (clamped to its end).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Chunk {
        let end = (self.start + range.end).min(self.end);
        Chunk {
            buf: self.buf.clone(),
            start: (self.start + range.start).min(end),
            end,
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.buf).as_ref()[self.start..self.end]
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.len())
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Chunk) -> bool {
        **self == **other
    }
}

impl Eq for Chunk {}

/// A glommio read buffer as the bytes it holds.
struct DmaRead(glommio::io::ReadResult);

impl AsRef<[u8]> for DmaRead {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A directory of files: segments, checkpoints.
#[allow(async_fn_in_trait)]
pub trait Dir: Clone + 'static {
    type File: SegmentFile;
    /// Opens `name` for reading and writing, creating it when `create`.
    async fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;
    /// Names of the files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, removals and renames in the directory durable.
    async fn sync(&self) -> io::Result<()>;
    /// Replaces `name` with `data` atomically and durably (temp file, fsync, rename,
    /// directory fsync), off the executor thread.
    async fn write_atomic(&self, name: &str, data: Vec<u8>) -> io::Result<()>;
    /// Reads a whole file; `None` when it does not exist.
    async fn read_whole(&self, name: &str) -> io::Result<Option<Blob>>;
}

/// One open segment file.
#[allow(async_fn_in_trait)]
pub trait SegmentFile: 'static {
    /// Write offsets and lengths must be multiples of this.
    fn alignment(&self) -> usize;
    /// A buffer of `len` bytes to build a write in, of the kind this file writes from
    /// (for direct I/O: aligned memory), so the write copies nothing. Its contents are
    /// unspecified: the writer sets every byte.
    type Buf: AsRef<[u8]> + AsMut<[u8]>;
    fn buffer(&self, len: usize) -> Self::Buf;
    /// Writes `data` at `pos`; both aligned.
    async fn write_at(&self, pos: u64, data: Self::Buf) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos` (fewer at the end of the file), into a buffer
    /// of the read's own that the result shares rather than copies.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Chunk>;
    /// Durability barrier: once it returns, every completed write is durable
    /// (`fdatasync`, or nothing where writes are synchronous, as with O_DSYNC).
    async fn sync_data(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
}

// ---------------------------------------------------------------------------------
// glommio DMA files
// ---------------------------------------------------------------------------------

/// A real directory, files opened with O_DIRECT through glommio.
#[derive(Debug, Clone)]
pub struct DmaDir {
    path: Rc<PathBuf>,
}

impl DmaDir {
    /// Creates the directory if needed and runs the io_uring polled-I/O probe (see
    /// [`probe`]) so that later DMA reads work on this device.
    pub async fn open(path: &Path) -> io::Result<DmaDir> {
        std::fs::create_dir_all(path)?;
        probe(path).await?;
        Ok(DmaDir {
            path: Rc::new(path.to_owned()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// glommio probes io_uring polled I/O once per device per thread using the first
/// `DmaFile` it reads; if that file is empty the probe concludes "supported" and every
/// later read fails with EOPNOTSUPP on virtio disks. Reading 4 KiB of real data first
/// makes the probe right. Call once per executor before any other DMA read.
pub async fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join("io-probe");
    let ok = std::fs::metadata(&path)
        .map(|m| m.len() == 4096)
        .unwrap_or(false);
    if !ok {
        std::fs::write(&path, vec![0x5a; 4096])?;
    }
    let f = glommio::io::DmaFile::open(&path).await?;
    let r = f.read_at_aligned(0, 4096).await?;
    if r.len() != 4096 {
        return Err(io::Error::other("io probe: short read"));
    }
    f.close().await?;
    Ok(())
}

/// A segment file on glommio.
#[derive(Debug)]
pub struct DmaSegment {
    file: glommio::io::DmaFile,
}

impl Dir for DmaDir {
    type File = DmaSegment;

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaSegment> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            // O_DSYNC: a write completes only once it is durable (the kernel uses
            // FUA or a flush), which saves the separate fdatasync round trip per
            // batch: measured 10-35% more small appends/s than write + fdatasync
            // in paired runs (storage/README.md).
            .custom_flags(libc::O_DSYNC)
            .dma_open(self.path.join(name))
            .await?;
        Ok(DmaSegment { file })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&*self.path)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    async fn sync(&self) -> io::Result<()> {
        let path = (*self.path).clone();
        glommio::executor()
            .spawn_blocking(move || std::fs::File::open(path)?.sync_all())
            .await
    }

    async fn write_atomic(&self, name: &str, data: Vec<u8>) -> io::Result<()> {
        let dir = (*self.path).clone();
        let name = name.to_owned();
        glommio::executor()
            .spawn_blocking(move || {
                use std::io::Write;
                let tmp = dir.join(format!("{name}.tmp"));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join(&name))?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
    }

    async fn read_whole(&self, name: &str) -> io::Result<Option<Blob>> {
        let f = match std::fs::File::open(self.path.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() == 0 {
            return Ok(Some(Blob::Owned(Vec::new())));
        }
        // SAFETY: checkpoint files are written once through a temp file and renamed
        // into place, never modified in place, so the mapping cannot change under us.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        Ok(Some(Blob::Mapped(map)))
    }
}

impl SegmentFile for DmaSegment {
    fn alignment(&self) -> usize {
        self.file.alignment() as usize
    }

    type Buf = glommio::io::DmaBuffer;

    fn buffer(&self, len: usize) -> Self::Buf {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, pos: u64, data: Self::Buf) -> io::Result<()> {
        let len = data.len();
        let n = self.file.write_at(data, pos).await?;
        if n != len {
            // A direct write to a regular file stops short when the file system
            // has no room for the rest.
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("short write: {n} of {len} bytes"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Chunk> {
        let r = self.file.read_at(pos, len).await?;
        Ok(Chunk::new(DmaRead(r)))
    }

    async fn sync_data(&self) -> io::Result<()> {
        // Segments are opened with O_DSYNC: every completed write is already durable.
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(self.file.truncate(len).await?)
    }
}

// ---------------------------------------------------------------------------------
// In memory, with faults and a crash image
// ---------------------------------------------------------------------------------

/// Which faults [`MemDir`] injects, as chances in a thousand per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub write_error_per_mille: u32,
    pub sync_error_per_mille: u32,
    /// The most bytes all files may hold: a segment write that would grow them past
    /// it writes part (whole sectors) and fails with `StorageFull`, as a full file
    /// system does.
    pub space_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    /// What reads see: every write applied.
    data: Vec<u8>,
    /// What a crash leaves: writes covered by a completed sync.
    durable: Vec<u8>,
    /// Writes since the last completed sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct MemState {
    files: BTreeMap<String, MemFile>,
    /// Names whose directory entry a completed directory sync made durable.
    durable_names: BTreeSet<String>,
    /// Durable files removed since the last directory sync: a crash may bring them
    /// back, as their removal was not durable yet.
    removed: BTreeMap<String, Vec<u8>>,
    faults: Faults,
    rng: StdRng,
    alignment: usize,
    writes: u64,
    syncs: u64,
    reads: u64,
}

/// An in-memory directory that injects faults and keeps the crash image.
#[derive(Debug, Clone)]
pub struct MemDir {
    state: Rc<RefCell<MemState>>,
}

/// Sector size at which [`MemDir`] tears unsynced writes in a crash.
pub const TEAR_BYTES: usize = 512;

impl MemDir {
    pub fn new(seed: u64) -> MemDir {
        MemDir {
            state: Rc::new(RefCell::new(MemState {
                files: BTreeMap::new(),
                durable_names: BTreeSet::new(),
                removed: BTreeMap::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
                alignment: 4096,
                writes: 0,
                reads: 0,
                syncs: 0,
            })),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.borrow_mut().faults = faults;
    }

    /// (writes, syncs) performed so far.
    pub fn counters(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.writes, s.syncs)
    }

    /// Segment reads performed so far.
    pub fn reads(&self) -> u64 {
        self.state.borrow().reads
    }

    /// What a power loss now would leave on disk: each file's durable bytes plus, for
    /// writes not yet covered by a sync, a random subset of their 512-byte sectors
    /// (writes torn and reordered). A file removed since the last directory sync may come
    /// back. A file whose directory entry was never made
    /// durable may be missing. The result is a new directory with no pending writes.
    pub fn crash_image(&self, seed: u64) -> MemDir {
        let s = self.state.borrow();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut files = BTreeMap::new();
        for (name, f) in &s.files {
            if !s.durable_names.contains(name) && rng.gen_bool(0.5) {
                continue;
            }
            let mut image = f.durable.clone();
            for (pos, data) in &f.pending {
                for (i, sector) in data.chunks(TEAR_BYTES).enumerate() {
                    if rng.gen_bool(0.5) {
                        write_into(&mut image, *pos as usize + i * TEAR_BYTES, sector);
                    }
                }
            }
            files.insert(
                name.clone(),
                MemFile {
                    data: image.clone(),
                    durable: image,
                    pending: Vec::new(),
                },
            );
        }
        for (name, durable) in &s.removed {
            if !files.contains_key(name) && rng.gen_bool(0.5) {
                files.insert(
                    name.clone(),
                    MemFile {
                        data: durable.clone(),
                        durable: durable.clone(),
                        pending: Vec::new(),
                    },
                );
            }
        }
        let names = files.keys().cloned().collect();
        MemDir {
            state: Rc::new(RefCell::new(MemState {
                files,
                durable_names: names,
                removed: BTreeMap::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9),
                alignment: s.alignment,
                writes: 0,
                syncs: 0,
                reads: 0,
            })),
        }
    }

    /// Direct access for tests that damage files: applies `f` to the bytes of `name`
    /// (both the visible and the durable image).
    pub fn with_file<R>(&self, name: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let mut s = self.state.borrow_mut();
        let file = s.files.get_mut(name)?;
        let r = f(&mut file.data);
        file.durable = file.data.clone();
        file.pending.clear();
        Some(r)
    }

    /// Whether to inject a fault now; `which` picks the chance from the fault plan.
    fn roll(&self, which: fn(&Faults) -> u32) -> bool {
        let mut s = self.state.borrow_mut();
        let per_mille = which(&s.faults);
        per_mille > 0 && s.rng.gen_range(0..1000) < per_mille
    }
}

/// Lets every other ready task run once (the in-memory directory yields in its writes
/// and syncs, so a crash image can fall between a write and its sync).
pub async fn yield_now() {
    YieldNow(false).await
}

struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

fn write_into(buf: &mut Vec<u8>, pos: usize, data: &[u8]) {
    if buf.len() < pos + data.len() {
        buf.resize(pos + data.len(), 0);
    }
    buf[pos..pos + data.len()].copy_from_slice(data);
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

/// A file of a [`MemDir`].
#[derive(Debug)]
pub struct MemSegment {
    dir: MemDir,
    name: String,
}

impl Dir for MemDir {
    type File = MemSegment;

    async fn open(&self, name: &str, create: bool) -> io::Result<MemSegment> {
        let mut s = self.state.borrow_mut();
        if !s.files.contains_key(name) {
            if !create {
                return Err(not_found(name));
            }
            s.files.insert(name.to_owned(), MemFile::default());
        }
        Ok(MemSegment {
            dir: self.clone(),
            name: name.to_owned(),
        })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.borrow().files.keys().cloned().collect())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let f = s.files.remove(name).ok_or_else(|| not_found(name))?;
        if s.durable_names.remove(name) {
            s.removed.insert(name.to_owned(), f.durable);
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        if self.roll(|f| f.sync_error_per_mille) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        let mut s = self.state.borrow_mut();
        s.durable_names = s.files.keys().cloned().collect();
        s.removed.clear();
        Ok(())
    }

    async fn write_atomic(&self, name: &str, data: Vec<u8>) -> io::Result<()> {
        if self.roll(|f| f.write_error_per_mille) {
            return Err(io::Error::other("injected write failure"));
        }
        let mut s = self.state.borrow_mut();
        s.files.insert(
            name.to_owned(),
            MemFile {
                data: data.clone(),
                durable: data,
                pending: Vec::new(),
            },
        );
        s.durable_names.insert(name.to_owned());
        Ok(())
    }

    async fn read_whole(&self, name: &str) -> io::Result<Option<Blob>> {
        Ok(self
            .state
            .borrow()
            .files
            .get(name)
            .map(|f| Blob::Owned(f.data.clone())))
    }
}

impl MemSegment {
    /// Puts `data` at `pos` in what reads see, and among the writes a crash may keep.
    fn land(&self, s: &mut MemState, pos: u64, data: &[u8]) -> io::Result<()> {
        let f = s
            .files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        write_into(&mut f.data, pos as usize, data);
        f.pending.push((pos, data.to_vec()));
        Ok(())
    }
}

impl SegmentFile for MemSegment {
    fn alignment(&self) -> usize {
        self.dir.state.borrow().alignment
    }

    type Buf = Vec<u8>;

    fn buffer(&self, len: usize) -> Self::Buf {
        vec![0; len]
    }

    async fn write_at(&self, pos: u64, data: Self::Buf) -> io::Result<()> {
        let data = &data[..];
        let align = self.alignment();
        assert!(
            (pos as usize).is_multiple_of(align) && data.len().is_multiple_of(align),
            "unaligned direct write at {pos} of {} bytes",
            data.len()
        );
        {
            let mut s = self.dir.state.borrow_mut();
            if let Some(space) = s.faults.space_bytes {
                let used: u64 = s.files.values().map(|f| f.data.len() as u64).sum();
                let size = s.files.get(&self.name).map_or(0, |f| f.data.len() as u64);
                let grows = (pos + data.len() as u64).saturating_sub(size);
                if used + grows > space {
                    let room = space.saturating_sub(used) + size.saturating_sub(pos);
                    let keep = (room as usize).min(data.len()) / TEAR_BYTES * TEAR_BYTES;
                    self.land(&mut s, pos, &data[..keep])?;
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "injected: no space left on the device",
                    ));
                }
            }
        }
        if self.dir.roll(|f| f.write_error_per_mille) {
            // A failed write may still have reached part of the page cache.
            let mut s = self.dir.state.borrow_mut();
            let keep = s.rng.gen_range(0..=data.len() / TEAR_BYTES) * TEAR_BYTES;
            self.land(&mut s, pos, &data[..keep])?;
            return Err(io::Error::other("injected write failure"));
        }
        {
            let mut s = self.dir.state.borrow_mut();
            s.writes += 1;
            self.land(&mut s, pos, data)?;
        }
        YieldNow(false).await;
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Chunk> {
        self.dir.state.borrow_mut().reads += 1;
        let s = self.dir.state.borrow();
        let f = s
            .files
            .get(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        let start = (pos as usize).min(f.data.len());
        let end = start.saturating_add(len).min(f.data.len());
        // A copy of its own, as a device read would be.
        let read: Vec<u8> = f.data[start..end].into();
        Ok(Chunk::new(read))
    }

    async fn sync_data(&self) -> io::Result<()> {
        YieldNow(false).await;
        let fail = self.dir.roll(|f| f.sync_error_per_mille);
        let mut s = self.dir.state.borrow_mut();
        s.syncs += 1;
        let MemState { files, rng, .. } = &mut *s;
        let f = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        if fail {
            // The kernel may have written some dirty pages and dropped the rest.
            for (pos, data) in std::mem::take(&mut f.pending) {
                for (i, sector) in data.chunks(TEAR_BYTES).enumerate() {
                    if rng.gen_bool(0.5) {
                        write_into(&mut f.durable, pos as usize + i * TEAR_BYTES, sector);
                    }
                }
            }
            return Err(io::Error::other("injected fsync failure"));
        }
        for (pos, data) in std::mem::take(&mut f.pending) {
            write_into(&mut f.durable, pos as usize, &data);
        }
        if f.durable.len() > f.data.len() {
            f.durable.truncate(f.data.len());
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let s = self.dir.state.borrow();
        let f = s
            .files
            .get(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        Ok(f.data.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let mut s = self.dir.state.borrow_mut();
        let f = s
            .files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        f.data.truncate(len as usize);
        // Truncation is metadata: durable at the next sync; model it as immediate
        // for the bytes beyond (they are never read as records either way).
        f.durable.truncate(len as usize);
        f.pending.retain(|(pos, _)| *pos < len);
        Ok(())
    }
}
