//! Reading the links out of commits, trees and tags (for connectivity checks and for
//! walking history when planning a pack), refusing what cannot be walked. Pure. The
//! checks git's fsck makes on what a push may introduce are in [`super::fsck`].

use super::{parse_hex, ObjectKind, Oid};

/// What an object points at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Links {
    /// (id, the kind it must have)
    pub targets: Vec<(Oid, ObjectKind)>,
    /// For commits: the parents (also in `targets`), to walk history.
    pub parents: Vec<Oid>,
    /// For commits: the committer time, to walk newest first.
    pub commit_time: i64,
}

/// What walking history needs of a commit: its tree, parents and committer time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHeader {
    pub tree: Oid,
    pub parents: Vec<Oid>,
    pub time: i64,
}

impl CommitHeader {
    /// The header of a commit with `content`.
    pub fn parse(content: &[u8]) -> Result<CommitHeader, Malformed> {
        let l = commit_links(content)?;
        Ok(CommitHeader {
            tree: l.targets[0].0,
            parents: l.parents,
            time: l.commit_time,
        })
    }
}

/// Why an object is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind}: {reason}")]
pub struct Malformed {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn bad(kind: ObjectKind, reason: &'static str) -> Malformed {
    Malformed {
        kind: kind.name(),
        reason,
    }
}

fn header_value<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    line.strip_prefix(key)?.strip_prefix(b" ")
}

/// The links of an object of `kind` with `content`; blobs have none.
pub fn links(kind: ObjectKind, content: &[u8]) -> Result<Links, Malformed> {
    match kind {
        ObjectKind::Blob => Ok(Links::default()),
        ObjectKind::Commit => commit_links(content),
        ObjectKind::Tag => tag_links(content),
        ObjectKind::Tree => tree_links(content),
    }
}

fn commit_links(c: &[u8]) -> Result<Links, Malformed> {
    let k = ObjectKind::Commit;
    let head_end = c.windows(2).position(|w| w == b"\n\n").unwrap_or(c.len());
    let mut lines = c[..head_end].split(|b| *b == b'\n');
    let tree = lines
        .next()
        .and_then(|l| header_value(l, b"tree"))
        .and_then(parse_hex)
        .ok_or(bad(k, "first line is not `tree <id>`"))?;
    let mut links = Links {
        targets: vec![(tree, ObjectKind::Tree)],
        ..Links::default()
    };
    let mut author = false;
    let mut committer = false;
    for l in lines {
        if let Some(p) = header_value(l, b"parent") {
            if author || committer {
                return Err(bad(k, "parent after author"));
            }
            let p = parse_hex(p).ok_or(bad(k, "invalid parent id"))?;
            links.parents.push(p);
            links.targets.push((p, ObjectKind::Commit));
        } else if header_value(l, b"author").is_some() {
            author = true;
        } else if let Some(v) = header_value(l, b"committer") {
            committer = true;
            links.commit_time = person_time(v).unwrap_or(0);
        }
    }
    if !author || !committer {
        return Err(bad(k, "missing author or committer"));
    }
    Ok(links)
}

fn person_time(v: &[u8]) -> Option<i64> {
    let gt = v.iter().rposition(|b| *b == b'>')?;
    let rest = std::str::from_utf8(&v[gt + 1..]).ok()?;
    rest.split_whitespace().next()?.parse().ok()
}

fn tag_links(c: &[u8]) -> Result<Links, Malformed> {
    let k = ObjectKind::Tag;
    let mut lines = c.split(|b| *b == b'\n');
    let object = lines
        .next()
        .and_then(|l| header_value(l, b"object"))
        .and_then(parse_hex)
        .ok_or(bad(k, "first line is not `object <id>`"))?;
    let kind = lines
        .next()
        .and_then(|l| header_value(l, b"type"))
        .and_then(ObjectKind::from_name)
        .ok_or(bad(k, "second line is not `type <kind>`"))?;
    lines
        .next()
        .and_then(|l| header_value(l, b"tag"))
        .filter(|n| !n.is_empty())
        .ok_or(bad(k, "third line is not `tag <name>`"))?;
    Ok(Links {
        targets: vec![(object, kind)],
        ..Links::default()
    })
}

/// One entry of a tree: its name, the id it names and that object's kind
/// (submodule commits, which live in another repository, are left out).
pub type TreeEntry<'a> = (&'a [u8], Oid, ObjectKind);

/// The entries of a tree, in order, refusing what cannot be walked.
pub fn tree_entries(c: &[u8]) -> Result<Vec<TreeEntry<'_>>, Malformed> {
    let k = ObjectKind::Tree;
    let mut entries = Vec::new();
    let mut at = 0;
    while at < c.len() {
        let sp = c[at..]
            .iter()
            .position(|b| *b == b' ')
            .ok_or(bad(k, "entry without mode"))?;
        let mode = &c[at..at + sp];
        at += sp + 1;
        let nul = c[at..]
            .iter()
            .position(|b| *b == 0)
            .ok_or(bad(k, "entry without name"))?;
        let name = &c[at..at + nul];
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(bad(k, "invalid entry name"));
        }
        at += nul + 1;
        let id = c.get(at..at + 20).ok_or(bad(k, "truncated entry id"))?;
        let mut oid = [0u8; 20];
        oid.copy_from_slice(id);
        at += 20;
        // As git reads a mode (octal, zero padding allowed: `zeroPaddedFilemode` is
        // fsck's to judge), by its type bits; any other type is taken as a gitlink,
        // as git's canon_mode does (fsck reports it as `badFilemode`).
        if mode.is_empty() || mode.len() > 7 || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
            return Err(bad(k, "invalid entry mode"));
        }
        let mode = mode
            .iter()
            .fold(0u32, |m, b| (m << 3) | u32::from(b - b'0'));
        match mode & 0o170000 {
            0o040000 => entries.push((name, oid, ObjectKind::Tree)),
            0o100000 | 0o120000 => entries.push((name, oid, ObjectKind::Blob)),
            _ => {} // a submodule's commit lives in another repository
        }
    }
    Ok(entries)
}

fn tree_links(c: &[u8]) -> Result<Links, Malformed> {
    Ok(Links {
        targets: tree_entries(c)?
            .into_iter()
            .map(|(_, id, kind)| (id, kind))
            .collect(),
        ..Links::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit() {
        let t = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let c = format!("tree {t}\nparent {t}\nauthor A <a@b> 1 +0000\ncommitter C <c@d> 1700000000 +0100\n\nmsg\n");
        let l = links(ObjectKind::Commit, c.as_bytes()).expect("valid");
        assert_eq!(l.targets.len(), 2);
        assert_eq!(l.parents.len(), 1);
        assert_eq!(l.commit_time, 1_700_000_000);
        for bad in [
            "",
            "tree zz\n",
            &format!("tree {t}\n\n"),
            &format!("tree {t}\nauthor A <a> 1 +0000\n"),
        ] {
            assert!(
                links(ObjectKind::Commit, bad.as_bytes()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tree_entries_keep_names_and_refuse_what_cannot_be_walked() {
        let mut t = b"100644 a file\0".to_vec();
        t.extend_from_slice(&[1; 20]);
        t.extend_from_slice(b"40000 dir\0");
        t.extend_from_slice(&[2; 20]);
        let e = tree_entries(&t).expect("valid");
        assert_eq!(
            e,
            vec![
                (&b"a file"[..], [1; 20], ObjectKind::Blob),
                (&b"dir"[..], [2; 20], ObjectKind::Tree)
            ]
        );
        for bad in [
            &b"100644 .\0aaaaaaaaaaaaaaaaaaaa"[..],
            b"100644 ..\0aaaaaaaaaaaaaaaaaaaa",
            b"100644 a/b\0aaaaaaaaaaaaaaaaaaaa",
            b"100644 \0aaaaaaaaaaaaaaaaaaaa",
            b"100644 no-nul-after-the-name",
            b"100644",
            b"100644 a\0",
        ] {
            assert!(
                tree_entries(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // An entry repeated is returned twice (fsck judges duplicates, not the walk).
        let mut twice = t.clone();
        twice.extend_from_slice(&t);
        assert_eq!(tree_entries(&twice).expect("walkable").len(), 4);
    }

    #[test]
    fn tree_entries_and_gitlinks() {
        let mut t = Vec::new();
        t.extend_from_slice(b"100644 a\0");
        t.extend_from_slice(&[1; 20]);
        t.extend_from_slice(b"40000 d\0");
        t.extend_from_slice(&[2; 20]);
        t.extend_from_slice(b"160000 sub\0");
        t.extend_from_slice(&[3; 20]);
        let l = links(ObjectKind::Tree, &t).expect("valid");
        assert_eq!(
            l.targets,
            vec![([1; 20], ObjectKind::Blob), ([2; 20], ObjectKind::Tree)]
        );
        assert!(links(ObjectKind::Tree, b"")
            .expect("empty tree")
            .targets
            .is_empty());
        assert!(links(ObjectKind::Tree, b"100644 a\0short").is_err());
        assert!(links(ObjectKind::Tree, b"999 a\0aaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(links(ObjectKind::Tree, b" a\0aaaaaaaaaaaaaaaaaaaa").is_err());
        // Zero-padded, and of an unknown type (followed as git does: not at all).
        let mut t = b"0100644 a\0".to_vec();
        t.extend_from_slice(&[4; 20]);
        t.extend_from_slice(b"70000 b\0");
        t.extend_from_slice(&[5; 20]);
        let l = links(ObjectKind::Tree, &t).expect("git reads it");
        assert_eq!(l.targets, vec![([4; 20], ObjectKind::Blob)]);
    }

    #[test]
    fn tag() {
        let t = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let g = format!("object {t}\ntype tree\ntag v1\ntagger T <t> 1 +0000\n\nm\n");
        let l = links(ObjectKind::Tag, g.as_bytes()).expect("valid");
        assert_eq!(l.targets[0].1, ObjectKind::Tree);
        assert!(links(ObjectKind::Tag, b"object x\n").is_err());
    }
}
