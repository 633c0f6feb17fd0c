//! Ref names, repository names and request paths: any string.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::receive::ambiguous_ref_name;
use repospanner_net::git::refs::{valid_ref_name, valid_repo_name};
use repospanner_net::rpc;
use repospanner_net::service::split_repo_path;

fuzz_target!(|data: &[u8]| {
    let _ = valid_ref_name(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = valid_repo_name(s);
    let _ = ambiguous_ref_name(s);
    if let Some((repo, rest)) = split_repo_path(s) {
        assert!(s.len() >= repo.len() + rest.len());
    }
    if let Some((_, name)) = rpc::split_path(s) {
        if let Some(op) = rpc::Op::parse(name) {
            assert_eq!(op.name(), name);
        }
    }
    let _ = repospanner_net::git::excerpt(data);
});
