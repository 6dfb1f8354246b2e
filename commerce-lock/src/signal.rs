//! In-process fan-out of release notices to waiting acquirers.

use std::sync::Arc;

use futures::future::select_all;
use tokio::sync::{watch, Notify};

/// Wakes the waiters of one key when it is released.
///
/// Single-key waiters are woken one per notice: only one of them can win, so waking all would
/// only make the rest retry and sleep again. A multi-key waiter cannot take that single
/// wake-up (it may fail on another key and swallow it), so it watches a generation counter
/// that every notice bumps instead.
#[derive(Debug)]
pub(crate) struct ReleaseSignal {
    one: Notify,
    all: watch::Sender<u64>,
}

impl Default for ReleaseSignal {
    fn default() -> Self {
        Self {
            one: Notify::new(),
            all: watch::Sender::new(0),
        }
    }
}

impl ReleaseSignal {
    /// Delivers one release notice.
    pub(crate) fn notify(&self) {
        self.one.notify_one();
        self.all
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Wakes every current waiter, e.g. after notices may have been missed.
    pub(crate) fn notify_everyone(&self) {
        self.one.notify_waiters();
        self.notify();
    }
}

/// A registration for release notices on some keys, made before an acquire retry so that a
/// release between the retry and the wait is not missed.
pub(crate) struct ReleaseWatch {
    signals: Vec<Arc<ReleaseSignal>>,
    generations: Vec<watch::Receiver<u64>>,
    /// Dropped with the watch: ends the registration (lets Redis unsubscribe).
    _registration: Option<Box<dyn Send + Sync>>,
}

impl ReleaseWatch {
    pub(crate) fn new(
        signals: Vec<Arc<ReleaseSignal>>,
        registration: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        // Subscribing marks the current generation as seen: only later notices count.
        let generations = if signals.len() > 1 {
            signals.iter().map(|s| s.all.subscribe()).collect()
        } else {
            Vec::new()
        };
        Self {
            signals,
            generations,
            _registration: registration,
        }
    }

    /// Resolves on the next release notice for a watched key. A notice that arrived since
    /// the previous call is kept (a `Notify` permit or an unseen generation), so nothing is
    /// lost between calls.
    pub(crate) async fn notified(&mut self) {
        if let [signal] = self.signals.as_slice() {
            signal.one.notified().await;
            return;
        }
        if self.generations.is_empty() {
            return std::future::pending().await;
        }
        let changes = self.generations.iter_mut().map(|g| Box::pin(g.changed()));
        // The senders live in `self.signals`, so `changed` cannot fail.
        let _ = select_all(changes).await;
    }
}
