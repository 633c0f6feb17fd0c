//! The repoSpanner storage engine: the only code that writes repository data to disk.
//!
//! One [`Store`] per shard, owned by that shard's thread (glommio executor). It is an
//! append-only, log-structured store on io_uring direct I/O:
//!
//! * **Segments** (`seg-<id>.log`) of at most [`Options::segment_bytes_max`], written
//!   with O_DIRECT through glommio `DmaFile` ([`io::DmaDir`]). Each starts with a header
//!   carrying a random salt that seeds every CRC in it ([`record`]).
//! * **Frames**: every group-commit batch is one frame (header + records) with a CRC
//!   over the whole body, so a batch is durable entirely or not at all; each record
//!   also carries its own CRC so it can be read and checked alone.
//! * **Group commit**: concurrent appends are batched into one write and one
//!   `fdatasync`; an append's future resolves only after its batch is durable.
//! * **Records**: git objects as the pack entries the client sent ([`object`]), and
//!   opaque values of other crates keyed by (stream, key) — the raft log, vote and
//!   snapshots, repository metadata — plus range deletions, namespace drops and
//!   adoptions (`Write::Adopt`: objects of one namespace indexed in another too, at the
//!   same records; how a push's objects written while it arrived are published).
//! * **Index**: (namespace, object id) → location and (stream, key) → location, in
//!   memory, checkpointed to `index.ckpt` (read back with memmap2) so start-up scans
//!   only the log written after the checkpoint ([`index`]).
//! * **Recovery**: a torn tail is found by CRC and cut; damage in the middle is reported
//!   and stepped over (a later frame of the same segment proves it is not the tail) and
//!   never served: reads of a damaged record return [`Error::Corrupt`] naming the
//!   segment and offset. [`Store::verify`] re-reads everything and re-hashes objects.
//! * **Failure policy**: a failed write or `fdatasync` stops the store for good
//!   ([`Error::Fatal`]): after an fsync error the kernel may have dropped the dirty
//!   pages, so a retry that succeeds could acknowledge data that is not on disk. A
//!   full file system is the exception ([`Error::NoSpace`]): a direct write that
//!   found no room dirtied no page, so the batch fails, what it wrote in part is cut
//!   off, and the store goes on.
//!
//! ## Compaction
//!
//! Records are never modified in place. [`Store::compact_segment`] copies a sealed
//! segment's live records (those the index points at) to the head of the log through
//! the writer, moves the index to the copies, writes a checkpoint and only then deletes
//! the old file; [`Store::space`] and [`Store::compaction_candidate`] say which
//! segments are worth it. Deletions that older segments still need are carried along,
//! and a place never names another record while the process runs. The rules and why a
//! crash at any step is safe: `src/store/compact.rs`.
//!
//! ## zstd
//!
//! Opaque values (raft entries, snapshots, metadata) of at least
//! [`Options::zstd_min_bytes`] are compressed with zstd when that saves at least an
//! eighth; git's own data is already deflated and is stored as received. The index
//! checkpoint is stored raw: 20 of every 48 bytes are random object ids.

pub mod failstop;
pub mod index;
pub mod io;
pub mod object;
pub mod record;
mod store;

pub use index::Loc;
pub use io::{Chunk, DmaDir, Faults, MemDir};
pub use object::{Namespace, ObjectHead, ObjectKind, Oid, StoredObject};
pub use store::{
    CompactReport, Corruption, Damaged, Doubling, Options, RecoveryReport, ScrubReport,
    SegmentSpace, Stats, Store, VerifyReport, Write, SYNC_FIRST_MICROS,
};

/// Log sequence number: every record gets the next one.
pub type Lsn = u64;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store stopped accepting writes after an I/O failure: {0}")]
    Fatal(String),
    /// The file system is full: nothing of the append was acknowledged, and the store
    /// goes on (reads, and appends once there is room).
    #[error("no space left for the store's log: {0}")]
    NoSpace(String),
    #[error("damaged data in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("append of {bytes} bytes is larger than the limit of {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("compaction of segment {segment} refused: {reason}")]
    Compaction { segment: u64, reason: String },
    #[error("object {oid}: {source}")]
    Content {
        oid: String,
        #[source]
        source: object::ContentError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
