//! Commit, tree and tag parsing (links for connectivity and history walks) and git's
//! object checks (fsck, `.gitmodules` and `.gitattributes` included), any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::fsck;
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
    let opts = fsck::Options::default();
    let mut checked = fsck::Checked::default();
    let _ = fsck::check(kind, content, &opts, &mut checked);
    if k % 8 == 3 {
        let _ = fsck::check_gitmodules(content, &opts);
        let _ = fsck::check_gitattributes(content, &opts);
    }
});
