//! Building packs and push requests by hand, for tests that send what `git` never would.

use repospanner_net::git::pack::{OutEntry, PackWriter};
use repospanner_net::git::{hex, pktline, ObjectKind};

pub fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data).expect("deflate");
    z.finish().expect("deflate")
}

pub fn blob_id(content: &[u8]) -> [u8; 20] {
    object_id("blob", content)
}

/// The id git gives an object of `kind` ("blob", "tree", "commit", "tag").
pub fn object_id(kind: &str, content: &[u8]) -> [u8; 20] {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("{kind} {}\0", content.len()).as_bytes());
    h.update(content);
    h.finalize().into()
}

pub fn pack(entries: &[OutEntry<'_>]) -> Vec<u8> {
    let (mut w, mut out) = PackWriter::new(entries.len() as u32);
    for e in entries {
        out.extend(w.entry(e));
    }
    out.extend(w.finish());
    out
}

pub fn retrail(mut p: Vec<u8>) -> Vec<u8> {
    use sha1::Digest;
    p.truncate(p.len() - 20);
    let t: [u8; 20] = sha1::Sha1::digest(&p).into();
    p.extend_from_slice(&t);
    p
}

/// A receive-pack request: one command, then `pack`.
pub fn push_body(old: &str, new: &str, name: &[u8], pack: &[u8]) -> Vec<u8> {
    push_request(&[(old, new, name)], "report-status", pack)
}

/// A receive-pack request: `commands` (old, new, ref name), the first carrying
/// `caps`, a flush, then `pack`.
pub fn push_request(commands: &[(&str, &str, &[u8])], caps: &str, pack: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (old, new, name)) in commands.iter().enumerate() {
        let mut line = format!("{old} {new} ").into_bytes();
        line.extend_from_slice(name);
        if i == 0 {
            line.push(0);
            line.extend_from_slice(caps.as_bytes());
        }
        line.push(b'\n');
        pktline::data(&mut body, &line).expect("fits one pkt-line");
    }
    pktline::flush(&mut body);
    body.extend_from_slice(pack);
    body
}

/// A pkt-line of `payload` as it is, for requests built by hand.
pub fn pkt(out: &mut Vec<u8>, payload: &[u8]) {
    pktline::data(out, payload).expect("fits one pkt-line");
}

/// A commit of one file `name` holding `content`, made by hand: its blob, tree and
/// commit, each as (kind, bytes, deflated), and the commit's id.
pub struct OneFileCommit {
    pub objects: Vec<(ObjectKind, Vec<u8>, Vec<u8>)>,
    pub id: String,
}

impl OneFileCommit {
    pub fn new(name: &str, content: &[u8], message: &str) -> OneFileCommit {
        let mut tree = format!("100644 {name}\0").into_bytes();
        tree.extend_from_slice(&blob_id(content));
        let commit = format!(
            "tree {}\nauthor A U Thor <a@example.com> 1700000000 +0000\n\
             committer A U Thor <a@example.com> 1700000000 +0000\n\n{message}\n",
            hex(&object_id("tree", &tree))
        )
        .into_bytes();
        let id = hex(&object_id("commit", &commit));
        let objects = [
            (ObjectKind::Blob, content.to_vec()),
            (ObjectKind::Tree, tree),
            (ObjectKind::Commit, commit),
        ]
        .into_iter()
        .map(|(k, b)| {
            let d = deflate(&b);
            (k, b, d)
        })
        .collect();
        OneFileCommit { objects, id }
    }

    /// Object `i` (0 blob, 1 tree, 2 commit) as a pack entry.
    pub fn entry(&self, i: usize) -> OutEntry<'_> {
        let (kind, bytes, deflated) = &self.objects[i];
        OutEntry::Full {
            kind: *kind,
            size: bytes.len() as u64,
            deflated,
        }
    }

    /// The three objects as a pack.
    pub fn pack(&self) -> Vec<u8> {
        pack(&[self.entry(0), self.entry(1), self.entry(2)])
    }
}
