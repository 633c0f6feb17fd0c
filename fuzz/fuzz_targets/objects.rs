//! Commit, tree and tag parsing (links for connectivity and history walks), any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::objects::links;
use repospanner_net::git::ObjectKind;

fuzz_target!(|data: &[u8]| {
    let Some((&k, content)) = data.split_first() else {
        return;
    };
    let kind = match k % 4 {
        0 => ObjectKind::Commit,
        1 => ObjectKind::Tree,
        2 => ObjectKind::Tag,
        _ => ObjectKind::Blob,
    };
    let _ = links(kind, content);
});
