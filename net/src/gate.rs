//! Polling a glommio wait only when it asked to be polled.
//!
//! glommio 0.9 keeps a clone of the waiting task's waker for every poll of a pending
//! shared-channel `send`, `recv` or `connect` (its reactor pushes one per poll and
//! drains only as many as there is room or data), and counts a task's wakers in an
//! `i16`. A task woken often for other reasons while it waits on a channel (a hyper
//! connection woken by its request body's reader at every piece of a push, while the
//! request waits for the owning shard's answer) piles up clones until the count
//! overflows and the executor thread panics ("Waker invariant broken"): a 400k-object
//! push through a shard that does not own its repository stopped the node.
//!
//! [`gated`] gives the wait a waker of its own and polls it only after that waker was
//! woken: however often the task is polled meanwhile, the wait is polled once per real
//! event, and the task's own waker is held once (in an [`AtomicWaker`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

#[derive(Debug, Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A future polled only when it woke itself (see the module doc).
#[derive(Debug)]
pub struct Gated<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    waker: Waker,
}

/// Wraps `f` so that polls of the task it runs in reach `f` only after `f`'s own
/// waker was woken.
pub fn gated<F: Future>(f: F) -> Gated<F> {
    let signal = Arc::new(Signal::default());
    // The first poll always reaches it.
    signal.woken.store(true, Ordering::Relaxed);
    Gated {
        inner: Box::pin(f),
        waker: Waker::from(signal.clone()),
        signal,
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = self.waker.clone();
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::channels::shared_channel;

    /// Polls `wait` `polls` times, waking its own task at every poll (as a busy
    /// connection task is), then lets the channel deliver.
    fn wait_while_woken(polls: usize, gate: bool) {
        let (tx, rx) = shared_channel::new_bounded::<u32>(1);
        let receiver = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let rx = rx.connect().await;
                let mut wait: Pin<Box<dyn Future<Output = Option<u32>>>> = if gate {
                    Box::pin(gated(rx.recv()))
                } else {
                    Box::pin(rx.recv())
                };
                let mut n = 0;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(v) = wait.as_mut().poll(cx) {
                        return Poll::Ready(v);
                    }
                    n += 1;
                    if n < polls {
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                })
                .await
            })
            .expect("executor");
        let sender = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let tx = tx.connect().await;
                // Long enough for the receiver to have polled `polls` times.
                glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
                tx.send(7).await.expect("send");
            })
            .expect("executor");
        sender.join().expect("sender");
        assert_eq!(receiver.join().expect("receiver"), Some(7));
    }

    /// Without the gate (`wait_while_woken(40_000, false)`) glommio 0.9 aborts this
    /// process: "Waker invariant broken ... refcount: -32768", as the node did.
    #[test]
    fn a_gated_channel_wait_survives_a_task_woken_forty_thousand_times() {
        wait_while_woken(40_000, true);
    }
}
