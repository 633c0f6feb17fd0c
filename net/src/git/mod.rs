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

/// git's object model (ids, kinds, object ids, deltas) is the plumbing crate's, shared
/// with the storage engine.
pub use repospanner_object::{hex, parse_hex, ObjectKind, Oid, ZERO};

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
}

/// How long each phase of a push or of a fetch's planning took, for the log.
#[derive(Debug)]
pub struct Phases {
    last: std::time::Instant,
    pub done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    pub fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }
}

impl Default for Phases {
    fn default() -> Self {
        Phases::start()
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.done.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}ms", d.as_millis())?;
        }
        Ok(())
    }
}
