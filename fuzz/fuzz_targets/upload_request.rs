//! upload-pack requests, v0 and v2 (and v2's fetch arguments and ls-refs), as a
//! client sends them, against small limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::backend::RepoState;
use repospanner_net::git::upload::{self, AdRef};
use repospanner_net::git::RequestLimits;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits {
        negotiation_ids_max: 64,
        capabilities_max: 16,
        ..RequestLimits::default()
    };
    if let Ok(req) = upload::parse_v0(data, &limits) {
        assert!(req.wants.len() + req.haves.len() + req.shallows.len() <= 64);
        let (_, _) = upload::negotiation_v0(&req, &req.haves, true);
    }
    if let Ok(req) = upload::parse_v2(data, &limits) {
        let mut state = RepoState::default();
        state
            .refs
            .insert("refs/heads/master".into(), "1".repeat(40));
        state
            .symrefs
            .insert("HEAD".into(), "refs/heads/master".into());
        let refs = [AdRef {
            name: "refs/heads/master".into(),
            oid: [1; 20],
            peeled: None,
        }];
        let _ = upload::ls_refs(&req.args, &refs, &state);
        if let Ok(f) = upload::parse_v2_fetch(&req.args, &limits) {
            let _ = upload::acknowledgments_v2(&f.haves, true);
        }
    }
});
