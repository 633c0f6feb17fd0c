//! pkt-line framing (git `Documentation/technical/protocol-common.txt`), pure.
//!
//! A decoder over a byte buffer that says what it found, or how many more bytes it
//! needs, and never panics on hostile input; and encoders for the lines we send.

/// Largest pkt-line git allows: 65520 bytes including the 4-byte length.
pub const MAX_PKT: usize = 65520;

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

/// Appends a data packet holding `data`. Panics only on our own oversized output,
/// which callers split first (see [`data_chunks`]).
pub fn data(out: &mut Vec<u8>, payload: &[u8]) {
    let n = payload.len() + 4;
    assert!(n <= MAX_PKT, "pkt-line payload of {} bytes", payload.len());
    out.extend_from_slice(format!("{n:04x}").as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a data packet holding `line` and a newline.
pub fn line(out: &mut Vec<u8>, line: &str) {
    let mut p = Vec::with_capacity(line.len() + 1);
    p.extend_from_slice(line.as_bytes());
    p.push(b'\n');
    data(out, &p);
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
    let mut w = BandWriter {
        out: std::mem::take(out),
        band,
        max: Some(max.clamp(6, MAX_PKT)),
        open: None,
    };
    w.write(payload);
    *out = w.take();
}

/// Writes a byte stream as side-band packets on one band, each of at most `max` bytes
/// (header included), straight into one buffer; without side-band (`max` = `None`) the
/// bytes pass as they are. The same bytes as [`sideband`], however the stream is split.
#[derive(Debug)]
pub struct BandWriter {
    out: Vec<u8>,
    band: u8,
    max: Option<usize>,
    /// Where the open packet's header is in `out`.
    open: Option<usize>,
}

impl BandWriter {
    pub fn new(band: u8, max: Option<usize>) -> BandWriter {
        BandWriter {
            out: Vec::new(),
            band,
            max: max.map(|m| m.clamp(6, MAX_PKT)),
            open: None,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) {
        let Some(max) = self.max else {
            self.out.extend_from_slice(data);
            return;
        };
        while !data.is_empty() {
            let at = match self.open {
                Some(at) => at,
                None => {
                    let at = self.out.len();
                    self.out.extend_from_slice(b"0000");
                    self.out.push(self.band);
                    self.open = Some(at);
                    at
                }
            };
            let n = (max - (self.out.len() - at)).min(data.len());
            self.out.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.out.len() - at == max {
                self.close();
            }
        }
    }

    fn close(&mut self) {
        if let Some(at) = self.open.take() {
            let len = format!("{:04x}", self.out.len() - at);
            self.out[at..at + 4].copy_from_slice(len.as_bytes());
        }
    }

    /// Makes room for `n` more payload bytes and their packet headers, so that a
    /// batch of a clone is framed without growing the buffer (growing by doubling
    /// copied it again: 3% of a clone's CPU).
    pub fn reserve(&mut self, n: usize) {
        let packets = self.max.map_or(0, |m| n / (m - 5) + 2);
        self.out.reserve(n + packets * 5);
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Everything written so far, as whole packets.
    pub fn take(&mut self) -> Vec<u8> {
        self.close();
        std::mem::take(&mut self.out)
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
    fn encodes() {
        let mut out = Vec::new();
        line(&mut out, "# service=git-upload-pack");
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
