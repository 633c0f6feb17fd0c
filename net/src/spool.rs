//! Request bodies too large to keep in memory: a push's body goes to an anonymous file
//! (`O_TMPFILE`, so nothing is left behind by a crash) in the node's spool directory as
//! it arrives, and is read back through a shared mapping, so verification and storing
//! see one contiguous pack without the node holding it in anonymous memory. The kernel
//! may write the pages back and drop them under memory pressure, where a `Vec` would
//! have to stay resident.
//!
//! Small bodies stay in memory ([`Body::Mem`]); a body moves to a file once it grows
//! past [`SPOOL_AFTER`].

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Bodies larger than this go to a spool file.
pub const SPOOL_AFTER: usize = 4 << 20;

/// A body being received: in memory, or in a spool file.
#[derive(Debug)]
pub enum Body {
    Mem(Vec<u8>),
    File(Spool),
}

impl Body {
    pub fn new() -> Body {
        Body::Mem(Vec::new())
    }

    /// Appends `data`; moves the body to a file in `spool.0` once it is past
    /// [`SPOOL_AFTER`] (`spool` = `None`: memory only), refusing to leave less than
    /// `spool.1` bytes free there. `cap` bounds the whole body.
    pub fn push(&mut self, data: &[u8], spool: Option<(&Path, u64)>, cap: usize) -> io::Result<()> {
        match self {
            Body::Mem(v) => {
                if let (Some((dir, reserve)), true) = (spool, v.len() + data.len() > SPOOL_AFTER) {
                    let mut s = Spool::create(dir, cap, reserve)?;
                    s.push(v)?;
                    s.push(data)?;
                    *self = Body::File(s);
                } else {
                    v.extend_from_slice(data);
                }
                Ok(())
            }
            Body::File(s) => s.push(data),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Mem(v) => v,
            Body::File(s) => s.as_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body, shared (slices of a spooled body stay in the file's mapping).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Body::Mem(v) => Bytes::from(v),
            Body::File(s) => Bytes::from_owner(s),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::new()
    }
}

/// An unnamed file that grows by appends and is read through a mapping of its
/// largest possible size (only the written part is ever touched).
#[derive(Debug)]
pub struct Spool {
    file: File,
    view: SpoolView,
    /// Free space to leave on the file system, and how far the file may grow before
    /// that is checked again.
    reserve: u64,
    checked_to: usize,
}

/// How much a spool file grows between two looks at the free space.
const CHECK_EVERY: usize = 16 << 20;

/// Bytes free for an unprivileged writer on the file system of `f`.
/// Bytes free to unprivileged writers on the file system holding `dir`.
pub fn free_bytes_in(dir: &std::path::Path) -> io::Result<u64> {
    free_bytes(&File::open(dir)?)
}

fn free_bytes(f: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatvfs fills a statvfs we own, from a descriptor we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The written part of a spool file, readable from any thread while more is appended.
#[derive(Debug, Clone)]
pub struct SpoolView {
    map: Arc<memmap2::Mmap>,
    /// Bytes written so far: only these are ever read.
    len: Arc<AtomicUsize>,
}

impl SpoolView {
    /// The bytes in `range`; `None` if they are not all written yet.
    pub fn get(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        if range.start > range.end || range.end > self.len.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: the range lies within the mapping (len never exceeds its size) and
        // within the written part of the file, which nothing changes any more: appends
        // go after `len`, and the file has no name for anything else to reach it by.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.len()) })
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maps the written pages of `range` in one call before they are read
    /// (`MADV_POPULATE_READ`; best effort: nothing on kernels before 5.14). A reader
    /// that follows the writer closely otherwise takes a page fault every few pages, as
    /// the kernel's fault-around maps only pages already written: 11,700 faults for a
    /// 102 MiB push, most of a pack reader's time in the kernel.
    pub fn populate(&self, range: std::ops::Range<usize>) {
        // (memmap2 aligns the start down to a page.)
        let end = range.end.min(self.len());
        if range.start < end {
            let _ = self.map.advise_range(
                memmap2::Advice::PopulateRead,
                range.start,
                end - range.start,
            );
        }
    }

    /// The bytes in `range`, shared (they stay in the mapping); `None` if they are not
    /// all written yet.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> Option<Bytes> {
        self.get(range.clone())?;
        Some(Bytes::from_owner(ViewSlice {
            view: self.clone(),
            range,
        }))
    }
}

/// A written range of a spool file, as an owner for [`Bytes`].
struct ViewSlice {
    view: SpoolView,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for ViewSlice {
    fn as_ref(&self) -> &[u8] {
        // Checked written when made; written bytes stay written.
        self.view.get(self.range.clone()).unwrap_or_default()
    }
}

impl Spool {
    /// An empty spool file in `dir` for at most `cap` bytes, that refuses to grow when
    /// that would leave less than `reserve` bytes free.
    pub fn create(dir: &Path, cap: usize, reserve: u64) -> io::Result<Spool> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(f) => f,
            // A file system (or kernel) without O_TMPFILE: a named file, unlinked at once
            // (the node empties the directory when it starts, should a crash leave one).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let path = dir.join(format!(
                    "push-{}-{:x}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                f
            }
            Err(e) => return Err(e),
        };
        // SAFETY: the file has no name, so nothing else can truncate or change it;
        // only bytes already written are ever read through the map (SpoolView::get).
        let map = unsafe { memmap2::MmapOptions::new().len(cap.max(1)).map(&file)? };
        Ok(Spool {
            file,
            view: SpoolView {
                map: Arc::new(map),
                len: Arc::new(AtomicUsize::new(0)),
            },
            reserve,
            checked_to: 0,
        })
    }

    fn push(&mut self, data: &[u8]) -> io::Result<()> {
        let len = self.view.len();
        if len + data.len() > self.view.map.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "spooled body is larger than its limit",
            ));
        }
        if len + data.len() > self.checked_to {
            // Room for this and the next CHECK_EVERY bytes, beside the reserve.
            let want = (data.len() + CHECK_EVERY) as u64;
            let free = free_bytes(&self.file)?;
            if free < self.reserve.saturating_add(want) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{free} bytes free on the node's git file system, and limits.disk_reserve_bytes keeps {} of them for the store",
                        self.reserve
                    ),
                ));
            }
            self.checked_to = len + data.len() + CHECK_EVERY;
        }
        // Into the page cache: a copy, as appending to a Vec would be.
        self.file.write_all_at(data, len as u64)?;
        self.view.len.store(len + data.len(), Ordering::Release);
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        self.view.get(0..self.view.len()).unwrap_or_default()
    }

    /// A reader of the written part, for another thread.
    pub fn view(&self) -> SpoolView {
        self.view.clone()
    }
}

impl AsRef<[u8]> for Spool {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_moves_to_a_file_past_the_threshold_and_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(SPOOL_AFTER + 300_000) as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut b = Body::new();
        for piece in data.chunks(70_001) {
            b.push(piece, Some((dir.path(), 0)), data.len())
                .expect("push");
        }
        assert!(matches!(b, Body::File(_)), "spooled");
        assert_eq!(b.as_slice(), &data[..]);
        if let Body::File(f) = &b {
            let view = f.view();
            assert_eq!(view.bytes(5..70_000).expect("written"), data[5..70_000]);
            assert!(view.bytes(0..data.len() + 1).is_none(), "not written yet");
        }
        let shared = b.into_bytes();
        assert_eq!(shared.slice(100..200), data[100..200]);
        // Nothing is left in the directory: the file never had a name.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        drop(shared);

        // Memory only without a directory; a body over its limit is refused.
        let mut m = Body::new();
        m.push(&data, None, data.len()).expect("push");
        assert!(matches!(m, Body::Mem(_)));
        let mut f = Body::new();
        assert!(f.push(&data, Some((dir.path(), 0)), 10).is_err());
        // Nothing is spooled that would leave less than the reserve free.
        let mut r = Body::new();
        let e = r
            .push(&data, Some((dir.path(), u64::MAX / 2)), data.len())
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
