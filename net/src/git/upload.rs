//! upload-pack: ref advertisement, negotiation and pack planning for clone and fetch,
//! protocol v0 (stateless HTTP) and v2 (`ls-refs`, `fetch`).
//!
//! Request parsing and response formatting are pure functions; planning walks the
//! repository through the [`Backend`], and the pack is written by copying stored
//! entries (deltas whose base is also sent become OFS_DELTA after their base; deltas
//! against an object the client already has become REF_DELTA when it asked for a thin
//! pack; otherwise the base is sent too). Nothing is re-deflated.

use std::collections::BinaryHeap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::objects::{links, CommitHeader};
use super::pack::{OutEntry, PackWriter};
use super::pktline::{self, BandWriter, Pkt, Reader};
use super::{excerpt, hex, parse_hex, ObjectKind, Oid, RequestLimits};
use crate::backend::{ObjectHead, Objects, RepoState, StoredObject};

/// The agent string we announce.
pub fn agent() -> String {
    format!("agent=repospanner-rs/{}", env!("CARGO_PKG_VERSION"))
}

/// Why an upload-pack request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("not our ref: {0}")]
    NotOurRef(String),
    #[error("{0}")]
    Backend(String),
}

fn proto(e: impl std::fmt::Display) -> UploadError {
    UploadError::Protocol(e.to_string())
}

/// A ref as advertised: name, id, and the id it peels to if it is an annotated tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdRef {
    pub name: String,
    pub oid: Oid,
    pub peeled: Option<Oid>,
}

/// Reads the refs of `state` in sorted order, with annotated tags peeled.
pub async fn refs_of<B: Objects>(
    b: &B,
    repo: &str,
    state: &RepoState,
) -> Result<Vec<AdRef>, UploadError> {
    let mut out = Vec::with_capacity(state.refs.len());
    for (name, h) in &state.refs {
        let Some(oid) = parse_hex(h.as_bytes()) else {
            continue;
        };
        let mut peeled = None;
        if name.starts_with("refs/tags/") {
            let mut cur = oid;
            for _ in 0..16 {
                match b
                    .object(repo, &cur)
                    .await
                    .map_err(|e| UploadError::Backend(e.0))?
                {
                    Some((ObjectKind::Tag, content)) => {
                        let l = links(ObjectKind::Tag, &content).map_err(proto)?;
                        cur = l.targets[0].0;
                        peeled = Some(cur);
                    }
                    _ => break,
                }
            }
        }
        out.push(AdRef {
            name: name.clone(),
            oid,
            peeled,
        });
    }
    Ok(out)
}

/// Where HEAD points, if it resolves to an existing ref.
pub fn head(state: &RepoState) -> Option<(String, Oid)> {
    let target = state.symrefs.get("HEAD")?;
    let oid = parse_hex(state.refs.get(target)?.as_bytes())?;
    Some((target.clone(), oid))
}

/// Capabilities of upload-pack v0.
pub fn upload_caps(state: &RepoState) -> String {
    let mut caps = String::from(
        "multi_ack_detailed no-done side-band-64k side-band thin-pack ofs-delta shallow deepen-since deepen-not deepen-relative no-progress include-tag allow-tip-sha1-in-want allow-reachable-sha1-in-want filter",
    );
    if let Some(t) = state.symrefs.get("HEAD") {
        caps.push_str(&format!(" symref=HEAD:{t}"));
    }
    caps.push(' ');
    caps.push_str(&agent());
    caps
}

/// The v0 advertisement body for `service`, without the `# service=` preamble.
pub fn advertise_v0(refs: &[AdRef], state: &RepoState, caps: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut lines: Vec<(String, Oid)> = Vec::new();
    if let Some((_, oid)) = head(state) {
        lines.push(("HEAD".into(), oid));
    }
    for r in refs {
        lines.push((r.name.clone(), r.oid));
        if let Some(p) = r.peeled {
            lines.push((format!("{}^{{}}", r.name), p));
        }
    }
    if lines.is_empty() {
        let first = format!("{} capabilities^{{}}\0{caps}", hex(&[0; 20]));
        ref_line(&mut out, &first);
    }
    // The capabilities go on the first line that fits (all of them do, ref names being
    // bounded by limits.ref_name_bytes_max, but for refs stored before that limit).
    let mut caps_sent = false;
    for (name, oid) in &lines {
        let l = if caps_sent {
            format!("{} {name}", hex(oid))
        } else {
            format!("{} {name}\0{caps}", hex(oid))
        };
        let before = out.len();
        ref_line(&mut out, &l);
        caps_sent |= out.len() > before;
    }
    pktline::flush(&mut out);
    out
}

/// The v2 capability advertisement.
pub fn advertise_v2() -> Vec<u8> {
    let mut out = Vec::new();
    pktline::fixed(&mut out, "version 2");
    pktline::fixed(&mut out, &agent());
    pktline::fixed(&mut out, "ls-refs=unborn");
    pktline::fixed(&mut out, "fetch=shallow filter");
    pktline::fixed(&mut out, "server-option");
    pktline::fixed(&mut out, "object-format=sha1");
    pktline::flush(&mut out);
    out
}

/// A fetch request, v0 or v2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchRequest {
    pub wants: Vec<Oid>,
    pub haves: Vec<Oid>,
    pub shallows: Vec<Oid>,
    pub deepen: Option<u32>,
    /// `deepen-since <time>`: no commits older than this (`--shallow-since`).
    pub deepen_since: Option<i64>,
    /// `deepen-not <ref>`: no commits reachable from these refs (`--shallow-exclude`).
    pub deepen_not: Vec<String>,
    /// `deepen` counts from the client's shallow commits, not from the wants
    /// (`fetch --deepen`).
    pub deepen_relative: bool,
    pub done: bool,
    pub caps: std::collections::HashSet<String>,
    /// A partial clone's object filter (`filter <spec>`).
    pub filter: Option<Filter>,
}

/// What a partial clone leaves out (git's `--filter`; `Documentation/rev-list-options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `blob:none`: no blobs.
    NoBlobs,
    /// `blob:limit=<n>[kmg]`: no blobs of `n` bytes or more.
    BlobsBelow(u64),
    /// `tree:<depth>`: no trees or blobs `depth` or more levels below a commit's root
    /// tree (which is at depth 0): `tree:0` sends commits and tags only.
    TreeDepth(u32),
}

impl Filter {
    /// Parses a filter spec as git sends it.
    pub fn parse(spec: &[u8]) -> Result<Filter, UploadError> {
        let bad = || proto(format!("unsupported filter {}", excerpt(spec)));
        let s = std::str::from_utf8(spec).map_err(|_| bad())?;
        if s == "blob:none" {
            return Ok(Filter::NoBlobs);
        }
        if let Some(n) = s.strip_prefix("blob:limit=") {
            let (digits, unit) = match n.as_bytes().last() {
                Some(b'k' | b'K') => (&n[..n.len() - 1], 1u64 << 10),
                Some(b'm' | b'M') => (&n[..n.len() - 1], 1 << 20),
                Some(b'g' | b'G') => (&n[..n.len() - 1], 1 << 30),
                _ => (n, 1),
            };
            let v: u64 = digits.parse().map_err(|_| bad())?;
            return Ok(Filter::BlobsBelow(v.saturating_mul(unit)));
        }
        if let Some(d) = s.strip_prefix("tree:") {
            return d.parse().map(Filter::TreeDepth).map_err(|_| bad());
        }
        Err(bad())
    }

    /// Whether an object of `kind` and `size`, `depth` levels below its commit's root
    /// tree (the root tree at 0), is left out.
    pub fn omits(&self, kind: ObjectKind, size: u64, depth: u32) -> bool {
        match (self, kind) {
            (Filter::NoBlobs, ObjectKind::Blob) => true,
            (Filter::BlobsBelow(n), ObjectKind::Blob) => size >= *n,
            (Filter::TreeDepth(d), ObjectKind::Blob | ObjectKind::Tree) => depth >= *d,
            _ => false,
        }
    }
}

impl FetchRequest {
    pub fn has(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    /// The request moves the shallow boundary (by depth, time or ref), so the answer
    /// starts with the new boundary.
    pub fn deepens(&self) -> bool {
        self.deepen.is_some() || self.deepen_since.is_some() || !self.deepen_not.is_empty()
    }

    /// Checks the deepen lines together (git's rules): a depth goes with neither a time
    /// nor excluded refs, and only a depth may be relative.
    fn check_deepen(&self) -> Result<(), UploadError> {
        if self.deepen.is_some() && (self.deepen_since.is_some() || !self.deepen_not.is_empty()) {
            return Err(proto(
                "deepen and deepen-since (or deepen-not) cannot be used together",
            ));
        }
        if self.deepen_relative && self.deepen.is_none() {
            return Err(proto("deepen-relative without a deepen depth"));
        }
        Ok(())
    }
}

fn oid_arg(line: &[u8], key: &str) -> Result<Option<Oid>, UploadError> {
    let Some(rest) = line
        .strip_prefix(key.as_bytes())
        .and_then(|r| r.strip_prefix(b" "))
    else {
        return Ok(None);
    };
    parse_hex(rest)
        .map(Some)
        .ok_or_else(|| proto(format!("invalid id after {key}: {}", excerpt(rest))))
}

/// Applies one request line (want, have, shallow, deepen, done); false if it is none
/// of those. The ids counted against `limits.negotiation_ids_max`.
fn apply_arg(
    req: &mut FetchRequest,
    l: &[u8],
    limits: &RequestLimits,
) -> Result<bool, UploadError> {
    if let Some(o) = oid_arg(l, "want")? {
        req.wants.push(o);
    } else if let Some(o) = oid_arg(l, "have")? {
        req.haves.push(o);
    } else if let Some(o) = oid_arg(l, "shallow")? {
        req.shallows.push(o);
    } else if let Some(n) = l.strip_prefix(b"deepen ") {
        let n: u32 = std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| proto(format!("invalid deepen {}", excerpt(n))))?;
        if req.deepen.is_some_and(|d| d != n) {
            return Err(proto("conflicting deepen lines"));
        }
        req.deepen = Some(n);
    } else if let Some(t) = l.strip_prefix(b"deepen-since ") {
        let t: i64 = std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| proto(format!("invalid deepen-since {}", excerpt(t))))?;
        if req.deepen_since.is_some_and(|d| d != t) {
            return Err(proto("conflicting deepen-since lines"));
        }
        req.deepen_since = Some(t);
    } else if let Some(r) = l.strip_prefix(b"deepen-not ") {
        let r = std::str::from_utf8(r)
            .ok()
            .filter(|r| !r.is_empty() && r.len() <= limits.ref_name_bytes_max)
            .ok_or_else(|| proto(format!("invalid deepen-not {}", excerpt(r))))?;
        req.deepen_not.push(r.to_owned());
    } else if l == b"done" {
        req.done = true;
    } else if let Some(spec) = l.strip_prefix(b"filter ") {
        if req.filter.is_some() {
            return Err(proto("more than one filter"));
        }
        req.filter = Some(Filter::parse(spec)?);
        return Ok(true);
    } else {
        return Ok(false);
    }
    let ids = req.wants.len() + req.haves.len() + req.shallows.len() + req.deepen_not.len();
    if ids > limits.negotiation_ids_max {
        return Err(proto(format!(
            "more than {} object ids and ref names in one request (limits.negotiation_ids_max)",
            limits.negotiation_ids_max
        )));
    }
    Ok(true)
}

/// Adds capability `c` to `caps`: a repeated one or one past
/// `limits.capabilities_max` is refused.
fn add_cap(
    caps: &mut std::collections::HashSet<String>,
    c: &[u8],
    limits: &RequestLimits,
) -> Result<(), UploadError> {
    if caps.len() >= limits.capabilities_max {
        return Err(proto(format!(
            "more than {} capabilities (limits.capabilities_max)",
            limits.capabilities_max
        )));
    }
    let c = std::str::from_utf8(c)
        .map_err(|_| proto(format!("capability {} is not UTF-8", excerpt(c))))?;
    if !caps.insert(c.to_owned()) {
        return Err(proto(format!(
            "capability {} given twice",
            excerpt(c.as_bytes())
        )));
    }
    Ok(())
}

/// Parses a v0 upload-pack request body: wants (the first carrying capabilities),
/// shallows and deepen, a flush, then haves and `done`.
pub fn parse_v0(body: &[u8], limits: &RequestLimits) -> Result<FetchRequest, UploadError> {
    let mut req = FetchRequest::default();
    let mut r = Reader::new(body);
    let mut first = true;
    while let Some(p) = r.next_pkt().map_err(proto)? {
        let d = match p {
            Pkt::Data(d) => d,
            Pkt::Flush => continue,
            Pkt::Delim | Pkt::ResponseEnd => {
                return Err(proto("protocol v2 packet (0001 or 0002) in a v0 request"))
            }
        };
        let mut l = pktline::chomp(d);
        if first {
            // The first want carries the capabilities: `want <id> <cap> <cap>...`.
            if l.starts_with(b"want ") && l.len() > 45 {
                for c in l[45..].split(|b| *b == b' ').filter(|c| !c.is_empty()) {
                    add_cap(&mut req.caps, c, limits)?;
                }
                l = &l[..45];
            }
            first = false;
        }
        if !apply_arg(&mut req, l, limits)? {
            return Err(proto(format!("unsupported request line {}", excerpt(l))));
        }
    }
    if req.wants.is_empty() && !body.is_empty() && req.haves.is_empty() && !req.done {
        return Err(proto("no wants"));
    }
    req.deepen_relative = req.has("deepen-relative");
    req.check_deepen()?;
    Ok(req)
}

/// A v2 command request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Request {
    pub command: String,
    pub args: Vec<Vec<u8>>,
}

/// Parses a v2 request: `command=X`, capabilities, a delim, arguments, a flush; one
/// command per request (the stateless HTTP transport sends one).
pub fn parse_v2(body: &[u8], limits: &RequestLimits) -> Result<V2Request, UploadError> {
    let mut r = Reader::new(body);
    let mut req = V2Request::default();
    let mut in_args = false;
    let mut caps = 0usize;
    let args_max = limits
        .negotiation_ids_max
        .saturating_add(limits.capabilities_max);
    loop {
        match r.next_pkt().map_err(proto)? {
            None => return Err(proto("request ends before its flush")),
            Some(Pkt::Data(d)) => {
                let l = pktline::chomp(d);
                if in_args {
                    if req.args.len() >= args_max {
                        return Err(proto(format!(
                            "more than {args_max} arguments (limits.negotiation_ids_max)"
                        )));
                    }
                    req.args.push(l.to_vec());
                    continue;
                }
                caps += 1;
                if caps > limits.capabilities_max {
                    return Err(proto(format!(
                        "more than {} capability lines (limits.capabilities_max)",
                        limits.capabilities_max
                    )));
                }
                if let Some(c) = l.strip_prefix(b"command=") {
                    if !req.command.is_empty() {
                        return Err(proto("more than one command= line"));
                    }
                    req.command = std::str::from_utf8(c)
                        .ok()
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| proto(format!("invalid command {}", excerpt(c))))?
                        .to_owned();
                } else if let Some(f) = l.strip_prefix(b"object-format=") {
                    if f != b"sha1" {
                        return Err(proto(format!(
                            "unsupported object-format {}: this server stores sha1",
                            excerpt(f)
                        )));
                    }
                }
            }
            Some(Pkt::Delim) if !in_args => in_args = true,
            Some(Pkt::Delim) => return Err(proto("a second delim packet (0001)")),
            Some(Pkt::ResponseEnd) => return Err(proto("response-end packet (0002) in a request")),
            Some(Pkt::Flush) => break,
        }
    }
    if !r.rest().is_empty() {
        return Err(proto(
            "bytes after the request's flush: one command per request",
        ));
    }
    if req.command.is_empty() {
        return Err(proto("no command"));
    }
    Ok(req)
}

/// Appends `line` to an advertisement; a ref too long for a pkt-line (stored before
/// `limits.ref_name_bytes_max` existed) is left out rather than failing the whole
/// advertisement.
fn ref_line(out: &mut Vec<u8>, line: &str) {
    let _too_long = pktline::line(out, line);
}

/// `ls-refs`: the refs as v2 lists them.
pub fn ls_refs(args: &[Vec<u8>], refs: &[AdRef], state: &RepoState) -> Vec<u8> {
    let peel = args.iter().any(|a| a == b"peel");
    let symrefs = args.iter().any(|a| a == b"symrefs");
    let unborn = args.iter().any(|a| a == b"unborn");
    let prefixes: Vec<&[u8]> = args
        .iter()
        .filter_map(|a| a.strip_prefix(b"ref-prefix "))
        .collect();
    let wanted =
        |name: &str| prefixes.is_empty() || prefixes.iter().any(|p| name.as_bytes().starts_with(p));
    let mut out = Vec::new();
    if wanted("HEAD") {
        match (head(state), state.symrefs.get("HEAD")) {
            (Some((target, oid)), _) => {
                let mut l = format!("{} HEAD", hex(&oid));
                if symrefs {
                    l.push_str(&format!(" symref-target:{target}"));
                }
                ref_line(&mut out, &l);
            }
            (None, Some(target)) if unborn && symrefs => {
                ref_line(&mut out, &format!("unborn HEAD symref-target:{target}"));
            }
            _ => {}
        }
    }
    for r in refs.iter().filter(|r| wanted(&r.name)) {
        let mut l = format!("{} {}", hex(&r.oid), r.name);
        if let (true, Some(p)) = (peel, r.peeled) {
            l.push_str(&format!(" peeled:{}", hex(&p)));
        }
        ref_line(&mut out, &l);
    }
    pktline::flush(&mut out);
    out
}

/// Parses the arguments of a v2 `fetch`.
pub fn parse_v2_fetch(
    args: &[Vec<u8>],
    limits: &RequestLimits,
) -> Result<FetchRequest, UploadError> {
    let mut req = FetchRequest::default();
    for a in args {
        if !apply_arg(&mut req, a, limits)? {
            match a.as_slice() {
                b"deepen-relative" => req.deepen_relative = true,
                b"thin-pack" | b"ofs-delta" | b"no-progress" | b"include-tag" | b"sideband-all" => {
                    // Repeating one is harmless: git's own client never does.
                    if req.caps.len() >= limits.capabilities_max {
                        return Err(proto(format!(
                            "more than {} capabilities (limits.capabilities_max)",
                            limits.capabilities_max
                        )));
                    }
                    req.caps.insert(String::from_utf8_lossy(a).into_owned());
                }
                _ if a.starts_with(b"server-option") || a.starts_with(b"agent") => {}
                _ => return Err(proto(format!("unsupported fetch argument {}", excerpt(a)))),
            }
        }
    }
    req.caps.insert("side-band-64k".into());
    req.check_deepen()?;
    Ok(req)
}

/// How many trees the tree walk asks the store for at once ([`Objects::objects`]
/// reads their delta chains a level at a time, neighbouring entries together).
const TREES_AT_ONCE: usize = 512;

/// How many entry heads planning asks the store for at once: the more, the more of them
/// the store finds side by side and reads together (a head is some 60 bytes; the store
/// reads at most a few MiB at a time for them).
const HEADS_AT_ONCE: usize = 1024;

/// What a fetch sends: objects in pack order and the new shallow boundary.
#[derive(Debug, Default)]
pub struct Plan {
    /// Entries are read as the pack is sent ([`PackOut`]).
    pub objects: Vec<Planned>,
    /// Commits sent without their parents (`deepen`).
    pub shallow: Vec<Oid>,
    /// The client's shallow commits whose parents are now sent.
    pub unshallow: Vec<Oid>,
    /// How many entries are REF_DELTA against objects the client has.
    pub thin: usize,
    /// A full clone's walk found every object the repository stores: once it is
    /// sent, the repository may be marked [`RepoState::only_reachable`] again
    /// ([`crate::backend::Backend::mark_reachable`]).
    pub proves_reachable: bool,
    /// How long each step of planning took, for the log.
    pub phases: super::Phases,
    /// What the commit walk read, for the log.
    pub walked: Walked,
}

/// What a fetch's commit walk read: commit headers, the batches it asked for them
/// in, and other objects (tags, and what a want names that is not a commit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub commits: usize,
    pub batches: usize,
    pub others: usize,
}

impl std::fmt::Display for Walked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "commits={} batches={} others={}",
            self.commits, self.batches, self.others
        )
    }
}

/// An entry of a [`Plan`]: its head, where planning read it, or only where it is
/// stored (a full clone sends every stored entry as it is, reading no heads first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Head(ObjectHead),
    /// `bytes`: the size of its stored record, which bounds the entry's.
    Stored {
        oid: Oid,
        bytes: u64,
    },
}

impl Planned {
    pub fn oid(&self) -> Oid {
        match self {
            Planned::Head(h) => h.oid,
            Planned::Stored { oid, .. } => *oid,
        }
    }

    /// At least the bytes of its entry (for sizing batches).
    fn bytes(&self) -> u64 {
        match self {
            Planned::Head(h) => h.entry_size,
            Planned::Stored { bytes, .. } => *bytes,
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    time: i64,
    depth: u32,
    oid: Oid,
    uninteresting: bool,
}

fn be(e: crate::backend::BackendError) -> UploadError {
    UploadError::Backend(e.0)
}

/// The haves the repository knows: the common base of the negotiation.
pub fn common(b: &impl Objects, repo: &str, haves: &[Oid]) -> Vec<Oid> {
    let known = b.has_many(repo, haves);
    haves
        .iter()
        .zip(known)
        .filter(|(_, k)| *k)
        .map(|(o, _)| *o)
        .collect()
}

/// Most commits [`Ahead`] asks for in one batch.
const AHEAD_OBJECTS: usize = 256;

/// The headers of the commits the walk is about to reach, asked for in batches
/// ([`Objects::commits`]): what the node does not keep is then read together, where
/// one at a time would wait for each commit's delta chain in turn.
#[derive(Default)]
struct Ahead {
    read: HashMap<Oid, CommitHeader>,
    walked: Walked,
}

/// What the walk read of an object.
enum Read {
    Commit(CommitHeader),
    Other(ObjectKind, Vec<u8>),
}

impl Ahead {
    /// The header of commit `oid` (`None`: not a commit, or not there): asked for
    /// already, or now with what `next` says the walk reaches soon.
    async fn commit<B: Objects>(
        &mut self,
        b: &B,
        repo: &str,
        oid: &Oid,
        next: impl FnOnce() -> Vec<Oid>,
    ) -> Result<Option<CommitHeader>, UploadError> {
        self.walked.commits += 1;
        if let Some(h) = self.read.remove(oid) {
            return Ok(Some(h));
        }
        let mut batch = vec![*oid];
        batch.extend(
            next()
                .into_iter()
                .filter(|o| o != oid && !self.read.contains_key(o))
                .take(AHEAD_OBJECTS - 1),
        );
        self.walked.batches += 1;
        let mut got = b.commits(repo, &batch).await.map_err(be)?.into_iter();
        let first = got.next().flatten();
        for (o, h) in batch.into_iter().skip(1).zip(got) {
            if let Some(h) = h {
                self.read.insert(o, h);
            }
        }
        Ok(first)
    }

    /// `oid` will not be read (the walk has seen it): its header is let go.
    fn forget(&mut self, oid: &Oid) {
        self.read.remove(oid);
    }
}

/// What the walk reaches next: queued commits it has not seen, first in the queue's
/// order, at most [`AHEAD_OBJECTS`]. Only the top levels of the heap are looked at
/// (its first entries in memory, each no smaller than those below it): a request of a
/// million haves queues a million, and scanning them all for every batch would cost
/// the square of that.
fn frontier(heap: &BinaryHeap<Queued>, seen: &HashMap<Oid, bool>) -> Vec<Oid> {
    let mut next: Vec<&Queued> = heap
        .iter()
        .take(4 * AHEAD_OBJECTS)
        .filter(|q| !seen.contains_key(&q.oid))
        .collect();
    if next.len() > AHEAD_OBJECTS {
        next.select_nth_unstable_by(AHEAD_OBJECTS, |a, b| b.cmp(a));
        next.truncate(AHEAD_OBJECTS);
    }
    next.sort_unstable_by(|a, b| b.cmp(a));
    next.into_iter().map(|q| q.oid).collect()
}

/// What the commit walk of a fetch found.
#[derive(Debug, Default)]
struct Commits {
    /// Commits to send, newest first.
    send: Vec<Oid>,
    /// The tree of every commit walked.
    tree: HashMap<Oid, Oid>,
    /// Trees of the edge: uninteresting parents of the commits sent (the client has
    /// them, and the new trees are mostly made of theirs).
    boundary_trees: Vec<Oid>,
    /// Uninteresting objects walked.
    uninteresting: Vec<Oid>,
    /// Wanted objects that are not commits (tags, trees, blobs).
    other: Vec<Oid>,
    /// The new shallow boundary: commits sent without their parents.
    shallow: Vec<Oid>,
    /// The client's shallow commits whose parents are now sent.
    unshallow: Vec<Oid>,
    walked: Walked,
}

/// Walks the commits of a fetch, newest first, from the wants and the `common` haves
/// (uninteresting: the client has them), drawing the shallow boundary the request
/// asks for (depth, relative depth, time, excluded refs) or keeping the client's.
#[allow(clippy::too_many_lines)] // one walk with its depth, time and ref boundaries, which share its queue
async fn walk_commits<B: Objects>(
    b: &B,
    repo: &str,
    refs: &[AdRef],
    req: &FetchRequest,
    common: &[Oid],
) -> Result<Commits, UploadError> {
    let client_shallow: HashSet<Oid> = req.shallows.iter().copied().collect();
    // `deepen-not`: the commits the excluded refs reach are not sent.
    let excluded_tips = deepen_not_tips(refs, &req.deepen_not)?;
    let excluded_by_ref = commits_reachable(b, repo, excluded_tips).await?;
    let by_rev_list = req.deepen_since.is_some() || !req.deepen_not.is_empty();
    // Depth counts from the wants (1), or with `deepen-relative` from the client's
    // shallow commits: 0 above them (never cut), 1 for their parents.
    let want_depth = if req.deepen_relative { 0 } else { 1 };
    let cut_at = |depth: u32| match req.deepen {
        Some(d) => depth >= d && (depth > 0 || !req.deepen_relative),
        None => false,
    };
    // A shallow client's boundary holds while walking uninteresting commits: it has
    // nothing below it, so the walk must reach it even after the wanted side is done.
    let walk_to_boundary = req.deepens() && !client_shallow.is_empty();

    // Commit walk, newest first; commits reachable from the common haves are
    // uninteresting (the client has them).
    let mut heap = BinaryHeap::new();
    let mut seen: HashMap<Oid, bool> = HashMap::new();
    let mut commit_tree: HashMap<Oid, Oid> = HashMap::new();
    // Parents of the commits sent; those the client has are the edge.
    let mut edge: Vec<Oid> = Vec::new();
    let mut send_commits = Vec::new();
    let mut send_other = Vec::new(); // wanted non-commits (tags, trees, blobs)
    let mut shallow = Vec::new();
    // Sent commits and their parents, where the boundary is drawn by time or ref.
    let mut parents_of: Vec<(Oid, Vec<Oid>)> = Vec::new();
    // Commits `deepen-since` or `deepen-not` left out.
    let mut excluded: HashSet<Oid> = HashSet::new();
    // The client's shallow commits whose parents the walk goes on to.
    let mut deepened: Vec<(Oid, Vec<Oid>)> = Vec::new();
    let mut interesting = 0usize; // interesting entries in the heap
    for w in &req.wants {
        heap.push(Queued {
            time: i64::MAX,
            depth: want_depth,
            oid: *w,
            uninteresting: false,
        });
        interesting += 1;
    }
    // A relative depth counts from every shallow commit of the client (git: those our
    // refs reach, which every stored commit is), whether or not a want leads there.
    let relative_from: &[Oid] = if req.deepen_relative {
        &req.shallows
    } else {
        &[]
    };
    let common_set: HashSet<Oid> = common.iter().copied().collect();
    // Shallow requests keep the walk as it is: their boundaries follow the haves.
    let direct_edges = !req.deepens() && client_shallow.is_empty();
    for c in common.iter().chain(relative_from) {
        heap.push(Queued {
            // After the wants: a want whose parents the client has then ends the walk
            // before any other have is read.
            time: if direct_edges { i64::MAX - 1 } else { i64::MAX },
            depth: want_depth,
            oid: *c,
            uninteresting: true,
        });
    }
    let mut ahead = Ahead::default();
    while let Some(q) = heap.pop() {
        if !q.uninteresting {
            interesting -= 1;
        } else if interesting == 0 && !walk_to_boundary {
            // Only the client's side remains: nothing more can become sendable.
            break;
        }
        match seen.get(&q.oid) {
            Some(true) => {
                ahead.forget(&q.oid);
                continue;
            }
            Some(false) if !q.uninteresting => {
                ahead.forget(&q.oid);
                continue;
            }
            _ => {}
        }
        seen.insert(q.oid, q.uninteresting);
        let read = match ahead
            .commit(b, repo, &q.oid, || frontier(&heap, &seen))
            .await?
        {
            Some(h) => Some(Read::Commit(h)),
            None => {
                ahead.walked.others += 1;
                let o = b.object(repo, &q.oid).await.map_err(be)?;
                o.map(|(kind, content)| Read::Other(kind, content))
            }
        };
        let Some(read) = read else {
            if q.uninteresting {
                continue;
            }
            return Err(UploadError::Backend(format!(
                "object {} is missing",
                hex(&q.oid)
            )));
        };
        match read {
            Read::Commit(l) => {
                if !q.uninteresting
                    && (req.deepen_since.is_some_and(|t| l.time < t)
                        || excluded_by_ref.contains(&q.oid))
                {
                    excluded.insert(q.oid);
                    continue;
                }
                commit_tree.insert(q.oid, l.tree);
                if !q.uninteresting {
                    send_commits.push(q.oid);
                }
                let at_boundary = client_shallow.contains(&q.oid);
                if at_boundary && !req.deepens() {
                    // The client keeps its boundary: nothing below it is sent, and
                    // nothing below it counts as what the client has.
                    if !q.uninteresting && !l.parents.is_empty() {
                        shallow.push(q.oid);
                    }
                    continue;
                }
                if !q.uninteresting && cut_at(q.depth) && !l.parents.is_empty() {
                    shallow.push(q.oid);
                    continue;
                }
                // Below a shallow client's boundary everything is new to it.
                let below = at_boundary && req.deepens();
                let uninteresting = q.uninteresting && !below;
                let depth = match (req.deepen_relative, below) {
                    (true, true) => 1,
                    (true, false) if q.depth == 0 => 0,
                    _ => q.depth + 1,
                };
                if below {
                    deepened.push((q.oid, l.parents.clone()));
                }
                if by_rev_list && !q.uninteresting {
                    parents_of.push((q.oid, l.parents.clone()));
                }
                if !q.uninteresting {
                    edge.extend(l.parents.iter().copied());
                }
                for p in l.parents {
                    // A parent the client said it has: the edge, walked as the
                    // client's side right away, so a fetch of what grew on the
                    // client's tips reads no other have.
                    if !uninteresting && direct_edges && common_set.contains(&p) {
                        if seen.get(&p) != Some(&true) {
                            seen.insert(p, true);
                            if let Some(pl) =
                                ahead.commit(b, repo, &p, || frontier(&heap, &seen)).await?
                            {
                                commit_tree.insert(p, pl.tree);
                                for pp in pl.parents {
                                    heap.push(Queued {
                                        time: pl.time,
                                        depth: depth + 1,
                                        oid: pp,
                                        uninteresting: true,
                                    });
                                }
                            }
                        }
                        continue;
                    }
                    interesting += usize::from(!uninteresting);
                    heap.push(Queued {
                        time: l.time,
                        depth,
                        oid: p,
                        uninteresting,
                    });
                }
            }
            Read::Other(kind @ ObjectKind::Tag, content) if !q.uninteresting => {
                send_other.push(q.oid);
                let l = links(kind, &content).map_err(proto)?;
                let (target, tkind) = l.targets[0];
                if tkind == ObjectKind::Commit {
                    interesting += 1;
                    heap.push(Queued {
                        time: i64::MAX,
                        depth: q.depth,
                        oid: target,
                        uninteresting: false,
                    });
                } else {
                    send_other.push(target);
                }
            }
            Read::Other(..) if !q.uninteresting => send_other.push(q.oid),
            Read::Other(..) => {}
        }
        if seen.len().is_multiple_of(1024) {
            glommio::yield_if_needed().await;
        }
    }
    if by_rev_list {
        if send_commits.is_empty() && !req.wants.is_empty() {
            return Err(proto("no commits selected for shallow requests"));
        }
        // The new boundary: sent commits with a parent left out.
        for (c, parents) in &parents_of {
            if parents.iter().any(|p| excluded.contains(p)) {
                shallow.push(*c);
            }
        }
    }
    // Only the edge's trees, not those of every commit the client named: a fetch
    // into a clone with many refs would otherwise walk the whole tree of each.
    let mut boundary_trees = Vec::new();
    for p in edge {
        if seen.get(&p) == Some(&true) {
            if let Some(t) = commit_tree.get(&p) {
                boundary_trees.push(*t);
            }
        }
    }
    boundary_trees.sort_unstable();
    boundary_trees.dedup();
    let sent_commits: HashSet<Oid> = send_commits.iter().copied().collect();
    let unshallow: Vec<Oid> = deepened
        .iter()
        .filter(|(c, parents)| {
            !shallow.contains(c) && parents.iter().any(|p| sent_commits.contains(p))
        })
        .map(|(c, _)| *c)
        .collect();
    Ok(Commits {
        send: send_commits,
        tree: commit_tree,
        boundary_trees,
        uninteresting: seen.iter().filter(|(_, u)| **u).map(|(o, _)| *o).collect(),
        other: send_other,
        shallow,
        unshallow,
        walked: ahead.walked,
    })
}

/// The shallow boundary a deepening request draws, before any negotiation (protocol
/// v0 answers every round of a deepening fetch with it, as git's upload-pack does):
/// the new shallow commits and the client's shallow commits no longer shallow.
pub async fn boundary<B: Objects>(
    b: &B,
    repo: &str,
    refs: &[AdRef],
    req: &FetchRequest,
) -> Result<(Vec<Oid>, Vec<Oid>), UploadError> {
    let c = walk_commits(b, repo, refs, req, &[]).await?;
    Ok((c.shallow, c.unshallow))
}

/// Works out which objects to send for `req` and reads their stored entries. `common`:
/// the client's haves that the repository has (see [`common`]).
#[allow(clippy::too_many_lines)] // the plan's steps (wants, haves, boundary, edge trees, objects) share its sets
pub async fn plan<B: Objects>(
    b: &B,
    repo: &str,
    state: &RepoState,
    refs: &[AdRef],
    req: &FetchRequest,
    common: &[Oid],
    progress: &mut dyn FnMut(String),
) -> Result<Plan, UploadError> {
    // Every want must be reachable from a ref (allow-reachable-sha1-in-want): since
    // every stored object of a repository is reachable from its refs or was part of a
    // verified push, it is enough that the repository has it.
    let mut phases = super::Phases::start();
    let has = b.has_many(repo, &req.wants);
    if let Some((o, _)) = req.wants.iter().zip(has).find(|(_, h)| !h) {
        return Err(UploadError::NotOurRef(hex(o)));
    }
    if let Some(all) = everything(b, repo, state, req, common) {
        phases.mark("everything");
        progress(format!(
            "Counting objects: {} (every object the repository stores)",
            all.len()
        ));
        return Ok(Plan {
            objects: all
                .into_iter()
                .map(|(oid, bytes)| Planned::Stored { oid, bytes })
                .collect(),
            shallow: Vec::new(),
            unshallow: Vec::new(),
            thin: 0,
            proves_reachable: false,
            phases,
            walked: Walked::default(),
        });
    }
    let Commits {
        send: send_commits,
        tree: commit_tree,
        boundary_trees,
        uninteresting,
        other: send_other,
        shallow,
        unshallow,
        walked,
    } = walk_commits(b, repo, refs, req, common).await?;
    phases.mark("commits");
    progress(format!(
        "Counting objects: {} commits to send",
        send_commits.len()
    ));
    // Objects to send: commits, then their trees and blobs, then wanted others.
    let mut order: Vec<Oid> = Vec::new();
    let mut sent: HashSet<Oid> = HashSet::new();
    for c in &send_commits {
        if sent.insert(*c) {
            order.push(*c);
        }
    }
    let roots: Vec<Oid> = send_commits
        .iter()
        .filter_map(|c| commit_tree.get(c).copied())
        .collect();
    // A partial clone's filter applies to what the commits reach, not to objects the
    // client names itself (its lazy fetches of what the filter left out).
    let filter = req.filter;
    let mut have_objects: HashSet<Oid> = HashSet::new();
    // Only the paths where the trees to send differ from the boundary's are read: a
    // fetch costs what is new, not the size of the tree.
    Sparse {
        sent: &mut sent,
        order: &mut order,
        have: &mut have_objects,
        filter,
    }
    .run(b, repo, &roots, &boundary_trees)
    .await?;
    have_objects.extend(uninteresting);
    phases.mark("trees");
    let named: HashSet<Oid> = send_other.iter().copied().collect();
    for o in send_other {
        if have_objects.contains(&o) {
            continue;
        }
        if let Some((ObjectKind::Tree, _)) = b.object(repo, &o).await.map_err(be)? {
            // A tree the client names itself: all of it, but for what it has.
            Sparse {
                sent: &mut sent,
                order: &mut order,
                have: &mut have_objects,
                filter: None,
            }
            .run(b, repo, &[o], &[])
            .await?;
        } else if sent.insert(o) {
            order.push(o);
        }
    }
    // include-tag: annotated tags pointing at something we send.
    if req.has("include-tag") {
        for r in refs {
            if let Some(p) = r.peeled {
                if sent.contains(&p) && !have_objects.contains(&r.oid) && sent.insert(r.oid) {
                    order.push(r.oid);
                }
            }
        }
    }
    phases.mark("others");
    // Read entries; bring in delta bases the client lacks; order bases first.
    let thin_ok = req.has("thin-pack");
    progress(format!("Counting objects: {} objects to send", order.len()));
    // Only the heads of stored entries (kind, size, delta base) are read here, many at
    // a time: the store reads neighbouring heads together and the rest concurrently,
    // where one at a time would pay the device latency per object.
    let mut raws: HashMap<Oid, ObjectHead> = HashMap::with_capacity(order.len());
    // Blobs `blob:limit` leaves out, unless a blob sent is a delta against one.
    let mut too_big: HashMap<Oid, ObjectHead> = HashMap::new();
    let mut i = 0;
    while i < order.len() {
        let end = (i + HEADS_AT_ONCE).min(order.len());
        let chunk: Vec<Oid> = order[i..end].to_vec();
        i = end;
        let read = b.raw_heads(repo, &chunk).await.map_err(be)?;
        for (oid, r) in chunk.into_iter().zip(read) {
            let raw =
                r.ok_or_else(|| UploadError::Backend(format!("object {} is missing", hex(&oid))))?;
            if let Some(f @ Filter::BlobsBelow(_)) = filter {
                if f.omits(raw.kind, raw.object_size, 0) && !named.contains(&oid) {
                    too_big.insert(oid, raw);
                    continue;
                }
            }
            if let Some(base) = raw.base {
                let client_has = thin_ok && have_objects.contains(&base);
                if !client_has && !sent.contains(&base) {
                    sent.insert(base);
                    order.push(base);
                }
            }
            raws.insert(oid, raw);
        }
        if i % 4096 < HEADS_AT_ONCE {
            progress(format!("Reading objects: {i}/{}", order.len()));
        }
        glommio::yield_if_needed().await;
    }
    phases.mark("heads");
    // Delta bases a partial clone left out are sent after all: the delta needs them.
    let mut bases: Vec<Oid> = raws.values().filter_map(|r| r.base).collect();
    while let Some(base) = bases.pop() {
        if let Some(r) = too_big.remove(&base) {
            bases.extend(r.base);
            raws.insert(base, r);
        }
    }
    let mut out = Vec::with_capacity(order.len());
    let mut emitted: HashSet<Oid> = HashSet::with_capacity(order.len());
    let mut thin = 0;
    for oid in order {
        // Emit the base chain first (iteratively), then the object.
        let mut chain = vec![oid];
        while let Some(base) = raws
            .get(chain.last().expect("non-empty"))
            .and_then(|r| r.base)
        {
            if emitted.contains(&base) || !raws.contains_key(&base) || chain.contains(&base) {
                break;
            }
            chain.push(base);
        }
        for o in chain.into_iter().rev() {
            if emitted.insert(o) {
                if let Some(r) = raws.remove(&o) {
                    if r.base.is_some_and(|b| !emitted.contains(&b)) {
                        thin += 1;
                    }
                    out.push(Planned::Head(r));
                }
            }
        }
    }
    // Every stored object is in the pack (what no ref reaches, if anything, is a delta
    // base of what is sent): sending them all would have been the same.
    let proves_reachable = !state.only_reachable
        && full_clone(state, req, common)
        && b.stored_objects(repo).len() == out.len();
    phases.mark("order");
    Ok(Plan {
        objects: out,
        shallow,
        unshallow,
        thin,
        proves_reachable,
        phases,
        walked,
    })
}

/// The commits `deepen-not` names, by git's rules for a short ref name (`X`,
/// `refs/X`, `refs/tags/X`, `refs/heads/X`, `refs/remotes/X`, `refs/remotes/X/HEAD`),
/// each of which must name exactly one ref; tags peeled.
fn deepen_not_tips(refs: &[AdRef], names: &[String]) -> Result<Vec<Oid>, UploadError> {
    let mut tips = Vec::new();
    for name in names {
        let candidates = [
            name.clone(),
            format!("refs/{name}"),
            format!("refs/tags/{name}"),
            format!("refs/heads/{name}"),
            format!("refs/remotes/{name}"),
            format!("refs/remotes/{name}/HEAD"),
        ];
        let found: Vec<&AdRef> = refs
            .iter()
            .filter(|r| candidates.contains(&r.name))
            .collect();
        match found.as_slice() {
            [r] => tips.push(r.peeled.unwrap_or(r.oid)),
            [] => {
                return Err(proto(format!(
                    "deepen-not is not a ref: {}",
                    excerpt(name.as_bytes())
                )))
            }
            _ => {
                return Err(proto(format!(
                    "ambiguous deepen-not: {}",
                    excerpt(name.as_bytes())
                )))
            }
        }
    }
    Ok(tips)
}

/// Every commit `tips` reach.
async fn commits_reachable<B: Objects>(
    b: &B,
    repo: &str,
    mut stack: Vec<Oid>,
) -> Result<HashSet<Oid>, UploadError> {
    let mut seen = HashSet::new();
    while !stack.is_empty() {
        // A generation at a time, its headers asked for together.
        let round: Vec<Oid> = stack.drain(..).filter(|c| seen.insert(*c)).collect();
        for chunk in round.chunks(AHEAD_OBJECTS) {
            for h in b
                .commits(repo, chunk)
                .await
                .map_err(be)?
                .into_iter()
                .flatten()
            {
                stack.extend(h.parents);
            }
            glommio::yield_if_needed().await;
        }
    }
    Ok(seen)
}

/// What a full clone of a repository whose stored objects are all reachable gets:
/// every stored object, in the order the records lie on the disk (so they are read
/// sequentially, and a delta's base mostly comes first), without walking the history.
/// `None` unless the request wants every ref's tip and has nothing to subtract (no
/// common commits, shallow boundary or filter) and the repository says every object it
/// stores is reachable ([`RepoState::only_reachable`]).
fn everything<B: Objects>(
    b: &B,
    repo: &str,
    state: &RepoState,
    req: &FetchRequest,
    common: &[Oid],
) -> Option<Vec<(Oid, u64)>> {
    (state.only_reachable && full_clone(state, req, common)).then(|| b.stored_objects(repo))
}

/// The request wants every ref's tip and has nothing to subtract (no common commits,
/// shallow lines, deepen or filter): it gets everything the refs reach.
fn full_clone(state: &RepoState, req: &FetchRequest, common: &[Oid]) -> bool {
    if !common.is_empty() || !req.shallows.is_empty() || req.deepens() || req.filter.is_some() {
        return false;
    }
    let wants: HashSet<&Oid> = req.wants.iter().collect();
    state
        .refs
        .values()
        .all(|t| parse_hex(t.as_bytes()).is_some_and(|t| wants.contains(&t)))
}

/// The trees and blobs that trees to send reach and the client lacks, given that it
/// holds the boundary trees whole: both are walked together, path by path (git's
/// sparse walk), and a path is read only where a tree to send differs from every
/// boundary tree at that path. An object the client holds at another path only (a
/// moved file, unless the walk saw it there first) is sent again; nothing it lacks is
/// left out. With no boundary it is the whole walk of the trees to send (a clone).
struct Sparse<'a> {
    sent: &'a mut HashSet<Oid>,
    order: &'a mut Vec<Oid>,
    /// What the client holds: what the walk saw in the boundary, and what the caller
    /// knew before.
    have: &'a mut HashSet<Oid>,
    /// A partial clone's filter: its depth and `blob:none` are judged here, by path
    /// depth (the root trees at 0); `blob:limit` needs sizes, which come with the heads.
    filter: Option<Filter>,
}

/// Trees to send and the boundary's trees, at one path.
type AtPath = (Vec<Oid>, Vec<Oid>);

impl Sparse<'_> {
    async fn run<B: Objects>(
        &mut self,
        b: &B,
        repo: &str,
        roots: &[Oid],
        boundary: &[Oid],
    ) -> Result<(), UploadError> {
        self.have.extend(boundary.iter().copied());
        let roots: Vec<Oid> = roots
            .iter()
            .filter(|_| !self.omits(ObjectKind::Tree, 0))
            .copied()
            .collect();
        let mut level: Vec<AtPath> = vec![(roots, boundary.to_vec())];
        let mut depth = 0;
        while !level.is_empty() {
            // The trees to send not seen yet, and for those paths the boundary's.
            let mut paths = Vec::new();
            for (want, have) in level {
                let want: Vec<Oid> = want
                    .into_iter()
                    .filter(|t| !have.contains(t) && !self.have.contains(t) && self.sent.insert(*t))
                    .collect();
                if want.is_empty() {
                    continue;
                }
                self.order.extend(want.iter().copied());
                paths.push((want, have));
            }
            let mut ids: Vec<Oid> = paths
                .iter()
                .flat_map(|(w, h)| w.iter().chain(h))
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let mut trees: HashMap<Oid, Vec<u8>> = HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(TREES_AT_ONCE) {
                let read = b.objects(repo, chunk, u64::MAX).await.map_err(be)?;
                for (o, r) in chunk.iter().zip(read) {
                    let Some((_, content)) = r else {
                        return Err(UploadError::Backend(format!("tree {} is missing", hex(o))));
                    };
                    trees.insert(*o, content);
                }
            }
            level = Vec::new();
            depth += 1;
            for (want, have) in &paths {
                self.step(&trees, want, have, depth, &mut level)?;
            }
        }
        Ok(())
    }

    /// Whether the filter leaves out an object of `kind` at `depth`.
    fn omits(&self, kind: ObjectKind, depth: u32) -> bool {
        self.filter
            .is_some_and(|f| !matches!(f, Filter::BlobsBelow(_)) && f.omits(kind, 0, depth))
    }

    /// One path: the entries of its trees to send (at `depth` below the roots) that no
    /// boundary tree has under the same name; their subtrees make the next level.
    fn step(
        &mut self,
        trees: &HashMap<Oid, Vec<u8>>,
        want: &[Oid],
        have: &[Oid],
        depth: u32,
        next: &mut Vec<AtPath>,
    ) -> Result<(), UploadError> {
        let entries = |ids: &[Oid]| -> Result<Vec<super::objects::TreeEntry<'_>>, UploadError> {
            let mut all = Vec::new();
            for t in ids {
                let content = trees.get(t).map_or(&[][..], Vec::as_slice);
                all.extend(super::objects::tree_entries(content).map_err(proto)?);
            }
            Ok(all)
        };
        let mut held: HashMap<&[u8], Vec<(Oid, ObjectKind)>> = HashMap::new();
        for (name, id, kind) in entries(have)? {
            self.have.insert(id);
            held.entry(name).or_default().push((id, kind));
        }
        let mut subtrees: std::collections::BTreeMap<&[u8], Vec<Oid>> =
            std::collections::BTreeMap::new();
        for (name, id, kind) in entries(want)? {
            let there = held.get(name).map_or(&[][..], Vec::as_slice);
            if there.iter().any(|(h, _)| *h == id)
                || self.omits(kind, depth)
                || self.have.contains(&id)
            {
                continue;
            }
            if kind == ObjectKind::Tree {
                subtrees.entry(name).or_default().push(id);
            } else if self.sent.insert(id) {
                self.order.push(id);
            }
        }
        for (name, want) in subtrees {
            // Only trees are read at the next level (a path may have changed kind).
            let have = held.get(name).map_or_else(Vec::new, |h| {
                h.iter()
                    .filter(|(_, k)| *k == ObjectKind::Tree)
                    .map(|(id, _)| *id)
                    .collect()
            });
            next.push((want, have));
        }
        Ok(())
    }
}

/// Stored entries read for the pack at a time: at most this many bytes (by their
/// inflated size, which bounds a deflated entry's size but for zlib's few bytes of
/// framing), or [`SEND_BATCH_ENTRIES`] entries.
const SEND_BATCH_BYTES: u64 = 4 << 20;

/// At most this many entries in a batch of the pack: small objects (a real history's
/// are some 80 bytes deflated) come thousands to a device read.
const SEND_BATCH_ENTRIES: usize = 4096;

/// Where the batch of entries that starts at `start` ends: at most
/// [`SEND_BATCH_BYTES`] (by inflated size) or [`SEND_BATCH_ENTRIES`] entries, at least
/// one.
pub fn batch_end(plan: &Plan, start: usize) -> usize {
    let mut end = start;
    let mut bytes = 0u64;
    while end < plan.objects.len() && end - start < SEND_BATCH_ENTRIES && bytes < SEND_BATCH_BYTES {
        bytes += plan.objects[end].bytes();
        end += 1;
    }
    end
}

/// Reads the stored entries of `planned` (together), each checked against its head
/// where planning read it.
pub async fn read_batch<B: Objects>(
    b: &B,
    repo: &str,
    planned: &[Planned],
) -> Result<Vec<StoredObject<B::Chunk>>, UploadError> {
    let oids: Vec<Oid> = planned.iter().map(Planned::oid).collect();
    let read = b.raws(repo, &oids).await.map_err(be)?;
    planned
        .iter()
        .zip(read)
        .map(|(p, r)| {
            let r = r.ok_or_else(|| {
                UploadError::Backend(format!("object {} is missing", hex(&p.oid())))
            })?;
            if matches!(p, Planned::Head(h) if r.head() != *h) {
                return Err(UploadError::Backend(format!(
                    "object {}: its stored entry does not match what was planned",
                    hex(&p.oid())
                )));
            }
            Ok(r)
        })
        .collect()
}

/// Writes the pack of a [`Plan`] from its entries, given a batch at a time in plan
/// order ([`batch_end`], [`read_batch`]), so a clone holds a batch or two of the
/// repository in memory, whatever its size.
#[derive(Debug)]
pub struct PackOut {
    writer: PackWriter,
    /// Pack position of each object written (for OFS_DELTA).
    index: HashMap<Oid, usize>,
    /// Entries written.
    written: usize,
}

impl PackOut {
    /// Starts the pack of `plan`; the header goes to `sink`.
    pub fn new(plan: &Plan, sink: &mut dyn FnMut(&[u8])) -> PackOut {
        let (writer, header) = PackWriter::new(plan.objects.len() as u32);
        sink(&header);
        PackOut {
            writer,
            index: HashMap::with_capacity(plan.objects.len()),
            written: 0,
        }
    }

    /// Writes the next entries (in plan order) to `sink`, their stored bytes as they
    /// are.
    pub fn write<C: AsRef<[u8]>>(
        &mut self,
        entries: Vec<StoredObject<C>>,
        sink: &mut impl PackSink<C>,
    ) {
        for r in entries {
            let deflated = r.deflated.as_ref();
            let e = match r.base {
                Some(base) => match self.index.get(&base) {
                    Some(&bi) => OutEntry::OfsDelta {
                        base_index: bi,
                        size: r.entry_size,
                        deflated,
                    },
                    None => OutEntry::RefDelta {
                        base,
                        size: r.entry_size,
                        deflated,
                    },
                },
                None => OutEntry::Full {
                    kind: r.kind,
                    size: r.entry_size,
                    deflated,
                },
            };
            let head = self.writer.entry_head(&e);
            sink.bytes(&head);
            sink.stored(r.deflated);
            self.index.insert(r.oid, self.written);
            self.written += 1;
        }
    }

    /// Writes the trailer.
    pub fn finish(self, sink: &mut dyn FnMut(&[u8])) {
        sink(&self.writer.finish());
    }
}

/// Where [`PackOut`] writes: the bytes it makes (entry headers), and each entry's
/// stored bytes, handed over as the store read them.
pub trait PackSink<C> {
    fn bytes(&mut self, b: &[u8]);
    fn stored(&mut self, deflated: C);
}

/// Side-band framing that refers to the stored bytes instead of copying them (see
/// [`BandWriter::write_owned`]).
impl<C: AsRef<[u8]> + 'static> PackSink<C> for BandWriter {
    fn bytes(&mut self, b: &[u8]) {
        self.write(b);
    }
    fn stored(&mut self, deflated: C) {
        self.write_owned(deflated);
    }
}

/// Formats the v0 negotiation part of a response (before any pack). `ready`: the
/// server has found enough common commits to send a good pack (see [`ready`]). Returns
/// the bytes and whether a pack follows (`done`, or `ready` with `no-done`).
pub fn negotiation_v0(req: &FetchRequest, common: &[Oid], ready: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let detailed = req.has("multi_ack_detailed");
    let multi = detailed || req.has("multi_ack");
    if multi {
        for c in common {
            pktline::fixed(&mut out, &format!("ACK {} common", hex(c)));
        }
    }
    if req.done {
        match common.last() {
            Some(c) => pktline::fixed(&mut out, &format!("ACK {}", hex(c))),
            None => pktline::fixed(&mut out, "NAK"),
        }
        return (out, true);
    }
    let last = common.last().filter(|_| ready && detailed);
    if let Some(c) = last {
        pktline::fixed(&mut out, &format!("ACK {} ready", hex(c)));
    }
    pktline::fixed(&mut out, "NAK");
    if let (Some(c), true) = (last, req.has("no-done")) {
        pktline::fixed(&mut out, &format!("ACK {}", hex(c)));
        return (out, true);
    }
    (out, false)
}

/// The v2 acknowledgments section for a round without `done`; with `ready`, the
/// section ends with `ready` and a delimiter, and the packfile follows.
pub fn acknowledgments_v2(common: &[Oid], ready: bool) -> Vec<u8> {
    let mut o = Vec::new();
    pktline::fixed(&mut o, "acknowledgments");
    if common.is_empty() {
        pktline::fixed(&mut o, "NAK");
    }
    for c in common {
        pktline::fixed(&mut o, &format!("ACK {}", hex(c)));
    }
    if ready && !common.is_empty() {
        pktline::fixed(&mut o, "ready");
        pktline::delim(&mut o);
    } else {
        pktline::flush(&mut o);
    }
    o
}

/// Longest walk back from a want while deciding [`ready`].
const READY_WALK_MAX: usize = 4096;

/// Whether the negotiation can stop: every wanted commit reaches a common commit
/// (the client already has everything below it), as git's `ok_to_give_up`. Each
/// want's history is walked newest first and only down to the oldest common commit's
/// date, as git does: a commit older than every common one is taken to lead to none
/// (dates may lie; the cost of a wrong answer is only another round). The walk is
/// also bounded, so a client with much unrelated history costs the server little.
pub async fn ready<B: Objects>(b: &B, repo: &str, wants: &[Oid], common: &[Oid]) -> bool {
    if common.is_empty() {
        return false;
    }
    let mut oldest = i64::MAX;
    for chunk in common.chunks(AHEAD_OBJECTS) {
        let Ok(headers) = b.commits(repo, chunk).await else {
            return false;
        };
        for h in headers.into_iter().flatten() {
            oldest = oldest.min(h.time);
        }
    }
    let commons: HashSet<Oid> = common.iter().copied().collect();
    let mut visited = 0usize;
    for w in wants {
        let mut heap = BinaryHeap::new();
        heap.push((i64::MAX, *w));
        let mut seen = HashSet::new();
        let mut found = false;
        while let Some((time, c)) = heap.pop() {
            if commons.contains(&c) {
                found = true;
                break;
            }
            if time < oldest || !seen.insert(c) {
                continue;
            }
            visited += 1;
            if visited > READY_WALK_MAX {
                return false;
            }
            match b
                .commits(repo, &[c])
                .await
                .map(|h| h.into_iter().next().flatten())
            {
                Ok(Some(h)) => heap.extend(h.parents.into_iter().map(|p| (h.time, p))),
                _ => return false,
            }
        }
        if !found {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack written by [`PackOut`] through side-band framing that keeps the stored
    /// bytes by reference reads back as git would: every object, a good trailer.
    #[test]
    fn pack_out_by_reference_reads_back() {
        use crate::git::pack::{object_id, Limits, PackStream};
        use std::io::Write;
        let contents: Vec<Vec<u8>> = [10usize, 5000, 200_000, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|k| ((k * 31 + i * 7) % 256) as u8).collect())
            .collect();
        let objects: Vec<StoredObject<Vec<u8>>> = contents
            .iter()
            .map(|c| {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(c).expect("deflate");
                StoredObject {
                    oid: object_id(ObjectKind::Blob, c).expect("id"),
                    kind: ObjectKind::Blob,
                    object_size: c.len() as u64,
                    entry_size: c.len() as u64,
                    base: None,
                    deflated: z.finish().expect("deflate"),
                }
            })
            .collect();
        let plan = Plan {
            objects: objects
                .iter()
                .map(|o| {
                    Planned::Head(ObjectHead {
                        oid: o.oid,
                        kind: o.kind,
                        object_size: o.object_size,
                        entry_size: o.entry_size,
                        base: None,
                    })
                })
                .collect(),
            shallow: Vec::new(),
            unshallow: Vec::new(),
            thin: 0,
            proves_reachable: false,
            walked: Walked::default(),
            phases: super::super::Phases::start(),
        };
        for max in [None, Some(pktline::MAX_PKT), Some(1000)] {
            let mut out = BandWriter::new(1, max);
            let mut pack = PackOut::new(&plan, &mut |b| out.write(b));
            let mut sent = Vec::new();
            let mut objects = objects.clone();
            let rest = objects.split_off(2);
            pack.write(objects, &mut out);
            sent.extend_from_slice(&out.take_piece().into_shared());
            pack.write(rest, &mut out);
            pack.finish(&mut |b| out.write(b));
            sent.extend_from_slice(&out.take_piece().into_shared());
            let bytes = match max {
                None => sent,
                Some(_) => {
                    let mut r = Reader::new(&sent);
                    let mut payload = Vec::new();
                    while let Ok(Some(Pkt::Data(d))) = r.next_pkt() {
                        assert_eq!(d[0], 1);
                        payload.extend_from_slice(&d[1..]);
                    }
                    payload
                }
            };
            let mut st = PackStream::new(Limits::default());
            st.advance(&bytes, &mut ()).expect("pack");
            let entries = st.finish(&bytes, &mut ()).expect("a whole pack");
            let ids: Vec<Oid> = entries.iter().filter_map(|e| e.oid).collect();
            let want: Vec<Oid> = plan.objects.iter().map(Planned::oid).collect();
            assert_eq!(ids, want, "max {max:?}");
        }
    }

    #[test]
    fn parses_v0_requests() {
        let mut body = Vec::new();
        let w = "1111111111111111111111111111111111111111";
        pktline::fixed(
            &mut body,
            &format!(
                "want {w} multi_ack_detailed side-band-64k thin-pack ofs-delta agent=git/2.47"
            ),
        );
        pktline::fixed(&mut body, &format!("want {}", "2".repeat(40)));
        pktline::fixed(&mut body, "deepen 1");
        pktline::flush(&mut body);
        pktline::fixed(&mut body, &format!("have {}", "3".repeat(40)));
        pktline::fixed(&mut body, "done");
        let r = parse_v0(&body, &RequestLimits::default()).expect("valid");
        assert_eq!(r.wants.len(), 2);
        assert_eq!(r.haves.len(), 1);
        assert_eq!(r.deepen, Some(1));
        assert!(r.done && r.has("side-band-64k") && r.has("thin-pack"));
    }

    #[test]
    fn refuses_bad_v0_requests() {
        for body in [
            &b"0009want\n"[..],
            b"000ewant zzzz\n",
            b"0014bogus line here\n",
            b"00",
        ] {
            assert!(
                parse_v0(body, &RequestLimits::default()).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn filters() {
        for (spec, f) in [
            ("blob:none", Filter::NoBlobs),
            ("blob:limit=0", Filter::BlobsBelow(0)),
            ("blob:limit=1k", Filter::BlobsBelow(1024)),
            ("blob:limit=2M", Filter::BlobsBelow(2 << 20)),
            ("tree:0", Filter::TreeDepth(0)),
            ("tree:3", Filter::TreeDepth(3)),
        ] {
            assert_eq!(Filter::parse(spec.as_bytes()), Ok(f), "{spec}");
        }
        for bad in [
            "",
            "blob:limit=",
            "blob:limit=x",
            "tree:-1",
            "sparse:oid=abc",
            "combine:a+b",
        ] {
            assert!(Filter::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        use ObjectKind::*;
        assert!(Filter::NoBlobs.omits(Blob, 1, 0) && !Filter::NoBlobs.omits(Tree, 1, 5));
        assert!(Filter::BlobsBelow(10).omits(Blob, 10, 0));
        assert!(!Filter::BlobsBelow(10).omits(Blob, 9, 0));
        assert!(Filter::TreeDepth(0).omits(Tree, 0, 0));
        assert!(!Filter::TreeDepth(1).omits(Tree, 0, 0) && Filter::TreeDepth(1).omits(Blob, 0, 1));
        assert!(!Filter::TreeDepth(0).omits(Commit, 0, 0));
        // In a request: once.
        let l = RequestLimits::default();
        let args = vec![
            b"want 1111111111111111111111111111111111111111".to_vec(),
            b"filter blob:none".to_vec(),
        ];
        assert_eq!(
            parse_v2_fetch(&args, &l).expect("valid").filter,
            Some(Filter::NoBlobs)
        );
        let mut twice = args.clone();
        twice.push(b"filter tree:0".to_vec());
        assert!(parse_v2_fetch(&twice, &l).is_err());
    }

    #[test]
    fn deepen_lines_follow_gits_rules() {
        let l = RequestLimits::default();
        let want = format!("want {}", "1".repeat(40));
        let v2 = |extra: &[&str]| {
            let mut a = vec![want.as_bytes().to_vec()];
            a.extend(extra.iter().map(|e| e.as_bytes().to_vec()));
            parse_v2_fetch(&a, &l)
        };
        let r = v2(&["deepen 2", "deepen-relative"]).expect("relative depth");
        assert!(r.deepen_relative && r.deepens());
        let r = v2(&[
            "deepen-since 1700000000",
            "deepen-not main",
            "deepen-not v1",
        ])
        .expect("by time and refs");
        assert_eq!(r.deepen_since, Some(1_700_000_000));
        assert_eq!(r.deepen_not, ["main", "v1"]);
        for bad in [
            &["deepen-relative"][..],
            &["deepen 2", "deepen-since 5"],
            &["deepen 2", "deepen-not main"],
            &["deepen-since soon"],
            &["deepen-since 5", "deepen-since 6"],
            &["deepen-not "],
        ] {
            assert!(v2(bad).is_err(), "{bad:?}");
        }
        let long = format!("deepen-not {}", "r".repeat(l.ref_name_bytes_max + 1));
        assert!(v2(&[long.as_str()]).is_err());
        // Ref names count against the request's ids.
        let few = RequestLimits {
            negotiation_ids_max: 2,
            ..RequestLimits::default()
        };
        let a: Vec<Vec<u8>> = [want.as_str(), "deepen-not a", "deepen-not b"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert!(parse_v2_fetch(&a, &few).is_err());
        // v0: deepen-relative is a capability of the first want.
        let mut v0 = Vec::new();
        pktline::fixed(&mut v0, &format!("{want} deepen-relative"));
        pktline::fixed(&mut v0, "deepen 1");
        pktline::flush(&mut v0);
        assert!(parse_v0(&v0, &l).expect("parses").deepen_relative);
        let mut v0 = Vec::new();
        pktline::fixed(&mut v0, &format!("{want} deepen-relative"));
        pktline::flush(&mut v0);
        assert!(parse_v0(&v0, &l).is_err(), "relative without a depth");
    }

    #[test]
    fn negotiation_rounds() {
        let mut req = FetchRequest::default();
        req.caps.insert("multi_ack_detailed".into());
        let c = [[1u8; 20], [2u8; 20]];
        let text = |b: Vec<u8>| String::from_utf8(b).expect("utf8");
        // Not ready: commons, then NAK; no pack.
        let (o, pack) = negotiation_v0(&req, &c, false);
        assert!(!pack);
        assert!(text(o).ends_with("NAK\n"));
        // Ready without no-done: the client is told, and sends done next.
        let (o, pack) = negotiation_v0(&req, &c, true);
        assert!(!pack && text(o).contains(&format!("ACK {} ready", "02".repeat(20))));
        // Ready with no-done: the pack follows at once.
        req.caps.insert("no-done".into());
        let (o, pack) = negotiation_v0(&req, &c, true);
        assert!(pack && text(o).ends_with(&format!("NAK\n0031ACK {}\n", "02".repeat(20))));
        // done: the last common or NAK.
        req.done = true;
        assert!(negotiation_v0(&req, &[], false).1);
        let v2 = text(acknowledgments_v2(&c, true));
        assert!(v2.contains("ready\n") && v2.ends_with("0001"), "{v2}");
        let v2 = text(acknowledgments_v2(&[], true));
        assert!(v2.contains("NAK") && v2.ends_with("0000"), "{v2}");
    }

    #[test]
    fn advertises_an_empty_repository_with_capabilities() {
        let state = RepoState::default();
        let out = advertise_v0(&[], &state, "report-status");
        let line = format!("{} capabilities^{{}}\0report-status\n", "0".repeat(40));
        let expected = format!("{:04x}{line}0000", line.len() + 4);
        assert_eq!(String::from_utf8_lossy(&out), expected);
    }

    #[test]
    fn ls_refs_filters_and_peels() {
        let mut state = RepoState::default();
        state.refs.insert("refs/heads/main".into(), "1".repeat(40));
        state
            .symrefs
            .insert("HEAD".into(), "refs/heads/main".into());
        let refs = vec![
            AdRef {
                name: "refs/heads/main".into(),
                oid: [0x11; 20],
                peeled: None,
            },
            AdRef {
                name: "refs/tags/v1".into(),
                oid: [0x22; 20],
                peeled: Some([0x33; 20]),
            },
        ];
        let args = vec![
            b"peel".to_vec(),
            b"symrefs".to_vec(),
            b"ref-prefix refs/tags/".to_vec(),
            b"ref-prefix HEAD".to_vec(),
        ];
        let out = String::from_utf8(ls_refs(&args, &refs, &state)).expect("utf8");
        assert!(out.contains("HEAD symref-target:refs/heads/main"), "{out}");
        assert!(
            out.contains(&format!("refs/tags/v1 peeled:{}", "33".repeat(20))),
            "{out}"
        );
        assert!(!out.contains(" refs/heads/main\n"), "{out}");
    }
}
