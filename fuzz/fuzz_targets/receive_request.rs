//! receive-pack requests: the command section as it arrives and whole, and the
//! checks of the commands against a repository's refs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::backend::RepoState;
use repospanner_net::git::receive;
use repospanner_net::git::RequestLimits;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits {
        refs_per_push_max: 32,
        capabilities_max: 16,
        push_options_max: 8,
        ref_name_bytes_max: 256,
        ..RequestLimits::default()
    };
    // Told as it arrives, in two pieces: the same end as told whole.
    let whole = receive::commands_end(data);
    for cut in [0, 1, data.len() / 2, data.len().saturating_sub(1)] {
        if let Ok(Some(at)) = receive::commands_end(&data[..cut.min(data.len())]) {
            assert_eq!(whole, Ok(Some(at)));
        }
    }
    if let Ok(req) = receive::parse_push(data, &limits) {
        assert!(req.commands.len() <= 32 && req.options.len() <= 8);
        assert!(req.pack_at <= data.len());
        let mut state = RepoState::default();
        state
            .refs
            .insert("refs/heads/master".into(), "1".repeat(40));
        let checked = receive::check_commands(&req.commands, &state);
        assert_eq!(checked.len(), req.commands.len());
    }
});
