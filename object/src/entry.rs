//! A pack entry as the node keeps it: [`StoredObject`] and its [`ObjectHead`].

use crate::{ObjectKind, Oid};

/// A git object as a pack entry, as the store keeps it and a fetch sends it: the
/// entry's deflated bytes exactly as a client pushed them and, for a delta, its base's
/// id, with the resolved object's kind and size. Its bytes are `Bytes` where it
/// travels (shared with the pushed pack, handed between shards) and the store's read
/// buffer where a fetch copies it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject<B = bytes::Bytes> {
    pub oid: Oid,
    /// Kind of the resolved object.
    pub kind: ObjectKind,
    /// Size of the resolved object's content.
    pub object_size: u64,
    /// Inflated size of the entry data (the delta's size for a delta).
    pub entry_size: u64,
    /// For a delta entry, the object it is a delta against (same namespace).
    pub base: Option<Oid>,
    /// The zlib stream exactly as it was in the pack (shared, not copied, on its way
    /// from a pushed pack to the write buffer, or from the read buffer to a clone).
    pub deflated: B,
}

impl<B> StoredObject<B> {
    /// What the entry says of its object.
    pub fn head(&self) -> ObjectHead {
        ObjectHead {
            oid: self.oid,
            kind: self.kind,
            object_size: self.object_size,
            entry_size: self.entry_size,
            base: self.base,
        }
    }

    /// The same entry with `deflated` for its bytes.
    pub fn with_bytes<C>(&self, deflated: C) -> StoredObject<C> {
        self.head().with_bytes(deflated)
    }
}

impl<B: AsRef<[u8]>> StoredObject<B> {
    /// The entry with its bytes copied into a `Bytes` of their own: what leaves the
    /// shard that read it.
    pub fn to_shared(&self) -> StoredObject {
        self.with_bytes(bytes::Bytes::copy_from_slice(self.deflated.as_ref()))
    }
}

/// What a stored entry says of its object, without its bytes: enough to plan a pack
/// (order, delta bases) before any entry is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHead {
    pub oid: Oid,
    pub kind: ObjectKind,
    pub object_size: u64,
    pub entry_size: u64,
    pub base: Option<Oid>,
}

impl ObjectHead {
    /// The stored entry with these facts and `deflated` bytes.
    pub fn with_bytes<B>(self, deflated: B) -> StoredObject<B> {
        StoredObject {
            oid: self.oid,
            kind: self.kind,
            object_size: self.object_size,
            entry_size: self.entry_size,
            base: self.base,
            deflated,
        }
    }
}
