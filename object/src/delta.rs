//! git's delta format (`Documentation/gitformat-pack.txt`, "Deltified
//! representation"): a base size, a result size, then copy and insert instructions.

/// Why a delta does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("delta is invalid: {0}")]
pub struct DeltaError(pub &'static str);

/// The most memory [`apply`] takes before a delta's result is produced.
const PREALLOC_BYTES: usize = 16 << 20;

fn varint(d: &[u8], at: &mut usize) -> Result<u64, DeltaError> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *d.get(*at).ok_or(DeltaError("truncated size"))?;
        *at += 1;
        if shift > 63 {
            return Err(DeltaError("size overflows"));
        }
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// The result size a delta declares (to bound memory before applying it).
pub fn result_size(delta: &[u8]) -> Result<u64, DeltaError> {
    let mut at = 0;
    varint(delta, &mut at)?;
    varint(delta, &mut at)
}

/// Applies `delta` to `base`; the result may not exceed `max` bytes (refused from the
/// delta's header, before anything is allocated for it). The declared size is the
/// sender's word: memory comes as the result grows.
pub fn apply(base: &[u8], delta: &[u8], max: u64) -> Result<Vec<u8>, DeltaError> {
    let mut at = 0;
    if varint(delta, &mut at)? != base.len() as u64 {
        return Err(DeltaError("base size does not match"));
    }
    let result_size = varint(delta, &mut at)?;
    if result_size > max {
        return Err(DeltaError("result larger than the object size limit"));
    }
    let result_size = usize::try_from(result_size).map_err(|_| DeltaError("result too large"))?;
    let mut out = Vec::with_capacity(result_size.min(PREALLOC_BYTES));
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            let mut offset = 0usize;
            let mut size = 0usize;
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    let b = *delta.get(at).ok_or(DeltaError("truncated copy"))?;
                    offset |= usize::from(b) << (8 * i);
                    at += 1;
                }
            }
            for i in 0..3 {
                if op & (0x10 << i) != 0 {
                    let b = *delta.get(at).ok_or(DeltaError("truncated copy"))?;
                    size |= usize::from(b) << (8 * i);
                    at += 1;
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            let end = offset
                .checked_add(size)
                .ok_or(DeltaError("copy overflows"))?;
            let src = base
                .get(offset..end)
                .ok_or(DeltaError("copy outside the base"))?;
            out.extend_from_slice(src);
        } else if op != 0 {
            let n = usize::from(op);
            let src = delta
                .get(at..at + n)
                .ok_or(DeltaError("truncated insert"))?;
            out.extend_from_slice(src);
            at += n;
        } else {
            return Err(DeltaError("reserved opcode 0"));
        }
        if out.len() > result_size {
            return Err(DeltaError("result larger than declared"));
        }
    }
    if out.len() != result_size {
        return Err(DeltaError("result size does not match"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_inserts_apply_and_every_bad_delta_is_refused() {
        // base "abcdef"; result "cdXYab": copy 2 from 2, insert "XY", copy 2 from 0.
        let delta = [6, 6, 0x91, 2, 2, 2, b'X', b'Y', 0x90, 2];
        assert_eq!(apply(b"abcdef", &delta, 100).expect("applies"), b"cdXYab");
        assert_eq!(result_size(&delta), Ok(6));
        assert!(apply(b"abcde", &delta, 100).is_err(), "base size");
        assert!(apply(b"abcdef", &delta, 5).is_err(), "over the limit");
        for cut in 0..delta.len() {
            assert!(
                apply(b"abcdef", &delta[..cut], 100).is_err(),
                "cut at {cut}"
            );
        }
        assert!(apply(b"abcdef", &[6, 1, 0], 100).is_err(), "opcode 0");
        assert!(
            apply(b"abcdef", &[6, 2, 0x91, 5, 2], 100).is_err(),
            "outside the base"
        );
        assert!(
            apply(b"abcdef", &[6, 1, 2, b'X', b'Y'], 100).is_err(),
            "longer than said"
        );
        assert!(result_size(&[0xff; 12]).is_err());
        let base = b"0123456789abcdef";
        let bad: &[&[u8]] = &[
            &[],
            &[15, 9, 0x91, 2, 4],  // wrong base size
            &[16, 4, 0x91, 14, 4], // copy outside the base
            &[16, 4, 5, b'a'],     // truncated insert
            &[16, 3, 0x91, 2, 4],  // larger than declared
            &[16, 9, 0x91, 2, 4],  // smaller than declared
            &[
                16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ];
        for d in bad {
            assert!(apply(base, d, u64::MAX).is_err(), "{d:?}");
        }
    }
}
