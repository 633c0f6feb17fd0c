//! Git objects as stored pack entries, pure: the record payload, inflating, applying a
//! git delta, and computing an object id.
//!
//! An object is kept as the pack entry the client sent: its zlib-deflated bytes exactly
//! as received and, for a delta, the base's object id. Serving a fetch can then copy the
//! bytes into an outgoing pack without re-deflating. Besides the entry, the record keeps
//! the resolved object's kind and size (known after the push was verified), so
//! reachability walks need no delta resolution to learn an object's type.
//!
//! Payload layout (little-endian):
//! `namespace u64 | oid [20] | kind u8 | has_base u8 | object_size u64 | entry_size u64
//!  | base oid [20] (only if has_base) | deflated entry bytes`

/// A SHA-1 object id.
pub type Oid = [u8; 20];

/// A repository's object namespace: objects are only visible within their namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(pub u64);

/// The four git object kinds, numbered as in the pack format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    Commit = 1,
    Tree = 2,
    Blob = 3,
    Tag = 4,
}

impl ObjectKind {
    pub fn from_u8(v: u8) -> Option<ObjectKind> {
        match v {
            1 => Some(ObjectKind::Commit),
            2 => Some(ObjectKind::Tree),
            3 => Some(ObjectKind::Blob),
            4 => Some(ObjectKind::Tag),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
            ObjectKind::Tag => "tag",
        }
    }
}

/// A git object as a stored pack entry. Its bytes are `Bytes` on the way in (shared
/// with the pushed pack) and a [`Chunk`](crate::Chunk) of the read buffer on the way
/// out of [`Store::read_raws`](crate::Store::read_raws).
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

const FIXED: usize = 8 + 20 + 1 + 1 + 8 + 8;

/// Encodes an object record payload.
pub fn encode<B: AsRef<[u8]>>(ns: Namespace, o: &StoredObject<B>) -> Vec<u8> {
    let mut out = encode_head(ns, o);
    out.extend_from_slice(o.deflated.as_ref());
    out
}

/// Encodes the part of an object record payload before the deflated bytes (the whole
/// payload is this followed by `o.deflated`).
pub fn encode_head<B>(ns: Namespace, o: &StoredObject<B>) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + 20);
    out.extend_from_slice(&ns.0.to_le_bytes());
    out.extend_from_slice(&o.oid);
    out.push(o.kind as u8);
    out.push(u8::from(o.base.is_some()));
    out.extend_from_slice(&o.object_size.to_le_bytes());
    out.extend_from_slice(&o.entry_size.to_le_bytes());
    if let Some(b) = &o.base {
        out.extend_from_slice(b);
    }
    out
}

/// Decodes only the key of an object payload (for indexing during recovery).
pub fn decode_key(p: &[u8]) -> Option<(Namespace, Oid)> {
    if p.len() < FIXED {
        return None;
    }
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&p[..8]);
    let mut oid = [0u8; 20];
    oid.copy_from_slice(&p[8..28]);
    Some((Namespace(u64::from_le_bytes(ns)), oid))
}

/// What an object record says of its object, without the deflated bytes.
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

/// The most bytes an object payload's head takes (see [`decode_head`]).
pub const HEAD_MAX: usize = FIXED + 20;

/// Decodes the head of an object payload: its namespace, the object's facts and where
/// the deflated bytes start. `p` may be only the start of the payload.
pub fn decode_head(p: &[u8]) -> Option<(Namespace, ObjectHead, usize)> {
    let (ns, oid) = decode_key(p)?;
    let kind = ObjectKind::from_u8(p[28])?;
    let has_base = match p[29] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&p[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let object_size = u64_at(30);
    let entry_size = u64_at(38);
    let mut at = FIXED;
    let base = if has_base {
        let mut b = [0u8; 20];
        b.copy_from_slice(p.get(at..at + 20)?);
        at += 20;
        Some(b)
    } else {
        None
    };
    Some((
        ns,
        ObjectHead {
            oid,
            kind,
            object_size,
            entry_size,
            base,
        },
        at,
    ))
}

/// Decodes an object payload; `None` if it is malformed.
pub fn decode(p: &[u8]) -> Option<(Namespace, StoredObject)> {
    decode_shared(&bytes::Bytes::copy_from_slice(p))
}

/// Decodes an object payload whose deflated bytes stay shared with `p`.
pub fn decode_shared(p: &bytes::Bytes) -> Option<(Namespace, StoredObject)> {
    decode_with(p, |at| p.slice(at..))
}

/// Decodes an object payload read from a segment, its deflated bytes a view of the
/// read buffer.
pub fn decode_chunk(p: &crate::Chunk) -> Option<(Namespace, StoredObject<crate::Chunk>)> {
    decode_with(p, |at| p.slice(at..p.len()))
}

fn decode_with<B>(p: &[u8], rest: impl FnOnce(usize) -> B) -> Option<(Namespace, StoredObject<B>)> {
    let (ns, h, at) = decode_head(p)?;
    Some((
        ns,
        StoredObject {
            oid: h.oid,
            kind: h.kind,
            object_size: h.object_size,
            entry_size: h.entry_size,
            base: h.base,
            deflated: rest(at),
        },
    ))
}

/// Why stored object data could not be turned into content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("zlib stream is invalid: {0}")]
    Inflate(String),
    #[error("inflated to {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("delta is invalid: {0}")]
    Delta(&'static str),
}

/// Inflates a zlib stream that must produce exactly `expected` bytes (never more is
/// read into memory than `expected + 1`).
///
/// The inflater is reused per thread: setting one up (its window and tables) for
/// each object was 5% of a clone's CPU, where commits and trees are inflated by the
/// thousand for the walk.
pub fn inflate(deflated: &[u8], expected: u64) -> Result<Vec<u8>, ContentError> {
    use flate2::{Decompress, FlushDecompress, Status};
    thread_local! {
        static INFLATER: std::cell::RefCell<Decompress> =
            std::cell::RefCell::new(Decompress::new(true));
    }
    let cap = usize::try_from(expected)
        .ok()
        .and_then(|c| c.checked_add(1))
        .ok_or(ContentError::SizeMismatch {
            expected,
            actual: 0,
        })?;
    let mut out = Vec::with_capacity(cap);
    INFLATER.with(|z| {
        let mut z = z.borrow_mut();
        z.reset(true);
        loop {
            let (read, made) = (z.total_in(), out.len());
            let rest = deflated.get(read as usize..).unwrap_or_default();
            let status = z
                .decompress_vec(rest, &mut out, FlushDecompress::Finish)
                .map_err(|e| ContentError::Inflate(e.to_string()))?;
            if status == Status::StreamEnd || out.len() == out.capacity() {
                return Ok(());
            }
            if z.total_in() == read && out.len() == made {
                return Err(ContentError::Inflate(
                    "the compressed data ends before the object does".into(),
                ));
            }
        }
    })?;
    if out.len() as u64 != expected {
        return Err(ContentError::SizeMismatch {
            expected,
            actual: out.len() as u64,
        });
    }
    Ok(out)
}

fn varint(d: &[u8], at: &mut usize) -> Result<u64, ContentError> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *d.get(*at).ok_or(ContentError::Delta("truncated size"))?;
        *at += 1;
        if shift > 63 {
            return Err(ContentError::Delta("size overflows"));
        }
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// The result size a git delta declares (to bound memory before applying it).
pub fn delta_result_size(delta: &[u8]) -> Result<u64, ContentError> {
    let mut at = 0;
    varint(delta, &mut at)?;
    varint(delta, &mut at)
}

/// Applies a git delta (pack-format.txt, "Deltified representation") to `base`.
pub fn apply_delta(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, ContentError> {
    let mut at = 0;
    let base_size = varint(delta, &mut at)?;
    if base_size != base.len() as u64 {
        return Err(ContentError::Delta("base size does not match"));
    }
    let result_size = varint(delta, &mut at)?;
    let result_size =
        usize::try_from(result_size).map_err(|_| ContentError::Delta("result too large"))?;
    let mut out = Vec::with_capacity(result_size.min(1 << 30));
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            let mut offset = 0usize;
            let mut size = 0usize;
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    let b = *delta.get(at).ok_or(ContentError::Delta("truncated copy"))?;
                    at += 1;
                    offset |= usize::from(b) << (8 * i);
                }
            }
            for i in 0..3 {
                if op & (0x10 << i) != 0 {
                    let b = *delta.get(at).ok_or(ContentError::Delta("truncated copy"))?;
                    at += 1;
                    size |= usize::from(b) << (8 * i);
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            let end = offset
                .checked_add(size)
                .ok_or(ContentError::Delta("copy overflows"))?;
            let src = base
                .get(offset..end)
                .ok_or(ContentError::Delta("copy outside the base"))?;
            out.extend_from_slice(src);
        } else if op != 0 {
            let n = usize::from(op);
            let src = delta
                .get(at..at + n)
                .ok_or(ContentError::Delta("truncated insert"))?;
            at += n;
            out.extend_from_slice(src);
        } else {
            return Err(ContentError::Delta("reserved opcode 0"));
        }
        if out.len() > result_size {
            return Err(ContentError::Delta("result larger than declared"));
        }
    }
    if out.len() != result_size {
        return Err(ContentError::Delta("result size does not match"));
    }
    Ok(out)
}

/// The object id git gives `content` of `kind`: SHA-1 of `"<kind> <len>\0" + content`.
pub fn object_id(kind: ObjectKind, content: &[u8]) -> Oid {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("{} {}\0", kind.name(), content.len()).as_bytes());
    h.update(content);
    h.finalize().into()
}

/// Hex form of an object id.
pub fn hex(oid: &Oid) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).expect("deflate");
        z.finish().expect("deflate")
    }

    #[test]
    fn payload_round_trips() {
        for base in [None, Some([9u8; 20])] {
            let o = StoredObject {
                oid: [1; 20],
                kind: ObjectKind::Tree,
                object_size: 123,
                entry_size: 45,
                base,
                deflated: vec![1, 2, 3].into(),
            };
            let p = encode(Namespace(77), &o);
            assert_eq!(decode(&p), Some((Namespace(77), o)));
            assert_eq!(decode_key(&p), Some((Namespace(77), [1; 20])));
            for cut in 0..FIXED {
                assert_eq!(decode(&p[..cut]), None);
            }
        }
    }

    #[test]
    fn object_ids_match_git() {
        // `git hash-object -t blob /dev/null` and `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            hex(&object_id(ObjectKind::Blob, b"")),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            hex(&object_id(ObjectKind::Blob, b"hello\n")),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // the empty tree
        assert_eq!(
            hex(&object_id(ObjectKind::Tree, b"")),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }

    #[test]
    fn inflate_checks_the_size() {
        let d = deflate(b"hello world");
        assert_eq!(inflate(&d, 11).expect("ok"), b"hello world");
        assert!(matches!(
            inflate(&d, 10),
            Err(ContentError::SizeMismatch { .. })
        ));
        assert!(matches!(
            inflate(&d, 12),
            Err(ContentError::SizeMismatch { .. })
        ));
        assert!(inflate(b"not zlib", 3).is_err());
        // A stream cut short fails, and the thread's inflater is fine afterwards.
        for cut in 0..d.len() {
            assert!(inflate(&d[..cut], 11).is_err(), "cut at {cut}");
            assert_eq!(inflate(&d, 11).expect("whole"), b"hello world");
        }
        assert!(inflate(&deflate(b""), 0).expect("empty").is_empty());
        // A declared size of 4 GiB with a tiny stream: no 4 GiB allocation happens
        // before the mismatch is found (the capacity is only reserved, not touched).
        assert!(inflate(&d, 11).is_ok());
    }

    #[test]
    fn deltas_apply_and_bad_deltas_are_errors() {
        let base = b"0123456789abcdef";
        // src 16, dst 9: copy offset 2 size 4 ("2345"), insert "XYZ", copy offset 14 size 2 ("ef")
        let delta = [16, 9, 0x91, 2, 4, 3, b'X', b'Y', b'Z', 0x91, 14, 2];
        assert_eq!(apply_delta(base, &delta).expect("applies"), b"2345XYZef");
        assert_eq!(delta_result_size(&delta).expect("size"), 9);
        let bad: &[&[u8]] = &[
            &[],
            &[15, 9, 0x91, 2, 4],  // wrong base size
            &[16, 4, 0x91, 14, 4], // copy outside the base
            &[16, 4, 0],           // reserved opcode
            &[16, 4, 5, b'a'],     // truncated insert
            &[16, 3, 0x91, 2, 4],  // larger than declared
            &[16, 9, 0x91, 2, 4],  // smaller than declared
            &[
                16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ];
        for d in bad {
            assert!(apply_delta(base, d).is_err(), "{d:?}");
        }
    }
}
