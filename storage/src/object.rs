//! Git objects as stored pack entries, pure: the record payload. git's object model
//! itself (ids, kinds, inflating, deltas, object ids) is `repospanner-object`'s.
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

pub use repospanner_object::{
    hex, hex_in, object_id, parse_hex, ObjectHead, ObjectKind, Oid, StoredObject,
};

/// A repository's object namespace: objects are only visible within their namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(pub u64);

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
    #[error(transparent)]
    Inflate(#[from] repospanner_object::InflateError),
    #[error(transparent)]
    Delta(#[from] repospanner_object::DeltaError),
    #[error("{0}")]
    Chain(&'static str),
}

pub use repospanner_object::inflate;

#[cfg(test)]
mod tests {
    use super::*;

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
}
