//! Helpers for the storage tests: run a future on a glommio executor, build objects.
#![allow(dead_code)]

use std::future::Future;

use repospanner_storage::{object, ObjectKind, StoredObject};

/// Runs `make()` on a fresh glommio executor thread and returns its output.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(make)
        .expect("start a glommio executor (needs RLIMIT_MEMLOCK >= 512 KiB)")
        .join()
        .expect("executor thread")
}

/// A seed from `STORAGE_SEED` or the clock, printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (rerun with STORAGE_SEED={seed})");
    seed
}

pub fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).expect("deflate");
    z.finish().expect("deflate")
}

/// A full (non-delta) object of `kind` with `content`.
pub fn full(kind: ObjectKind, content: &[u8]) -> StoredObject {
    StoredObject {
        oid: object::object_id(kind, content).expect("no collision"),
        kind,
        object_size: content.len() as u64,
        entry_size: content.len() as u64,
        base: None,
        deflated: deflate(content).into(),
    }
}

/// A delta object: `content` expressed against `base` (copy the base, then insert
/// `suffix`), so its content is `base_content + suffix`.
pub fn delta(
    kind: ObjectKind,
    base: &StoredObject,
    base_content: &[u8],
    suffix: &[u8],
) -> (StoredObject, Vec<u8>) {
    assert!(
        suffix.len() < 128
            && !suffix.is_empty()
            && !base_content.is_empty()
            && base_content.len() < 0x10000
    );
    let mut d = Vec::new();
    varint(&mut d, base_content.len() as u64);
    varint(&mut d, (base_content.len() + suffix.len()) as u64);
    // copy offset 0, size = base len (2 size bytes)
    d.push(0x80 | 0x10 | 0x20);
    d.push((base_content.len() & 0xff) as u8);
    d.push((base_content.len() >> 8) as u8);
    d.push(suffix.len() as u8);
    d.extend_from_slice(suffix);
    let mut content = base_content.to_vec();
    content.extend_from_slice(suffix);
    (
        StoredObject {
            oid: object::object_id(kind, &content).expect("no collision"),
            kind,
            object_size: content.len() as u64,
            entry_size: d.len() as u64,
            base: Some(base.oid),
            deflated: deflate(&d).into(),
        },
        content,
    )
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// `len` incompressible bytes derived from `seed` (so zstd cannot shrink them).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
