//! A pushed pack's stream (headers, sizes, zlib, OFS and REF deltas) read as it
//! arrives in pieces, then resolved, with small limits, each commit, tree and tag
//! inspected as a push does (fsck and the ids it names). The trailer is not checked
//! here (mutations would only break it); its own code is a plain SHA-1.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::fsck;
use repospanner_net::git::pack::{self, Limits, PackStream};
use repospanner_net::git::receive::Inspected;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        object_bytes_max: 1 << 20,
        objects_max: 256,
        delta_depth_max: 16,
        inflated_bytes_max: 64 << 20,
    };
    let mut inspected = Inspected::new(std::sync::Arc::new(fsck::Options::default()));
    let mut s = PackStream::without_trailer(limits);
    // In two steps, as a body arrives.
    let half = data.len() / 2;
    if s.advance(&data[..half], &mut inspected).is_err() {
        return;
    }
    if s.advance(data, &mut inspected).is_err() {
        return;
    }
    let Ok(entries) = s.finish(data, &mut inspected) else {
        return;
    };
    let _ = pack::resolve(data, entries, &limits, |_| None, &mut inspected);
});
