//! Pieces of a response body that may point into this thread's buffers.
//!
//! A clone's pack is mostly stored entries sent as they are. The store reads them into
//! buffers of the shard's own thread (see `repospanner_storage::Chunk`, not `Send`), and
//! a [`Piece`] refers to them ([`LocalBytes`]) between the few bytes of framing written
//! around them, so the entries go from the read buffer to TLS without a copy of their
//! own. hyper writes a piece's parts as one vectored write.
//!
//! A piece is not `Send`: what leaves the shard (a response streamed back to the shard
//! that accepted the connection) goes as [`Piece::into_shared`], which copies what
//! points into local buffers.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use bytes::{Buf, Bytes};

/// A view of a buffer owned by this thread, cheap to clone and to slice.
#[derive(Clone)]
pub struct LocalBytes {
    owner: Rc<dyn AsRef<[u8]>>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for LocalBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBytes({} bytes)", self.len())
    }
}

impl LocalBytes {
    /// All of `owner`.
    pub fn new(owner: impl AsRef<[u8]> + 'static) -> LocalBytes {
        let end = owner.as_ref().len();
        LocalBytes {
            owner: Rc::new(owner),
            start: 0,
            end,
        }
    }

    /// The bytes at `range` of this view (clamped to its end).
    pub fn slice(&self, range: std::ops::Range<usize>) -> LocalBytes {
        let end = (self.start + range.end).min(self.end);
        LocalBytes {
            owner: self.owner.clone(),
            start: (self.start + range.start).min(end),
            end,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRef<[u8]> for LocalBytes {
    fn as_ref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.end]
    }
}

#[derive(Debug)]
enum Part {
    Shared(Bytes),
    Local(LocalBytes),
}

impl Part {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Shared(b) => b,
            Part::Local(l) => l.as_ref(),
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Part::Shared(b) => b.advance(n),
            Part::Local(l) => l.start += n,
        }
    }
}

/// A piece of a response body: parts in order, none empty.
#[derive(Debug, Default)]
pub struct Piece {
    parts: VecDeque<Part>,
    len: usize,
}

impl Piece {
    pub fn new() -> Piece {
        Piece::default()
    }

    /// Appends shared bytes.
    pub fn push_shared(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(Part::Shared(b));
        }
    }

    /// Appends a view of a local buffer.
    pub fn push_local(&mut self, l: LocalBytes) {
        if !l.is_empty() {
            self.len += l.len();
            self.parts.push_back(Part::Local(l));
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts' bytes, in order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(Part::bytes)
    }

    /// The bytes as one shared buffer, for leaving the thread: copied unless they are
    /// one shared part already.
    pub fn into_shared(mut self) -> Bytes {
        if self.parts.len() == 1 {
            if let Some(Part::Shared(b)) = self.parts.pop_front() {
                return b;
            }
        }
        let mut out = Vec::with_capacity(self.len);
        for p in &self.parts {
            out.extend_from_slice(p.bytes());
        }
        Bytes::from(out)
    }
}

impl From<Bytes> for Piece {
    fn from(b: Bytes) -> Piece {
        let mut p = Piece::new();
        p.push_shared(b);
        p
    }
}

impl From<Vec<u8>> for Piece {
    fn from(v: Vec<u8>) -> Piece {
        Piece::from(Bytes::from(v))
    }
}

impl Buf for Piece {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], Part::bytes)
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a piece");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            let n = front.bytes().len();
            if cnt >= n {
                self.parts.pop_front();
                cnt -= n;
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part.bytes());
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece() -> Piece {
        let mut p = Piece::new();
        p.push_shared(Bytes::from_static(b"0009\x01"));
        p.push_local(LocalBytes::new(b"..abcd..").slice(2..6));
        p.push_shared(Bytes::new());
        p.push_local(LocalBytes::new(Vec::new()));
        p.push_shared(Bytes::from_static(b"0000"));
        p
    }

    #[test]
    fn reads_its_parts_in_order_however_it_is_advanced() {
        let whole = b"0009\x01abcd0000";
        assert_eq!(piece().len(), whole.len());
        assert_eq!(&piece().into_shared()[..], whole);
        for step in 1..=whole.len() {
            let mut p = piece();
            let mut got = Vec::new();
            while p.has_remaining() {
                let c = p.chunk();
                assert!(!c.is_empty());
                let n = c.len().min(step);
                got.extend_from_slice(&c[..n]);
                p.advance(n);
            }
            assert_eq!(&got[..], whole, "step {step}");
        }
    }

    #[test]
    fn gives_every_part_to_a_vectored_write() {
        let p = piece();
        let mut slots = [IoSlice::new(&[]); 8];
        let n = p.chunks_vectored(&mut slots);
        let got: Vec<u8> = slots[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(n, 3);
        assert_eq!(&got[..], b"0009\x01abcd0000");
        // Fewer slots than parts: the first ones.
        let mut one = [IoSlice::new(&[])];
        assert_eq!(p.chunks_vectored(&mut one), 1);
        assert_eq!(&one[0][..], b"0009\x01");
    }

    #[test]
    fn slices_clamp_to_the_view() {
        let l = LocalBytes::new(b"0123456789").slice(2..8);
        assert_eq!(l.as_ref(), b"234567");
        assert_eq!(l.slice(1..3).as_ref(), b"34");
        assert_eq!(l.slice(4..100).as_ref(), b"67");
        assert!(l.slice(50..60).is_empty());
    }
}
