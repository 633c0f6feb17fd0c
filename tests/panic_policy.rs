//! The panic policy, both sides, with the hook `serve` installs: a panic in contained
//! request handling fails that request only; a panic in a fail-stop section (storage,
//! the raft state machine), even under a contained handler, or anywhere outside a
//! contained boundary, stops the node. Its own test binary: the hook is process-wide.

use repospanner::serve::install_panic_policy;
use repospanner::stop::stop_requested;
use repospanner_net::contain;
use repospanner_storage::failstop;

#[test]
fn contained_panics_cost_a_request_and_fail_stop_panics_stop_the_node() {
    install_panic_policy();

    // Contained, on this thread and on an executor: an error, and no stop.
    let r: Result<(), _> = contain::run(|| panic!("a parser bug"));
    assert!(matches!(r, Err(contain::Panicked(ref m)) if m == "a parser bug"));
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let r = contain::contained(async {
                glommio::yield_if_needed().await;
                let v: Vec<u8> = Vec::new();
                v[usize::from(!v.is_empty()) + 3] // index out of bounds
            })
            .await;
            assert!(r.is_err());
            // The executor goes on.
            assert_eq!(contain::contained(async { 7 }).await, Ok(7));
        })
        .expect("executor")
        .join()
        .expect("the shard survived a contained panic");
    assert!(
        !stop_requested(),
        "a contained panic must not stop the node"
    );

    // A fail-stop section under a contained boundary: the panic goes through it and
    // the node is told to stop.
    let through = std::panic::catch_unwind(|| {
        contain::run(|| {
            let _state_change = failstop::enter();
            panic!("a storage invariant")
        })
    });
    assert!(through.is_err(), "the contained boundary must not catch it");
    assert!(stop_requested(), "a fail-stop panic stops the node");
    assert!(!failstop::active() && !contain::active());

    // Outside any boundary (a shard's own code, the raft core): stops the node too.
    let joined = std::thread::spawn(|| panic!("a shard's own code")).join();
    assert!(joined.is_err());
    assert!(stop_requested());
}
