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

/// A part of a chain: bytes read from the front.
pub trait Fragment {
    fn bytes(&self) -> &[u8];
    /// Drops the first `n` bytes (`n` at most the length).
    fn skip(&mut self, n: usize);
}

impl Fragment for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn skip(&mut self, n: usize) {
        self.advance(n);
    }
}

/// A part of a [`Piece`]: shared bytes, or a view of a local buffer.
#[derive(Debug)]
pub enum Part {
    Shared(Bytes),
    Local(LocalBytes),
}

impl Fragment for Part {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Shared(b) => b,
            Part::Local(l) => l.as_ref(),
        }
    }

    fn skip(&mut self, n: usize) {
        match self {
            Part::Shared(b) => b.advance(n),
            Part::Local(l) => l.start += n,
        }
    }
}

/// Buffers in order, none empty, read as one [`Buf`] (and written as one vectored
/// write).
#[derive(Debug, Clone)]
pub struct Chain<P> {
    parts: VecDeque<P>,
    len: usize,
}

/// A piece of a response body, which may point into this thread's buffers.
pub type Piece = Chain<Part>;

/// Shared buffers in order (`Send`): a request body made of slices of a push's pack
/// and the few bytes written between them.
pub type SharedChain = Chain<Bytes>;

impl<P> Default for Chain<P> {
    fn default() -> Self {
        Chain {
            parts: VecDeque::new(),
            len: 0,
        }
    }
}

impl<P: Fragment> Chain<P> {
    pub fn new() -> Chain<P> {
        Chain::default()
    }

    /// Appends a part (nothing if it is empty).
    pub fn push(&mut self, part: P) {
        let n = part.bytes().len();
        if n > 0 {
            self.len += n;
            self.parts.push_back(part);
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
        self.parts.iter().map(P::bytes)
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for p in self.parts() {
            out.extend_from_slice(p);
        }
        out
    }
}

impl Piece {
    /// Appends shared bytes.
    pub fn push_shared(&mut self, b: Bytes) {
        self.push(Part::Shared(b));
    }

    /// Appends a view of a local buffer.
    pub fn push_local(&mut self, l: LocalBytes) {
        self.push(Part::Local(l));
    }

    /// The bytes as one shared buffer, for leaving the thread: copied unless they are
    /// one shared part already.
    pub fn into_shared(mut self) -> Bytes {
        if self.parts.len() == 1 && matches!(self.parts.front(), Some(Part::Shared(_))) {
            if let Some(Part::Shared(b)) = self.parts.pop_front() {
                return b;
            }
        }
        Bytes::from(self.to_vec())
    }
}

impl From<Bytes> for Part {
    fn from(b: Bytes) -> Part {
        Part::Shared(b)
    }
}

impl<P: Fragment + From<Bytes>> From<Bytes> for Chain<P> {
    fn from(b: Bytes) -> Chain<P> {
        let mut c = Chain::new();
        c.push(P::from(b));
        c
    }
}

impl<P: Fragment + From<Bytes>> From<Vec<u8>> for Chain<P> {
    fn from(v: Vec<u8>) -> Chain<P> {
        Chain::from(Bytes::from(v))
    }
}

impl<P: Fragment> Buf for Chain<P> {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], P::bytes)
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a chain");
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
                front.skip(cnt);
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
    fn a_piece_of_one_local_part_leaves_the_thread_whole() {
        let mut p = Piece::new();
        p.push_local(LocalBytes::new(b"entry"));
        assert_eq!(&p.into_shared()[..], b"entry");
        let one = Bytes::from_static(b"shared");
        assert_eq!(
            Piece::from(one.clone()).into_shared().as_ptr(),
            one.as_ptr()
        );
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
