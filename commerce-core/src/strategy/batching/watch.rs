//! The sold-out fast path's source of truth: Postgres's `commerce_stock` notifications, a
//! listener that proves it is alive, and an age limit.
//!
//! The rule: a product may be turned away in memory only when a batch saw it with no stock
//! **and** nothing may have raised its stock since. "Since" is tracked with a generation
//! counter. A batch notes the generation *before* it reads or writes the product; its figure
//! counts only while the generation is unchanged and the listener is connected. The
//! generation moves on:
//! - every notification (any product: increases are rare next to orders);
//! - every stock increase this process committed itself ([`StockWatch::stock_raised`], told
//!   by `Commerce` after the commit), so the next order on the same instance reads the
//!   product again without waiting for the notification (read your own writes);
//! - every loss of the listener's connection, including one the heartbeat finds (a `SELECT 1`
//!   after [`BatchSettings::listener_heartbeat`] of quiet, answered within
//!   [`BatchSettings::listener_timeout`]) and the end of the listener task for any reason
//!   (its runtime shut down, say);
//! - when the current generation is older than [`BatchSettings::sold_out_max_age`]: a figure
//!   is never used longer than that after its generation began, whatever the listener does.
//!
//! A raise that commits after the batch's read therefore either moves the generation before
//! the figure is used, or is seen by the next batch, never lost. In particular a batch that
//! read "0 available" just before this process's receipt committed, and stores its figure
//! after the receipt's bump, stores a figure that is dead already: it carries the generation
//! noted before its read. Between another instance's commit and the notification's arrival
//! (a few milliseconds) an order may still be turned away, as it could have been a moment
//! earlier; if the notification is lost with a silent connection, for at most the heartbeat
//! and its timeout, and never beyond the age limit.
//!
//! The listener is a task of the runtime that first needed it. When it ends (its runtime
//! dropped), the next batch starts a new one on its own runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

use super::plan::Figures;
use super::BatchSettings;

/// The channel the migration's trigger notifies.
const CHANNEL: &str = "commerce_stock";

/// The shortest heartbeat, heartbeat timeout and age limit: a zero in the settings counts as
/// this (a zero age would turn the fast path off, a zero heartbeat would ping without end).
pub(super) const SHORTEST: Duration = Duration::from_millis(10);

/// How long the listener may take to connect and subscribe before it tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens for stock increases while it lives.
pub(super) struct StockWatch {
    state: Arc<State>,
    /// The application's pool, whose database the listener listens on.
    pool: PgPool,
    timing: Timing,
    /// Dropped with the watch: stops the listener task.
    stop: watch::Sender<()>,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    timeout: Duration,
    max_age: Duration,
}

struct State {
    generation: AtomicU64,
    connected: AtomicBool,
    /// A listener task exists (running, or spawned and not yet dropped).
    listening: AtomicBool,
    /// When the current generation began, in milliseconds since `epoch`.
    began: AtomicU64,
    epoch: Instant,
}

impl State {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Moves the generation on: every figure noted before is dead.
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.began.store(self.now(), Ordering::SeqCst);
    }

    /// The listener can no longer vouch for anything: figures noted so far are dead, and
    /// none noted from now on counts until it listens again.
    fn disconnect(&self) {
        // `connected` first: `generation()` reads the generation before `connected`.
        self.connected.store(false, Ordering::SeqCst);
        self.bump();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl StockWatch {
    /// Starts listening on `pool`'s database (in a task of the current runtime), with the
    /// heartbeat and age limit of `settings` (already clamped to [`SHORTEST`]).
    pub(super) fn start(pool: PgPool, settings: &BatchSettings) -> Self {
        let watch = Self {
            state: Arc::new(State {
                generation: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                listening: AtomicBool::new(false),
                began: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
            pool,
            timing: Timing {
                heartbeat: settings.listener_heartbeat,
                timeout: settings.listener_timeout,
                max_age: settings.sold_out_max_age,
            },
            stop: watch::channel(()).0,
        };
        watch.keep_listening();
        watch
    }

    /// Starts a listener task on the current runtime unless one exists (the previous one's
    /// runtime may have ended).
    fn keep_listening(&self) {
        if self.state.listening.load(Ordering::SeqCst) || self.pool.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.state.listening.swap(true, Ordering::SeqCst) {
            return;
        }
        // Owned by the task's future, so dropped with it even if it never ran.
        let ended = Ended(Arc::clone(&self.state));
        let (pool, state, timing) = (self.pool.clone(), Arc::clone(&self.state), self.timing);
        let stop = self.stop.subscribe();
        runtime.spawn(async move {
            let _ended = ended;
            listen(pool, state, timing, stop).await;
        });
    }

    /// The generation to note before reading a product's figures; `None` while the listener
    /// is not connected (figures read then never enable the fast path). Starts a new
    /// generation when the current one has reached the age limit.
    pub(super) fn generation(&self) -> Option<u64> {
        self.keep_listening();
        let state = &self.state;
        // Generation first: a disconnect bumps it after clearing `connected`.
        let mut generation = state.generation.load(Ordering::SeqCst);
        if !state.connected.load(Ordering::SeqCst) {
            return None;
        }
        let began = state.began.load(Ordering::SeqCst);
        if state.now().saturating_sub(began) >= millis(self.timing.max_age) {
            // Only one of the callers that find it old moves it on (the others' figures die
            // with it anyway). A disconnect meanwhile moved it on already.
            if state
                .generation
                .compare_exchange(
                    generation,
                    generation + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                state.began.store(state.now(), Ordering::SeqCst);
            }
            generation = state.generation.load(Ordering::SeqCst);
            if !state.connected.load(Ordering::SeqCst) {
                return None;
            }
        }
        Some(generation)
    }

    /// Whether `figures` (of a product) still prove it sold out.
    pub(super) fn still_sold_out(&self, figures: Figures) -> bool {
        let Some(seen) = figures.generation else {
            return false;
        };
        let state = &self.state;
        // When the generation began first: moving it on stores `began` after the bump, so a
        // fresh `began` here means the generation read next is the new one.
        let began = state.began.load(Ordering::SeqCst);
        figures.available == 0
            && state.now().saturating_sub(began) < millis(self.timing.max_age)
            && state.generation.load(Ordering::SeqCst) == seen
            && state.connected.load(Ordering::SeqCst)
    }

    /// Stock went up in a transaction of this process that has committed: figures noted
    /// before are dead, without waiting for the notification.
    pub(super) fn stock_raised(&self) {
        self.state.bump();
    }
}

/// Held by the listener task: however it ends (stopped, its runtime dropped, a panic),
/// nothing it vouched for counts any more, and the next batch may start another.
struct Ended(Arc<State>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.disconnect();
        self.0.listening.store(false, Ordering::SeqCst);
    }
}

/// A connection of the listener's own (outside the application's pool, which it would
/// otherwise hold one of for good), subscribed to the channel.
async fn subscribe(pool: &PgPool) -> Result<(PgPool, PgListener), sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.ignore_pool_close_event(true);
    // A lost connection is reported at once (`Ok(None)`), not after reconnecting: while it
    // reconnects, notifications are missed and the fast path must be off.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok((own, listener))
}

/// Why the listener stopped listening on its connection.
enum Lost {
    /// The watch was dropped or the application's pool closed: stop for good.
    Stop,
    /// The connection was lost or went silent: listen again on a new one.
    Connection,
}

async fn listen(pool: PgPool, state: Arc<State>, timing: Timing, mut stop: watch::Receiver<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if pool.is_closed() {
            return;
        }
        let subscribed = tokio::select! {
            _ = stop.changed() => return,
            subscribed = tokio::time::timeout(CONNECT_TIMEOUT, subscribe(&pool)) => subscribed,
        };
        let (own, mut listener) = match subscribed {
            Ok(Ok(subscribed)) => subscribed,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                };
                tracing::warn!(%error, "stock listener cannot connect; sold-out fast path off");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Subscribed: figures read from now on are covered by the notifications.
        state.bump();
        state.connected.store(true, Ordering::SeqCst);
        let lost = hear(&pool, &state, timing, &mut stop, &mut listener).await;
        state.disconnect();
        // Whatever the old connection still has in flight (a heartbeat nobody answers) is
        // not waited for: a closed pool shuts the connection when the listener drops it.
        drop(own.close());
        drop(listener);
        match lost {
            Lost::Stop => return,
            Lost::Connection => {
                tracing::warn!("stock listener lost its connection; reconnecting");
            }
        }
    }
}

/// Bumps the generation on every notification until the connection is lost or silent.
async fn hear(
    pool: &PgPool,
    state: &State,
    timing: Timing,
    stop: &mut watch::Receiver<()>,
    listener: &mut PgListener,
) -> Lost {
    loop {
        let next = tokio::select! {
            _ = stop.changed() => return Lost::Stop,
            () = pool.close_event() => return Lost::Stop,
            next = tokio::time::timeout(timing.heartbeat, listener.try_recv()) => next,
        };
        match next {
            Ok(Ok(Some(_))) => state.bump(),
            // The connection was lost (notifications may have been missed), or failed.
            Ok(Ok(None) | Err(_)) => return Lost::Connection,
            // Quiet for a heartbeat: prove the connection still answers. Notifications that
            // arrive during the query are buffered by the listener, not lost.
            Err(_quiet) => {
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                let answered = tokio::select! {
                    _ = stop.changed() => return Lost::Stop,
                    answered = tokio::time::timeout(timing.timeout, ping) => answered,
                };
                if !matches!(answered, Ok(Ok(_))) {
                    tracing::warn!(timeout = ?timing.timeout, "stock listener's heartbeat unanswered");
                    return Lost::Connection;
                }
            }
        }
    }
}
