//! pkt-line framing (git `Documentation/technical/protocol-common.txt`), pure.
//!
//! A decoder over a byte buffer that says what it found, or how many more bytes it
//! needs, and never panics on hostile input; and encoders for the lines we send.

/// Largest pkt-line git allows: 65520 bytes including the 4-byte length.
pub const MAX_PKT: usize = 65520;

use bytes::Bytes;

use crate::piece::{LocalBytes, Piece};

/// One decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// `0000`
    Flush,
    /// `0001` (protocol v2)
    Delim,
    /// `0002` (protocol v2)
    ResponseEnd,
    /// A data line (length prefix stripped, trailing newline kept).
    Data(&'a [u8]),
}

/// Why bytes are not a pkt-line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    #[error("invalid pkt-line length {0:?}: not four hex digits")]
    BadHex([u8; 4]),
    #[error("invalid pkt-line length {0}: lengths 1 to 3 are reserved")]
    Reserved(usize),
    #[error("pkt-line of {0} bytes is longer than the limit of 65520")]
    TooLong(usize),
}

/// Result of decoding at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A packet and how many bytes it took.
    Pkt(Pkt<'a>, usize),
    /// The buffer holds only part of a packet: at least this many more bytes needed.
    Incomplete(usize),
}

fn hex_val(b: u8) -> Option<usize> {
    match b {
        b'0'..=b'9' => Some(usize::from(b - b'0')),
        b'a'..=b'f' => Some(usize::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(usize::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Decodes the packet at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, PktError> {
    if buf.len() < 4 {
        return Ok(Decoded::Incomplete(4 - buf.len()));
    }
    let mut len = 0usize;
    for &b in &buf[..4] {
        let v = hex_val(b).ok_or(PktError::BadHex([buf[0], buf[1], buf[2], buf[3]]))?;
        len = len * 16 + v;
    }
    match len {
        0 => Ok(Decoded::Pkt(Pkt::Flush, 4)),
        1 => Ok(Decoded::Pkt(Pkt::Delim, 4)),
        2 => Ok(Decoded::Pkt(Pkt::ResponseEnd, 4)),
        3 => Err(PktError::Reserved(len)),
        n if n > MAX_PKT => Err(PktError::TooLong(n)),
        n if buf.len() < n => Ok(Decoded::Incomplete(n - buf.len())),
        n => Ok(Decoded::Pkt(Pkt::Data(&buf[4..n]), n)),
    }
}

/// Reads packets from a complete buffer (a request body).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A pkt-line stream that ended in the middle of a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Pkt(#[from] PktError),
    #[error("request ends in the middle of a pkt-line")]
    Truncated,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next packet, `None` at the end of the buffer.
    pub fn next_pkt(&mut self) -> Result<Option<Pkt<'a>>, ReadError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        match decode(&self.buf[self.pos..])? {
            Decoded::Pkt(p, n) => {
                self.pos += n;
                Ok(Some(p))
            }
            Decoded::Incomplete(_) => Err(ReadError::Truncated),
        }
    }

    /// Bytes after the last packet read (the pack after receive-pack's commands).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Appends a data packet holding `payload`, or refuses (writing nothing) when it does
/// not fit one packet: lines built from what a client sent (ref names, messages)
/// must never stop the shard, so the caller decides what a refused line means.
pub fn data(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), PktError> {
    let n = payload.len() + 4;
    if n > MAX_PKT {
        return Err(PktError::TooLong(n));
    }
    out.extend_from_slice(&len_hex(n));
    out.extend_from_slice(payload);
    Ok(())
}

/// The four hex digits of a packet length (at most [`MAX_PKT`]).
fn len_hex(n: usize) -> [u8; 4] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [
        DIGITS[(n >> 12) & 15],
        DIGITS[(n >> 8) & 15],
        DIGITS[(n >> 4) & 15],
        DIGITS[n & 15],
    ]
}

/// Appends a data packet holding `line` and a newline; refused as [`data`] is.
pub fn line(out: &mut Vec<u8>, line: &str) -> Result<(), PktError> {
    let n = line.len() + 5;
    if n > MAX_PKT {
        return Err(PktError::TooLong(n));
    }
    out.extend_from_slice(&len_hex(n));
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    Ok(())
}

/// Appends a line whose parts we bound ourselves (`ACK <id> common`, `version 2`, a
/// push report's `ng <name> <reason>` with a name within its limit): a line over the
/// packet limit would be a bug of ours, and is cut rather than stopping the shard.
pub fn fixed(out: &mut Vec<u8>, line: &str) {
    let cut = floor_char_boundary(line, MAX_PKT - 5);
    let _ = self::line(out, &line[..cut]);
}

/// Appends `ERR <message>`: the message is cut to fit one packet (it is prose for a
/// person; see [`super::excerpt`] for echoing what a client sent).
pub fn error(out: &mut Vec<u8>, message: &str) {
    let cut = floor_char_boundary(message, MAX_PKT - 9);
    let _ = line(out, &format!("ERR {}", &message[..cut]));
}

/// The largest index at most `at` that is on a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Appends `payload` on side-band channel `band` (1 data, 2 progress, 3 error), split
/// into packets of at most `max` bytes (65520 for side-band-64k, 1000 for side-band).
pub fn sideband(out: &mut Vec<u8>, band: u8, payload: &[u8], max: usize) {
    let mut w = BandWriter::new(band, Some(max));
    w.out = std::mem::take(out);
    w.write(payload);
    *out = w.take();
}

/// Writes a byte stream as side-band packets on one band, each of at most `max` bytes
/// (header included); without side-band (`max` = `None`) the bytes pass as they are.
/// The same bytes as [`sideband`], however the stream is split.
///
/// Bytes come by copy ([`BandWriter::write`]) or by reference
/// ([`BandWriter::write_local`], a clone's stored entries): the packet headers and
/// the copied bytes go into one buffer, and [`BandWriter::take_piece`] gives the
/// whole as a [`Piece`] of that buffer's slices and the references between them.
#[derive(Debug)]
pub struct BandWriter {
    /// Packet headers and bytes written by copy.
    out: Vec<u8>,
    band: u8,
    max: Option<usize>,
    /// The open packet: where its header is in `out`, and its length so far.
    open: Option<(usize, usize)>,
    /// Bytes written by reference, each with the length `out` had when it came.
    refs: Vec<(usize, LocalBytes)>,
    ref_bytes: usize,
}

/// Referenced bytes shorter than this are copied: a part of its own costs a clone of
/// the buffer's handle and a slot in the vectored write, more than a short copy.
const COPY_BELOW: usize = 2048;

impl BandWriter {
    pub fn new(band: u8, max: Option<usize>) -> BandWriter {
        BandWriter {
            out: Vec::new(),
            band,
            max: max.map(|m| m.clamp(6, MAX_PKT)),
            open: None,
            refs: Vec::new(),
            ref_bytes: 0,
        }
    }

    /// Room left in the open packet (opening one if none is), and the packet's limit.
    fn room(&mut self, max: usize) -> usize {
        let (_, len) = *self.open.get_or_insert_with(|| {
            let at = self.out.len();
            self.out.extend_from_slice(b"0000");
            self.out.push(self.band);
            (at, 5)
        });
        max - len
    }

    /// Counts `n` more bytes into the open packet, closing it when full.
    fn fill(&mut self, n: usize, max: usize) {
        if let Some((_, len)) = &mut self.open {
            *len += n;
            if *len == max {
                self.close();
            }
        }
    }

    pub fn write(&mut self, mut data: &[u8]) {
        let Some(max) = self.max else {
            self.out.extend_from_slice(data);
            return;
        };
        while !data.is_empty() {
            let n = self.room(max).min(data.len());
            self.out.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.fill(n, max);
        }
    }

    /// Writes `data` by reference (short data by copy, see [`COPY_BELOW`]).
    pub fn write_local(&mut self, data: LocalBytes) {
        if data.len() < COPY_BELOW {
            return self.write(data.as_ref());
        }
        let Some(max) = self.max else {
            self.ref_bytes += data.len();
            self.refs.push((self.out.len(), data));
            return;
        };
        let mut at = 0;
        while at < data.len() {
            let n = self.room(max).min(data.len() - at);
            self.refs.push((self.out.len(), data.slice(at..at + n)));
            self.ref_bytes += n;
            at += n;
            self.fill(n, max);
        }
    }

    /// Writes `data`, kept by reference unless it is short (see [`COPY_BELOW`]).
    pub fn write_owned<C: AsRef<[u8]> + 'static>(&mut self, data: C) {
        if data.as_ref().len() < COPY_BELOW {
            self.write(data.as_ref());
        } else {
            self.write_local(LocalBytes::new(data));
        }
    }

    fn close(&mut self) {
        if let Some((at, len)) = self.open.take() {
            self.out[at..at + 4].copy_from_slice(&len_hex(len));
        }
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.out.len() + self.ref_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything written so far, as whole packets, in one buffer (referenced bytes
    /// copied into it).
    pub fn take(&mut self) -> Vec<u8> {
        if self.refs.is_empty() {
            self.close();
            return std::mem::take(&mut self.out);
        }
        let mut all = Vec::with_capacity(self.len());
        let piece = self.take_piece();
        for c in piece.parts() {
            all.extend_from_slice(c);
        }
        all
    }

    /// Everything written so far, as whole packets: slices of the header buffer and
    /// the referenced bytes, in order.
    pub fn take_piece(&mut self) -> Piece {
        self.close();
        let out = Bytes::from(std::mem::take(&mut self.out));
        let mut piece = Piece::new();
        let mut from = 0;
        for (at, data) in self.refs.drain(..) {
            piece.push_shared(out.slice(from..at));
            piece.push_local(data);
            from = at;
        }
        piece.push_shared(out.slice(from..));
        self.ref_bytes = 0;
        piece
    }
}

/// Strips one trailing newline.
pub fn chomp(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The band-1 payload of a stream of side-band packets, checking each packet's size.
    fn unband(mut b: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !b.is_empty() {
            match decode(b) {
                Ok(Decoded::Pkt(Pkt::Data(d), n)) => {
                    assert!(n <= max && d.len() > 1 && d[0] == 1, "packet of {n} bytes");
                    out.extend_from_slice(&d[1..]);
                    b = &b[n..];
                }
                other => panic!("not a data packet: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn band_writer_frames_a_stream_as_sideband_does_however_it_is_split() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for max in [1000, MAX_PKT] {
            let mut expected = Vec::new();
            sideband(&mut expected, 1, &data, max);
            for split in [1usize, 999, 4096, 65_515, 70_000, 200_000] {
                // Written in pieces, taken once: the very same bytes.
                let mut w = BandWriter::new(1, Some(max));
                for piece in data.chunks(split) {
                    w.write(piece);
                }
                assert_eq!(w.take(), expected, "max {max}, pieces of {split}");
                // Taken between pieces: shorter packets, the same payload.
                let mut got = Vec::new();
                for piece in data.chunks(split) {
                    w.write(piece);
                    got.extend(w.take());
                }
                assert_eq!(unband(&got, max), data, "max {max}, pieces of {split}");
            }
        }
        // Against the format itself: "0008", band 2, "abc"; full packets of `max` bytes.
        let mut small = Vec::new();
        sideband(&mut small, 2, b"abc", 1000);
        assert_eq!(small, b"0008\x02abc");
        let mut two = Vec::new();
        sideband(&mut two, 1, &[7u8; 996], 1000);
        assert_eq!(&two[..5], b"03e8\x01");
        assert_eq!(&two[1000..1006], b"0006\x01\x07");
        assert_eq!(two.len(), 1006);
        let mut plain = BandWriter::new(1, None);
        plain.write(b"abc");
        plain.write(b"");
        assert_eq!(plain.take(), b"abc");
    }

    #[test]
    fn band_writer_by_reference_frames_the_same_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let shared = LocalBytes::new(data.clone());
        for max in [Some(1000), Some(MAX_PKT), None] {
            let mut expected = Vec::new();
            match max {
                Some(m) => sideband(&mut expected, 1, &data, m),
                None => expected.extend_from_slice(&data),
            }
            // Alternating copies and references of every size, around COPY_BELOW and
            // the packet size; taken whole, as a piece, or in pieces.
            let sizes = [1usize, 7, COPY_BELOW - 1, COPY_BELOW, 5000, 65_515, 70_000];
            let mut w = BandWriter::new(1, max);
            let mut whole = BandWriter::new(1, max);
            let mut copied = BandWriter::new(1, max);
            let mut pieces = Vec::new();
            let (mut at, mut k) = (0, 0);
            while at < data.len() {
                let n = sizes[k % sizes.len()].min(data.len() - at);
                for w in [&mut w, &mut whole, &mut copied] {
                    if k % 2 == 0 {
                        w.write(&data[at..at + n]);
                    } else {
                        w.write_local(shared.slice(at..at + n));
                    }
                }
                if k % 3 == 2 {
                    pieces.extend_from_slice(&w.take_piece().into_shared());
                }
                at += n;
                k += 1;
            }
            pieces.extend_from_slice(&w.take_piece().into_shared());
            let piece = whole.take_piece();
            assert_eq!(piece.len(), expected.len());
            assert!(whole.is_empty());
            assert_eq!(&piece.into_shared()[..], &expected[..], "max {max:?}");
            assert_eq!(copied.take(), expected, "max {max:?}");
            match max {
                Some(m) => assert_eq!(unband(&pieces, m), data, "max {max:?}"),
                None => assert_eq!(pieces, data),
            }
        }
    }

    fn check(input: &[u8], expected: Result<Decoded<'_>, PktError>) {
        assert_eq!(
            decode(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn decodes() {
        check(b"0000", Ok(Decoded::Pkt(Pkt::Flush, 4)));
        check(b"0001", Ok(Decoded::Pkt(Pkt::Delim, 4)));
        check(b"0002", Ok(Decoded::Pkt(Pkt::ResponseEnd, 4)));
        check(b"0009done\nrest", Ok(Decoded::Pkt(Pkt::Data(b"done\n"), 9)));
        check(
            b"000Adone\n\n",
            Ok(Decoded::Pkt(Pkt::Data(b"done\n\n"), 10)),
        );
        check(b"0004", Ok(Decoded::Pkt(Pkt::Data(b""), 4)));
        check(b"00", Ok(Decoded::Incomplete(2)));
        check(b"0009do", Ok(Decoded::Incomplete(3)));
    }

    #[test]
    fn hostile_lengths_are_errors() {
        check(b"zzzz", Err(PktError::BadHex(*b"zzzz")));
        check(b"00g1", Err(PktError::BadHex(*b"00g1")));
        check(b"0003", Err(PktError::Reserved(3)));
        check(b"fff1", Err(PktError::TooLong(0xfff1)));
        check(b"ffff", Err(PktError::TooLong(0xffff)));
        let mut r = Reader::new(b"0009done\n000");
        assert!(r.next_pkt().is_ok());
        assert_eq!(r.next_pkt(), Err(ReadError::Truncated));
        let mut r = Reader::new(b"0032want");
        assert_eq!(r.next_pkt(), Err(ReadError::Truncated));
    }

    #[test]
    fn oversized_lines_are_refused_not_written() {
        let mut out = b"keep".to_vec();
        let long = "x".repeat(MAX_PKT - 4);
        assert_eq!(line(&mut out, &long), Err(PktError::TooLong(MAX_PKT + 1)));
        assert_eq!(data(&mut out, long.as_bytes()), Ok(()));
        assert_eq!(&out[..8], b"keepfff0");
        out.truncate(4);
        assert_eq!(
            data(&mut out, &[1; MAX_PKT]),
            Err(PktError::TooLong(MAX_PKT + 4))
        );
        assert_eq!(out, b"keep");
        // An error message is cut to one packet, on a char boundary.
        let mut e = Vec::new();
        error(&mut e, &"é".repeat(40_000));
        match decode(&e) {
            Ok(Decoded::Pkt(Pkt::Data(d), n)) => {
                assert_eq!(n, e.len());
                assert!(n <= MAX_PKT);
                assert!(std::str::from_utf8(d).is_ok());
                assert!(d.starts_with(b"ERR \xc3\xa9"));
            }
            other => panic!("{other:?}"),
        }
        let mut f = Vec::new();
        fixed(&mut f, "NAK");
        assert_eq!(f, b"0008NAK\n");
    }

    #[test]
    fn encodes() {
        let mut out = Vec::new();
        line(&mut out, "# service=git-upload-pack").expect("short");
        flush(&mut out);
        assert_eq!(out, b"001e# service=git-upload-pack\n0000");
        let mut out = Vec::new();
        sideband(&mut out, 1, &[7u8; 2000], 1000);
        let mut r = Reader::new(&out);
        let mut total = 0;
        while let Some(Pkt::Data(d)) = r.next_pkt().expect("valid") {
            assert_eq!(d[0], 1);
            assert!(d.len() + 4 <= 1000);
            total += d.len() - 1;
        }
        assert_eq!(total, 2000);
    }
}
