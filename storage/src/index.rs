//! The in-memory index (object id → location, opaque key → location) and its
//! checkpoint file format, pure.
//!
//! Checkpoint (`index.ckpt`, replaced atomically; little-endian):
//! ```text
//! magic "RSPI" u32 | version u32 | segment u64 | offset u64 | next_lsn u64
//!   | objects u64 | opaque u64                                   (48 bytes)
//! objects × (namespace u64 | oid [20] | segment u64 | offset u64 | len u32)   (48 bytes)
//! opaque  × (stream u8 | 0 [3] | len u32 | key u64 | segment u64 | offset u64) (32 bytes)
//! crc32 u32 of everything before
//! ```
//! `(segment, offset)` is where the log continues after the state the checkpoint holds;
//! start-up maps the file, checks its CRC, loads it, and scans only the log after that
//! position. Object ids are random bytes, so zstd gains little here (measured on 1M
//! entries: see the crate docs) and the file is stored raw to be mapped directly.

use std::collections::{BTreeMap, HashMap};

use crate::object::{Namespace, Oid};
use crate::record::RecordKind;
use crate::Lsn;

/// Where a record lives: its segment, byte offset and total length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Everything the store can find by key. Objects are kept per namespace (repository),
/// so listing or dropping one repository's objects costs that repository's size, not
/// the whole store's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Index {
    objects: HashMap<Namespace, foldhash::HashMap<Oid, Loc>>,
    /// Objects over every namespace.
    count: usize,
    pub opaque: BTreeMap<(u8, u64), Loc>,
}

/// Decoded opaque payload header: stream, key and where the data starts.
pub fn opaque_key(payload: &[u8]) -> Option<(u8, u64)> {
    if payload.len() < 9 {
        return None;
    }
    let mut k = [0u8; 8];
    k.copy_from_slice(&payload[1..9]);
    Some((payload[0], u64::from_le_bytes(k)))
}

/// A place in the log, `(segment, offset)`: a record at a place before another was
/// written before it (segments are numbered in the order they are started).
pub type Pos = (u64, u64);

impl Loc {
    /// Where this record starts, as a [`Pos`].
    pub fn pos(&self) -> Pos {
        (self.segment, self.offset)
    }
}

/// A decoded delete-range payload: stream, from (inclusive), to (exclusive), and for a
/// copy compaction moved, the place of the original (it deletes only what lies before
/// that place). Payload: stream u8 | from u64 | to u64 [| segment u64 | offset u64].
pub fn delete_range(payload: &[u8]) -> Option<(u8, u64, u64, Option<Pos>)> {
    if payload.len() != 17 && payload.len() != 33 {
        return None;
    }
    let before = (payload.len() == 33).then(|| (u64_at(payload, 17), u64_at(payload, 25)));
    Some((payload[0], u64_at(payload, 1), u64_at(payload, 9), before))
}

pub fn encode_delete_range(stream: u8, keys: std::ops::Range<u64>, before: Option<Pos>) -> Vec<u8> {
    let mut p = vec![stream];
    p.extend_from_slice(&keys.start.to_le_bytes());
    p.extend_from_slice(&keys.end.to_le_bytes());
    if let Some((segment, offset)) = before {
        p.extend_from_slice(&segment.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
    }
    p
}

/// A decoded drop-namespace payload: the namespace, and for a copy compaction moved,
/// the place of the original. Payload: namespace u64 [| segment u64 | offset u64].
pub fn drop_namespace(payload: &[u8]) -> Option<(Namespace, Option<Pos>)> {
    if payload.len() != 8 && payload.len() != 24 {
        return None;
    }
    let before = (payload.len() == 24).then(|| (u64_at(payload, 8), u64_at(payload, 16)));
    Some((Namespace(u64_at(payload, 0)), before))
}

pub fn encode_drop_namespace(ns: Namespace, before: Option<Pos>) -> Vec<u8> {
    let mut p = ns.0.to_le_bytes().to_vec();
    if let Some((segment, offset)) = before {
        p.extend_from_slice(&segment.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
    }
    p
}

/// The payload of an `Adopt` record: from u64 | to u64 | oid*.
pub fn encode_adopt(from: Namespace, to: Namespace, oids: &[Oid]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + oids.len() * 20);
    p.extend_from_slice(&from.0.to_le_bytes());
    p.extend_from_slice(&to.0.to_le_bytes());
    for o in oids {
        p.extend_from_slice(o);
    }
    p
}

pub fn decode_adopt(payload: &[u8]) -> Option<(Namespace, Namespace, Vec<Oid>)> {
    if payload.len() < 16 || !(payload.len() - 16).is_multiple_of(20) {
        return None;
    }
    let ns = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&payload[at..at + 8]);
        Namespace(u64::from_le_bytes(a))
    };
    let oids = payload[16..]
        .chunks_exact(20)
        .map(|c| {
            let mut o = [0u8; 20];
            o.copy_from_slice(c);
            o
        })
        .collect();
    Some((ns(0), ns(8), oids))
}

impl Index {
    /// Where `oid` of `ns` is stored.
    pub fn object(&self, ns: Namespace, oid: &Oid) -> Option<Loc> {
        self.objects.get(&ns)?.get(oid).copied()
    }

    pub fn contains(&self, ns: Namespace, oid: &Oid) -> bool {
        self.objects.get(&ns).is_some_and(|m| m.contains_key(oid))
    }

    /// Every object id of `ns`.
    pub fn oids_in(&self, ns: Namespace) -> Vec<Oid> {
        self.objects
            .get(&ns)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every object of `ns` with its place, in no particular order.
    pub fn objects_in(&self, ns: Namespace) -> Vec<(Oid, Loc)> {
        self.objects
            .get(&ns)
            .map(|m| m.iter().map(|(o, l)| (*o, *l)).collect())
            .unwrap_or_default()
    }

    /// Every namespace that holds objects.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.objects
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(ns, _)| *ns)
            .collect()
    }

    /// Objects over every namespace.
    pub fn object_count(&self) -> usize {
        self.count
    }

    /// Indexes `oid` of `ns` at `loc`, unless it is indexed already (the first copy of
    /// an object stays: every copy holds the same object).
    pub fn insert_object(&mut self, ns: Namespace, oid: Oid, loc: Loc) {
        if let std::collections::hash_map::Entry::Vacant(e) =
            self.objects.entry(ns).or_default().entry(oid)
        {
            e.insert(loc);
            self.count += 1;
        }
    }

    /// [`Index::apply`] of a record found in the log, with its flags: an object record
    /// marked [`crate::record::FLAG_REPLACES`] takes the place of an earlier copy.
    pub fn apply_found(&mut self, kind: RecordKind, flags: u8, payload: &[u8], loc: Loc) -> bool {
        if kind == RecordKind::Object && flags & crate::record::FLAG_REPLACES != 0 {
            let Some((ns, oid)) = crate::object::decode_key(payload) else {
                return false;
            };
            if self
                .objects
                .entry(ns)
                .or_default()
                .insert(oid, loc)
                .is_none()
            {
                self.count += 1;
            }
            return true;
        }
        self.apply(kind, payload, loc)
    }

    /// Applies one durable record found at `loc`. Returns false if the payload does not
    /// decode (a bug or a corruption the CRC missed: the caller reports it).
    pub fn apply(&mut self, kind: RecordKind, payload: &[u8], loc: Loc) -> bool {
        match kind {
            RecordKind::Object => match crate::object::decode_key(payload) {
                Some((ns, oid)) => {
                    self.insert_object(ns, oid, loc);
                    true
                }
                None => false,
            },
            RecordKind::Opaque => match opaque_key(payload) {
                Some(key) => {
                    self.opaque.insert(key, loc);
                    true
                }
                None => false,
            },
            RecordKind::DeleteRange => match delete_range(payload) {
                Some((stream, from, to, before)) => {
                    if from < to {
                        let keys: Vec<_> = self
                            .opaque
                            .range((stream, from)..(stream, to))
                            .filter(|(_, l)| before.is_none_or(|p| l.pos() < p))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in keys {
                            self.opaque.remove(&k);
                        }
                    }
                    true
                }
                None => false,
            },
            RecordKind::Adopt => match decode_adopt(payload) {
                Some((from, to, oids)) => {
                    for oid in oids {
                        if let Some(loc) = self.object(from, &oid) {
                            self.insert_object(to, oid, loc);
                        }
                    }
                    true
                }
                None => false,
            },
            RecordKind::DropNamespace => match drop_namespace(payload) {
                Some((ns, None)) => {
                    if let Some(m) = self.objects.remove(&ns) {
                        self.count -= m.len();
                    }
                    true
                }
                Some((ns, Some(p))) => {
                    if let Some(m) = self.objects.get_mut(&ns) {
                        let before = m.len();
                        m.retain(|_, l| l.pos() >= p);
                        self.count -= before - m.len();
                    }
                    true
                }
                None => false,
            },
        }
    }

    /// Bytes of the records the index points at, by segment (a record two namespaces
    /// share is counted for each: an overestimate, so compaction errs towards keeping).
    pub fn live_bytes(&self) -> HashMap<u64, u64> {
        let mut out: HashMap<u64, u64> = HashMap::new();
        let locs = self.objects.values().flat_map(|m| m.values());
        for l in locs.chain(self.opaque.values()) {
            *out.entry(l.segment).or_default() += u64::from(l.len);
        }
        out
    }

    /// What the index points at in `segment`, by offset: the namespaces that hold each
    /// object record there, and the key of each opaque record.
    pub fn live_in(&self, segment: u64) -> LiveIn {
        let mut live = LiveIn::default();
        for (ns, m) in &self.objects {
            for l in m.values().filter(|l| l.segment == segment) {
                live.objects.entry(l.offset).or_default().push(*ns);
            }
        }
        for (k, l) in &self.opaque {
            if l.segment == segment {
                live.opaque.insert(l.offset, *k);
            }
        }
        live
    }

    /// Every object entry whose place `hit` picks, and how many opaque entries it picks.
    pub fn entries_where(&self, hit: impl Fn(&Loc) -> bool) -> (Vec<(Namespace, Oid, Loc)>, usize) {
        let mut objects = Vec::new();
        for (ns, m) in &self.objects {
            for (oid, l) in m {
                if hit(l) {
                    objects.push((*ns, *oid, *l));
                }
            }
        }
        let opaque = self.opaque.values().filter(|l| hit(l)).count();
        (objects, opaque)
    }

    /// Points `oid` of `ns` at `to` if it is still at `from` (compaction moved the
    /// record); whether it did.
    pub fn switch_object(&mut self, ns: Namespace, oid: &Oid, from: Loc, to: Loc) -> bool {
        match self.objects.get_mut(&ns).and_then(|m| m.get_mut(oid)) {
            Some(l) if *l == from => {
                *l = to;
                true
            }
            _ => false,
        }
    }

    /// Points opaque `key` at `to` if it is still at `from`; whether it did.
    pub fn switch_opaque(&mut self, key: (u8, u64), from: Loc, to: Loc) -> bool {
        match self.opaque.get_mut(&key) {
            Some(l) if *l == from => {
                *l = to;
                true
            }
            _ => false,
        }
    }
}

/// What [`Index::live_in`] finds in one segment.
#[derive(Debug, Default)]
pub struct LiveIn {
    pub objects: HashMap<u64, Vec<Namespace>>,
    pub opaque: HashMap<u64, (u8, u64)>,
}

impl LiveIn {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.opaque.is_empty()
    }
}

const MAGIC: u32 = u32::from_le_bytes(*b"RSPI");
const VERSION: u32 = 1;
const HEADER: usize = 48;
const OBJ: usize = 48;
const OPQ: usize = 32;

/// The position a checkpoint covers up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    pub segment: u64,
    pub offset: u64,
    pub next_lsn: Lsn,
}

/// Serialises the index and the position it covers. Entries are sorted so the same
/// state always gives the same bytes.
pub fn encode_checkpoint(index: &Index, covered: Covered) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + index.count * OBJ + index.opaque.len() * OPQ + 4);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&covered.segment.to_le_bytes());
    out.extend_from_slice(&covered.offset.to_le_bytes());
    out.extend_from_slice(&covered.next_lsn.to_le_bytes());
    out.extend_from_slice(&(index.count as u64).to_le_bytes());
    out.extend_from_slice(&(index.opaque.len() as u64).to_le_bytes());
    let mut objects: Vec<_> = index
        .objects
        .iter()
        .flat_map(|(ns, m)| m.iter().map(move |(oid, loc)| ((*ns, *oid), *loc)))
        .collect();
    objects.sort_unstable_by_key(|(k, _)| *k);
    for ((ns, oid), loc) in objects {
        out.extend_from_slice(&ns.0.to_le_bytes());
        out.extend_from_slice(&oid);
        out.extend_from_slice(&loc.segment.to_le_bytes());
        out.extend_from_slice(&loc.offset.to_le_bytes());
        out.extend_from_slice(&loc.len.to_le_bytes());
    }
    for ((stream, key), loc) in &index.opaque {
        out.push(*stream);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&loc.len.to_le_bytes());
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&loc.segment.to_le_bytes());
        out.extend_from_slice(&loc.offset.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads a checkpoint back; `None` if it is damaged or of another version (the caller
/// then rebuilds the index from the log).
pub fn decode_checkpoint(b: &[u8]) -> Option<(Index, Covered)> {
    if b.len() < HEADER + 4 || u32_at(b, 0) != MAGIC || u32_at(b, 4) != VERSION {
        return None;
    }
    let body = &b[..b.len() - 4];
    if crc32fast::hash(body) != u32_at(b, b.len() - 4) {
        return None;
    }
    let covered = Covered {
        segment: u64_at(b, 8),
        offset: u64_at(b, 16),
        next_lsn: u64_at(b, 24),
    };
    let n_obj = usize::try_from(u64_at(b, 32)).ok()?;
    let n_opq = usize::try_from(u64_at(b, 40)).ok()?;
    let expected = n_obj
        .checked_mul(OBJ)?
        .checked_add(n_opq.checked_mul(OPQ)?)?
        .checked_add(HEADER)?;
    if expected != body.len() {
        return None;
    }
    let mut index = Index::default();
    let mut at = HEADER;
    for _ in 0..n_obj {
        let e = &b[at..at + OBJ];
        let mut oid = [0u8; 20];
        oid.copy_from_slice(&e[8..28]);
        index.insert_object(
            Namespace(u64_at(e, 0)),
            oid,
            Loc {
                segment: u64_at(e, 28),
                offset: u64_at(e, 36),
                len: u32_at(e, 44),
            },
        );
        at += OBJ;
    }
    for _ in 0..n_opq {
        let e = &b[at..at + OPQ];
        index.opaque.insert(
            (e[0], u64_at(e, 8)),
            Loc {
                segment: u64_at(e, 16),
                offset: u64_at(e, 24),
                len: u32_at(e, 4),
            },
        );
        at += OPQ;
    }
    Some((index, covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> Loc {
        Loc {
            segment: n,
            offset: n * 100,
            len: n as u32 + 12,
        }
    }

    fn sample() -> Index {
        let mut i = Index::default();
        for n in 0..50u64 {
            let mut oid = [0u8; 20];
            oid[0] = n as u8;
            i.insert_object(Namespace(n % 3), oid, loc(n));
            i.opaque.insert(((n % 2) as u8, n), loc(n + 1000));
        }
        i
    }

    #[test]
    fn objects_are_kept_per_namespace_and_dropped_with_it() {
        let obj = |n: u8| crate::object::StoredObject {
            oid: [n; 20],
            kind: crate::object::ObjectKind::Blob,
            object_size: 1,
            entry_size: 1,
            base: None,
            deflated: bytes::Bytes::from_static(b"x"),
        };
        let mut i = Index::default();
        for n in 0..10u8 {
            let ns = Namespace(u64::from(n % 2));
            let p = crate::object::encode(ns, &obj(n));
            assert!(i.apply(RecordKind::Object, &p, loc(u64::from(n))));
            // A second copy changes nothing.
            assert!(i.apply(RecordKind::Object, &p, loc(99)));
        }
        assert_eq!(i.object_count(), 10);
        assert_eq!(i.object(Namespace(1), &[3; 20]), Some(loc(3)));
        assert!(!i.contains(Namespace(0), &[3; 20]));
        let mut odd = i.oids_in(Namespace(1));
        odd.sort_unstable();
        assert_eq!(odd, vec![[1; 20], [3; 20], [5; 20], [7; 20], [9; 20]]);
        assert!(i.apply(RecordKind::DropNamespace, &1u64.to_le_bytes(), loc(100)));
        // An Adopt record that does not decode is reported, not half applied.
        assert!(!i.apply(RecordKind::Adopt, &[0u8; 17], loc(101)));
        assert!(!i.apply(RecordKind::Adopt, &[0u8; 15], loc(102)));
        assert_eq!(i.object_count(), 5);
        assert!(i.oids_in(Namespace(1)).is_empty());
        assert!(i.contains(Namespace(0), &[4; 20]));
    }

    #[test]
    fn checkpoint_round_trips() {
        let i = sample();
        let c = Covered {
            segment: 3,
            offset: 4096,
            next_lsn: 77,
        };
        let b = encode_checkpoint(&i, c);
        assert_eq!(decode_checkpoint(&b), Some((i.clone(), c)));
        assert_eq!(b, encode_checkpoint(&i, c), "deterministic");
    }

    #[test]
    fn damaged_checkpoints_are_refused() {
        let b = encode_checkpoint(
            &sample(),
            Covered {
                segment: 1,
                offset: 64,
                next_lsn: 0,
            },
        );
        for at in [0, 5, 20, 40, 60, b.len() / 2, b.len() - 1] {
            let mut d = b.clone();
            d[at] ^= 1;
            assert!(decode_checkpoint(&d).is_none(), "flip at {at}");
        }
        for cut in [0, 10, 47, 52, b.len() - 1] {
            assert!(decode_checkpoint(&b[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn carried_deletions_act_only_before_their_place_and_odd_lengths_are_refused() {
        let mut i = Index::default();
        let key = |k: u64| {
            let mut p = vec![2u8];
            p.extend_from_slice(&k.to_le_bytes());
            p
        };
        // Key 1 before the place (segment 3, offset 100), key 2 after it.
        let at = |segment, offset| Loc {
            segment,
            offset,
            len: 20,
        };
        assert!(i.apply(RecordKind::Opaque, &key(1), at(3, 50)));
        assert!(i.apply(RecordKind::Opaque, &key(2), at(4, 10)));
        let del = encode_delete_range(2, 0..10, Some((3, 100)));
        assert_eq!(delete_range(&del), Some((2, 0, 10, Some((3, 100)))));
        assert!(i.apply(RecordKind::DeleteRange, &del, at(9, 0)));
        assert_eq!(i.opaque.keys().copied().collect::<Vec<_>>(), vec![(2, 2)]);
        let obj = |n: u8| {
            crate::object::encode(
                Namespace(7),
                &crate::object::StoredObject {
                    oid: [n; 20],
                    kind: crate::object::ObjectKind::Blob,
                    object_size: 1,
                    entry_size: 1,
                    base: None,
                    deflated: bytes::Bytes::from_static(b"x"),
                },
            )
        };
        assert!(i.apply(RecordKind::Object, &obj(1), at(3, 50)));
        assert!(i.apply(RecordKind::Object, &obj(2), at(4, 10)));
        let drop = encode_drop_namespace(Namespace(7), Some((3, 100)));
        assert_eq!(drop_namespace(&drop), Some((Namespace(7), Some((3, 100)))));
        assert!(i.apply(RecordKind::DropNamespace, &drop, at(9, 0)));
        assert_eq!(i.oids_in(Namespace(7)), vec![[2; 20]]);
        assert_eq!(i.object_count(), 1);
        // Truncated, overlong and in-between lengths are refused, not half applied.
        for len in [0, 7, 9, 16, 23, 25, 40] {
            assert!(
                !i.apply(RecordKind::DropNamespace, &vec![7u8; len], at(9, 1)),
                "{len}"
            );
        }
        for len in [0, 16, 18, 32, 34, 64] {
            assert!(
                !i.apply(RecordKind::DeleteRange, &vec![2u8; len], at(9, 1)),
                "{len}"
            );
        }
        assert_eq!(i.object_count(), 1);
        assert_eq!(i.opaque.len(), 1);
    }

    #[test]
    fn apply_records() {
        let mut i = Index::default();
        let mut opaque = vec![1u8];
        opaque.extend_from_slice(&5u64.to_le_bytes());
        opaque.extend_from_slice(b"data");
        assert!(i.apply(RecordKind::Opaque, &opaque, loc(1)));
        assert_eq!(i.opaque.get(&(1, 5)), Some(&loc(1)));
        let mut del = vec![1u8];
        del.extend_from_slice(&0u64.to_le_bytes());
        del.extend_from_slice(&6u64.to_le_bytes());
        assert!(i.apply(RecordKind::DeleteRange, &del, loc(2)));
        assert!(i.opaque.is_empty());
        assert!(!i.apply(RecordKind::Opaque, &[1, 2], loc(3)));
        assert!(!i.apply(RecordKind::DeleteRange, &[1, 2], loc(3)));
        assert!(!i.apply(RecordKind::Object, &[0; 10], loc(3)));
    }
}
