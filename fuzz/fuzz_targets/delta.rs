//! Delta application: a base and a delta, any bytes; the result never exceeds the
//! limit or the size the delta declares.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::pack;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (base, delta) = data.split_at(split);
    if let Ok(out) = pack::apply_delta(base, delta, 1 << 16) {
        assert!(out.len() <= 1 << 16);
    }
});
