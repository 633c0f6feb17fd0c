//! Scrub and repair: every record read again and checked ([`Store::verify_paced`]),
//! and the entries the index serves from damaged records named, so that the node can
//! fetch those objects again from a member and write them anew
//! ([`Store::replace_damaged`]). A damaged record is never served meanwhile: every read
//! checks its record's CRC.

use super::*;
use crate::object::Oid;

/// An object the index serves from a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damaged {
    pub ns: Namespace,
    pub oid: Oid,
    pub loc: Loc,
}

/// What a scrub found.
#[derive(Debug, Clone, Default)]
pub struct ScrubReport {
    pub verify: VerifyReport,
    /// Objects served from damaged records (a damaged region or a record whose content
    /// does not give its id): what repair fetches again.
    pub damaged: Vec<Damaged>,
    /// Opaque values (raft log, metadata) in damaged regions: not repairable here.
    pub damaged_values: usize,
}

impl<D: Dir> Store<D> {
    /// Reads and checks everything, at most `bytes_per_second` (0: no limit), and names
    /// what the index serves from damaged records.
    pub async fn scrub(&self, bytes_per_second: u64) -> Result<ScrubReport> {
        let verify = self.verify_paced(bytes_per_second).await?;
        let regions: Vec<(u64, u64, u64)> = verify
            .corruptions
            .iter()
            .map(|c| (c.segment, c.offset, c.offset.saturating_add(c.len.max(1))))
            .collect();
        let bad: std::collections::HashSet<(u64, u64)> = verify
            .bad_at
            .iter()
            .map(|l| (l.segment, l.offset))
            .collect();
        let (objects, damaged_values) = self.inner.index.borrow().entries_where(|l| {
            bad.contains(&(l.segment, l.offset))
                || regions.iter().any(|(s, from, to)| {
                    l.segment == *s && l.offset < *to && l.offset + u64::from(l.len) > *from
                })
        });
        // A record in a damaged frame that passes its own check is intact (each record
        // carries its own CRC): only the others are named.
        let mut damaged = Vec::new();
        for (ns, oid, loc) in objects {
            let intact = !bad.contains(&(loc.segment, loc.offset))
                && matches!(self.read_raw(ns, &oid).await, Ok(Some(_)));
            if !intact {
                damaged.push(Damaged { ns, oid, loc });
            }
        }
        Ok(ScrubReport {
            verify,
            damaged,
            damaged_values,
        })
    }

    /// The objects the index serves from the record at `segment`/`offset` (a read
    /// found it damaged: [`Error::Corrupt`] names the place).
    pub fn served_at(&self, segment: u64, offset: u64) -> Vec<Damaged> {
        let (objects, _) = self
            .inner
            .index
            .borrow()
            .entries_where(|l| l.segment == segment && l.offset == offset);
        objects
            .into_iter()
            .map(|(ns, oid, loc)| Damaged { ns, oid, loc })
            .collect()
    }

    /// Checks every object of `ns`: its record's CRC, its content (delta chains
    /// resolved) against its id. Returns those that fail.
    pub async fn scrub_namespace(
        &self,
        ns: Namespace,
        bytes_per_second: u64,
    ) -> Result<Vec<Damaged>> {
        let mut pacer = Pacer::new(bytes_per_second);
        let mut damaged = Vec::new();
        for (oid, loc) in self.objects_in_place_order(ns) {
            let ok = match self.read_object(ns, &oid).await {
                Ok(Some((kind, content))) => object::object_id(kind, &content) == Ok(oid),
                Ok(None) => true, // dropped meanwhile
                Err(Error::Io { op, name, source }) => {
                    return Err(Error::Io { op, name, source });
                }
                Err(_) => false,
            };
            if !ok {
                damaged.push(Damaged { ns, oid, loc });
            }
            pacer.spent(u64::from(loc.len)).await;
        }
        Ok(damaged)
    }

    /// Whether `obj`'s content gives its id: a delta resolved against the base `ns`
    /// holds (which must be readable).
    async fn is_the_object(&self, ns: Namespace, obj: &StoredObject) -> Result<bool> {
        let delta = object::inflate(&obj.deflated, obj.entry_size).map_err(|e| Error::Content {
            oid: object::hex(&obj.oid),
            source: e.into(),
        })?;
        let (kind, content) = match obj.base {
            None => (obj.kind, delta),
            Some(base) => {
                // A base damaged too is repaired first; try this one again after it.
                let Ok(Some((kind, base))) = self.read_object(ns, &base).await else {
                    return Ok(false);
                };
                let out = repospanner_object::delta::apply(&base, &delta, obj.object_size)
                    .map_err(|e| Error::Content {
                        oid: object::hex(&obj.oid),
                        source: e.into(),
                    })?;
                (kind, out)
            }
        };
        Ok(object::object_id(kind, &content) == Ok(obj.oid))
    }

    /// Stores `obj` (fetched from a member) in `ns`, which lacks it, if its content
    /// gives its id. Whether it did.
    pub async fn add_checked(&self, ns: Namespace, obj: StoredObject) -> Result<bool> {
        if !self.is_the_object(ns, &obj).await? {
            return Ok(false);
        }
        self.append(vec![Write::Object(ns, obj)]).await?;
        Ok(true)
    }

    /// Writes `obj` (fetched again from a member) for `d.ns` in place of damaged
    /// record `d.loc`, if its content gives its id (see [`Store::add_checked`]) and
    /// the index still serves `d` from there. Whether it did.
    pub async fn replace_damaged(&self, d: Damaged, obj: StoredObject) -> Result<bool> {
        if obj.oid != d.oid || !self.is_the_object(d.ns, &obj).await? {
            return Ok(false);
        }
        let len = RECORD_HEADER_LEN + object::HEAD_MAX + obj.deflated.len();
        let copy = compact::Copy::Object {
            obj,
            nss: vec![d.ns],
            from: d.loc,
        };
        let locs = self.enqueue(Vec::new(), Some(vec![copy]), len).await?;
        if !locs.is_empty() {
            // What the cache resolved from the damaged record (or from it as a base)
            // must not outlive it. Repairs are rare: the whole cache goes.
            *state(&self.inner.cache) = DeltaCache::default();
        }
        Ok(!locs.is_empty())
    }
}
