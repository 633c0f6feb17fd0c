//! The git smart protocol, server side: pkt-lines, packs, object parsing, fsck and ref
//! names as pure functions over bytes, and the upload-pack / receive-pack request
//! handling over the [`crate::backend::Backend`] trait. No sockets or files here; the
//! one executor detail is `receive`'s move of a push's delta resolution off the
//! executor (glommio's `spawn_blocking`).

pub mod checksum;
pub mod fsck;
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

/// Named limits on the variable-length parts of one request (`limits.*` in
/// config.yml). A request past one is refused with an error that names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest ref name a push may send (`limits.ref_name_bytes_max`). Every line that
    /// carries a ref name (the advertisement, `ls-refs`, the push report) then fits a
    /// pkt-line with room to spare.
    pub ref_name_bytes_max: usize,
    /// Most capabilities (or v2 capability lines) in one request
    /// (`limits.capabilities_max`).
    pub capabilities_max: usize,
    /// Most object ids (`want`, `have`, `shallow`) and ref names (`deepen-not`) in one
    /// upload-pack request (`limits.negotiation_ids_max`).
    pub negotiation_ids_max: usize,
    /// Most ref updates in one push (`limits.refs_per_push_max`).
    pub refs_per_push_max: usize,
    /// Most push options in one push (`limits.push_options_max`).
    pub push_options_max: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            ref_name_bytes_max: 4096,
            capabilities_max: 256,
            negotiation_ids_max: 1_000_000,
            refs_per_push_max: 100_000,
            push_options_max: 256,
        }
    }
}

/// The largest `limits.ref_name_bytes_max` allowed: a report line `ng <name> <reason>`
/// must still fit one pkt-line with a reason of up to 900 bytes.
pub const REF_NAME_BYTES_LIMIT: usize = 60_000;

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

/// Bytes a client sent, as they may appear in an error message: at most
/// [`EXCERPT_BYTES`] of them, printable ASCII as it is and everything else escaped
/// (`\x01`), with the full length when cut. An error must never grow with its input.
pub fn excerpt(b: &[u8]) -> String {
    let mut s = String::with_capacity(EXCERPT_BYTES + 24);
    s.push('"');
    for &c in b.iter().take(EXCERPT_BYTES) {
        match c {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(c as char);
            }
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    if b.len() > EXCERPT_BYTES {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

/// How many bytes of a client's input an error message quotes.
pub const EXCERPT_BYTES: usize = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"want x"), "\"want x\"");
        assert_eq!(excerpt(b"a\x01\"\\"), "\"a\\x01\\\"\\\\\"");
        let long = excerpt(&[1u8; 13_500]);
        assert!(long.len() < 4 * EXCERPT_BYTES + 30, "{long}");
        assert!(long.ends_with("... (13500 bytes)"), "{long}");
        assert!(long.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    }

    #[test]
    fn hex_round_trips() {
        let o = [0xab; 20];
        assert_eq!(parse_hex(hex(&o).as_bytes()), Some(o));
        assert_eq!(parse_hex(b"zz"), None);
        assert_eq!(parse_hex(&[b'g'; 40]), None);
    }
}
