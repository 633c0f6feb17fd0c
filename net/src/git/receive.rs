//! receive-pack: ref advertisement, push request parsing, verification and the
//! report. A push is verified entirely before anything becomes visible: every object's
//! id is recomputed (deltas resolved, thin-pack bases from the repository), every
//! commit, tree and tag is checked as git's `receive.fsckObjects` does, everything a
//! pushed object names must be pushed or stored (as git's `index-pack --strict`), each
//! ref update is a compare-and-swap on its old value, non-fast-forward updates are
//! refused unless the repository allows them. So every stored object's closure is
//! complete. A push holds no object's content past its inspection ([`Inspected`]).

use std::collections::{HashMap, HashSet};

use super::fsck;
use super::objects::links;
use super::pack::{self, Limits, Resolved};
use super::pktline::{self, Pkt, Reader};
use super::refs::valid_ref_name;
use super::{excerpt, hex, parse_hex, ObjectKind, Oid, RequestLimits, ZERO};
use crate::backend::{BackendError, Objects, Pushes, RefUpdate, RepoState, StoredObject};

/// Capabilities of receive-pack.
pub fn receive_caps() -> String {
    format!(
        "report-status delete-refs side-band-64k quiet atomic ofs-delta push-options {}",
        super::upload::agent()
    )
}

/// One command of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: Oid,
    pub new: Oid,
    pub name: String,
}

/// A parsed push request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushRequest {
    pub commands: Vec<Command>,
    pub caps: HashSet<String>,
    pub options: Vec<String>,
    /// The pushing clone's shallow boundary, if it is shallow.
    pub shallow: Vec<Oid>,
    /// Where the pack starts in the body.
    pub pack_at: usize,
}

/// Why a push request cannot even be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid push request: {0}")]
pub struct ProtocolError(pub String);

fn perr(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError(e.to_string())
}

/// Parses the commands, capabilities and push options; the pack follows. Each
/// variable-length part is held to its limit in `limits`, and an error quotes at most
/// an excerpt of what was sent.
pub fn parse_push(body: &[u8], limits: &RequestLimits) -> Result<PushRequest, ProtocolError> {
    let mut r = Reader::new(body);
    let mut req = PushRequest::default();
    loop {
        match r.next_pkt().map_err(perr)? {
            None => return Err(perr("request ends before the flush after the commands")),
            Some(Pkt::Flush) => break,
            Some(Pkt::Data(d)) => {
                let mut l = pktline::chomp(d);
                // A shallow clone's boundary comes first (`shallow <id>`). Nothing needs
                // it here: the push's new objects must still connect to objects the
                // repository has, which a boundary the repository lacks cannot.
                if let Some(id) = l.strip_prefix(b"shallow ") {
                    if !req.commands.is_empty() {
                        return Err(perr("a shallow line after the commands"));
                    }
                    let id = parse_hex(id)
                        .ok_or_else(|| perr(format!("invalid shallow id {}", excerpt(id))))?;
                    if req.shallow.len() >= limits.negotiation_ids_max {
                        return Err(perr(format!(
                            "more than {} shallow lines (limits.negotiation_ids_max)",
                            limits.negotiation_ids_max
                        )));
                    }
                    req.shallow.push(id);
                    continue;
                }
                if req.commands.is_empty() {
                    if let Some(nul) = l.iter().position(|b| *b == 0) {
                        for c in l[nul + 1..].split(|b| *b == b' ').filter(|c| !c.is_empty()) {
                            if req.caps.len() >= limits.capabilities_max {
                                return Err(perr(format!(
                                    "more than {} capabilities (limits.capabilities_max)",
                                    limits.capabilities_max
                                )));
                            }
                            let c = std::str::from_utf8(c).map_err(|_| {
                                perr(format!("capability {} is not UTF-8", excerpt(c)))
                            })?;
                            if !req.caps.insert(c.to_owned()) {
                                return Err(perr(format!(
                                    "capability {} given twice",
                                    excerpt(c.as_bytes())
                                )));
                            }
                        }
                        l = &l[..nul];
                    }
                }
                if l.len() < 83 || l[40] != b' ' || l[81] != b' ' {
                    return Err(perr(format!("malformed command {}", excerpt(l))));
                }
                let old = parse_hex(&l[..40]).ok_or_else(|| perr("invalid old id"))?;
                let new = parse_hex(&l[41..81]).ok_or_else(|| perr("invalid new id"))?;
                let name = &l[82..];
                if name.len() > limits.ref_name_bytes_max {
                    return Err(perr(format!(
                        "ref name {} is longer than {} bytes (limits.ref_name_bytes_max)",
                        excerpt(name),
                        limits.ref_name_bytes_max
                    )));
                }
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| perr(format!("ref name {} is not UTF-8", excerpt(name))))?;
                req.commands.push(Command { old, new, name });
                if req.commands.len() > limits.refs_per_push_max {
                    return Err(perr(format!(
                        "more than {} ref updates in one push (limits.refs_per_push_max)",
                        limits.refs_per_push_max
                    )));
                }
            }
            Some(_) => return Err(perr("unexpected special packet (0001 or 0002)")),
        }
    }
    if req.caps.contains("push-options") {
        loop {
            match r.next_pkt().map_err(perr)? {
                None => return Err(perr("request ends inside the push options")),
                Some(Pkt::Flush) => break,
                Some(Pkt::Data(d)) => {
                    if req.options.len() >= limits.push_options_max {
                        return Err(perr(format!(
                            "more than {} push options (limits.push_options_max)",
                            limits.push_options_max
                        )));
                    }
                    req.options
                        .push(String::from_utf8_lossy(pktline::chomp(d)).into_owned())
                }
                Some(_) => return Err(perr("unexpected special packet (0001 or 0002)")),
            }
        }
    }
    req.pack_at = body.len() - r.rest().len();
    Ok(req)
}

/// Where the pack starts once `buf` holds the whole command section (commands, and the
/// push options when the first command asked for them); `None` while it does not yet.
pub fn commands_end(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let mut at = 0;
    let mut first = true;
    let mut flushes = 1;
    loop {
        match pktline::decode(&buf[at..]).map_err(perr)? {
            pktline::Decoded::Incomplete(_) => return Ok(None),
            pktline::Decoded::Pkt(p, n) => {
                at += n;
                match p {
                    // The first command carries the capabilities (shallow lines
                    // come before it).
                    Pkt::Data(d) if first && !d.starts_with(b"shallow ") => {
                        first = false;
                        let caps = d.split(|b| *b == 0).nth(1).unwrap_or_default();
                        if pktline::chomp(caps)
                            .split(|b| *b == b' ')
                            .any(|c| c == b"push-options")
                        {
                            flushes = 2;
                        }
                    }
                    Pkt::Flush => {
                        first = false;
                        flushes -= 1;
                        if flushes == 0 {
                            return Ok(Some(at));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The outcome of a push, ready to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Ok` or the reason unpacking failed.
    pub unpack: Result<(), String>,
    /// Per command: `Ok` or the reason it was refused.
    pub refs: Vec<(String, Result<(), String>)>,
    /// The node failed it (storage or replication), not the push's content.
    pub failed: bool,
    /// How long each phase took.
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

impl Report {
    fn all_failed(commands: &[Command], unpack: Result<(), String>, why: &str) -> Report {
        Report {
            unpack,
            refs: commands
                .iter()
                .map(|c| (c.name.clone(), Err(why.to_string())))
                .collect(),
            failed: false,
            phases: Vec::new(),
        }
    }

    /// report-status lines (pkt-lines, ending with a flush).
    pub fn encode(&self) -> Vec<u8> {
        // Names are within limits.ref_name_bytes_max (at most REF_NAME_BYTES_LIMIT)
        // and reasons within 900 bytes, so every line fits; `fixed` cuts, never stops.
        let mut out = Vec::new();
        match &self.unpack {
            Ok(()) => pktline::fixed(&mut out, "unpack ok"),
            Err(e) => pktline::fixed(&mut out, &format!("unpack {}", one_line(e))),
        }
        for (name, r) in &self.refs {
            match r {
                Ok(()) => pktline::fixed(&mut out, &format!("ok {name}")),
                Err(e) => pktline::fixed(&mut out, &format!("ng {name} {}", one_line(e))),
            }
        }
        pktline::flush(&mut out);
        out
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// Checks commands against the repository's current refs (pure): names, duplicates,
/// names that would be ambiguous, compare-and-swap. Returns per-command refusals
/// (`None`: acceptable so far).
pub fn check_commands(commands: &[Command], state: &RepoState) -> Vec<Option<String>> {
    let mut seen = HashSet::new();
    // Lower-cased names of the refs a new ref must not collide with: built only when
    // the push creates one.
    let mut folded: Option<HashMap<String, &str>> = None;
    commands
        .iter()
        .map(|c| {
            if !valid_ref_name(c.name.as_bytes()) {
                return Some("funny refname".into());
            }
            // (Such a ref stored before this check can still be deleted.)
            if let Some(why) = ambiguous_ref_name(&c.name).filter(|_| c.new != ZERO) {
                return Some(why.into());
            }
            if !seen.insert(c.name.clone()) {
                return Some("duplicate ref update".into());
            }
            if c.old == ZERO && c.new == ZERO {
                return Some("nothing to do".into());
            }
            let current = state
                .refs
                .get(&c.name)
                .and_then(|h| parse_hex(h.as_bytes()));
            let expected = (c.old != ZERO).then_some(c.old);
            if current != expected {
                return Some(match current {
                    Some(_) if expected.is_none() => "already exists".into(),
                    None if c.new == ZERO => "no such ref to delete".into(),
                    _ => "stale info: the ref changed since you fetched it".into(),
                });
            }
            if current.is_none() {
                // A new ref that differs from another only by case: on a client's
                // case-insensitive file system the two would be one file.
                let folded = folded.get_or_insert_with(|| {
                    let mut m: HashMap<String, &str> = state
                        .refs
                        .keys()
                        .map(|n| (n.to_lowercase(), n.as_str()))
                        .collect();
                    for c in commands.iter().filter(|c| c.old == ZERO && c.new != ZERO) {
                        m.entry(c.name.to_lowercase()).or_insert(c.name.as_str());
                    }
                    m
                });
                if let Some(other) = folded.get(&c.name.to_lowercase()) {
                    if *other != c.name {
                        return Some(format!("differs from {other} only in case"));
                    }
                }
            }
            None
        })
        .collect()
}

/// Why a ref name git accepts would still confuse its users, if it would: a branch or
/// tag named `HEAD`, or one whose name is itself a full ref name
/// (`refs/heads/refs/heads/x`, which `git checkout refs/heads/x` cannot tell apart).
pub fn ambiguous_ref_name(name: &str) -> Option<&'static str> {
    let short = name
        .strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/tags/"))?;
    if short == "HEAD" {
        return Some("ambiguous refname: HEAD as a branch or tag name");
    }
    if short.starts_with("refs/") {
        return Some("ambiguous refname: a branch or tag named like a full ref");
    }
    None
}

/// A blob a pushed tree names as `.gitmodules` or `.gitattributes`, which git checks
/// after the pack is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Gitmodules,
    Gitattributes,
}

/// Slots of [`Inspected`]'s table of ids named last (a few dozen KiB, within a core's
/// own cache).
const RECENT: usize = 2048;

/// The entries of a pack read while it arrived and what its objects told, or why it
/// was refused.
pub type PackRead = Result<(Vec<pack::Entry>, Inspected), pack::PackError>;

/// What a push's commits, trees and tags tell, gathered as the pack reader sees each
/// (their contents are not kept, see [`pack::Inspect`]): git's `receive.fsckObjects`
/// verdict on each, what each names, and each commit's parents. A few dozen bytes per
/// object, plus at most [`REMEMBER_BYTES_MAX`] of contents kept for the node's cache.
pub struct Inspected {
    opts: std::sync::Arc<fsck::Options>,
    checked: fsck::Checked,
    /// The first fatal finding, as git words it.
    refused: Option<String>,
    /// Every object a pushed commit, tree or tag names, with the kind it names it as.
    named: foldhash::HashMap<Oid, ObjectKind>,
    /// The last id named in each of [`RECENT`] slots (by its first bytes) and its kind,
    /// all in `named` already: the trees of one directory's history name the same
    /// objects again and again, and this small table answers most of them without a
    /// look-up in `named`, which outgrows the CPU's caches.
    recent: Box<[(Oid, Option<ObjectKind>)]>,
    /// Each pushed commit's parents.
    parents: foldhash::HashMap<Oid, Box<[Oid]>>,
    /// Trees and commits for the node's cache ([`Pushes::remember`]), first come.
    kept: Vec<(Oid, ObjectKind, Vec<u8>)>,
    kept_bytes: usize,
}

impl std::fmt::Debug for Inspected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspected")
            .field("named", &self.named.len())
            .field("commits", &self.parents.len())
            .field("refused", &self.refused)
            .finish()
    }
}

impl Inspected {
    pub fn new(opts: std::sync::Arc<fsck::Options>) -> Inspected {
        Inspected {
            opts,
            checked: fsck::Checked::default(),
            refused: None,
            named: Default::default(),
            recent: vec![([0; 20], None); RECENT].into_boxed_slice(),
            parents: Default::default(),
            kept: Vec::new(),
            kept_bytes: 0,
        }
    }

    fn refuse(&mut self, why: String) {
        self.refused.get_or_insert(why);
    }

    /// An empty inspection with the same fsck options (for another verifier thread).
    pub fn fresh(&self) -> Inspected {
        Inspected::new(self.opts.clone())
    }

    /// Whether some object was refused (the reason is the push's error).
    pub fn refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Takes in what another inspector of the same pack saw (objects it was given,
    /// which this one was not). This one's refusal, if any, stays the one reported:
    /// merge in pack order of the refused objects.
    pub fn merge(&mut self, other: Inspected) {
        if let Some(why) = other.refused {
            self.refuse(why);
        }
        self.checked.gitmodules.extend(other.checked.gitmodules);
        self.checked
            .gitattributes
            .extend(other.checked.gitattributes);
        let room = fsck::MAX_WARNINGS.saturating_sub(self.checked.warnings.len());
        self.checked
            .warnings
            .extend(other.checked.warnings.into_iter().take(room));
        for (target, as_kind) in other.named {
            self.name(target, as_kind);
        }
        self.parents.extend(other.parents);
        for (oid, kind, content) in other.kept {
            if self.kept_bytes + content.len() <= REMEMBER_BYTES_MAX {
                self.kept_bytes += content.len();
                self.kept.push((oid, kind, content));
            }
        }
    }

    /// What it saw, in an order of its own (for tests comparing inspections).
    #[cfg(test)]
    pub(crate) fn summary(&self) -> String {
        let mut named: Vec<_> = self.named.iter().collect();
        named.sort();
        let mut parents: Vec<_> = self.parents.iter().collect();
        parents.sort();
        let mut modules: Vec<_> = self.checked.gitmodules.iter().collect();
        modules.sort();
        format!(
            "refused {:?}\nnamed {named:?}\nparents {parents:?}\nmodules {modules:?}",
            self.refused
        )
    }

    /// Records that a pushed object names `target` as `as_kind`; refuses the push if
    /// another names it as something else.
    fn name(&mut self, target: Oid, as_kind: ObjectKind) {
        let slot = usize::from(u16::from_le_bytes([target[0], target[1]])) % RECENT;
        if self.recent[slot] == (target, Some(as_kind)) {
            return;
        }
        self.recent[slot] = (target, Some(as_kind));
        match self.named.entry(target) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(as_kind);
            }
            std::collections::hash_map::Entry::Occupied(o) if *o.get() != as_kind => {
                let first = *o.get();
                self.refuse(format!(
                    "object {} is named as a {} and as a {}",
                    hex(&target),
                    first.name(),
                    as_kind.name()
                ));
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }
}

impl pack::Inspect for Inspected {
    fn inspect(&mut self, oid: &Oid, kind: ObjectKind, content: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        if let Err(f) = fsck::check(kind, content, &self.opts, &mut self.checked) {
            return self.refuse(format!("object {}: {f}", hex(oid)));
        }
        let l = match links(kind, content) {
            Ok(l) => l,
            Err(e) => return self.refuse(format!("object {}: {e}", hex(oid))),
        };
        for (target, as_kind) in l.targets {
            self.name(target, as_kind);
            if self.refused.is_some() {
                return;
            }
        }
        if kind == ObjectKind::Commit {
            self.parents.insert(*oid, l.parents.into_boxed_slice());
        }
        if self.kept_bytes + content.len() <= REMEMBER_BYTES_MAX {
            self.kept_bytes += content.len();
            self.kept.push((*oid, kind, content.to_vec()));
        }
    }
}

/// The rest of `receive.fsckObjects` once every object is resolved: the `.gitmodules`
/// and `.gitattributes` blobs the pushed trees name and the pack carries. Returns those
/// it does not carry (stored already: the caller reads them and calls
/// [`check_special`]), or the first fatal finding, as git words it.
pub fn fsck_special(
    pack: &[u8],
    resolved: &[Resolved],
    inspected: &Inspected,
    limits: &Limits,
    external: &mut dyn FnMut(&Oid) -> Option<Vec<u8>>,
) -> Result<Vec<(Oid, Special)>, String> {
    if let Some(why) = &inspected.refused {
        return Err(why.clone());
    }
    let checked = &inspected.checked;
    if checked.gitmodules.is_empty() && checked.gitattributes.is_empty() {
        return Ok(Vec::new());
    }
    // Where each pushed object is: built only for a push that names such a file.
    let index: HashMap<Oid, usize> = resolved
        .iter()
        .enumerate()
        .map(|(i, r)| (r.oid, i))
        .collect();
    let index = &index;
    let special = checked
        .gitmodules
        .iter()
        .map(|o| (*o, Special::Gitmodules))
        .chain(
            checked
                .gitattributes
                .iter()
                .map(|o| (*o, Special::Gitattributes)),
        );
    let mut stored = Vec::new();
    for (oid, which) in special {
        let Some(r) = index.get(&oid).and_then(|&i| resolved.get(i)) else {
            stored.push((oid, which));
            continue;
        };
        let content = if r.kind == ObjectKind::Blob && r.object_size <= special_max(which) {
            pack::content_of(pack, resolved, index, &oid, limits, external)
                .map_err(|e| e.to_string())?
        } else {
            None
        };
        check_special(
            which,
            &oid,
            Some((r.kind, r.object_size)),
            content.as_deref(),
            &inspected.opts,
        )?;
    }
    Ok(stored)
}

fn special_max(which: Special) -> u64 {
    match which {
        Special::Gitmodules => fsck::GITMODULES_MAX_BYTES,
        Special::Gitattributes => fsck::GITATTRIBUTES_MAX_BYTES,
    }
}

/// Checks a `.gitmodules` or `.gitattributes` blob: `found` is its kind and size
/// (`None`: nowhere to be found), `content` its bytes when it is a blob within size.
pub fn check_special(
    which: Special,
    oid: &Oid,
    found: Option<(ObjectKind, u64)>,
    content: Option<&[u8]>,
    opts: &fsck::Options,
) -> Result<(), String> {
    use fsck::MsgId;
    let (missing, not_blob, large) = match which {
        Special::Gitmodules => (
            MsgId::GitmodulesMissing,
            MsgId::GitmodulesBlob,
            MsgId::GitmodulesLarge,
        ),
        Special::Gitattributes => (
            MsgId::GitattributesMissing,
            MsgId::GitattributesBlob,
            MsgId::GitattributesLarge,
        ),
    };
    let finding = match (found, content) {
        (None, _) => Some((missing, "unable to read the blob")),
        (Some((kind, _)), _) if kind != ObjectKind::Blob => Some((not_blob, "non-blob found")),
        (Some((_, size)), _) if size > special_max(which) => Some((large, "blob too large")),
        (Some(_), None) => Some((missing, "unable to read the blob")),
        (Some(_), Some(c)) => {
            let checked = match which {
                Special::Gitmodules => fsck::check_gitmodules(c, opts),
                Special::Gitattributes => fsck::check_gitattributes(c, opts),
            };
            return checked.map_err(|f| format!("object {}: {f}", hex(oid)));
        }
    };
    match finding {
        Some((id, detail)) if opts.is_fatal(id) => {
            Err(format!("object {}: {}: {detail}", hex(oid), id.name()))
        }
        _ => Ok(()),
    }
}

/// Verifies and applies a push. `pre_read`: the pack's entries if they were read while
/// it arrived. `progress` receives human-readable progress lines.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the push
pub async fn receive<B: Pushes>(
    b: &B,
    repo: &str,
    state: &RepoState,
    req: &PushRequest,
    pack_bytes: bytes::Bytes,
    aside: Option<u64>,
    limits: &Limits,
    fsck_opts: &std::sync::Arc<fsck::Options>,
    pre_read: Option<PackRead>,
    approval: &mut impl Approval,
    mut progress: impl FnMut(String),
) -> Report {
    let commands = &req.commands;
    let atomic = req.caps.contains("atomic");
    let mut refusals = check_commands(commands, state);
    let mut phases = super::Phases::start();
    let mut failed = false;
    let needs_pack = commands.iter().any(|c| c.new != ZERO);

    let (resolved, mut inspected) = if needs_pack || !pack_bytes.is_empty() {
        let unpacked = unpack(
            b,
            repo,
            &pack_bytes,
            limits,
            fsck_opts,
            pre_read,
            &mut progress,
        )
        .await;
        match unpacked {
            Ok(u) => u,
            Err((why, status)) => return Report::all_failed(commands, Err(why), status),
        }
    } else {
        (Vec::new(), Inspected::new(fsck_opts.clone()))
    };
    phases.mark("resolve");

    let forward = connect(b, repo, state, req, &resolved, &inspected, &mut refusals).await;
    phases.mark("connect");
    if ask(approval, commands, &mut refusals, atomic).await {
        phases.mark("hooks");
    }

    // Store the pack's objects, durably, before any ref moves: all of them, as git
    // does, when an accepted update needs them.
    let accepted: Vec<usize> = (0..commands.len())
        .filter(|i| refusals[*i].is_none())
        .collect();
    if !accepted.is_empty() {
        let tips: HashSet<Oid> = accepted.iter().map(|&i| commands[i].new).collect();
        let kept: &[Resolved] = if tips.iter().any(|t| *t != ZERO) {
            &resolved
        } else {
            &[]
        };
        // Whether everything stored now is reachable from the new tips: in a graph
        // of hashes (no cycles), when every pushed object but the tips is named by
        // another pushed object.
        let all_reachable = kept
            .iter()
            .all(|r| tips.contains(&r.oid) || inspected.named.contains_key(&r.oid));
        let stored = store(
            b,
            repo,
            kept,
            &pack_bytes,
            aside,
            &mut inspected,
            &mut progress,
        );
        if let Err(e) = stored.await {
            let mut r = Report::all_failed(
                commands,
                Err(format!("storing objects failed: {e}")),
                "storage failure",
            );
            r.failed = true;
            return r;
        }
        phases.mark("store");
        let stored: Vec<Oid> = kept.iter().map(|r| r.oid).collect();
        let updates = Updates {
            commands,
            accepted: &accepted,
            forward: &forward,
            all_reachable,
            atomic,
        };
        failed = !update_refs(b, repo, &updates, &stored, &mut refusals).await;
    }
    phases.mark("refs");
    tracing::info!(repo, objects = resolved.len(), phases = %phases, "push verified and applied");
    Report {
        unpack: Ok(()),
        refs: commands
            .iter()
            .zip(refusals)
            .map(|(c, r)| (c.name.clone(), r.map_or(Ok(()), Err)))
            .collect(),
        failed,
        phases: phases.done,
    }
}

/// The ref updates of a push that passed its checks.
struct Updates<'a> {
    commands: &'a [Command],
    /// The commands not refused.
    accepted: &'a [usize],
    /// Per command: a fast-forward.
    forward: &'a [bool],
    /// Every object stored is reachable from the new tips.
    all_reachable: bool,
    atomic: bool,
}

/// Proposes `u`'s updates (the objects `stored` held first); each one the region
/// refuses gets its reason in `refusals`. False if the node failed them (not the push).
async fn update_refs<B: Pushes>(
    b: &B,
    repo: &str,
    u: &Updates<'_>,
    stored: &[Oid],
    refusals: &mut [Option<String>],
) -> bool {
    let updates: Vec<RefUpdate> = u
        .accepted
        .iter()
        .map(|&i| {
            let c = &u.commands[i];
            RefUpdate {
                name: c.name.clone(),
                old: (c.old != ZERO).then_some(c.old),
                new: (c.new != ZERO).then_some(c.new),
                forward: u.forward[i] && u.all_reachable,
            }
        })
        .collect();
    match b.update_refs(repo, &updates, u.atomic, stored).await {
        Ok(results) => {
            for (&i, r) in u.accepted.iter().zip(results) {
                if let Err(e) = r {
                    refusals[i] = Some(e);
                }
            }
            true
        }
        Err(e) => {
            for &i in u.accepted {
                refusals[i] = Some(format!("ref update failed: {e}"));
            }
            false
        }
    }
}

/// Asks `approval` about the changes not refused yet and refuses what it refuses (all,
/// if the push is atomic). Whether there was anything to ask about.
async fn ask(
    approval: &mut impl Approval,
    commands: &[Command],
    refusals: &mut [Option<String>],
    atomic: bool,
) -> bool {
    let open: Vec<usize> = (0..commands.len())
        .filter(|i| refusals[*i].is_none())
        .collect();
    if open.is_empty() {
        return false;
    }
    let refused = approval.approve(&open, commands).await;
    if !refused.is_empty() {
        for (i, why) in refused {
            if let Some(r) = refusals.get_mut(i) {
                r.get_or_insert(why);
            }
        }
        if atomic {
            for r in refusals.iter_mut() {
                r.get_or_insert_with(|| "atomic push failure".into());
            }
        }
    }
    true
}

/// What may refuse a push's changes once its objects are verified, before anything is
/// stored: the repository's pre-receive and update hooks.
#[allow(async_fn_in_trait)]
pub trait Approval {
    /// `open`: the indexes in `commands` of the changes not refused yet. Answers the
    /// refusals (index, reason).
    async fn approve(&mut self, open: &[usize], commands: &[Command]) -> Vec<(usize, String)>;
}

/// No hooks.
impl Approval for () {
    async fn approve(&mut self, _: &[usize], _: &[Command]) -> Vec<(usize, String)> {
        Vec::new()
    }
}

/// Stores `kept`, the push's objects, durably (on a majority of the region's nodes),
/// and hands what the reader kept of their contents to the node's cache.
async fn store<B: Pushes>(
    b: &B,
    repo: &str,
    kept: &[Resolved],
    pack_bytes: &bytes::Bytes,
    aside: Option<u64>,
    inspected: &mut Inspected,
    progress: &mut impl FnMut(String),
) -> Result<(), BackendError> {
    let raws: Vec<StoredObject> = kept
        .iter()
        .map(|r| StoredObject {
            oid: r.oid,
            kind: r.kind,
            object_size: r.object_size,
            entry_size: r.entry_size,
            base: r.base,
            deflated: pack_bytes.slice(r.data.clone()),
        })
        .collect();
    let n = raws.len();
    b.store(repo, raws, aside, progress).await?;
    progress(format!("Stored {n} new objects"));
    if n > 0 {
        b.remember(repo, std::mem::take(&mut inspected.kept));
    }
    Ok(())
}

/// The pack of a push unpacked and verified: its objects resolved (every id
/// recomputed, thin-pack bases from the repository) and checked as git's
/// `receive.fsckObjects` does; or why not, and the unpack status to report.
async fn unpack<B: Objects>(
    b: &B,
    repo: &str,
    pack_bytes: &bytes::Bytes,
    limits: &Limits,
    fsck_opts: &std::sync::Arc<fsck::Options>,
    pre_read: Option<PackRead>,
    progress: &mut impl FnMut(String),
) -> Result<(Vec<Resolved>, Inspected), (String, &'static str)> {
    if pack_bytes.is_empty() {
        return Err(("missing pack".into(), "unpacker error"));
    }
    let mut inspected = Inspected::new(fsck_opts.clone());
    // Entries already read while the pack arrived, or read now.
    let entries = match pre_read.unwrap_or_else(|| {
        crate::contain::run(|| pack::read_entries(pack_bytes, limits, &mut inspected))
            .unwrap_or_else(|p| Err(p.into()))
            .map(|e| (e, inspected))
    }) {
        Ok((e, i)) => {
            inspected = i;
            e
        }
        Err(e) => return Err((e.to_string(), "unpacker error")),
    };
    progress(format!("Receiving objects: {} objects", entries.len()));
    // Thin-pack bases come from the repository. The closure is sync; fetch the
    // ones the pack names and the repository has, up front.
    let mut externals: HashMap<Oid, (ObjectKind, Vec<u8>)> = HashMap::new();
    let in_pack_refs: Vec<Oid> = entries
        .iter()
        .filter_map(|e| match e.kind {
            pack::EntryKind::RefDelta { base } => Some(base),
            _ => None,
        })
        .collect();
    let has = b.has_many(repo, &in_pack_refs);
    for (base, h) in in_pack_refs.iter().zip(has) {
        if h && !externals.contains_key(base) {
            match b.object(repo, base).await {
                Ok(Some(o)) => {
                    externals.insert(*base, o);
                }
                Ok(None) => {}
                Err(e) => return Err((e.0, "unpacker error")),
            }
        }
    }
    // Inflating and hashing a large pack takes seconds of CPU: off the executor, so
    // the shard keeps serving (raft heartbeats above all) meanwhile.
    let (pack, limits_copy) = (pack_bytes.clone(), *limits);
    let resolution = glommio::executor()
        .spawn_blocking(move || {
            crate::contain::run(move || {
                let resolved = pack::resolve(
                    &pack,
                    entries,
                    &limits_copy,
                    |o| externals.get(o).cloned(),
                    &mut inspected,
                )?;
                let mut external = |o: &Oid| externals.get(o).map(|(_, c)| c.clone());
                let checked =
                    fsck_special(&pack, &resolved, &inspected, &limits_copy, &mut external);
                Ok::<_, pack::PackError>((resolved, inspected, checked))
            })
            .unwrap_or_else(|p| Err(p.into()))
        })
        .await;
    let (resolved, inspected, stored_special) = match resolution {
        Ok((r, i, Ok(stored))) => (r, i, stored),
        Ok((_, _, Err(why))) => return Err((why, "fsck error in the pack")),
        Err(e) => return Err((e.to_string(), "unpacker error")),
    };
    // `.gitmodules` and `.gitattributes` the pushed trees name but it does not
    // carry: stored already, read from the repository.
    for (oid, which) in stored_special {
        let found = match b.object(repo, &oid).await {
            Ok(o) => o,
            Err(e) => return Err((e.0, "unpacker error")),
        };
        let kind_size = found.as_ref().map(|(k, c)| (*k, c.len() as u64));
        let content = found.as_ref().map(|(_, c)| c.as_slice());
        if let Err(why) = check_special(which, &oid, kind_size, content, fsck_opts) {
            return Err((why, "fsck error in the pack"));
        }
    }
    progress(format!(
        "Resolving deltas: {} objects verified",
        resolved.len()
    ));
    Ok((resolved, inspected))
}

/// Connectivity and history: refuses (in `refusals`) each update whose new tip or
/// whose pushed objects' names are neither pushed nor stored, each non-fast-forward
/// update where the repository refuses them, and, in an atomic push, all once one is
/// refused. Returns, per update, whether it is forward (see `RefUpdate::forward`).
async fn connect<B: Objects>(
    b: &B,
    repo: &str,
    state: &RepoState,
    req: &PushRequest,
    resolved: &[Resolved],
    inspected: &Inspected,
    refusals: &mut [Option<String>],
) -> Vec<bool> {
    let commands = &req.commands;
    let atomic = req.caps.contains("atomic");
    // Connectivity, as git's `index-pack --strict`: everything a pushed object names is
    // pushed (as the kind it is named as) or stored, and every new tip is. Stored
    // objects' closures are complete, so every new tip's is.
    let in_pack: foldhash::HashMap<Oid, ObjectKind> =
        resolved.iter().map(|r| (r.oid, r.kind)).collect();
    if let Err(why) = connected(b, repo, &in_pack, &inspected.named).await {
        for (i, c) in commands.iter().enumerate() {
            if c.new != ZERO {
                refusals[i].get_or_insert_with(|| why.clone());
            }
        }
    }
    for (i, c) in commands.iter().enumerate() {
        if refusals[i].is_none()
            && c.new != ZERO
            && !in_pack.contains_key(&c.new)
            && !b.has_many(repo, &[c.new]).first().copied().unwrap_or(false)
        {
            refusals[i] = Some(format!("missing object {}", hex(&c.new)));
        }
    }
    // Fast-forward check. Where non-fast-forward updates are allowed it still tells
    // whether the push may leave objects unreachable (see `RefUpdate::forward`).
    let mut forward = vec![false; commands.len()];
    for (i, c) in commands.iter().enumerate() {
        if refusals[i].is_some() || c.new == ZERO {
            continue;
        }
        if c.old == ZERO {
            forward[i] = true;
            continue;
        }
        let commits_max = if state.allow_non_fast_forward {
            FORWARD_HINT_COMMITS_MAX
        } else {
            usize::MAX
        };
        let pushed = Pushed {
            kinds: &in_pack,
            parents: &inspected.parents,
        };
        match is_ancestor(b, repo, &pushed, c.old, c.new, commits_max).await {
            Ok(Some(true)) => forward[i] = true,
            _ if state.allow_non_fast_forward => {}
            Ok(_) => refusals[i] = Some("non-fast-forward".into()),
            Err(e) => refusals[i] = Some(e),
        }
    }
    if atomic && refusals.iter().any(Option::is_some) {
        for r in refusals.iter_mut().filter(|r| r.is_none()) {
            *r = Some("atomic push failure".into());
        }
    }
    forward
}

/// Most bytes of verified trees and commits one push hands the node to keep
/// ([`Pushes::remember`]): the node's cache holds 64 MiB, so more of a huge push
/// would only evict what was just kept.
const REMEMBER_BYTES_MAX: usize = 16 << 20;

/// What a push carries, as connectivity and history walks need it.
struct Pushed<'a> {
    kinds: &'a foldhash::HashMap<Oid, ObjectKind>,
    parents: &'a foldhash::HashMap<Oid, Box<[Oid]>>,
}

/// Checks that every object the pushed objects name (`named`, with the kind each is
/// named as) is pushed as that kind, or stored.
async fn connected<B: Objects>(
    b: &B,
    repo: &str,
    in_pack: &foldhash::HashMap<Oid, ObjectKind>,
    named: &foldhash::HashMap<Oid, ObjectKind>,
) -> Result<(), String> {
    let mut outside = Vec::new();
    for (oid, expected) in named {
        match in_pack.get(oid) {
            Some(kind) if kind != expected => {
                return Err(format!(
                    "object {} is a {}, expected a {}",
                    hex(oid),
                    kind.name(),
                    expected.name()
                ))
            }
            Some(_) => {}
            None => outside.push(*oid),
        }
    }
    for chunk in outside.chunks(4096) {
        let has = b.has_many(repo, chunk);
        if let Some((oid, _)) = chunk.iter().zip(has).find(|(_, h)| !h) {
            return Err(format!(
                "missing necessary objects ({} is neither pushed nor stored)",
                hex(oid)
            ));
        }
        glommio::yield_if_needed().await;
    }
    Ok(())
}

/// The parents of commit `oid`, pushed or stored; `None` if it is not a commit.
async fn parents_of<B: Objects>(
    b: &B,
    repo: &str,
    pushed: &Pushed<'_>,
    oid: &Oid,
) -> Result<Option<Vec<Oid>>, String> {
    if let Some(kind) = pushed.kinds.get(oid) {
        return Ok((*kind == ObjectKind::Commit).then(|| {
            pushed
                .parents
                .get(oid)
                .map(|p| p.to_vec())
                .unwrap_or_default()
        }));
    }
    match b.object(repo, oid).await.map_err(|e| e.0)? {
        Some((ObjectKind::Commit, content)) => {
            let l = links(ObjectKind::Commit, &content).map_err(|e| e.to_string())?;
            Ok(Some(l.parents))
        }
        _ => Ok(None),
    }
}

/// Whether commit `old` is an ancestor of (or equal to) `new`, walking at most
/// `commits_max` commits (`None`: it gave up first). Commit dates decide nothing:
/// clocks are skewed and dates are whatever the committer set, so a commit may be
/// older than its parent.
async fn is_ancestor<B: Objects>(
    b: &B,
    repo: &str,
    pushed: &Pushed<'_>,
    old: Oid,
    new: Oid,
    commits_max: usize,
) -> Result<Option<bool>, String> {
    if old == new {
        return Ok(Some(true));
    }
    // Only a commit has descendants (a tag moved to another tag is not forward).
    if parents_of(b, repo, pushed, &old).await?.is_none() {
        return Ok(Some(false));
    }
    let mut stack = vec![new];
    let mut seen = HashSet::new();
    while let Some(c) = stack.pop() {
        if c == old {
            return Ok(Some(true));
        }
        if !seen.insert(c) {
            continue;
        }
        if seen.len() > commits_max {
            return Ok(None);
        }
        if let Some(parents) = parents_of(b, repo, pushed, &c).await? {
            stack.extend(parents);
        }
        if seen.len().is_multiple_of(1024) {
            glommio::yield_if_needed().await;
        }
    }
    Ok(Some(false))
}

/// Commits walked at most to tell whether an update that may rewind anyway (force
/// pushes allowed) moves forward; past it, it counts as not forward (see
/// `RefUpdate::forward`), which only costs a later full clone its shortcut.
const FORWARD_HINT_COMMITS_MAX: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_named_as_two_kinds_is_refused_however_often_and_wherever_it_was_named() {
        use pack::Inspect;
        let target = [7u8; 20];
        let tree = |mode: &str, name: &str| {
            let mut t = format!("{mode} {name}\0").into_bytes();
            t.extend_from_slice(&target);
            t
        };
        let (as_blob, as_tree) = (tree("100644", "f"), tree("40000", "d"));
        let opts = std::sync::Arc::new(fsck::Options::default());
        // Named as a blob many times over (answered by the table of recent names),
        // then as a tree.
        let mut one = Inspected::new(opts.clone());
        for i in 0..10u8 {
            one.inspect(&[i; 20], ObjectKind::Tree, &as_blob);
        }
        assert!(!one.refused());
        one.inspect(&[99; 20], ObjectKind::Tree, &as_tree);
        let why = one.refused.clone().unwrap_or_default();
        assert!(why.contains("is named as a blob and as a tree"), "{why}");
        // Each way by another verifier thread: found when they are merged.
        let (mut a, mut b) = (Inspected::new(opts.clone()), Inspected::new(opts));
        a.inspect(&[1; 20], ObjectKind::Tree, &as_blob);
        a.inspect(&[2; 20], ObjectKind::Tree, &as_blob);
        b.inspect(&[3; 20], ObjectKind::Tree, &as_tree);
        assert!(!a.refused() && !b.refused());
        a.merge(b);
        let why = a.refused.clone().unwrap_or_default();
        assert!(why.contains("is named as a blob and as a tree"), "{why}");
    }

    fn cmd(old: &str, new: &str, name: &str) -> Vec<u8> {
        format!("{old} {new} {name}").into_bytes()
    }

    #[test]
    fn parses_commands_caps_and_options() {
        let z = "0".repeat(40);
        let n = "1".repeat(40);
        let mut body = Vec::new();
        let mut first = cmd(&z, &n, "refs/heads/master");
        first.extend_from_slice(b"\0report-status side-band-64k push-options atomic");
        first.push(b'\n');
        pktline::data(&mut body, &first).expect("fits");
        pktline::fixed(
            &mut body,
            &String::from_utf8(cmd(&n, &z, "refs/heads/old")).expect("utf8"),
        );
        pktline::flush(&mut body);
        pktline::fixed(&mut body, "ci.skip");
        pktline::flush(&mut body);
        body.extend_from_slice(b"PACK...");
        let r = parse_push(&body, &RequestLimits::default()).expect("valid");
        assert_eq!(r.commands.len(), 2);
        assert!(r.caps.contains("atomic"));
        assert_eq!(r.options, vec!["ci.skip".to_string()]);
        assert_eq!(&body[r.pack_at..], b"PACK...");
        assert!(
            parse_push(
                &body,
                &RequestLimits {
                    refs_per_push_max: 1,
                    ..RequestLimits::default()
                }
            )
            .is_err(),
            "ref count limit"
        );
    }

    /// A push of one command asking for push options, after `before` lines, with one
    /// option and a pack; returns the body and where its pack starts.
    fn push_with_an_option(before: &[String]) -> (Vec<u8>, usize) {
        let z = "0".repeat(40);
        let mut body = Vec::new();
        for l in before {
            pktline::fixed(&mut body, l);
        }
        let mut first = cmd(&z, &"1".repeat(40), "refs/heads/master");
        first.extend_from_slice(b"\0report-status push-options\n");
        pktline::data(&mut body, &first).expect("fits");
        pktline::flush(&mut body);
        pktline::fixed(&mut body, "an option");
        pktline::flush(&mut body);
        let pack_at = body.len();
        body.extend_from_slice(b"PACK");
        (body, pack_at)
    }

    #[test]
    fn finds_the_end_of_the_command_section_as_it_arrives() {
        let (body, pack_at) = push_with_an_option(&[]);
        for cut in 0..pack_at {
            assert_eq!(commands_end(&body[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(commands_end(&body), Ok(Some(pack_at)));
        assert_eq!(
            parse_push(&body, &RequestLimits::default())
                .expect("valid")
                .pack_at,
            pack_at
        );
        assert_eq!(commands_end(b"0000"), Ok(Some(4)), "git's probe");
        assert!(commands_end(b"zzzz").is_err());
    }

    #[test]
    fn a_shallow_clone_push_states_its_boundary_first() {
        let (body, pack_at) = push_with_an_option(&[format!("shallow {}", "3".repeat(40))]);
        assert_eq!(commands_end(&body), Ok(Some(pack_at)));
        let r = parse_push(&body, &RequestLimits::default()).expect("valid");
        assert_eq!(r.shallow, vec![[0x33; 20]]);
        assert_eq!(r.commands.len(), 1);
        assert!(r.caps.contains("push-options"));
        assert_eq!(r.options, vec!["an option".to_string()]);
        // After a command, or not an id: refused.
        let mut first = cmd(&"0".repeat(40), &"1".repeat(40), "refs/heads/master");
        first.extend_from_slice(b"\0report-status\n");
        let mut late = Vec::new();
        pktline::data(&mut late, &first).expect("fits");
        pktline::fixed(&mut late, &format!("shallow {}", "3".repeat(40)));
        pktline::flush(&mut late);
        assert!(parse_push(&late, &RequestLimits::default()).is_err());
        let mut bad = Vec::new();
        pktline::fixed(&mut bad, "shallow xyz");
        pktline::flush(&mut bad);
        assert!(parse_push(&bad, &RequestLimits::default()).is_err());
    }

    #[test]
    fn malformed_commands_are_protocol_errors() {
        for body in [
            &b""[..],
            b"0000",
            b"0008abc\n",
            b"zzzz",
            b"0032short line\n0000",
        ] {
            let r = parse_push(body, &RequestLimits::default());
            if body == b"0000" {
                assert!(r.expect("empty push parses").commands.is_empty());
            } else {
                assert!(r.is_err(), "{:?}", String::from_utf8_lossy(body));
            }
        }
    }

    #[test]
    fn command_checks() {
        let mut state = RepoState::default();
        state.refs.insert("refs/heads/a".into(), "1".repeat(40));
        let one = [0x11; 20];
        let two = [0x22; 20];
        let c = |old, new, name: &str| Command {
            old,
            new,
            name: name.into(),
        };
        let r = check_commands(
            &[
                c(one, two, "refs/heads/a"),
                c(ZERO, two, "refs/heads/a..b"),
                c(two, one, "refs/heads/x"),
                c(ZERO, two, "refs/heads/a"),
                c(ZERO, one, "refs/heads/new"),
                c(ZERO, one, "refs/heads/new"),
            ],
            &state,
        );
        assert_eq!(r[0], None);
        assert_eq!(r[1].as_deref(), Some("funny refname"));
        assert!(r[2].is_some());
        assert_eq!(r[3].as_deref(), Some("duplicate ref update"));
        assert_eq!(r[4], None);
        assert_eq!(r[5].as_deref(), Some("duplicate ref update"));
    }
}
