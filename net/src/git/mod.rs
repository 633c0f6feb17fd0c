//! The git smart protocol, server side, free of I/O: pkt-lines, packs, object parsing,
//! ref names, and the upload-pack / receive-pack request handling as functions over
//! bytes and a [`Repo`] view.

pub mod checksum;
pub mod objects;
pub mod pack;
pub mod pktline;
pub mod receive;
pub mod refs;
pub mod upload;

/// A SHA-1 object id.
pub type Oid = [u8; 20];

/// The all-zero id: "no object" in ref updates.
pub const ZERO: Oid = [0; 20];

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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(40);
    for b in oid {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let o = [0xab; 20];
        assert_eq!(parse_hex(hex(&o).as_bytes()), Some(o));
        assert_eq!(parse_hex(b"zz"), None);
        assert_eq!(parse_hex(&[b'g'; 40]), None);
    }
}
