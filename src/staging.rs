//! Passing a push's raw request body to the other members of its group while it
//! arrives, so that after verification they need only be told which bytes are which
//! objects (a *commit*), instead of receiving every object then.
//!
//! Sender ([`OutStages`]): one task per member forwards the body in bodies of about
//! [`STAGE_CHUNK_BYTES`] (`/rpc/shard/k/stage`). Reading the client's body waits while
//! a member is far behind (flow control), so every byte crosses to each member once.
//! A member that stalls or fails is given up on; it gets the objects the ordinary way
//! after verification.
//!
//! Receiver ([`InStages`]): holds each staged body in memory (at most
//! [`STAGED_BYTES_MAX`] per shard, idle ones dropped after [`STAGE_IDLE`]) until its
//! commit names the objects in it, or it expires (the push failed or went elsewhere).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use repospanner_net::client::NodeClient;
use repospanner_storage::StoredObject;

use crate::cluster::{put_head, rpc_path, Head, Reader, WireError};

/// Size of one staging request body.
pub const STAGE_CHUNK_BYTES: usize = 8 << 20;
/// Bytes a member may fall behind before the body's arrival waits for it.
const STAGE_QUEUE_MAX: usize = 32 << 20;
/// A member that takes no staged bytes for this long is given up on.
const STAGE_STALL: Duration = Duration::from_secs(5);
/// Staged bytes a shard holds at once.
pub const STAGED_BYTES_MAX: usize = 2 << 30;
/// A staged body nobody touched for this long is dropped.
pub const STAGE_IDLE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Wire formats (pure).

/// `stage` body: id, namespace, offset of `data` in the push body, then the data.
pub fn encode_stage(id: u64, ns: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + data.len());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&ns.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(data);
    b
}

/// Decodes [`encode_stage`]: (id, namespace, offset, data).
pub fn decode_stage(b: &[u8]) -> Result<(u64, u64, u64, &[u8]), WireError> {
    let mut r = Reader::new(b);
    Ok((
        r.u64("stage id")?,
        r.u64("namespace")?,
        r.u64("offset")?,
        r.rest(),
    ))
}

/// An object of a commit: everything but its bytes, which are a range of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub head: Head,
    pub range: Range<usize>,
}

/// `commit` body: id, namespace, then per object its [`put_head`] and the range of
/// its bytes in the staged body (start[8] end[8]).
pub fn encode_commit(id: u64, ns: u64, objects: &[Placed]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + objects.len() * 74);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&ns.to_le_bytes());
    for o in objects {
        put_head(&mut b, &o.head);
        b.extend_from_slice(&(o.range.start as u64).to_le_bytes());
        b.extend_from_slice(&(o.range.end as u64).to_le_bytes());
    }
    b
}

/// Decodes [`encode_commit`]: (id, namespace, objects).
pub fn decode_commit(b: &[u8]) -> Result<(u64, u64, Vec<Placed>), WireError> {
    let mut r = Reader::new(b);
    let id = r.u64("stage id")?;
    let ns = r.u64("namespace")?;
    let mut out = Vec::new();
    while !r.done() {
        let head = r.head()?;
        let start = r.u64("range start")? as usize;
        let end = r.u64("range end")? as usize;
        if start > end {
            return Err(WireError {
                at: b.len() - r.rest().len() - 16,
                what: "range ends before it starts",
            });
        }
        out.push(Placed {
            head,
            range: start..end,
        });
    }
    Ok((id, ns, out))
}

// ---------------------------------------------------------------------------
// Sender.

struct OutPeer {
    id: u64,
    tx: Option<futures_channel::mpsc::UnboundedSender<Bytes>>,
    /// Bytes that may still be queued for the member (the body's arrival waits for it).
    room: Rc<glommio::sync::Semaphore>,
    /// Set when the whole body was handed to the member's task.
    complete: Rc<Cell<bool>>,
    /// `true` once the member holds the whole body.
    result: Option<futures_channel::oneshot::Receiver<bool>>,
}

struct OutStage {
    peers: Vec<OutPeer>,
    started: Instant,
}

/// Bodies this shard is passing to members (see the module docs).
#[derive(Default)]
pub struct OutStages {
    stages: RefCell<HashMap<u64, OutStage>>,
}

impl std::fmt::Debug for OutStages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutStages")
            .field("stages", &self.stages.borrow().len())
            .finish()
    }
}

impl OutStages {
    /// Starts passing body `id` of namespace `ns` to `peers` (id, address) of shard
    /// `shard`.
    pub fn begin(
        &self,
        id: u64,
        ns: u64,
        shard: usize,
        peers: Vec<(u64, String)>,
        client: &Rc<NodeClient>,
        timeout: Duration,
    ) {
        let mut out = Vec::new();
        for (peer, addr) in peers {
            let (tx, mut rx) = futures_channel::mpsc::unbounded::<Bytes>();
            let (done_tx, done_rx) = futures_channel::oneshot::channel();
            let room = Rc::new(glommio::sync::Semaphore::new(STAGE_QUEUE_MAX as u64));
            let complete = Rc::new(Cell::new(false));
            let (q, c, client) = (room.clone(), complete.clone(), client.clone());
            let path = rpc_path(shard, "stage");
            glommio::spawn_local(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut offset = 0u64;
                let mut ok = true;
                let send = |buf: &[u8], offset: u64| {
                    let body = Bytes::from(encode_stage(id, ns, offset, buf));
                    let (client, path) = (client.clone(), path.clone());
                    let addr = addr.clone();
                    async move { client.post(&addr, &path, body, timeout).await.is_ok() }
                };
                while let Some(b) = rx.next().await {
                    if !ok {
                        q.signal(b.len() as u64);
                        continue;
                    }
                    buf.extend_from_slice(&b);
                    if buf.len() >= STAGE_CHUNK_BYTES {
                        ok = send(&buf, offset).await;
                        offset += buf.len() as u64;
                        q.signal(buf.len() as u64);
                        buf.clear();
                    }
                }
                if ok && c.get() && !buf.is_empty() {
                    ok = send(&buf, offset).await;
                }
                let _ = done_tx.send(ok && c.get());
            })
            .detach();
            out.push(OutPeer {
                id: peer,
                tx: Some(tx),
                room,
                complete,
                result: Some(done_rx),
            });
        }
        let mut stages = self.stages.borrow_mut();
        // A push refused before it stored anything never takes its stage.
        stages.retain(|_, s| s.started.elapsed() < STAGE_IDLE);
        stages.insert(
            id,
            OutStage {
                peers: out,
                started: Instant::now(),
            },
        );
    }

    /// The next piece of body `id`. Waits while a member is more than
    /// [`STAGE_QUEUE_MAX`] behind (so the body arrives as fast as the members take it);
    /// a member that takes nothing for [`STAGE_STALL`] is given up on (it gets the
    /// objects after verification).
    pub async fn data(&self, id: u64, data: &Bytes) {
        let targets: Vec<(usize, Rc<glommio::sync::Semaphore>)> =
            match self.stages.borrow().get(&id) {
                Some(stage) => stage
                    .peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.tx.is_some())
                    .map(|(i, p)| (i, p.room.clone()))
                    .collect(),
                None => return,
            };
        let n = (data.len() as u64).min(STAGE_QUEUE_MAX as u64);
        for (i, room) in targets {
            let got = futures_lite::future::or(async { room.acquire(n).await.is_ok() }, async {
                glommio::timer::sleep(STAGE_STALL).await;
                false
            })
            .await;
            let mut stages = self.stages.borrow_mut();
            let Some(p) = stages.get_mut(&id).and_then(|s| s.peers.get_mut(i)) else {
                return;
            };
            if !got {
                p.tx = None;
                continue;
            }
            if let Some(tx) = &p.tx {
                if tx.unbounded_send(data.clone()).is_err() {
                    p.tx = None;
                }
            }
        }
    }

    /// The end of body `id`: `complete` if all of it arrived, else it is abandoned.
    pub fn end(&self, id: u64, complete: bool) {
        let mut stages = self.stages.borrow_mut();
        if !complete {
            stages.remove(&id);
            return;
        }
        if let Some(stage) = stages.get_mut(&id) {
            for p in &mut stage.peers {
                if p.tx.take().is_some() {
                    p.complete.set(true);
                }
            }
        }
    }

    /// Takes body `id`: for each member, a receiver that says whether it holds all of it.
    pub fn take(&self, id: u64) -> HashMap<u64, futures_channel::oneshot::Receiver<bool>> {
        let Some(stage) = self.stages.borrow_mut().remove(&id) else {
            return HashMap::new();
        };
        stage
            .peers
            .into_iter()
            .filter_map(|mut p| p.result.take().map(|r| (p.id, r)))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Receiver.

struct InStage {
    bytes: Vec<u8>,
    touched: Instant,
}

/// Bodies other members are passing to this shard.
#[derive(Default)]
pub struct InStages {
    stages: RefCell<HashMap<u64, InStage>>,
}

impl std::fmt::Debug for InStages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InStages")
            .field("stages", &self.stages.borrow().len())
            .finish()
    }
}

/// Why a staged body cannot take more data or be committed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StageError {
    #[error("staged body {0} is unknown or expired")]
    Unknown(u64),
    #[error("staged body {id}: data at offset {offset}, but {have} bytes are staged")]
    Gap { id: u64, offset: u64, have: u64 },
    #[error("this shard already holds {0} staged bytes")]
    Full(usize),
    #[error("object {0} lies outside the staged body")]
    OutOfRange(String),
}

impl InStages {
    fn expire(&self) {
        self.stages
            .borrow_mut()
            .retain(|_, s| s.touched.elapsed() < STAGE_IDLE);
    }

    /// Appends `data` at `offset` of body `id` (offset 0 starts it).
    pub fn append(&self, id: u64, offset: u64, data: &[u8]) -> Result<(), StageError> {
        self.expire();
        let total: usize = self.stages.borrow().values().map(|s| s.bytes.len()).sum();
        let mut stages = self.stages.borrow_mut();
        if total + data.len() > STAGED_BYTES_MAX {
            stages.remove(&id);
            return Err(StageError::Full(total));
        }
        if offset == 0 {
            stages.insert(
                id,
                InStage {
                    bytes: Vec::new(),
                    touched: Instant::now(),
                },
            );
        }
        let Some(s) = stages.get_mut(&id) else {
            return Err(StageError::Unknown(id));
        };
        if s.bytes.len() as u64 != offset {
            let have = s.bytes.len() as u64;
            stages.remove(&id);
            return Err(StageError::Gap { id, offset, have });
        }
        s.bytes.extend_from_slice(data);
        s.touched = Instant::now();
        Ok(())
    }

    /// Takes body `id` and cuts `objects` out of it.
    pub fn commit(&self, id: u64, objects: Vec<Placed>) -> Result<Vec<StoredObject>, StageError> {
        self.expire();
        let s = self
            .stages
            .borrow_mut()
            .remove(&id)
            .ok_or(StageError::Unknown(id))?;
        objects
            .into_iter()
            .map(|p| {
                let deflated = s
                    .bytes
                    .get(p.range.clone())
                    .ok_or_else(|| StageError::OutOfRange(repospanner_net::git::hex(&p.head.oid)))?
                    .to_vec();
                Ok(p.head.with_bytes(deflated.into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repospanner_storage::{ObjectKind, Oid};

    fn placed(range: Range<usize>, base: Option<Oid>) -> Placed {
        Placed {
            head: Head {
                oid: [7; 20],
                kind: ObjectKind::Blob,
                object_size: 10,
                entry_size: 3,
                base,
            },
            range,
        }
    }

    #[test]
    fn wire_formats_round_trip_and_reject_damage() {
        let b = encode_stage(1, 2, 3, b"abc");
        assert_eq!(decode_stage(&b).expect("stage"), (1, 2, 3, &b"abc"[..]));
        assert!(decode_stage(&b[..20]).is_err());
        let objs = vec![placed(0..3, None), placed(3..9, Some([9; 20]))];
        let c = encode_commit(5, 6, &objs);
        let first = encode_commit(5, 6, &objs[..1]).len();
        assert_eq!(decode_commit(&c).expect("commit"), (5, 6, objs));
        for cut in 1..c.len() {
            if cut == 16 || cut == first {
                continue; // whole objects
            }
            assert!(decode_commit(&c[..cut]).is_err(), "cut at {cut}");
        }
        let backwards = Range { start: 9, end: 3 };
        let mut bad = encode_commit(5, 6, &[placed(backwards, None)]);
        assert!(decode_commit(&bad).is_err(), "range backwards");
        bad = encode_commit(5, 6, &[placed(0..3, None)]);
        bad[16 + 20] = 9;
        assert!(decode_commit(&bad).is_err(), "unknown kind");
    }

    #[test]
    fn staged_bodies_must_arrive_in_order_and_objects_lie_inside() {
        let s = InStages::default();
        s.append(1, 0, b"hello ").expect("start");
        s.append(1, 6, b"world").expect("continue");
        assert!(matches!(s.append(1, 3, b"x"), Err(StageError::Gap { .. })));
        // The gap dropped it.
        assert_eq!(s.append(1, 11, b"!"), Err(StageError::Unknown(1)));
        s.append(2, 0, b"hello world").expect("start");
        assert!(matches!(
            s.commit(2, vec![placed(6..12, None)]),
            Err(StageError::OutOfRange(_))
        ));
        s.append(3, 0, b"hello world").expect("start");
        let objs = s.commit(3, vec![placed(6..11, None)]).expect("commit");
        assert_eq!(objs[0].deflated, &b"world"[..]);
        assert_eq!(s.commit(3, Vec::new()), Err(StageError::Unknown(3)));
    }
}
