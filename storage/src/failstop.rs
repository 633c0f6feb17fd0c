//! Marks the code whose panic must stop the node even when a request handler that
//! contains its own panics called it (see the README's panic policy): the synchronous
//! parts of the store that change its state (the index, the caches keyed by place, the
//! write queue) and the raft state machine's apply. A half-done change there would
//! leave the store inconsistent, and serving on from it could serve wrong data.
//!
//! A [`Section`] is held only across synchronous code, never across an `.await`: the
//! mark is per thread, and another task running on the thread while it was held would
//! be taken for fail-stop code.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// While alive, a panic on this thread stops the node.
#[derive(Debug)]
pub struct Section(());

/// Enters a fail-stop section.
pub fn enter() -> Section {
    DEPTH.with(|d| d.set(d.get() + 1));
    Section(())
}

impl Drop for Section {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Whether code running now on this thread is inside a fail-stop section.
pub fn active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_nest_and_unwind() {
        assert!(!active());
        {
            let _a = enter();
            let _b = enter();
            assert!(active());
        }
        assert!(!active());
        let r = std::panic::catch_unwind(|| {
            let _s = enter();
            panic!("in a section")
        });
        assert!(r.is_err());
        assert!(!active(), "the section ended with the unwinding");
    }
}
