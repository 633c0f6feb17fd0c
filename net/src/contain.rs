//! The panic policy's mechanism: which panics cost one request and which stop the node.
//!
//! A panic is a bug. Where it happens decides what it may cost:
//!
//! * **Contained**: code that reads a request and answers it before changing any state
//!   (parsing pkt-lines and requests, negotiation, planning and sending a pack, reading
//!   and resolving a pushed pack, object checks). It runs inside [`run`] (synchronous
//!   code, and the pack reader threads) or a [`Contained`] future (a request handler):
//!   a panic there unwinds to that boundary, the request fails with an error, and the
//!   shard goes on serving every other request.
//! * **Fail-stop**: everything else, and above all the storage engine and the raft state
//!   machine, whose state a half-done change would leave inconsistent. A panic there
//!   stops the node (the process's panic hook, `src/serve.rs`). Storage code marks its
//!   state changes as such even when a contained handler calls it
//!   (`repospanner_storage::failstop`): the hook asks both.
//!
//! The hook consults [`active`] on the panicking thread; when it decides the panic is
//! fatal although it is inside a contained boundary, it calls [`mark_fatal`] and the
//! boundary lets the panic go on unwinding instead of catching it.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// How many contained boundaries the running code on this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Set by the panic hook: the panic unwinding now must not be contained.
    static FATAL: Cell<bool> = const { Cell::new(false) };
}

/// A panic caught at a contained boundary: the request it belonged to failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal error while handling the request (a bug, logged by the node): {0}")]
pub struct Panicked(pub String);

/// Whether code running now on this thread is inside a contained boundary.
pub fn active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Tells the boundary around the panic unwinding now to let it through (the hook
/// decided it stops the node).
pub fn mark_fatal() {
    FATAL.with(|f| f.set(true));
}

struct Enter;

impl Enter {
    fn new() -> Enter {
        DEPTH.with(|d| d.set(d.get() + 1));
        Enter
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// What a boundary does with a caught panic: contain it, or, if the hook marked it
/// fatal, let it unwind on.
fn caught(payload: Box<dyn std::any::Any + Send>) -> Panicked {
    if FATAL.with(|f| f.replace(false)) {
        resume_unwind(payload);
    }
    Panicked(message(payload.as_ref()))
}

/// Runs `f` inside a contained boundary.
pub fn run<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    let _in = Enter::new();
    catch_unwind(AssertUnwindSafe(f)).map_err(caught)
}

/// A future polled inside a contained boundary: a panic in any of its polls ends it
/// with [`Panicked`] (and it is not polled again).
#[derive(Debug)]
pub struct Contained<F> {
    inner: Option<Pin<Box<F>>>,
}

/// Wraps `f` so that a panic while polling it is contained.
pub fn contained<F: Future>(f: F) -> Contained<F> {
    Contained {
        inner: Some(Box::pin(f)),
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(Panicked("polled after it failed".into())));
        };
        let polled = {
            let _in = Enter::new();
            catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)))
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => {
                // Dropped now, so that what it held (budget, buffers) is given back.
                self.inner = None;
                Poll::Ready(Err(caught(payload)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_and_the_depth_unwinds() {
        assert!(!active());
        let r: Result<(), _> = run(|| {
            assert!(active());
            panic!("bad request {}", 7)
        });
        assert_eq!(r, Err(Panicked("bad request 7".into())));
        assert!(!active());
        assert_eq!(run(|| 5), Ok(5));
        let nested = run(|| run(|| -> u8 { panic!("inner") }).is_err() && active());
        assert_eq!(nested, Ok(true));
    }

    #[test]
    fn a_panic_marked_fatal_goes_through_the_boundary() {
        let outer = catch_unwind(|| {
            run(|| {
                mark_fatal();
                panic!("storage invariant")
            })
        });
        assert!(outer.is_err(), "the boundary let it through");
        assert!(!active());
        // The mark was used up: the next contained panic is contained again.
        assert!(run(|| panic!("request")).is_err());
    }

    #[test]
    fn a_contained_future_fails_once_and_the_executor_goes_on() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let failed = glommio::spawn_local(contained(async {
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    if active() {
                        panic!("in a handler");
                    }
                    1
                }))
                .await;
                assert_eq!(failed, Err(Panicked("in a handler".into())));
                assert!(!active());
                let fine = contained(async { 2 }).await;
                assert_eq!(fine, Ok(2));
            })
            .expect("executor")
            .join()
            .expect("the executor survived");
    }
}
