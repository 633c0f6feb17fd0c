//! openraft's `AsyncRuntime` on glommio: tasks are `spawn_local`ed and detached
//! (openraft drops join handles and expects the tasks to keep running), timers are
//! glommio timers, and the channels and mutex are tokio's runtime-independent `sync`
//! primitives (as openraft-rt-monoio does). Everything runs on the shard's own thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use openraft::rt::{
    self, AsyncRuntime, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender,
    OptionalSend, OptionalSync, TryRecvError,
};

/// A spawned task was cancelled (its executor stopped).
#[derive(Debug)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task cancelled")
    }
}

/// Join handle of a detached glommio task.
#[derive(Debug)]
pub struct JoinHandle<T>(glommio::task::JoinHandle<T>);

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|o| o.ok_or(Cancelled))
    }
}

/// A glommio timer.
#[derive(Debug)]
pub struct Sleep(glommio::timer::Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A timeout elapsed.
#[derive(Debug)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

pin_project_lite::pin_project! {
    /// A future raced against a glommio timer.
    pub struct Timeout<F> { #[pin] fut: F, timer: glommio::timer::Timer }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.timer).poll(cx).map(|_| Err(Elapsed))
    }
}

/// Bounded mpsc channels (tokio::sync, no tokio runtime).
#[derive(Debug)]
pub struct Mpsc;
#[derive(Debug)]
pub struct Sender<T>(tokio::sync::mpsc::Sender<T>);
impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}
#[derive(Debug)]
pub struct Receiver<T>(tokio::sync::mpsc::Receiver<T>);
#[derive(Debug)]
pub struct WeakSender<T>(tokio::sync::mpsc::WeakSender<T>);
impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender(self.0.clone())
    }
}

impl rt::Mpsc for Mpsc {
    type Sender<T: OptionalSend> = Sender<T>;
    type Receiver<T: OptionalSend> = Receiver<T>;
    type WeakSender<T: OptionalSend> = WeakSender<T>;
    fn channel<T: OptionalSend>(buffer: usize) -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        (Sender(tx), Receiver(rx))
    }
}

impl<T: OptionalSend> MpscSender<Mpsc, T> for Sender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), rt::SendError<T>>> {
        let tx = self.0.clone();
        async move { tx.send(msg).await.map_err(|e| rt::SendError(e.0)) }
    }
    fn downgrade(&self) -> WeakSender<T> {
        WeakSender(self.0.downgrade())
    }
}

impl<T> MpscReceiver<T> for Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> {
        self.0.recv()
    }
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            tokio::sync::mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            tokio::sync::mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<Mpsc, T> for WeakSender<T> {
    fn upgrade(&self) -> Option<Sender<T>> {
        self.0.upgrade().map(Sender)
    }
}

/// One-shot channels (futures-channel).
#[derive(Debug)]
pub struct OneshotChannel;
#[derive(Debug)]
pub struct OneshotTx<T>(futures_channel::oneshot::Sender<T>);

impl Oneshot for OneshotChannel {
    type Sender<T: OptionalSend> = OneshotTx<T>;
    type Receiver<T: OptionalSend> = futures_channel::oneshot::Receiver<T>;
    type ReceiverError = futures_channel::oneshot::Canceled;
    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = futures_channel::oneshot::channel();
        (OneshotTx(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for OneshotTx<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

/// An async mutex (tokio::sync).
#[derive(Debug)]
pub struct Mutex<T>(tokio::sync::Mutex<T>);

impl<T: OptionalSend + 'static> rt::Mutex<T> for Mutex<T> {
    type Guard<'a> = tokio::sync::MutexGuard<'a, T>;
    fn new(value: T) -> Self {
        Mutex(tokio::sync::Mutex::new(value))
    }
    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> {
        self.0.lock()
    }
}

/// Watch channels (tokio::sync).
#[derive(Debug)]
pub struct Watch;
#[derive(Debug)]
pub struct WatchTx<T>(tokio::sync::watch::Sender<T>);
impl<T> Clone for WatchTx<T> {
    fn clone(&self) -> Self {
        WatchTx(self.0.clone())
    }
}
#[derive(Debug)]
pub struct WatchRx<T>(tokio::sync::watch::Receiver<T>);
impl<T> Clone for WatchRx<T> {
    fn clone(&self) -> Self {
        WatchRx(self.0.clone())
    }
}
#[derive(Debug)]
pub struct WatchRef<'a, T>(tokio::sync::watch::Ref<'a, T>);
impl<T> std::ops::Deref for WatchRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl rt::Watch for Watch {
    type Sender<T: OptionalSend + OptionalSync> = WatchTx<T>;
    type Receiver<T: OptionalSend + OptionalSync> = WatchRx<T>;
    type Ref<'a, T: OptionalSend + 'a> = WatchRef<'a, T>;
    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (WatchTx<T>, WatchRx<T>) {
        let (tx, rx) = tokio::sync::watch::channel(init);
        (WatchTx(tx), WatchRx(rx))
    }
}

impl<T: OptionalSend + OptionalSync> rt::WatchSender<Watch, T> for WatchTx<T> {
    fn send(&self, value: T) -> Result<(), rt::watch::SendError<T>> {
        self.0.send(value).map_err(|e| rt::watch::SendError(e.0))
    }
    fn send_if_modified<F: FnOnce(&mut T) -> bool>(&self, modify: F) -> bool {
        self.0.send_if_modified(modify)
    }
    fn borrow_watched(&self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow())
    }
    fn subscribe(&self) -> WatchRx<T> {
        WatchRx(self.0.subscribe())
    }
}

impl<T: OptionalSend + OptionalSync> rt::WatchReceiver<Watch, T> for WatchRx<T> {
    async fn changed(&mut self) -> Result<(), rt::RecvError> {
        self.0.changed().await.map_err(|_| rt::RecvError(()))
    }
    fn borrow_watched(&self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow())
    }
    fn borrow_and_update(&mut self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow_and_update())
    }
}

/// The runtime: a glommio executor of its own only when openraft asks for one
/// (`new`/`block_on`, used by tests); in a node, raft runs on the shard's executor.
pub struct GlommioRuntime {
    executor: glommio::LocalExecutor,
}

impl fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GlommioRuntime")
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = Cancelled;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type Mpsc = Mpsc;
    type Watch = Watch;
    type Oneshot = OneshotChannel;
    type Mutex<T: OptionalSend + 'static> = Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        JoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(d: Duration) -> Sleep {
        Sleep(glommio::timer::Timer::new(d))
    }

    fn sleep_until(deadline: Instant) -> Sleep {
        Sleep(glommio::timer::Timer::new(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(d: Duration, fut: F) -> Timeout<F> {
        Timeout {
            fut,
            timer: glommio::timer::Timer::new(d),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Instant,
        fut: F,
    ) -> Timeout<F> {
        Self::timeout(deadline.saturating_duration_since(Instant::now()), fut)
    }

    /// A panicking glommio task takes its executor down; no join ever sees a panic.
    fn is_panic(_: &Cancelled) -> bool {
        false
    }

    fn thread_rng() -> rand::rngs::ThreadRng {
        rand::rng()
    }

    fn new(_threads: usize) -> Self {
        GlommioRuntime {
            executor: glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .expect("a glommio executor for openraft's own tests (needs RLIMIT_MEMLOCK)"),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.executor.run(future)
    }
}
