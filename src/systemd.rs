//! systemd's notify protocol for `serve` (through the `sd-notify` crate; nothing is sent
//! unless systemd set `NOTIFY_SOCKET`): `READY=1` once every shard serves (its group
//! has a leader and it has applied what it knows committed), `STATUS=` lines as that
//! changes, `WATCHDOG=1` while every shard's executor keeps ticking (a wedged shard
//! stops the pings and systemd restarts the node), `STOPPING=1` on the way out.
//!
//! Each shard reports into a [`Health`] from a task of its own executor
//! ([`Health::beat`]); one thread of the main process reads it and talks to systemd
//! (`NotifyAccess=main`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::warn;

/// How often a shard reports.
pub const BEAT: Duration = Duration::from_secs(1);

/// What the shards last reported.
#[derive(Debug)]
pub struct Health {
    start: Instant,
    shards: Vec<Shard>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Milliseconds since `start` of the last beat; 0 before the first.
    beat_ms: AtomicU64,
    ready: AtomicBool,
    why: Mutex<String>,
}

impl Health {
    pub fn new(shards: usize) -> Arc<Health> {
        Arc::new(Health {
            start: Instant::now(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
        })
    }

    /// Shard `k` is alive; `ready` says whether it serves, and if not why.
    pub fn beat(&self, k: usize, ready: Result<(), String>) {
        let Some(s) = self.shards.get(k) else {
            return;
        };
        let ms = self.start.elapsed().as_millis() as u64;
        s.beat_ms.store(ms.max(1), Ordering::Release);
        s.ready.store(ready.is_ok(), Ordering::Release);
        if let Ok(mut w) = s.why.lock() {
            *w = ready.err().unwrap_or_default();
        }
    }

    /// The node's line for `STATUS=`, and whether every shard serves.
    fn summary(&self) -> (String, bool) {
        let mut why = Vec::new();
        for (k, s) in self.shards.iter().enumerate() {
            if s.beat_ms.load(Ordering::Acquire) == 0 {
                why.push(format!("shard {k}: starting"));
            } else if !s.ready.load(Ordering::Acquire) {
                let w = s.why.lock().map(|w| w.clone()).unwrap_or_default();
                why.push(format!("shard {k}: {w}"));
            }
        }
        if why.is_empty() {
            (format!("serving: {} shards ready", self.shards.len()), true)
        } else {
            (why.join("; "), false)
        }
    }

    /// Whether no shard that has started beating has been silent for `limit`. A shard
    /// still opening its store has not started (start-up is bounded by systemd's start
    /// timeout instead).
    fn all_ticking(&self, limit: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        self.shards.iter().all(|s| {
            let b = s.beat_ms.load(Ordering::Acquire);
            b == 0 || now.saturating_sub(b) <= limit.as_millis() as u64
        })
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "telling systemd failed");
    }
}

/// Talks to systemd until `stopping()` says the node stops; then sends `STOPPING=1`.
/// Runs on a thread of its own.
pub fn notify_loop(health: &Health, stopping: impl Fn() -> bool) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    // Pings at a third of the watchdog's time; a shard is wedged once it has been
    // silent for half of it.
    let period = watchdog.map_or(BEAT, |w| (w / 3).min(BEAT));
    let silent_max = watchdog.map_or(Duration::MAX, |w| (w / 2).max(BEAT * 2));
    let mut ready_sent = false;
    let mut last_status = String::new();
    while !stopping() {
        let (status, ready) = health.summary();
        if ready && !ready_sent {
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            ready_sent = true;
            last_status = status;
        } else if status != last_status {
            send(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if watchdog.is_some() {
            if health.all_ticking(silent_max) {
                send(&[NotifyState::Watchdog]);
            } else {
                warn!(
                    "a shard has stopped ticking: no watchdog ping; systemd will restart the node"
                );
            }
        }
        std::thread::sleep(period);
    }
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_shard_serves_and_silence_is_noticed() {
        let h = Health::new(2);
        assert_eq!(
            h.summary(),
            ("shard 0: starting; shard 1: starting".into(), false)
        );
        assert!(
            h.all_ticking(Duration::from_millis(1)),
            "nothing started yet"
        );
        h.beat(0, Ok(()));
        h.beat(1, Err("no leader".into()));
        assert_eq!(h.summary(), ("shard 1: no leader".into(), false));
        h.beat(1, Ok(()));
        assert_eq!(h.summary(), ("serving: 2 shards ready".into(), true));
        std::thread::sleep(Duration::from_millis(30));
        h.beat(0, Ok(()));
        assert!(
            !h.all_ticking(Duration::from_millis(10)),
            "shard 1 went silent"
        );
        assert!(h.all_ticking(Duration::from_secs(10)));
    }
}
