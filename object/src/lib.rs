//! git's object model, pure and shared by the storage engine and the git protocol:
//! object ids (SHA-1, their hex form), the four object kinds as the pack format numbers
//! them, object ids computed as git computes them (with SHA-1 collision detection),
//! inflating a zlib stream to an exact size, applying a git delta, and a pack entry as
//! the node keeps and sends it. Tested against git itself as the oracle.
//!
//! Depends on no workspace crate: `storage` and `net` both build on it.

pub mod delta;
mod entry;

pub use delta::DeltaError;
pub use entry::{ObjectHead, StoredObject};

/// A SHA-1 object id.
pub type Oid = [u8; 20];

/// The id git uses for "no object" (a ref created or deleted).
pub const ZERO: Oid = [0; 20];

/// The four git object kinds, numbered as in the pack format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    Commit = 1,
    Tree = 2,
    Blob = 3,
    Tag = 4,
}

impl ObjectKind {
    /// git's name of the kind (`git cat-file -t`).
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
            ObjectKind::Tag => "tag",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<ObjectKind> {
        match name {
            b"commit" => Some(ObjectKind::Commit),
            b"tree" => Some(ObjectKind::Tree),
            b"blob" => Some(ObjectKind::Blob),
            b"tag" => Some(ObjectKind::Tag),
            _ => None,
        }
    }

    /// The kind of pack type number `v`.
    pub fn from_u8(v: u8) -> Option<ObjectKind> {
        match v {
            1 => Some(ObjectKind::Commit),
            2 => Some(ObjectKind::Tree),
            3 => Some(ObjectKind::Blob),
            4 => Some(ObjectKind::Tag),
            _ => None,
        }
    }
}

/// Lower-case hex of an id.
pub fn hex(oid: &Oid) -> String {
    hex_in(oid, &mut [0; 40]).to_owned()
}

/// Lower-case hex of an id, written in `buf` (no allocation: for ids written by the
/// hundred thousand).
pub fn hex_in<'a>(oid: &Oid, buf: &'a mut [u8; 40]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in buf.chunks_exact_mut(2).zip(oid) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    // Hex digits are ASCII.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Parses 40 hex digits (either case).
pub fn parse_hex(s: &[u8]) -> Option<Oid> {
    if s.len() != 40 {
        return None;
    }
    let mut o = [0u8; 20];
    for (i, b) in o.iter_mut().enumerate() {
        let h = (s[2 * i] as char).to_digit(16)?;
        let l = (s[2 * i + 1] as char).to_digit(16)?;
        *b = (h * 16 + l) as u8;
    }
    Some(o)
}

/// Content whose id is a SHA-1 collision attack (detected as git's
/// sha1collisiondetection does): its id, as the attack made it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {0} is a SHA-1 collision attack")]
pub struct Collision(pub String);

/// A collision-detecting hasher's result.
///
/// sha1dc detects the same attacks as git's sha1collisiondetection (the 32 disturbance
/// vectors, unavoidable bit conditions), with the SHA-1 rounds on the CPU's SHA
/// instructions where it has them: within a few percent of plain SHA-1.
pub fn finish(h: sha1dc::Hasher) -> Result<Oid, Collision> {
    match h.finalize() {
        Ok(d) => Ok(d.into()),
        Err(c) => Err(Collision(hex(&c.digest().into()))),
    }
}

/// The id git gives `content` of `kind`: SHA-1 of `"<kind> <len>\0" + content`.
pub fn object_id(kind: ObjectKind, content: &[u8]) -> Result<Oid, Collision> {
    let mut h = sha1dc::Hasher::new();
    h.update(format!("{} {}\0", kind.name(), content.len()).as_bytes());
    h.update(content);
    finish(h)
}

/// Why a zlib stream did not inflate to the object it should hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("zlib stream is invalid: {0}")]
    Invalid(String),
    #[error("inflated to {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
}

/// Inflates a zlib stream that must produce exactly `expected` bytes (never more is
/// read into memory than `expected + 1`).
///
/// The inflater is reused per thread: setting one up (its window and tables) for each
/// object was 5% of a clone's CPU, where commits and trees are inflated by the
/// thousand for the walk.
pub fn inflate(deflated: &[u8], expected: u64) -> Result<Vec<u8>, InflateError> {
    use flate2::{Decompress, FlushDecompress, Status};
    thread_local! {
        static INFLATER: std::cell::RefCell<Decompress> =
            std::cell::RefCell::new(Decompress::new(true));
    }
    let cap = usize::try_from(expected)
        .ok()
        .and_then(|c| c.checked_add(1))
        .ok_or(InflateError::SizeMismatch {
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
                .map_err(|e| InflateError::Invalid(e.to_string()))?;
            if status == Status::StreamEnd || out.len() == out.capacity() {
                return Ok(());
            }
            if z.total_in() == read && out.len() == made {
                return Err(InflateError::Invalid(
                    "the compressed data ends before the object does".into(),
                ));
            }
        }
    })?;
    if out.len() as u64 != expected {
        return Err(InflateError::SizeMismatch {
            expected,
            actual: out.len() as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `git hash-object` as the oracle.
    fn git_id(kind: &str, content: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .args(["hash-object", "--literally", "-t", kind, "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(content)
            .expect("write");
        let out = child.wait_with_output().expect("git");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn object_ids_are_gits() {
        for (kind, content) in [
            (ObjectKind::Blob, &b""[..]),
            (ObjectKind::Blob, b"hello\n"),
            (ObjectKind::Commit, b"not really a commit"),
            (ObjectKind::Tag, &[0u8, 255, 7][..]),
            (ObjectKind::Tree, b""),
        ] {
            let ours = object_id(kind, content).expect("no collision");
            assert_eq!(hex(&ours), git_id(kind.name(), content), "{kind:?}");
        }
    }

    #[test]
    fn kinds_and_hex_round_trip() {
        for k in [
            ObjectKind::Commit,
            ObjectKind::Tree,
            ObjectKind::Blob,
            ObjectKind::Tag,
        ] {
            assert_eq!(ObjectKind::from_u8(k as u8), Some(k));
            assert_eq!(ObjectKind::from_name(k.name().as_bytes()), Some(k));
        }
        assert_eq!(ObjectKind::from_u8(0), None);
        assert_eq!(ObjectKind::from_u8(6), None);
        let o: Oid = std::array::from_fn(|i| (i * 13) as u8);
        assert_eq!(parse_hex(hex(&o).as_bytes()), Some(o));
        assert_eq!(parse_hex(hex(&o).to_uppercase().as_bytes()), Some(o));
        for bad in ["g", "/", ":", "@", "G", "`", " ", "\u{e9}"] {
            let mut h = hex(&o);
            h.replace_range(38.., &format!("{bad:0>2}"));
            assert_eq!(parse_hex(h.as_bytes()), None, "{h}");
        }
        assert_eq!(parse_hex(&[0xff; 40]), None);
        assert_eq!(parse_hex(&hex(&o).as_bytes()[1..]), None);
        assert_eq!(parse_hex(b"xyz"), None);
        assert_eq!(parse_hex(&[b'g'; 40]), None);
    }

    #[test]
    fn inflating_wants_the_exact_size() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello world").expect("deflate");
        let d = z.finish().expect("deflate");
        assert_eq!(inflate(&d, 11).expect("inflates"), b"hello world");
        assert!(matches!(
            inflate(&d, 10),
            Err(InflateError::SizeMismatch { .. })
        ));
        assert!(matches!(
            inflate(&d, 12),
            Err(InflateError::SizeMismatch { .. })
        ));
        assert!(inflate(b"garbage", 3).is_err());
        // A stream cut short fails, and the thread's inflater is fine afterwards.
        for cut in 0..d.len() {
            assert!(inflate(&d[..cut], 11).is_err(), "cut at {cut}");
            assert_eq!(inflate(&d, 11).expect("whole"), b"hello world");
        }
        // A declared size far past the stream: refused, nothing of that size touched.
        assert!(inflate(&d, 4 << 30).is_err());
    }
}
