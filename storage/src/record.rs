//! On-disk framing, pure: segment headers, frames and records as bytes.
//!
//! ```text
//! segment  = segment-header frame*            (then zeros or a torn tail)
//! segment-header (64 bytes):
//!     magic "RSPS" | version u32 | segment id u64 | salt u64 | zero[36] | crc u32
//! frame (one group-commit batch; all or nothing):
//!     magic "RSPF" u32 | version u8 | flags u8 | 0 u16 | body_len u32 | count u32
//!     | first_lsn u64 | body_crc u32 | header_crc u32          (32 bytes)
//!     body = record*   (count records, body_len bytes)
//! record:
//!     payload_len u32 | kind u8 | flags u8 | 0 u16 | crc u32 | payload  (12 + payload_len)
//! ```
//!
//! All integers little-endian. Every CRC (crc32fast, CRC-32/ISO-HDLC) is seeded with the
//! segment's random `salt`: a frame is only valid in the segment that wrote it, so bytes a
//! client pushed (a blob can hold anything, including a well-formed frame) can never be
//! mistaken for a frame when recovery searches past a damaged region, and stale bytes
//! from an older segment file can't either. A record carries its own CRC so a single
//! record can be read and checked without its frame.

use crate::Lsn;

pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RSPS");
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RSPF");
pub const VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const FRAME_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 12;

/// Record flag: the payload is zstd-compressed (see [`crate::Options::zstd_min_bytes`]).
pub const FLAG_ZSTD: u8 = 1;
/// Record flag of an object record: a copy compaction or repair wrote, which replaces
/// an earlier copy of the object in its namespace when the log is replayed (an object
/// record without it yields to an earlier copy). A repaired object's earlier copy is
/// damaged, so it must not win a replay from a checkpoint taken before the repair.
pub const FLAG_REPLACES: u8 = 2;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A git object as a pack entry (see [`crate::object`]).
    Object = 1,
    /// An opaque value of another crate, keyed by (stream, key).
    Opaque = 2,
    /// Deletes opaque keys `from..to` of a stream (raft log truncation and purge).
    DeleteRange = 3,
    /// Drops a whole object namespace (repository deletion); compaction reclaims it.
    DropNamespace = 4,
    /// Indexes objects of one namespace in another too, at the same records (a push's
    /// objects, written while it arrived, published once it is verified).
    Adopt = 5,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Object),
            2 => Some(RecordKind::Opaque),
            3 => Some(RecordKind::DeleteRange),
            4 => Some(RecordKind::DropNamespace),
            5 => Some(RecordKind::Adopt),
            _ => None,
        }
    }
}

fn crc(salt: u64, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    pub salt: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.salt.to_le_bytes());
        let c = crc(0, &[&b[..60]]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// `None` when the bytes are not a valid segment header.
    pub fn decode(b: &[u8]) -> Option<SegmentHeader> {
        if b.len() < SEGMENT_HEADER_LEN
            || u32_at(b, 0) != SEGMENT_MAGIC
            || u32_at(b, 4) != VERSION
            || crc(0, &[&b[..60]]) != u32_at(b, 60)
        {
            return None;
        }
        Some(SegmentHeader {
            id: u64_at(b, 8),
            salt: u64_at(b, 16),
        })
    }
}

/// One record to be written: kind, flags and payload (already encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBytes {
    pub kind: RecordKind,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Appends the encoding of one record to `out`; its payload is `payload`.
pub fn encode_record(out: &mut Vec<u8>, salt: u64, kind: RecordKind, flags: u8, payload: &[u8]) {
    encode_record_parts(out, salt, kind, flags, payload, &[]);
}

/// Appends the encoding of one record whose payload is `head` followed by `tail`
/// (written straight into `out`, never assembled elsewhere first).
pub fn encode_record_parts(
    out: &mut impl Out,
    salt: u64,
    kind: RecordKind,
    flags: u8,
    head: &[u8],
    tail: &[u8],
) {
    encode_record_framed(out, &mut FrameCrc::new(salt), kind, flags, head, tail);
}

/// The CRC of a frame's body, built record by record as [`encode_record_framed`]
/// writes them: each payload byte is read once for both its record's CRC and the
/// frame's (CRCs of consecutive blocks combine in O(log n) time), where hashing the
/// assembled body again read every byte of every write a second time.
#[derive(Debug, Clone)]
pub struct FrameCrc {
    salt: u64,
    body: crc32fast::Hasher,
}

impl FrameCrc {
    pub fn new(salt: u64) -> FrameCrc {
        let mut body = crc32fast::Hasher::new();
        body.update(&salt.to_le_bytes());
        FrameCrc { salt, body }
    }

    /// What [`encode_frame_header`] would compute over the body written so far.
    pub fn body_crc(&self) -> u32 {
        self.body.clone().finalize()
    }
}

/// Payloads from this size on are added to a frame's CRC by combining CRCs.
const COMBINE_FROM_BYTES: usize = 4096;

/// [`encode_record_parts`], adding the record to `frame`'s CRC.
pub fn encode_record_framed(
    out: &mut impl Out,
    frame: &mut FrameCrc,
    kind: RecordKind,
    flags: u8,
    head: &[u8],
    tail: &[u8],
) {
    let len = u32::try_from(head.len() + tail.len())
        .expect("record payloads are limited to 4 GiB by the store");
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind as u8;
    h[5] = flags;
    let mut payload = crc32fast::Hasher::new();
    payload.update(head);
    payload.update(tail);
    let mut rec = crc32fast::Hasher::new();
    rec.update(&frame.salt.to_le_bytes());
    rec.update(&h[..8]);
    rec.combine(&payload);
    h[8..12].copy_from_slice(&rec.finalize().to_le_bytes());
    frame.body.update(&h);
    if head.len() + tail.len() < COMBINE_FROM_BYTES {
        // Hashing a small payload again (it is in cache) is cheaper than combining.
        frame.body.update(head);
        frame.body.update(tail);
    } else {
        frame.body.combine(&payload);
    }
    out.put(&h);
    out.put(head);
    out.put(tail);
}

/// Where records are encoded to: a growing `Vec`, or a buffer made to measure
/// ([`Fill`]).
pub trait Out {
    fn put(&mut self, b: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// A buffer of a known size, filled from the start: the store builds each write in
/// the memory it is written from. Putting more than fits is a bug in the caller's
/// sizing, and panics.
#[derive(Debug)]
pub struct Fill<'a> {
    pub buf: &'a mut [u8],
    pub at: usize,
}

impl Out for Fill<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

/// A record read back and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub kind: RecordKind,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    Truncated,
    BadCrc,
    UnknownKind(u8),
}

/// Decodes the record at the start of `b`; returns it and its total length.
pub fn decode_record(b: &[u8], salt: u64) -> Result<(RecordRef<'_>, usize), RecordError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Truncated);
    }
    let len = u32_at(b, 0) as usize;
    let total = RECORD_HEADER_LEN
        .checked_add(len)
        .ok_or(RecordError::Truncated)?;
    if b.len() < total {
        return Err(RecordError::Truncated);
    }
    let payload = &b[RECORD_HEADER_LEN..total];
    if crc(salt, &[&b[..8], payload]) != u32_at(b, 8) {
        return Err(RecordError::BadCrc);
    }
    let kind = RecordKind::from_u8(b[4]).ok_or(RecordError::UnknownKind(b[4]))?;
    Ok((
        RecordRef {
            kind,
            flags: b[5],
            payload,
        },
        total,
    ))
}

/// A frame header read back and checked (its body is checked separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub count: u32,
    pub first_lsn: Lsn,
    pub body_crc: u32,
}

impl FrameHeader {
    pub fn total_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// `None` unless `b` starts with a valid frame header for this salt.
    pub fn decode(b: &[u8], salt: u64) -> Option<FrameHeader> {
        if b.len() < FRAME_HEADER_LEN
            || u32_at(b, 0) != FRAME_MAGIC
            || b[4] != VERSION as u8
            || crc(salt, &[&b[..28]]) != u32_at(b, 28)
        {
            return None;
        }
        Some(FrameHeader {
            body_len: u32_at(b, 8),
            count: u32_at(b, 12),
            first_lsn: u64_at(b, 16),
            body_crc: u32_at(b, 24),
        })
    }

    /// Whether `body` is this frame's body.
    pub fn body_ok(&self, body: &[u8], salt: u64) -> bool {
        body.len() == self.body_len as usize && crc(salt, &[body]) == self.body_crc
    }
}

/// Encodes a frame around an already-encoded body of `count` records.
pub fn encode_frame_header(
    salt: u64,
    body: &[u8],
    count: u32,
    first_lsn: Lsn,
) -> [u8; FRAME_HEADER_LEN] {
    encode_frame_header_crc(salt, body.len(), crc(salt, &[body]), count, first_lsn)
}

/// [`encode_frame_header`] of a body of `body_len` bytes whose CRC is known
/// ([`FrameCrc::body_crc`]).
pub fn encode_frame_header_crc(
    salt: u64,
    body_len: usize,
    body_crc: u32,
    count: u32,
    first_lsn: Lsn,
) -> [u8; FRAME_HEADER_LEN] {
    let body_len = u32::try_from(body_len).expect("frames are limited to the segment size");
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4] = VERSION as u8;
    h[8..12].copy_from_slice(&body_len.to_le_bytes());
    h[12..16].copy_from_slice(&count.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    h[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let c = crc(salt, &[&h[..28]]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// Iterates the records of a checked frame body: `(offset in body, record)`.
pub fn records(
    body: &[u8],
    salt: u64,
) -> impl Iterator<Item = Result<(usize, RecordRef<'_>), RecordError>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= body.len() {
            return None;
        }
        match decode_record(&body[at..], salt) {
            Ok((r, len)) => {
                let here = at;
                at += len;
                Some(Ok((here, r)))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// Finds the first offset `>= from` in `b` where a valid frame (header and whole body)
/// starts with `first_lsn >= min_lsn`. Used by recovery to step over a damaged region.
pub fn find_next_frame(b: &[u8], from: usize, salt: u64, min_lsn: Lsn) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    while at + FRAME_HEADER_LEN <= b.len() {
        let rel = b[at..].windows(4).position(|w| w == magic)?;
        at += rel;
        if let Some(h) = FrameHeader::decode(&b[at..], salt) {
            let end = at + h.total_len() as usize;
            if h.first_lsn >= min_lsn
                && end <= b.len()
                && h.body_ok(&b[at + FRAME_HEADER_LEN..end], salt)
            {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5eed;

    #[test]
    fn frame_crc_built_record_by_record_matches_hashing_the_body() {
        // Payload lengths around CRC block sizes, split between head and tail anyhow.
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for salt in [0, SALT, u64::MAX] {
            let mut body = Vec::new();
            let mut framed = FrameCrc::new(salt);
            let mut plain = Vec::new();
            for (i, len) in [0usize, 1, 15, 16, 17, 63, 64, 4096, 65_537]
                .into_iter()
                .enumerate()
            {
                let split = (i * 7).min(len);
                let (head, tail) = data[..len].split_at(split);
                encode_record_framed(&mut body, &mut framed, RecordKind::Object, 0, head, tail);
                encode_record_parts(&mut plain, salt, RecordKind::Object, 0, head, tail);
                assert_eq!(body, plain, "salt {salt} len {len}: record bytes differ");
                assert_eq!(
                    encode_frame_header_crc(salt, body.len(), framed.body_crc(), 3, 9),
                    encode_frame_header(salt, &body, 3, 9),
                    "salt {salt} len {len}"
                );
            }
        }
    }

    fn frame(records: &[(RecordKind, &[u8])], first_lsn: Lsn) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, p) in records {
            encode_record(&mut body, SALT, *k, 0, p);
        }
        let mut out = encode_frame_header(SALT, &body, records.len() as u32, first_lsn).to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader { id: 7, salt: 99 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x40;
            assert_eq!(SegmentHeader::decode(&d), None, "byte {i}");
        }
        assert_eq!(SegmentHeader::decode(&b[..10]), None);
    }

    #[test]
    fn frame_round_trips() {
        let f = frame(
            &[(RecordKind::Opaque, b"hello"), (RecordKind::Object, b"")],
            5,
        );
        let h = FrameHeader::decode(&f, SALT).expect("header");
        assert_eq!((h.count, h.first_lsn), (2, 5));
        let body = &f[FRAME_HEADER_LEN..];
        assert!(h.body_ok(body, SALT));
        let rs: Vec<_> = records(body, SALT)
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].1.payload, b"hello");
        assert_eq!(rs[1].0, RECORD_HEADER_LEN + 5);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = frame(&[(RecordKind::Opaque, b"some payload bytes")], 1);
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut d = f.clone();
                d[i] ^= 1 << bit;
                let ok = FrameHeader::decode(&d, SALT)
                    .is_some_and(|h| h.body_ok(&d[FRAME_HEADER_LEN..], SALT));
                assert!(!ok, "flip of byte {i} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn wrong_salt_is_no_frame() {
        let f = frame(&[(RecordKind::Opaque, b"x")], 1);
        assert!(FrameHeader::decode(&f, SALT + 1).is_none());
    }

    #[test]
    fn truncated_records_are_errors() {
        let mut body = Vec::new();
        encode_record(&mut body, SALT, RecordKind::Opaque, 0, b"abcdef");
        for cut in 0..body.len() {
            assert!(decode_record(&body[..cut], SALT).is_err(), "cut at {cut}");
        }
        let mut bad = body.clone();
        bad[4] = 200;
        assert!(decode_record(&bad, SALT).is_err());
    }

    #[test]
    fn finds_the_next_frame_past_damage_but_not_a_forged_frame_inside_a_payload() {
        let a = frame(&[(RecordKind::Opaque, b"a")], 1);
        // A pushed blob can hold anything, including a well-formed frame; without the
        // segment's salt it cannot be a valid one.
        let forged = {
            let mut body = Vec::new();
            encode_record(&mut body, SALT ^ 1, RecordKind::Opaque, 0, b"forged");
            let mut f = encode_frame_header(SALT ^ 1, &body, 1, 100).to_vec();
            f.extend_from_slice(&body);
            f
        };
        let b = frame(&[(RecordKind::Opaque, &forged)], 2);
        let c = frame(&[(RecordKind::Opaque, b"c")], 3);
        let mut seg = [a.clone(), b.clone(), c.clone()].concat();
        let b_at = a.len();
        let c_at = a.len() + b.len();
        seg[b_at + 9] ^= 1; // damage b's header
        assert_eq!(find_next_frame(&seg, b_at, SALT, 2), Some(c_at));
        assert_eq!(find_next_frame(&seg, c_at + 1, SALT, 0), None);
        // Frames older than the last good one are not taken either.
        assert_eq!(find_next_frame(&seg, 0, SALT, 4), None);
    }
}
