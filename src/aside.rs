//! A large push's objects reach the other members while the push still arrives.
//!
//! The receiving node writes each batch of verified objects aside (durable, in a
//! namespace no reader looks at) as the pack arrives. It also streams every such batch
//! to the other members of the shard's group, which write it aside in the same way.
//! After verification the push asks each member to adopt the objects it acknowledged
//! (one small record) and sends only the rest, so the wait for a majority no longer
//! carries the whole push: the members' writes overlap the arrival instead.
//!
//! A member that could not keep up, failed, restarted or dropped its copy is no
//! different from one that never received the stream: whatever it did not acknowledge,
//! or cannot adopt, is sent to it in full, as without streaming. Objects a member
//! holds aside are dropped when the push fails, when the member restarts, or after
//! [`PEER_ASIDE_IDLE`] without news of the push.
//!
//! This module holds the wire formats and the per-push stream state; the I/O is in
//! [`crate::node`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use repospanner_net::git::Oid;
use repospanner_net::piece::SharedChain;

use crate::cluster::{Reader, WireError};

/// Bytes of batches queued for one member at most; a batch that does not fit is not
/// streamed to it (it gets those objects after verification instead). The arrival
/// never waits for a member.
pub const STREAM_QUEUE_BYTES: usize = 64 << 20;

/// A member drops objects written aside for a push it has heard nothing of for this
/// long (its receiver died, or lost the push without telling). A push that is still
/// going then sends them again: adopting fails and it falls back to a full send.
pub const PEER_ASIDE_IDLE: Duration = Duration::from_secs(600);

/// Which push a member's aside objects belong to: the receiving node, and a random id
/// it chose for the push's stream (unique across its restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub ns: u64,
    pub from: u64,
    pub stream: u64,
}

impl StreamKey {
    /// The 24 bytes every stream message starts with.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.ns.to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out
    }

    /// Reads [`StreamKey::encode`]; returns the key and what follows it.
    pub fn decode(b: &[u8]) -> Result<(StreamKey, &[u8]), WireError> {
        let mut r = Reader::new(b);
        let key = StreamKey {
            ns: r.u64("namespace")?,
            from: r.u64("sending node")?,
            stream: r.u64("stream id")?,
        };
        Ok((key, r.rest()))
    }
}

/// The body of an `adopt` request: the key, then the ids of the objects to adopt.
pub fn encode_adopt(key: &StreamKey, oids: &[Oid]) -> Vec<u8> {
    let mut out = key.encode();
    out.reserve(oids.len() * 20);
    for o in oids {
        out.extend_from_slice(o);
    }
    out
}

/// Reads [`encode_adopt`].
pub fn decode_adopt(b: &[u8]) -> Result<(StreamKey, Vec<Oid>), WireError> {
    let (key, rest) = StreamKey::decode(b)?;
    if !rest.len().is_multiple_of(20) {
        return Err(WireError {
            at: 24,
            what: "object ids are not a multiple of 20 bytes",
        });
    }
    Ok((
        key,
        rest.chunks_exact(20)
            .map(|c| {
                let mut o = [0u8; 20];
                o.copy_from_slice(c);
                o
            })
            .collect(),
    ))
}

/// The receiving node's side: one member's stream of one push.
#[derive(Debug)]
pub struct MemberStream {
    pub id: u64,
    pub addr: String,
    /// Batches for the sender task; `None` once the stream is closed.
    pub tx: RefCell<Option<futures_channel::mpsc::UnboundedSender<Batch>>>,
    pub state: Rc<StreamState>,
    pub task: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

/// What the sender task and the push share of one member's stream.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Bytes of batches queued and not yet answered.
    pub queued: Cell<usize>,
    /// Objects the member acknowledged holding durably aside.
    pub acked: RefCell<foldhash::HashSet<Oid>>,
    /// The member failed a batch: nothing more is streamed to it.
    pub failed: Cell<bool>,
    /// Whether any batch reached the member (so that it may hold something to drop).
    pub sent: Cell<bool>,
}

/// One batch of a stream: its encoded body (a chain over the pack's bytes, cloned
/// for every member's sender), the ids in it, and its size for the queue bound.
#[derive(Debug)]
pub struct Batch {
    pub body: SharedChain,
    pub oids: Vec<Oid>,
    pub bytes: usize,
}

impl StreamState {
    /// Whether a batch of `bytes` is to be queued for this member.
    pub fn takes(&self, bytes: usize) -> bool {
        !self.failed.get() && self.queued.get() + bytes <= STREAM_QUEUE_BYTES
    }
}

/// A push's streams to the other members.
#[derive(Debug)]
pub struct OutStream {
    pub key: StreamKey,
    pub members: Vec<MemberStream>,
}

impl OutStream {
    /// Closes every member's stream: its sender finishes what is queued, then ends.
    pub fn close(&self) {
        for m in &self.members {
            m.tx.borrow_mut().take();
        }
    }
}

/// Splits `objects` (by id) into those `acked` holds and the rest, in order.
pub fn split_acked<T>(
    objects: Vec<T>,
    id: impl Fn(&T) -> Oid,
    acked: &foldhash::HashSet<Oid>,
) -> (Vec<T>, Vec<T>) {
    objects.into_iter().partition(|o| acked.contains(&id(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_adopt_bodies_round_trip_and_reject_damage() {
        let key = StreamKey {
            ns: 7,
            from: 3,
            stream: u64::MAX - 1,
        };
        let encoded = key.encode();
        let (back, rest) = StreamKey::decode(&encoded).expect("decodes");
        assert_eq!((back, rest), (key, &[][..]));
        let oids = [[1u8; 20], [2u8; 20]];
        let body = encode_adopt(&key, &oids);
        assert_eq!(decode_adopt(&body).expect("decodes"), (key, oids.to_vec()));
        assert_eq!(decode_adopt(&key.encode()).expect("no ids"), (key, vec![]));
        assert!(decode_adopt(&body[..body.len() - 1]).is_err(), "torn id");
        assert!(StreamKey::decode(&body[..23]).is_err(), "short key");
    }

    #[test]
    fn a_member_behind_or_failed_takes_no_more_batches() {
        let s = StreamState::default();
        assert!(s.takes(STREAM_QUEUE_BYTES));
        s.queued.set(STREAM_QUEUE_BYTES - 10);
        assert!(s.takes(10) && !s.takes(11));
        s.queued.set(0);
        s.failed.set(true);
        assert!(!s.takes(1));
    }

    #[test]
    fn split_keeps_order_on_both_sides() {
        let acked: foldhash::HashSet<Oid> = [[2u8; 20], [4u8; 20]].into_iter().collect();
        let objs: Vec<Oid> = (1..=5u8).map(|i| [i; 20]).collect();
        let (held, rest) = split_acked(objs, |o| *o, &acked);
        assert_eq!(held, vec![[2u8; 20], [4u8; 20]]);
        assert_eq!(rest, vec![[1u8; 20], [3u8; 20], [5u8; 20]]);
    }
}
